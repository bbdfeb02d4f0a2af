"""The simulation's frame sources (spec §9: R-SIM-2..5) and the synthetic movie data.

The filesystem simulation is read back with the real scanner; every frame it delivers must equal
the source frame at that position, with only the module id changed (R-SIM-4).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterable, Callable
from pathlib import Path

import anyio
import numpy as np
import pytest

from panoseti_daq import pff
from panoseti_daq._bundled import NGC7331_MODULE_ID
from panoseti_daq.config import SimulateConfig
from panoseti_daq.frames import PanoFrame
from panoseti_daq.products import PRODUCTS
from panoseti_daq.server.scanner import RunScanner, daq_is_active
from panoseti_daq.server.simulation import (
    KEPT_FILES,
    SIM_RUN_DIR,
    run_filesystem_simulation,
    run_rpc_simulation,
    source_frames,
)
from panoseti_daq.synthetic import ph1024_from_ph256, synthetic_movie_frames
from panoseti_daq.timestamps import wr_to_unix_ns


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


def same_frame(got: PanoFrame, source: PanoFrame) -> bool:
    return (
        got.product is source.product
        and dict(got.header) == dict(source.header)
        and np.array_equal(got.pixels, source.pixels)
        and got.pixels.dtype == source.pixels.dtype
    )


async def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    with anyio.fail_after(timeout_s):
        # Polls conditions the code under test gives no event for.
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.005)


# --- synthetic movie data -------------------------------------------------------------------


def test_synthetic_movie_is_deterministic_and_sky_like() -> None:
    """Synthetic img16: seeded, pedestal + sky + noise, hot pixels, a moving point source."""
    frames = synthetic_movie_frames("img16", count=120, module_id=3)
    again = synthetic_movie_frames("img16", count=120, module_id=3)
    assert all(same_frame(a, b) for a, b in zip(frames, again, strict=True))
    other = synthetic_movie_frames("img16", count=3, seed=7)
    assert not np.array_equal(other[1].pixels, frames[1].pixels)
    stack = np.stack([f.pixels.astype(np.int64) for f in frames])
    assert stack.dtype == np.int64 and frames[0].pixels.dtype == np.uint16
    assert 150 < np.median(stack) < 300  # pedestal plus sky background
    assert np.std(stack[:, 0, 0]) > 2  # Poisson noise from frame to frame
    hot = np.argwhere(np.median(stack, axis=0) > 2000)
    assert 1 <= len(hot) <= 5  # a few hot pixels, always hot
    # The point source: the brightest non-hot pixel moves between frames while it is visible.
    masked = stack.copy()
    masked[:, hot[:, 0], hot[:, 1]] = 0
    peaks = [np.unravel_index(np.argmax(m), m.shape) for m in masked[:40]]
    assert len(set(peaks)) > 10
    assert masked[:40].max() > 800 and masked[60:100].max() < 600
    assert {f.module_id for f in frames} == {3}
    assert [f.frame_number for f in frames[:3]] == [0, 1, 2]
    name = pff.DataFileName.parse(frames[0].file)
    assert name is not None and (name.dp, name.module, name.bpp) == ("img16", 3, 2)
    assert ("synthetic", "sky") in name.extra


def test_synthetic_headers_have_valid_white_rabbit_time() -> None:
    """R-TIME-1: d == 0 for every quabo; pkt_num counts; time advances by the frame interval."""
    frames = synthetic_movie_frames("img8", count=50, frame_interval_ns=33_000_000)
    assert frames[0].pixels.dtype == np.uint8
    for index, frame in enumerate(frames):
        assert sorted(frame.header) == ["quabo_0", "quabo_1", "quabo_2", "quabo_3"]
        for quabo in range(4):
            q = frame.header[f"quabo_{quabo}"]
            assert (q["tv_sec"] - q["pkt_tai"] + 37) % 1024 == 0
            assert 0 <= q["pkt_nsec"] < 10**9 and 0 <= q["tv_usec"] < 10**6
            assert wr_to_unix_ns(q["pkt_tai"], q["pkt_nsec"], q["tv_sec"]) is not None
            if index:
                previous = frames[index - 1].header[f"quabo_{quabo}"]
                assert q["pkt_num"] == (previous["pkt_num"] + 1) % 65536
        assert frame.time.wr_valid
        if index:
            step = frame.time.wr_unix_ns - frames[index - 1].time.wr_unix_ns
            assert abs(step - 33_000_000) <= 16
    with pytest.raises(ValueError):
        synthetic_movie_frames("ph256")


def test_ph1024_is_four_ph256_quabos() -> None:
    """ph1024 from ph256: quabo q's image is quadrant q, its header quabo_q."""
    _, ph256 = source_frames(SimulateConfig())
    ph1024 = ph1024_from_ph256(ph256)
    by_quabo = {q: [f for f in ph256 if f.header["quabo_num"] == q] for q in range(4)}
    assert len(ph1024) == min(len(v) for v in by_quabo.values()) == 61
    frame = ph1024[5]
    assert frame.product is PRODUCTS["ph1024"] and frame.pixels.dtype == np.int16
    assert pff.DataFileName.parse(frame.file).dp == "ph1024"  # type: ignore[union-attr]
    quadrants = [frame.pixels[:16, :16], frame.pixels[:16, 16:]]
    quadrants += [frame.pixels[16:, :16], frame.pixels[16:, 16:]]
    for quabo, quadrant in enumerate(quadrants):
        np.testing.assert_array_equal(quadrant, by_quabo[quabo][5].pixels)
        assert frame.header[f"quabo_{quabo}"] == dict(by_quabo[quabo][5].header)


# --- sources --------------------------------------------------------------------------------


def test_default_sources_are_bundled_ph_and_synthetic_movie() -> None:
    """R-SIM-1: without source_dir, the real NGC 7331 ph256 data and synthetic movie frames."""
    movie, ph = source_frames(SimulateConfig(movie_type="img8", ph_type="ph256"))
    assert len(ph) == 503 and {f.module_id for f in ph} == {NGC7331_MODULE_ID}
    assert all(f.product is PRODUCTS["ph256"] for f in ph)
    assert movie and all(f.product is PRODUCTS["img8"] for f in movie)
    _, ph1024 = source_frames(SimulateConfig(ph_type="ph1024"))
    assert ph1024 and all(f.product is PRODUCTS["ph1024"] for f in ph1024)


def test_source_dir_prefers_the_real_module(tmp_path: Path) -> None:
    """R-SIM-1: a user's run directory is replayed, the real module's files in seqno order."""
    movie = synthetic_movie_frames("img16", count=6, seed=1)
    for module, frames in ((1, movie[:2]), (3, movie[2:])):
        for seqno, frame in enumerate(frames):
            name = pff.DataFileName("img16", module, seqno, 2, "2024-07-25T04_34_46Z")
            (tmp_path / name.format()).write_bytes(
                pff.encode_frame(frame.header, frame.pixels, frame.product)
            )
    (tmp_path / "hk.pff").write_bytes(b"{}")
    got_movie, got_ph = source_frames(SimulateConfig(source_dir=tmp_path, real_module_id=3))
    assert len(got_movie) == 4
    assert all(same_frame(g, s) for g, s in zip(got_movie, movie[2:], strict=True))
    assert {f.module_id for f in got_movie} == {3}
    assert len(got_ph) == 503  # no ph256 files there: the bundled data


# --- filesystem simulation -----------------------------------------------------------------


def _expected(sources: list[PanoFrame], frames_per_pff: int, frame: PanoFrame) -> PanoFrame:
    seqno = pff.DataFileName.parse(frame.file).seqno  # type: ignore[union-attr]
    return sources[(seqno * frames_per_pff + frame.frame_number) % len(sources)]


@pytest.mark.anyio
async def test_filesystem_simulation_is_scanned_like_a_real_run(tmp_path: Path) -> None:
    """R-SIM-2, R-SIM-4, R-SIM-5: the scanner finds the simulated run; frames equal the source.

    Two modules, rollover every 7 frames, the 503-frame ph256 source looping; the run is gone
    after cancellation.
    """
    cfg = SimulateConfig(
        sim_module_ids=(224, 225),
        data_dir=tmp_path / "sim",
        frames_per_pff=7,
        frame_rate_hz=400,
    )
    movie, ph = source_frames(cfg)
    scanner = RunScanner(cfg.data_dir, (), [PRODUCTS["img16"], PRODUCTS["ph256"]])
    seen: list[PanoFrame] = []
    async with anyio.create_task_group() as tg:
        await tg.start(run_filesystem_simulation, cfg)
        for module in (224, 225):
            run = cfg.data_dir / f"module_{module}" / SIM_RUN_DIR
            assert (run / f"module_{module}.daq-active").is_file()
            assert len(list(run.glob("*.pff"))) == 2
        assert daq_is_active(cfg.data_dir, ("marker",))
        assert daq_is_active(cfg.data_dir, ("recent_write",))

        def enough() -> bool:
            seen.extend(scanner.scan())
            seqnos = {pff.DataFileName.parse(f.file).seqno for f in seen}  # type: ignore[union-attr]
            return len(seqnos) >= 4

        await wait_for(enough)
        # Old files are deleted as the run rolls over; the newest ones are kept.
        for module in (224, 225):
            run = cfg.data_dir / f"module_{module}" / SIM_RUN_DIR
            assert len(list(run.glob("*.dp_img16.*"))) <= KEPT_FILES
        tg.cancel_scope.cancel()

    assert not cfg.data_dir.exists()
    assert {f.module_id for f in seen} == {224, 225}
    assert {f.product.name for f in seen} == {"img16", "ph256"}
    for frame in seen:
        name = pff.DataFileName.parse(frame.file)
        assert name is not None
        assert (name.dp, name.module, name.bpp) == (
            frame.product.name,
            frame.module_id,
            frame.product.bytes_per_pixel,
        )
        sources = movie if frame.product.is_movie else ph
        assert same_frame(frame, _expected(sources, cfg.frames_per_pff, frame)), frame


@pytest.mark.anyio
async def test_filesystem_simulation_frame_limit_and_cleanup(tmp_path: Path) -> None:
    """R-SIM-2: frame_limit stops the writing, the run stays until cancelled, then only what
    the simulation created is removed."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "keep.txt").write_text("not the simulation's")
    cfg = SimulateConfig(
        sim_module_ids=(9,), data_dir=data_dir, frames_per_pff=5, frame_rate_hz=0, frame_limit=12
    )
    run = data_dir / "module_9" / SIM_RUN_DIR
    movie, _ = source_frames(cfg)
    frame_size = len(pff.encode_frame(movie[0].header, movie[0].pixels, movie[0].product))

    def movie_frames() -> int:
        return sum(p.stat().st_size for p in run.glob("*.dp_img16.*")) // frame_size

    async with anyio.create_task_group() as tg:
        await tg.start(run_filesystem_simulation, cfg)
        await wait_for(lambda: movie_frames() == 12)
        names = sorted(p.name for p in run.glob("*.dp_img16.*"))
        assert [pff.DataFileName.parse(n).seqno for n in names] == [0, 1, 2]  # type: ignore[union-attr]
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert movie_frames() == 12
        tg.cancel_scope.cancel()
    assert sorted(p.name for p in data_dir.iterdir()) == ["keep.txt"]


@pytest.mark.anyio
async def test_filesystem_simulation_replaces_a_stale_run(tmp_path: Path) -> None:
    """R-SIM-2: a run left by a killed simulation is replaced, then removed."""
    stale = tmp_path / "module_224" / SIM_RUN_DIR
    stale.mkdir(parents=True)
    (stale / "start_x.dp_img16.bpp_2.module_224.seqno_40.pff").write_bytes(b"old")
    cfg = SimulateConfig(data_dir=tmp_path, frame_rate_hz=100)
    async with anyio.create_task_group() as tg:
        await tg.start(run_filesystem_simulation, cfg)
        assert not (stale / "start_x.dp_img16.bpp_2.module_224.seqno_40.pff").exists()
        tg.cancel_scope.cancel()
    assert not (tmp_path / "module_224").exists()


# --- rpc simulation -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_rpc_simulation_hands_remapped_frames_to_upload() -> None:
    """R-SIM-3, R-SIM-4, R-SIM-5: frames in tick order, per module, source content, looping."""
    cfg = SimulateConfig(
        simulation_mode="rpc", sim_module_ids=(1, 2), frame_rate_hz=0, frame_limit=600
    )
    movie, ph = source_frames(cfg)
    received: list[PanoFrame] = []

    async def upload(frames: AsyncIterable[PanoFrame]) -> None:
        async for frame in frames:
            received.append(frame)

    await run_rpc_simulation(cfg, upload)
    assert len(received) == 600 * 2 * 2
    for tick in (0, 1, 299, 300, 503, 599):
        at = received[tick * 4 : tick * 4 + 4]
        assert [f.module_id for f in at] == [1, 1, 2, 2]
        for frame in at:
            sources = movie if frame.product.is_movie else ph
            source = sources[tick % len(sources)]
            assert same_frame(frame, source)
            assert frame.frame_number == source.frame_number
            assert pff.DataFileName.parse(frame.file).module == frame.module_id  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_rpc_simulation_is_paced() -> None:
    """R-SIM-3: cfg.frame_rate_hz ticks per second."""
    cfg = SimulateConfig(simulation_mode="rpc", frame_rate_hz=100, frame_limit=11)
    count = 0

    async def upload(frames: AsyncIterable[PanoFrame]) -> None:
        nonlocal count
        async for _ in frames:
            count += 1

    start = anyio.current_time()
    await run_rpc_simulation(cfg, upload)
    assert count == 22
    assert anyio.current_time() - start >= 0.1 - 0.005


@pytest.mark.anyio
async def test_rpc_simulation_retries_a_failed_upload(caplog: pytest.LogCaptureFixture) -> None:
    """R-SIM-3: an upload that fails is logged and started again from the first frame."""
    cfg = SimulateConfig(simulation_mode="rpc", frame_rate_hz=0, frame_limit=3)
    attempts: list[list[PanoFrame]] = []

    async def upload(frames: AsyncIterable[PanoFrame]) -> None:
        attempts.append([])
        async for frame in frames:
            attempts[-1].append(frame)
            if len(attempts) == 1 and len(attempts[-1]) == 2:
                raise ConnectionError("server went away")

    await run_rpc_simulation(cfg, upload, retry_delay_s=0.01)
    assert [len(a) for a in attempts] == [2, 6]
    assert same_frame(attempts[1][0], attempts[0][0])
    assert "server went away" in caplog.text


@pytest.mark.anyio
async def test_filesystem_simulation_leaves_a_live_servers_run_alone(tmp_path: Path) -> None:
    """R-SIM-7: a run directory another live process's simulation made is not removed: the
    simulation refuses to start, naming the path and the process; one whose process has ended
    is replaced."""
    from panoseti_daq.errors import SourceError
    from panoseti_daq.server.simulation import OWNER_FILE

    other = tmp_path / "module_224" / SIM_RUN_DIR
    other.mkdir(parents=True)
    data = other / "start_x.dp_img16.bpp_2.module_224.seqno_0.pff"
    data.write_bytes(b"theirs")
    (other / OWNER_FILE).write_text(f"{os.getppid()} abc\n")
    cfg = SimulateConfig(data_dir=tmp_path, frame_rate_hz=100)
    with pytest.raises(Exception) as group:
        async with anyio.create_task_group() as tg:
            await tg.start(run_filesystem_simulation, cfg)
    (cause,) = group.value.exceptions  # type: ignore[attr-defined]
    assert isinstance(cause, SourceError)
    assert f"{other} is in use by the simulation of process {os.getppid()}" in str(cause)
    assert data.read_bytes() == b"theirs"
    # Its process has ended: a leftover, replaced, and removed at the end.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (other / OWNER_FILE).write_text(f"{dead.pid} abc\n")
    async with anyio.create_task_group() as tg:
        await tg.start(run_filesystem_simulation, cfg)
        assert not data.exists()
        tg.cancel_scope.cancel()
    assert not (tmp_path / "module_224").exists()


@pytest.mark.anyio
async def test_filesystem_simulation_stops_when_its_run_vanishes(tmp_path: Path) -> None:
    """R-SIM-7: a run removed by someone else ends the simulation with a SourceError naming the
    path, before another frame goes into an unlinked file; what it did not make stays."""
    from panoseti_daq.errors import SourceError

    cfg = SimulateConfig(data_dir=tmp_path, frame_rate_hz=200)
    run = tmp_path / "module_224" / SIM_RUN_DIR
    with pytest.raises(Exception) as info:
        async with anyio.create_task_group() as tg:
            await tg.start(run_filesystem_simulation, cfg)
            files = sorted(run.glob("*.pff"))
            handles = [open(f, "rb") for f in files]  # noqa: SIM115
            shutil.rmtree(run)
            # The writer sleeps between frames (one event loop): these are the sizes at removal.
            sizes = [os.fstat(h.fileno()).st_size for h in handles]
            (tmp_path / "module_224" / "theirs").mkdir()
            await anyio.sleep_forever()
    (cause,) = info.value.exceptions  # type: ignore[attr-defined]
    assert isinstance(cause, SourceError)
    assert str(run) in str(cause) and "removed" in str(cause)
    # Not a byte more went into the unlinked files.
    assert sizes and [os.fstat(h.fileno()).st_size for h in handles] == sizes
    for h in handles:
        h.close()
    assert (tmp_path / "module_224" / "theirs").is_dir()


@pytest.mark.anyio
async def test_filesystem_simulation_stops_when_its_run_cannot_be_written(tmp_path: Path) -> None:
    """R-SIM-7: a run that cannot be written (here its directory replaced by a file, as a full
    or read-only disk would refuse it) ends the simulation with a SourceError naming the file
    and the operating system's reason."""
    from panoseti_daq.errors import SourceError

    cfg = SimulateConfig(data_dir=tmp_path, frame_rate_hz=200, frames_per_pff=1)
    run = tmp_path / "module_224" / SIM_RUN_DIR
    with pytest.raises(Exception) as info:  # a task group's exception group
        async with anyio.create_task_group() as tg:
            await tg.start(run_filesystem_simulation, cfg)
            shutil.rmtree(run)
            run.write_text("not a directory")
            await anyio.sleep_forever()
    (cause,) = info.value.exceptions  # type: ignore[attr-defined]
    assert isinstance(cause, SourceError)
    assert f"cannot write the simulated run file {run}/" in str(cause)
    assert "Not a directory" in str(cause)
    assert run.read_text() == "not a directory"  # not ours: left alone
