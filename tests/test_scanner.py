"""The hp_io filesystem scanner (spec §8: R-SCAN-*, R-NAME-*, R-PFF-3) and the DAQ check (R-INIT-4).

Files are written with the real PFF encoder; the concurrent tests run a writer task next to
`run_scanner` on both anyio backends and wait on conditions with a time bound, never on sleeps.
"""

from __future__ import annotations

import builtins
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from panoseti_daq import pff
from panoseti_daq.frames import PanoFrame
from panoseti_daq.products import PRODUCTS, DataProduct
from panoseti_daq.server import inotify
from panoseti_daq.server import scanner as scanner_module
from panoseti_daq.server.scanner import RunScanner, daq_is_active, run_scanner

IMG16 = PRODUCTS["img16"]
PH256 = PRODUCTS["ph256"]
IMG8 = PRODUCTS["img8"]
RUN = "obs_Lick.start_2024-07-25T04:34:06Z.runtype_sci-data.pffd"
HEADER_WIDTH = 96


@pytest.fixture(autouse=True, params=["inotify", "polling"])
def scanner_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with inotify and, as where it is unavailable, polling."""
    if request.param == "polling":
        monkeypatch.setattr(inotify.Inotify, "open", classmethod(lambda cls: None))
    else:
        assert RunScanner(".", (), []).watching, "inotify should be available on Linux"
    return request.param


def frame(product: DataProduct, tag: str) -> tuple[bytes, dict[str, Any], np.ndarray]:
    """(encoded frame, header, pixels), the content determined by `tag`."""
    rng = np.random.default_rng(abs(hash(tag)) % 2**32)
    info = np.iinfo(product.dtype)
    pixels = rng.integers(info.min, info.max, product.shape, endpoint=True).astype(product.dtype)
    header = {"tag": tag, "pkt_num": 7}
    return pff.encode_frame(header, pixels, product, HEADER_WIDTH), header, pixels


def file_name(product: DataProduct, module: int, seqno: int) -> str:
    return pff.DataFileName(
        product.name, module, seqno, product.bytes_per_pixel, "2024-07-25T04_34_46Z"
    ).format()


def run_dir(data_dir: Path, module: int, run: str = RUN) -> Path:
    path = data_dir / f"module_{module}" / run
    path.mkdir(parents=True, exist_ok=True)
    return path


def append(path: Path, product: DataProduct, tags: list[str]) -> None:
    with open(path, "ab") as f:
        for tag in tags:
            f.write(frame(product, tag)[0])


def assert_frame(got: PanoFrame, product: DataProduct, tag: str, file: str, index: int) -> None:
    _, header, pixels = frame(product, tag)
    assert got.product is product
    assert dict(got.header) == header
    np.testing.assert_array_equal(got.pixels, pixels)
    assert got.pixels.dtype == product.dtype
    assert (got.file, got.frame_number) == (file, index)


# --- one scan at a time ----------------------------------------------------------------------


def test_newest_complete_frame_is_published_once(tmp_path: Path) -> None:
    """R-SCAN-2, R-PFF-3: the newest complete frame, once; a partial frame is not an error."""
    path = run_dir(tmp_path, 1) / file_name(IMG16, 1, 0)
    append(path, IMG16, ["a0", "a1", "a2"])
    with open(path, "ab") as f:
        f.write(frame(IMG16, "a3")[0][:700])
    scanner = RunScanner(tmp_path, (), [IMG16, PH256])
    [got] = scanner.scan()
    assert got.module_id == 1
    assert_frame(got, IMG16, "a2", path.name, 2)
    assert scanner.scan() == []
    with open(path, "ab") as f:
        f.write(frame(IMG16, "a3")[0][700:])
    [got] = scanner.scan()
    assert_frame(got, IMG16, "a3", path.name, 3)
    # Several frames between two scans: only the newest (sample and hold).
    append(path, IMG16, ["a4", "a5", "a6"])
    [got] = scanner.scan()
    assert_frame(got, IMG16, "a6", path.name, 6)


def test_header_still_being_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """R-SCAN-4: a file whose first header is incomplete is skipped silently."""
    path = run_dir(tmp_path, 3) / file_name(PH256, 3, 0)
    data = frame(PH256, "p0")[0]
    path.write_bytes(data[:20])
    scanner = RunScanner(tmp_path, (), [PH256])
    with caplog.at_level(logging.INFO):
        assert scanner.scan() == []
        path.write_bytes(data[: HEADER_WIDTH + 1])
        assert scanner.scan() == []
        path.write_bytes(data)
        [got] = scanner.scan()
    assert_frame(got, PH256, "p0", path.name, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_rollover_to_next_seqno(tmp_path: Path) -> None:
    """R-NAME-2, R-SCAN-4: the newest file is the one with the highest seqno."""
    run = run_dir(tmp_path, 1)
    append(run / file_name(IMG16, 1, 0), IMG16, ["s0f0", "s0f1"])
    scanner = RunScanner(tmp_path, (), [IMG16])
    assert [f.frame_number for f in scanner.scan()] == [1]
    append(run / file_name(IMG16, 1, 1), IMG16, ["s1f0"])
    append(run / file_name(IMG16, 1, 10), IMG16, ["s10f0", "s10f1"])
    [got] = scanner.scan()
    assert_frame(got, IMG16, "s10f1", file_name(IMG16, 1, 10), 1)


def test_products_modules_and_names_are_filtered(tmp_path: Path) -> None:
    """R-SCAN-5, R-NAME-3, R-INIT-9: other products, non-data files and other modules."""
    for module in (1, 2):
        run = run_dir(tmp_path, module)
        append(run / file_name(IMG16, module, 0), IMG16, [f"m{module}"])
        append(run / file_name(IMG8, module, 0), IMG8, [f"m{module}i8"])
        (run / "hk.pff").write_bytes(b"not a data file")
        (run / "notes.txt").write_text("x")
    (tmp_path / "module_x").mkdir()
    (tmp_path / "stray.pff").write_bytes(b"x")
    everything = RunScanner(tmp_path, (), [IMG16, PH256])
    assert sorted((f.module_id, f.product.name) for f in everything.scan()) == [
        (1, "img16"),
        (2, "img16"),
    ]
    only_two = RunScanner(tmp_path, [2, 99], ["img16", "img8"])
    assert sorted((f.module_id, f.product.name) for f in only_two.scan()) == [
        (2, "img16"),
        (2, "img8"),
    ]


def test_modules_appearing_later_and_newest_run(tmp_path: Path) -> None:
    """R-SCAN-1, R-NAME-1: new module dirs are found; the run followed is the newest by mtime."""
    scanner = RunScanner(tmp_path / "data", (), [IMG16])
    assert scanner.scan() == []  # no data_dir yet
    old = run_dir(tmp_path / "data", 5, "obs_A.pffd")
    append(old / file_name(IMG16, 5, 0), IMG16, ["old0"])
    assert [f.header["tag"] for f in scanner.scan()] == ["old0"]
    new = run_dir(tmp_path / "data", 5, "obs_B.pffd")
    append(new / file_name(IMG16, 5, 0), IMG16, ["new0"])
    os.utime(old, (time.time() - 100, time.time() - 100))
    os.utime(new, (time.time() + 1, time.time() + 1))
    assert [f.header["tag"] for f in scanner.scan()] == ["new0"]
    later = run_dir(tmp_path / "data", 6)
    append(later / file_name(IMG16, 6, 0), IMG16, ["six"])
    assert [(f.module_id, f.header["tag"]) for f in scanner.scan()] == [(6, "six")]


def test_truncated_and_deleted_files(tmp_path: Path) -> None:
    """R-SCAN-4: truncation drops the cache; deleting the newest file does not replay older."""
    run = run_dir(tmp_path, 1)
    first, second = run / file_name(PH256, 1, 0), run / file_name(PH256, 1, 1)
    append(first, PH256, ["a0", "a1", "a2"])
    scanner = RunScanner(tmp_path, (), [PH256])
    assert [f.frame_number for f in scanner.scan()] == [2]
    append(second, PH256, ["b0", "b1", "b2", "b3"])
    assert [f.frame_number for f in scanner.scan()] == [3]
    size = len(frame(PH256, "x")[0])
    with open(second, "r+b") as f:
        f.truncate(size + 5)
    # A file that shrank is read afresh: its newest complete frame now is frame 0.
    [got] = scanner.scan()
    assert_frame(got, PH256, "b0", second.name, 0)
    with open(second, "r+b") as f:
        f.truncate(size)
    append(second, PH256, ["c1"])
    [got] = scanner.scan()
    assert_frame(got, PH256, "c1", second.name, 1)
    second.unlink()
    assert scanner.scan() == []  # seqno 0 holds older frames
    append(run / file_name(PH256, 1, 2), PH256, ["d0"])
    assert [f.header["tag"] for f in scanner.scan()] == ["d0"]


def test_rewritten_file_with_other_frame_size(tmp_path: Path) -> None:
    """R-SCAN-4: a file replaced under the same name is measured again."""
    path = run_dir(tmp_path, 1) / file_name(IMG16, 1, 0)
    append(path, IMG16, ["a0", "a1"])
    scanner = RunScanner(tmp_path, (), [IMG16])
    assert len(scanner.scan()) == 1
    path.unlink()
    pixels = np.arange(1024, dtype=np.uint16).reshape(32, 32)
    path.write_bytes(pff.encode_frame({"tag": "short"}, pixels, IMG16))
    [got] = scanner.scan()
    assert got.header == {"tag": "short"}
    np.testing.assert_array_equal(got.pixels, pixels)


def test_corrupt_frames_are_logged_once_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """R-SCAN-4, R-PFF-5: a corrupt frame is skipped with one log line per file."""
    path = run_dir(tmp_path, 1) / file_name(IMG16, 1, 0)
    append(path, IMG16, ["a0"])
    scanner = RunScanner(tmp_path, (), [IMG16])
    assert len(scanner.scan()) == 1
    good = frame(IMG16, "a1")[0]
    bad = good.replace(b"\n\n*", b"\n\n#")
    with caplog.at_level(logging.WARNING, "panoseti_daq.server.scanner"):
        with open(path, "ab") as f:
            f.write(bad)
        assert scanner.scan() == []
        assert scanner.scan() == []
        append(path, IMG16, ["a2"])
        [got] = scanner.scan()
        assert_frame(got, IMG16, "a2", path.name, 2)
        with open(path, "ab") as f:
            f.write(b"]" + bad[1:])
        assert scanner.scan() == []
    assert len(caplog.records) == 1
    assert path.name in caplog.text
    # A file whose first header is garbage never yields a frame, and logs once.
    junk = path.with_name(file_name(IMG16, 1, 1))
    junk.write_bytes(b"garbage" * 200)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "panoseti_daq.server.scanner"):
        for _ in range(3):
            assert scanner.scan() == []
    assert len(caplog.records) == 1


def test_scan_reads_only_the_new_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """R-SCAN-3: a scan reads one header to learn the frame size, then one frame per new frame."""
    path = run_dir(tmp_path, 1) / file_name(IMG16, 1, 0)
    one = frame(IMG16, "x")[0]
    path.write_bytes(one * 3000)  # ~7.8 MB
    read_bytes = []

    class Counting:
        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def read(self, n: int = -1) -> bytes:
            assert n >= 0, "never read a whole file"
            data = self.f.read(n)
            read_bytes.append(len(data))
            return data

        def seek(self, offset: int) -> int:
            return self.f.seek(offset)

    def counting_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Counting:
        return Counting(builtins.open(file, mode, *args, **kwargs))

    monkeypatch.setattr(pff, "open", counting_open, raising=False)
    scanner = RunScanner(tmp_path, (), [IMG16])
    assert [f.frame_number for f in scanner.scan()] == [2999]
    # One bounded read for the first header (the frame size), one read of the newest frame.
    assert len(read_bytes) == 2
    assert sum(read_bytes) <= pff.MAX_HEADER_BYTES + 3 + len(one) < path.stat().st_size // 50
    read_bytes.clear()
    assert scanner.scan() == []
    assert read_bytes == []
    append(path, IMG16, ["y"])
    assert [f.frame_number for f in scanner.scan()] == [3000]
    assert read_bytes == [len(one)]


# --- inotify: only what changed is looked at (R-SCAN-3) --------------------------------------


@pytest.fixture
def no_periodic_full_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scanner_module, "RUN_DIR_RECHECK_S", 3600.0)


def settle(*directories: Path) -> None:
    """Date directories' mtimes back, as if nothing had changed in them for a while."""
    past = time.time() - 60
    for directory in directories:
        os.utime(directory, (past, past))


def test_listings_are_processed_again_only_when_they_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_periodic_full_scan: None
) -> None:
    """R-SCAN-3: what a scan derives from a directory listing (the modules, a module's run
    directory, a run's newest file per product) is derived again only after that listing
    changed, with inotify and when polling."""
    calls = {"module_dir_id": 0, "newest_run_dir": 0, "parse": 0}

    def counting(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def count(*args: Any) -> Any:
            calls[name] += 1
            return function(*args)

        return count

    monkeypatch.setattr(pff, "module_dir_id", counting("module_dir_id", pff.module_dir_id))
    monkeypatch.setattr(
        scanner_module,
        "_newest_run_dir",
        counting("newest_run_dir", scanner_module._newest_run_dir),
    )
    monkeypatch.setattr(RunScanner, "_parse", counting("parse", RunScanner._parse))
    runs = [run_dir(tmp_path, module) for module in (1, 2)]
    for run in runs:
        append(run / file_name(IMG16, 1, 0), IMG16, ["a"])
    settle(tmp_path, *runs, *(run.parent for run in runs))
    scanner = RunScanner(tmp_path, (), [IMG16])
    assert len(scanner.scan()) == 2
    first = dict(calls)
    assert all(first.values()), first
    for _ in range(3):
        assert scanner.scan() == []
    assert calls == first
    # A new file in one run: only that run's listing is processed again.
    append(runs[0] / file_name(IMG16, 1, 1), IMG16, ["b"])
    settle(runs[0])
    assert [f.file for f in scanner.scan()] == [file_name(IMG16, 1, 1)]
    assert calls["parse"] > first["parse"]
    assert calls["module_dir_id"] == first["module_dir_id"]
    assert calls["newest_run_dir"] == first["newest_run_dir"]


def test_quiet_until_something_changes(
    tmp_path: Path, scanner_mode: str, no_periodic_full_scan: None
) -> None:
    """R-SCAN-2, R-SCAN-3: with inotify a look costs nothing until a file or directory changes."""
    path = run_dir(tmp_path, 1) / file_name(IMG16, 1, 0)
    append(path, IMG16, ["a0"])
    scanner = RunScanner(tmp_path, (), [IMG16])
    assert len(scanner.scan()) == 1
    if scanner_mode == "polling":
        assert not scanner.quiet()  # it cannot tell: every look is a scan
        return
    assert scanner.quiet()
    append(path, IMG16, ["a1"])
    assert not scanner.quiet()
    assert [f.header["tag"] for f in scanner.scan()] == ["a1"]
    assert scanner.quiet()
    run_dir(tmp_path, 2)  # a new module directory
    assert not scanner.quiet()
    assert scanner.scan() == []
    assert scanner.quiet()
    append(run_dir(tmp_path, 2) / file_name(IMG16, 2, 0), IMG16, ["b0"])
    assert not scanner.quiet()
    assert [(f.module_id, f.header["tag"]) for f in scanner.scan()] == [(2, "b0")]
    scanner.close()
    assert not scanner.watching and not scanner.quiet()
    append(path, IMG16, ["a2"])
    assert [f.header["tag"] for f in scanner.scan()] == ["a2"]  # polling from now on


def test_scan_stats_only_changed_files(
    tmp_path: Path, scanner_mode: str, monkeypatch: pytest.MonkeyPatch, no_periodic_full_scan: None
) -> None:
    """R-SCAN-3: with inotify, one stat per changed file and none for the other 39 files."""
    paths = []
    for module in range(1, 21):
        for product in (IMG16, PH256):
            paths.append(run_dir(tmp_path, module) / file_name(product, module, 0))
            append(paths[-1], product, ["first"])
    scanner = RunScanner(tmp_path, (), [IMG16, PH256])
    assert len(scanner.scan()) == 40
    stats: list[Path] = []
    real_stat = Path.stat

    def counting_stat(self: Path, *args: Any, **kwargs: Any) -> os.stat_result:
        stats.append(self)
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", counting_stat)
    append(paths[7], PH256, ["second"])
    [got] = scanner.scan()
    assert got.header["tag"] == "second"
    if scanner_mode == "inotify":
        assert stats == [paths[7]]
    else:
        assert len(stats) == 40


def test_lost_events_mean_a_full_look(tmp_path: Path, no_periodic_full_scan: None) -> None:
    """R-SCAN-4: when the kernel's event queue overflows, every file is looked at again."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}: too many writes to overflow it")
    run = run_dir(tmp_path, 1)
    path = run / file_name(IMG16, 1, 0)
    append(path, IMG16, ["a0"])
    scanner = RunScanner(tmp_path, (), [IMG16])
    assert len(scanner.scan()) == 1
    # The kernel merges an event with an identical one just before it: alternate two files.
    with open(run / "a.txt", "wb", buffering=0) as a, open(run / "b.txt", "wb", buffering=0) as b:
        for _ in range(limit // 2 + 10):
            a.write(b"x")
            b.write(b"x")
    append(path, IMG16, ["a1"])  # its event is lost
    assert [f.header["tag"] for f in scanner.scan()] == ["a1"]


# --- the DAQ-active check (R-INIT-4) ----------------------------------------------------------


def test_daq_active_marker_and_recent_write(tmp_path: Path) -> None:
    """R-INIT-4: a module_<id>.daq-active marker, or a data file written in the last 10 s."""
    run = run_dir(tmp_path, 7)
    data_file = run / file_name(IMG16, 7, 0)
    append(data_file, IMG16, ["a"])
    written = data_file.stat().st_mtime
    assert daq_is_active(tmp_path, ("recent_write",), now=written + 5)
    assert not daq_is_active(tmp_path, ("recent_write",), now=written + 60)
    assert not daq_is_active(tmp_path, ("marker",))
    (run / "module_7.daq-active").touch()
    assert daq_is_active(tmp_path, ("marker",))
    assert not daq_is_active(tmp_path / "nowhere", ("marker", "recent_write"))
    assert daq_is_active(tmp_path / "nowhere", ())


def test_daq_active_hashpipe_process(tmp_path: Path) -> None:
    """R-INIT-4: a process called hashpipe counts as an active DAQ."""
    if daq_is_active(tmp_path, ("process",)):
        pytest.skip("a hashpipe process already runs on this machine")
    sleep = shutil.which("sleep")
    assert sleep is not None
    fake = tmp_path / "hashpipe"
    shutil.copy(sleep, fake)
    process = subprocess.Popen([str(fake), "30"])
    try:
        deadline = time.monotonic() + 5
        while not daq_is_active(tmp_path, ("process",)):
            assert time.monotonic() < deadline, "hashpipe process not seen"
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait()
    assert not daq_is_active(tmp_path, ("process",))


# --- run_scanner next to a concurrent writer, on asyncio and trio -----------------------------


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


class CountingScanner(RunScanner):
    """A RunScanner that counts its scans, so that tests can wait for the next one."""

    scans = 0

    def scan(self) -> list[PanoFrame]:
        frames = super().scan()
        self.scans += 1
        return frames

    def quiet(self) -> bool:
        # A look that inotify answered counts as a scan that found nothing.
        quiet = super().quiet()
        self.scans += quiet
        return quiet


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        # Polls conditions the code under test gives no event for.
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.002)


async def next_scans(scanner: CountingScanner, n: int = 2) -> None:
    """Wait until `n` whole scans have happened after this point."""
    target = scanner.scans + n
    await wait_for(lambda: scanner.scans >= target)


class Writer:
    """Writes frames the way Hashpipe does, in odd-sized chunks, and remembers what it wrote."""

    def __init__(self, data_dir: Path, module: int, product: DataProduct) -> None:
        self.data_dir, self.module, self.product = data_dir, module, product
        self.written: dict[str, tuple[str, int]] = {}  # tag -> (file, index)
        self.last_tag = ""
        self.counter = 0

    def path(self, seqno: int) -> Path:
        return run_dir(self.data_dir, self.module) / file_name(self.product, self.module, seqno)

    async def write(self, seqno: int, n: int) -> None:
        path = self.path(seqno)
        chunks = (7, 333, 1, 2048, 90)
        for _ in range(n):
            size = path.stat().st_size if path.exists() else 0
            frame_size = len(frame(self.product, "t")[0])
            index = size // frame_size
            self.counter += 1
            tag = f"{self.module}-{seqno}-{index}-{self.counter}"
            data = frame(self.product, tag)[0]
            at = 0
            with open(path, "ab", buffering=0) as f:
                for chunk in chunks:
                    f.write(data[at : at + chunk])
                    at += chunk
                    await anyio.sleep(0.0005)
                f.write(data[at:])
            self.written[tag] = (path.name, index)
            self.last_tag = tag


@pytest.mark.anyio
async def test_run_scanner_follows_a_live_run(tmp_path: Path) -> None:
    """R-SCAN-1..4: growth in odd chunks, rollover, truncation, deletion, data_dir coming back.

    Every published frame equals what was written at its (file, index); no frame twice; the
    newest frame always arrives.
    """
    data_dir = tmp_path / "data"
    scanner = CountingScanner(data_dir, (), [IMG16, PH256])
    published: list[PanoFrame] = []
    truncations: list[int] = []  # len(published) when a file was truncated
    writers = [Writer(data_dir, 1, IMG16), Writer(data_dir, 2, PH256)]

    def delivered(writer: Writer) -> Callable[[], bool]:
        return lambda: any(f.header["tag"] == writer.last_tag for f in published)

    async with anyio.create_task_group() as tg:
        await tg.start(run_scanner, scanner, 0.003, published.append)
        for writer in writers:
            await writer.write(0, 15)  # growth
            await wait_for(delivered(writer))
            await writer.write(1, 4)  # rollover
            await wait_for(delivered(writer))
            with open(writer.path(1), "r+b") as f:  # truncation, then growth again
                truncations.append(len(published))
                f.truncate(f.seek(0, os.SEEK_END) // 2 + 3)
            await next_scans(scanner)
            with open(writer.path(1), "r+b") as f:
                f.truncate(0)
            await next_scans(scanner)
            await writer.write(1, 3)
            await wait_for(delivered(writer))
            writer.path(1).unlink()  # deletion
            await writer.write(2, 2)
            await wait_for(delivered(writer))
        shutil.rmtree(data_dir)  # the data_dir vanishes ...
        await next_scans(scanner)
        for writer in writers:  # ... and comes back with the same names
            await writer.write(0, 2)
            await wait_for(delivered(writer))
        tg.cancel_scope.cancel()

    # A frame is published twice only when its file was truncated in between: a file that
    # shrinks is read afresh.
    first_seen: dict[str, int] = {}
    for position, got in enumerate(published):
        tag = got.header["tag"]
        if tag in first_seen:
            assert any(first_seen[tag] < t <= position for t in truncations), tag
        first_seen[tag] = position
    by_module = {w.module: w for w in writers}
    for got in published:
        writer = by_module[got.module_id]
        assert got.product is writer.product
        file, index = writer.written[got.header["tag"]]
        assert_frame(got, writer.product, got.header["tag"], file, index)
    assert len(published) >= 2 * 5


@pytest.mark.anyio
async def test_run_scanner_survives_scan_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """R-SCAN-4: the scanner task never dies; an unexpected error is logged and retried."""

    class Flaky(RunScanner):
        calls = 0

        def scan(self) -> list[PanoFrame]:
            self.calls += 1
            if self.calls == 2:
                raise OSError("disk on fire")
            return super().scan()

    path = run_dir(tmp_path, 1) / file_name(IMG16, 1, 0)
    scanner = Flaky(tmp_path, (), [IMG16])
    published: list[PanoFrame] = []
    with caplog.at_level(logging.ERROR, "panoseti_daq.server.scanner"):
        async with anyio.create_task_group() as tg:
            await tg.start(run_scanner, scanner, 0.002, published.append)
            await wait_for(lambda: scanner.calls >= 3)
            append(path, IMG16, ["late"])
            await wait_for(lambda: bool(published))
            tg.cancel_scope.cancel()
    assert [f.header["tag"] for f in published] == ["late"]
    assert "disk on fire" in caplog.text


# --- links out of the allowed roots ------------------------------------------------------------


def test_module_links_out_of_the_allowed_roots_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """R-INIT-12: a `module_<id>` link inside the allowed root that points outside it, and a
    run directory link that does, are skipped with one log line each; a link that stays inside
    is followed."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    data_dir = root / "data"
    append(run_dir(data_dir, 1) / file_name(PH256, 1, 0), PH256, ["in"])
    append(run_dir(outside, 2) / file_name(PH256, 2, 0), PH256, ["secret"])
    (data_dir / "module_2").symlink_to(outside / "module_2")
    append(run_dir(root / "elsewhere", 3) / file_name(PH256, 3, 0), PH256, ["linked"])
    (data_dir / "module_3").symlink_to(root / "elsewhere" / "module_3")
    module_4 = data_dir / "module_4"
    module_4.mkdir()
    append(run_dir(outside, 4) / file_name(PH256, 4, 0), PH256, ["secret run"])
    (module_4 / RUN).symlink_to(outside / "module_4" / RUN)
    scanner = RunScanner(data_dir, (), [PH256], allowed_roots=[root])
    with caplog.at_level(logging.WARNING, logger="panoseti_daq.server.scanner"):
        frames = scanner.scan() + scanner.scan()
        scanner.close()
    assert sorted(f.module_id for f in frames) == [1, 3]
    skipped = [r.getMessage() for r in caplog.records if "outside the allowed" in r.getMessage()]
    assert len(skipped) == 2, skipped
    assert any(str(data_dir / "module_2") in line for line in skipped)
    assert any(str(module_4 / RUN) in line for line in skipped)
    # Without roots (a scanner of its own), every link is followed.
    everything = RunScanner(data_dir, (), [PH256])
    assert sorted(f.module_id for f in everything.scan()) == [1, 2, 3, 4]
    everything.close()


def test_a_vanishing_data_dir_is_logged_once_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """R-SRC-1, R-SCAN-4: a data_dir that disappears is looked for at every scan and logged
    once; when it comes back, its frames are published again and that is logged once too."""
    data_dir = tmp_path / "data"
    path = run_dir(data_dir, 1) / file_name(PH256, 1, 0)
    append(path, PH256, ["a0"])
    scanner = RunScanner(data_dir, (), [PH256])
    with caplog.at_level(logging.INFO, logger="panoseti_daq.server.scanner"):
        assert len(scanner.scan()) == 1
        shutil.rmtree(data_dir)
        for _ in range(3):
            assert scanner.scan() == []
        path = run_dir(data_dir, 1) / file_name(PH256, 1, 1)
        append(path, PH256, ["b0"])
        deadline = time.monotonic() + 5
        frames: list[PanoFrame] = []
        while not frames and time.monotonic() < deadline:
            frames = scanner.scan()
            time.sleep(0.01)
        scanner.close()
    assert [f.file for f in frames] == [path.name]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("has vanished" in m for m in messages) == 1, messages
    assert sum("is back" in m for m in messages) == 1, messages
