"""The inotify reader the scanner relies on (R-SCAN-3): its event parser and the real kernel."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from panoseti_daq.server import inotify
from panoseti_daq.server.inotify import Changes, Inotify

WATCHED = {1: "/data/module_1", 2: "/data/module_1/obs_A.pffd", 3: "/data"}
MASKS = [
    inotify.IN_MODIFY,
    inotify.IN_CLOSE_WRITE,
    inotify.IN_ATTRIB,
    inotify.IN_CREATE,
    inotify.IN_DELETE,
    inotify.IN_MOVED_FROM,
    inotify.IN_MOVED_TO,
    inotify.IN_DELETE_SELF,
    inotify.IN_IGNORED,
    inotify.IN_Q_OVERFLOW,
]
NAMES = st.text(
    st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), max_size=40
)


def packed(wd: int, mask: int, name: str) -> bytes:
    """One `struct inotify_event` as the kernel writes it: the name NUL-padded to 16 bytes."""
    raw = name.encode()
    if raw:
        raw += b"\0" * (16 - len(raw) % 16)
    return struct.pack("iIII", wd, mask, 0, len(raw)) + raw


def parser() -> Inotify:
    reader = Inotify.__new__(Inotify)
    reader._fd = -1
    reader._paths = dict(WATCHED)
    reader._wds = {path: wd for wd, path in WATCHED.items()}
    return reader


@given(st.lists(st.tuples(st.sampled_from([1, 2, 3, 4]), st.sampled_from(MASKS), NAMES)))
def test_parser_matches_a_model(events: list[tuple[int, int, str]]) -> None:
    """Each event in a read is attributed to the directory watched at that moment."""
    directories: set[str] = set()
    files: set[str] = set()
    overflow = False
    watched = dict(WATCHED)
    for wd, mask, name in events:
        if mask == inotify.IN_Q_OVERFLOW:
            overflow = True
        elif wd not in watched:
            continue
        elif name:
            files.add(f"{watched[wd]}/{name}")
            if mask in (
                inotify.IN_CREATE,
                inotify.IN_DELETE,
                inotify.IN_MOVED_FROM,
                inotify.IN_MOVED_TO,
            ):
                directories.add(watched[wd])
        elif mask in (inotify.IN_DELETE_SELF, inotify.IN_IGNORED):
            directories.add(watched.pop(wd))
    reader = parser()
    changes = Changes()
    reader._parse(b"".join(packed(*event) for event in events), changes)
    assert changes == Changes(directories, files, overflow)
    assert bool(changes) == bool(directories or files or overflow)
    assert set(reader._paths.items()) == set(watched.items())
    assert all(reader._wds[path] == wd for wd, path in watched.items())


def test_real_kernel_events(tmp_path: Path) -> None:
    """Watch, write, create, rename, delete: what the scanner needs to hear about."""
    reader = Inotify.open()
    assert reader is not None
    try:
        run = tmp_path / "run"
        run.mkdir()
        assert reader.watch(str(run)) and reader.watching(str(run))
        assert not reader.read()
        data = run / "a.pff"
        with open(data, "wb", buffering=0) as f:
            f.write(b"x")
        changes = reader.read()
        assert changes.files == {str(data)} and changes.directories == {str(run)}
        with open(data, "ab", buffering=0) as f:
            f.write(b"y")
        assert reader.read() == Changes(set(), {str(data)}, False)  # growth: not a listing change
        os.rename(data, run / "b.pff")
        changes = reader.read()
        assert changes.directories == {str(run)}
        assert changes.files == {str(data), str(run / "b.pff")}
        assert not reader.watch(str(tmp_path / "missing"))
        assert not reader.watch(str(run / "b.pff"))  # not a directory
        shutil.rmtree(run)
        changes = reader.read()
        assert str(run) in changes.directories
        assert not reader.watching(str(run))
        # Watching again after the directory is re-created works.
        run.mkdir()
        assert reader.watch(str(run))
        (run / "c.pff").touch()
        assert reader.read().files == {str(run / "c.pff")}
        reader.unwatch(str(run))
        (run / "d.pff").touch()
        assert not reader.read()
    finally:
        reader.close()


def test_unavailable_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where inotify does not exist, open() says so and the scanner polls."""
    monkeypatch.setattr(inotify.sys, "platform", "darwin")
    assert Inotify.open() is None
