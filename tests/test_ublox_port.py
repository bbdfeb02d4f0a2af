"""The serial port and its owner over a real pseudo-terminal driven by the test (R-UBX-INIT-4,
R-UBX-STATE-2, R-UBX-INIT-12)."""

from __future__ import annotations

import os
import termios
import tty

import anyio
import pytest

from panoseti_daq.ublox.errors import UbloxError
from panoseti_daq.ublox.port import PortOwner, check_device, open_port
from panoseti_daq.ublox.protocol import build_frame

PTS = ("/dev/pts/*",)
DEFAULTS = ("/dev/ttyACM*", "/dev/ttyUSB*", "/dev/serial/by-id/*", "/dev/serial/by-path/*")
TIM_TP = build_frame(0x0D, 0x01, bytes(16))
ACK_ACK = build_frame(0x05, 0x01, bytes((0x06, 0x8A)))


class PtyPair(tuple):
    """(master fd, slave path); `unplug()` closes the master once."""

    def unplug(self) -> None:
        if not self.unplugged:
            self.unplugged = True
            os.close(self[0])

    unplugged = False


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(master)
    path = os.ttyname(slave)
    os.close(slave)  # the server opens the slave by its path
    pair = PtyPair((master, path))
    yield pair
    pair.unplug()


def test_missing_device_is_invalid_argument(tmp_path):
    """R-UBX-INIT-4: a device that does not exist."""
    with pytest.raises(UbloxError) as info:
        check_device(str(tmp_path / "ttyACM9"), PTS)
    assert info.value.status == "INVALID_ARGUMENT"
    assert f"Device path {tmp_path / 'ttyACM9'} does not exist" in info.value.details


def test_regular_file_is_not_a_character_device(tmp_path):
    """R-UBX-INIT-4: a regular file (through a symlink too) is refused."""
    target = tmp_path / "disk.img"
    target.write_bytes(b"x")
    link = tmp_path / "ttyACM0"
    link.symlink_to(target)
    with pytest.raises(UbloxError) as info:
        check_device(str(link), ("/*",))
    assert info.value.status == "INVALID_ARGUMENT"
    assert "is not a character device" in info.value.details


def test_dev_null_and_ptys_are_not_allowed_by_default(pty_pair):
    """R-UBX-INIT-4: confinement to allowed_devices; the default never allows /dev/pts/*."""
    for device in ("/dev/null", pty_pair[1]):
        with pytest.raises(UbloxError) as info:
            check_device(device, DEFAULTS)
        assert info.value.status == "PERMISSION_DENIED"
        assert os.path.realpath(device) in info.value.details
        assert "/dev/ttyACM*" in info.value.details


def test_symlink_matching_a_pattern_allows_its_target(pty_pair, tmp_path):
    """R-UBX-INIT-4: a by-id style symlink matching a pattern allows the device it names."""
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / "usb-u-blox_GNSS_receiver-if00").symlink_to(pty_pair[1])
    resolved = check_device(str(by_id / "usb-u-blox_GNSS_receiver-if00"), (f"{by_id}/*",))
    assert resolved == os.path.realpath(pty_pair[1])


def test_open_sets_raw_8n1_and_locks(pty_pair):
    """R-UBX-INIT-4: raw 8N1 at the baud, exclusive lock: a second open is UNAVAILABLE."""
    master, path = pty_pair
    port = open_port(path, check_device(path, PTS), 9600, PTS)
    try:
        attrs = termios.tcgetattr(master)  # the master shows the slave's settings
        assert attrs[4] == attrs[5] == termios.B9600
        assert attrs[2] & termios.CSIZE == termios.CS8
        assert not attrs[2] & (termios.PARENB | termios.CSTOPB)
        assert not attrs[3] & (termios.ICANON | termios.ECHO)
        with pytest.raises(UbloxError) as info:
            open_port(path, path, 9600, PTS)
        assert info.value.status == "UNAVAILABLE"
        assert info.value.details == f"could not open {path}: in use by another process"
    finally:
        port.close()
    open_port(path, path, 9600, PTS).close()  # the lock went with the descriptor


def test_open_refuses_a_character_device_that_is_not_a_terminal():
    """R-UBX-INIT-4: once opened, the device must be a terminal."""
    with pytest.raises(UbloxError) as info:
        open_port("/dev/null", "/dev/null", 115200, ("/dev/null",))
    assert info.value.status == "PERMISSION_DENIED"
    assert "not a terminal" in info.value.details


@pytest.mark.anyio
async def test_owner_splits_frames_writes_and_reports_unplug(pty_pair):
    """R-UBX-STATE-2: frames split across writes among NMEA and garbage are read whole, each
    stamped; writes go out through the owner. R-UBX-INIT-12: closing the master ends the owner
    with the device named and the port closed."""
    master, path = pty_pair
    port = open_port(path, path, 115200, PTS)
    got = []
    owner = PortOwner(port, got.append)
    stream = b"$GNGGA,,,*4F\r\n" + TIM_TP + b"\x00\xb5junk" + ACK_ACK[:5]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(owner.run)
            with owner.expect(lambda r: r.name == "ACK-ACK") as ack:
                await owner.write(b"\xb5\x62\x0a\x04\x00\x00\x0e\x34")
                assert os.read(master, 100) == b"\xb5\x62\x0a\x04\x00\x00\x0e\x34"
                os.write(master, stream)
                await anyio.sleep(0.05)
                os.write(master, ACK_ACK[5:])
                answer = await ack.wait(2)
            assert answer is not None and answer.frame == ACK_ACK
            assert [r.name for r in got] == ["TIM-TP", "ACK-ACK"]
            assert got[0].frame == TIM_TP and got[0].t_ns <= got[1].t_ns
            assert owner.splitter.skipped_bytes > 0
            pty_pair.unplug()
    assert owner.lost is not None and owner.lost.startswith(f"F9T on {path} disconnected: ")
    assert port.closed
    with pytest.raises(UbloxError) as info:
        await owner.write(TIM_TP)
    assert info.value.status == "UNAVAILABLE"
