"""Record received frames as PFF files in Hashpipe's layout, readable by panoseti_daq.pff.

`PFFRecorder(directory)` writes each frame to
`directory/module_<id>/obs_<name>.start_<time>Z.runtype_<type>.pffd/start_<time>Z.dp_<product>.
bpp_<n>.module_<id>.seqno_<k>.pff`, one open file per (module, product), starting the next seqno
every `frames_per_file` frames. Every frame of a file has one size (R-PFF-2): headers are padded
to a width fixed when the file is opened.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from .. import pff
from ..errors import PanosetiDaqError
from ..frames import PanoFrame, as_frame

__all__ = ["PFFRecorder", "RecordError", "hashpipe_header"]

log = logging.getLogger(__name__)

# Room for headers to grow within one file (e.g. counters gaining digits).
HEADER_SLACK = 64


def hashpipe_header(value: Any) -> Any:
    """The header with whole numbers as JSON integers, as Hashpipe writes them.

    Headers that crossed the wire hold doubles (google.protobuf.Struct); a PFF file of ours
    should look like the observatory's (`"pkt_num": 737`, not `737.0`).
    """
    if isinstance(value, Mapping):
        return {str(k): hashpipe_header(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [hashpipe_header(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class RecordError(PanosetiDaqError, OSError):
    """A frame could not be written (disk full, permission): names the file, the error and
    the frames recorded; the file holds whole frames only (R-REC-1)."""

    def __init__(self, path: Path, error: OSError, frames_recorded: int) -> None:
        self.path = path
        self.error = error
        self.frames_recorded = frames_recorded
        reason = error.strerror or str(error)
        super().__init__(f"cannot record to {path}: {reason}; {frames_recorded} frames recorded")


class _File:
    def __init__(self, path: Path, handle: IO[bytes], header_width: int) -> None:
        self.path = path
        self.handle = handle
        self.header_width = header_width
        self.frames = 0
        self.frame_size = 0  # every frame of a file has one size (R-PFF-2)


class PFFRecorder:
    """Writes frames (PanoFrame or parsed dicts) into a run directory tree."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        observatory: str = "RECORD",
        runtype: str = "live",
        frames_per_file: int = 1000,
    ) -> None:
        if frames_per_file < 1:
            raise ValueError("frames_per_file must be >= 1")
        self.directory = Path(directory)
        self.frames_per_file = frames_per_file
        now = datetime.now(timezone.utc)
        self.start = now.strftime("%Y-%m-%dT%H_%M_%SZ")
        self.run_name = pff.RunDirName(observatory, now.strftime("%Y-%m-%dT%H:%M:%SZ"), runtype)
        self._files: dict[tuple[int, str], _File] = {}
        self._seqno: dict[tuple[int, str], int] = {}
        self.written = 0

    def write(self, image: PanoFrame | Mapping[str, Any]) -> Path:
        """Append one frame; returns the file it went to."""
        frame = as_frame(image)
        key = (frame.module_id, frame.product.name)
        header = hashpipe_header(frame.header)
        text = pff.header_text(header)
        file = self._files.get(key)
        if file is not None and (
            file.frames >= self.frames_per_file or len(text) > file.header_width
        ):
            file.handle.close()
            del self._files[key]
            file = None
        if file is None:
            file = self._files[key] = self._open(frame, len(text) + HEADER_SLACK)
        data = pff.encode_frame(header, frame.pixels, frame.product, file.header_width)
        file.frame_size = len(data)
        try:
            file.handle.write(data)
        except OSError as exc:
            raise self._failed(key, file, exc) from None
        file.frames += 1
        self.written += 1
        return file.path

    def _failed(self, key: tuple[int, str], file: _File, error: OSError) -> RecordError:
        """R-REC-1: the recording ends: every file is closed and cut back to its whole frames
        on disk, and the error says so.

        Frames still in a write buffer are lost with the error; `written` then counts the
        frames that are on disk.
        """
        del self._files[key]
        self._close_whole(file)
        for other in list(self._files.values()):
            self._close_whole(other)
        self._files.clear()
        return RecordError(file.path, error, self.written)

    def _close_whole(self, file: _File) -> None:
        """Close `file` (its buffer may reach the disk only in part) and cut it back to its
        whole frames."""
        with contextlib.suppress(OSError):
            file.handle.close()
        on_disk = 0
        with contextlib.suppress(OSError):
            size = os.path.getsize(file.path)
            on_disk = size // file.frame_size if file.frame_size else 0
            if size != on_disk * file.frame_size:
                os.truncate(file.path, on_disk * file.frame_size)
        self.written -= file.frames - on_disk

    def _open(self, frame: PanoFrame, header_width: int) -> _File:
        """The next file of the frame's (module, product), never one that exists already."""
        key = (frame.module_id, frame.product.name)
        run_dir = self.directory / f"module_{frame.module_id}" / self.run_name.format()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecordError(run_dir, exc, self.written) from None
        while True:
            seqno = self._seqno[key] = self._seqno.get(key, -1) + 1
            name = pff.DataFileName(
                frame.product.name,
                frame.module_id,
                seqno,
                frame.product.bytes_per_pixel,
                self.start,
            )
            path = run_dir / name.format()
            try:
                handle = open(path, "xb")  # noqa: SIM115 - closed by close()
            except FileExistsError:
                continue
            except OSError as exc:
                raise RecordError(path, exc, self.written) from None
            log.debug("recording %s", path)
            return _File(path, handle, header_width)

    def flush(self) -> None:
        """Write what is buffered; RecordError (R-REC-1) when it cannot be."""
        for key, file in list(self._files.items()):
            try:
                file.handle.flush()
            except OSError as exc:
                raise self._failed(key, file, exc) from None

    def close(self) -> None:
        """Close every file; RecordError when one cannot be written (R-REC-1)."""
        for key, file in list(self._files.items()):
            try:
                file.handle.close()
            except OSError as exc:
                raise self._failed(key, file, exc) from None
            del self._files[key]

    def __enter__(self) -> PFFRecorder:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
