"""The simulated ZED-F9T over real pseudo-terminals: the host side opens the slave as a serial
port (raw, at a speed) and talks UBX to it, as the server does (R-UBX-SIM-1..8)."""

from __future__ import annotations

import calendar
import os
import select
import signal
import stat
import subprocess
import sys
import termios
import time
import tty
from collections import Counter, deque
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from pyubx2 import GET, POLL, SET, UBX_CONFIG_DATABASE, UBXMessage, UBXReader

from panoseti_daq.ublox.chip_model import ChipModel, Identity, tim_tp_frame
from panoseti_daq.ublox.protocol import (
    UbxFrameSplitter,
    build_frame,
    chip_uid,
    chip_version,
    poll_frame,
    valget_frames,
    valget_values,
    valset_frames,
    value_matches,
)
from panoseti_daq.ublox.settings import example_config_path, load_chip_requests, plan_init
from panoseti_daq.ublox.simulator import SimulatedF9t
from tests.ublox_helpers import recorded_frames

FAST = 0.05  # output period of the tests' simulators, s


class HostPort:
    """The slave opened as the server opens a serial port: raw 8N1 at `speed`, flushed."""

    def __init__(self, device: str, speed: int = termios.B115200) -> None:
        self.fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        attrs = termios.tcgetattr(self.fd)
        attrs[4] = attrs[5] = speed
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        termios.tcflush(self.fd, termios.TCIOFLUSH)
        self.splitter = UbxFrameSplitter()
        self.raw = bytearray()
        self.reads = 0
        self.pending: deque[UBXMessage] = deque()

    def close(self) -> None:
        os.close(self.fd)

    def send(self, msg: UBXMessage | bytes) -> None:
        data = msg if isinstance(msg, bytes) else msg.serialize()
        os.write(self.fd, data)

    def read_some(self, timeout_s: float) -> bytes:
        """Whatever arrives within the timeout (b"" if nothing); EOF and errors are raised."""
        readable, _, _ = select.select([self.fd], [], [], timeout_s)
        if not readable:
            return b""
        data = os.read(self.fd, 4096)
        if not data:
            raise EOFError("device reports readiness to read but returned no data")
        self.raw += data
        self.reads += 1
        return data

    def messages(self, until: Callable[[UBXMessage], bool], timeout_s: float = 5.0) -> list:
        """Decoded UBX messages up to and including the first for which `until` holds."""
        seen = []
        deadline = time.monotonic() + timeout_s
        while True:
            while self.pending:
                msg = self.pending.popleft()
                seen.append(msg)
                if until(msg):
                    return seen
            if time.monotonic() >= deadline:
                break
            data = self.read_some(deadline - time.monotonic())
            self.pending.extend(UBXReader.parse(f) for f in self.splitter.feed(data))
        pytest.fail(f"no awaited message within {timeout_s} s; saw {[m.identity for m in seen]}")

    def collect(self, name: str, count: int, timeout_s: float = 5.0) -> list[str]:
        """The names of the messages received until the `count`-th `name`."""
        seen = Counter()
        return [
            m.identity
            for m in self.messages(lambda m: seen.update([m.identity]) or seen[name] >= count)
        ]

    def sync(self) -> None:
        """Poll MON-VER and wait for the answer: whatever follows it in the stream was sent
        after any switch made before this call."""
        self.send(poll("MON-VER"))
        self.expect("MON-VER")

    def expect(self, name: str, timeout_s: float = 5.0) -> UBXMessage:
        return self.messages(lambda m: m.identity == name, timeout_s)[-1]

    def ack_of(self, msg_id: int, timeout_s: float = 5.0) -> str:
        """ACK-ACK or ACK-NAK for CFG message `msg_id`, skipping anything else."""
        return self.messages(
            lambda m: m.identity in ("ACK-ACK", "ACK-NAK") and m.msgID == msg_id,
            timeout_s,
        )[-1].identity


@pytest.fixture
def sim():
    with SimulatedF9t(period_s=FAST) as simulator:
        yield simulator


@pytest.fixture
def port(sim):
    host = HostPort(sim.device)
    yield host
    host.close()


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """For figures the simulator thread updates without an event (bounded polling)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def poll(name: str) -> UBXMessage:
    cls, _ = name.split("-", 1)
    return UBXMessage(cls, name, POLL)


def valset(items, layers: int = 1, transaction: int = 0) -> UBXMessage:
    return UBXMessage.config_set(layers, transaction, items)


def valget(keys, layer: int = 0) -> UBXMessage:
    return UBXMessage.config_poll(layer, 0, keys)


# --- identity, port -----------------------------------------------------------------------


def test_device_is_a_character_device_that_answers_identity_polls(sim, port):
    """R-UBX-SIM-1, R-UBX-SIM-2: the slave is a character device; MON-VER carries the firmware,
    protocol and model extensions, SEC-UNIQID the default UID (the shipped example's)."""
    assert stat.S_ISCHR(os.stat(sim.device).st_mode)
    port.send(poll("MON-VER"))
    ver = port.expect("MON-VER")
    texts = [v.rstrip(b"\x00").decode() for k, v in vars(ver).items() if k.startswith("ext")]
    assert {"FWVER=TIM 2.20", "PROTVER=29.20", "MOD=ZED-F9T"} <= set(texts)
    port.send(poll("SEC-UNIQID"))
    assert chip_uid(port.expect("SEC-UNIQID")) == "DF03A241BC"


def test_uid_and_model_are_configurable_and_switchable():
    """R-UBX-SIM-2, R-UBX-SIM-6: the UID (wire bytes little-endian) and model given at start,
    then changed while running; lower-case UIDs are accepted, malformed ones refused."""
    with pytest.raises(ValueError, match="10 hex digits"):
        SimulatedF9t(uid="XYZ")
    with SimulatedF9t(uid="0a1b2c3d4e", model="ZED-F9P") as sim:
        host = HostPort(sim.device)
        host.send(poll("SEC-UNIQID"))
        unique = host.expect("SEC-UNIQID")
        assert chip_uid(unique) == "0A1B2C3D4E"
        assert unique.payload[4:9] == bytes.fromhex("4e3d2c1b0a")
        host.send(poll("MON-VER"))
        assert chip_version(host.expect("MON-VER")).model == "ZED-F9P"
        sim.set_identity(model="NEO-M8T", uid="1122334455")
        host.send(poll("MON-VER"))
        assert chip_version(host.expect("MON-VER")).model == "NEO-M8T"
        host.send(poll("SEC-UNIQID"))
        assert chip_uid(host.expect("SEC-UNIQID")) == "1122334455"
        host.close()


# --- configuration ------------------------------------------------------------------------

TYPED_ITEMS = [
    ("CFG_TP_TP1_ENA", 0),  # L
    ("CFG_TP_FREQ_TP1", 7),  # U4
    ("CFG_TP_ANT_CABLEDELAY", -12),  # I2
    ("CFG_TMODE_MODE", 2),  # E1
    ("CFG_TP_DUTY_TP1", 0.01),  # R8
    ("CFG_TMODE_SVIN_MIN_DUR", 60),  # U4
    ("CFG_NAVSPG_USRDAT_ROTX", 0.1),  # R4: read back as float32
    ("CFG_NAVMASK_EL_MASK_000_020", b"\x01\x02\x03\x04\x05\x06\x07\x08"),  # X8
]


def test_valset_then_valget_each_layer(sim, port):
    """R-UBX-SIM-3, R-UBX-INIT-7/8: a VALSET to RAM+BBR is ACKed (06 8A) and read back from
    those layers by VALGET (answer version 1, then ACK 06 8B); FLASH and DEFAULT keep their
    values; R4 comes back as its float32, X as bytes."""
    keys = [k for k, _ in TYPED_ITEMS]
    port.send(valset(TYPED_ITEMS, layers=0b011))
    assert port.ack_of(0x8A) == "ACK-ACK"
    for layer, expect_set in ((0, True), (1, True), (2, False), (7, False)):
        port.send(valget(keys, layer))
        answer = port.expect("CFG-VALGET")
        assert answer.version == 1 and answer.layer == layer
        assert port.ack_of(0x8B) == "ACK-ACK"
        for key, wanted in TYPED_ITEMS:
            got = getattr(answer, key)
            if key == "CFG_NAVSPG_USRDAT_ROTX" and expect_set:
                assert got == pytest.approx(wanted, rel=1e-7) and got != wanted
            elif expect_set:
                assert got == wanted
            else:
                assert got == sim.value(key, "DEFAULT")
    assert sim.value("CFG_TP_FREQ_TP1", "BBR") == 7
    assert sim.value("CFG_TP_FREQ_TP1", "FLASH") == 1


def test_transactions_buffer_until_apply(sim, port):
    """R-UBX-SIM-3: a transaction's items apply at its apply step; a new start discards what
    was buffered; another CFG message (answered or refused) cancels it; ongoing/apply without a
    start is NAKed."""
    port.send(valset([("CFG_TP_FREQ_TP1", 5)], transaction=1))
    assert port.ack_of(0x8A) == "ACK-ACK"
    port.send(valset([("CFG_TP_FREQ_TP2", 6)], transaction=2))
    assert port.ack_of(0x8A) == "ACK-ACK"
    assert sim.value("CFG_TP_FREQ_TP1") == 1 and sim.value("CFG_TP_FREQ_TP2") == 0
    port.send(valset([("CFG_TP_LEN_TP1", 9)], transaction=3))
    assert port.ack_of(0x8A) == "ACK-ACK"
    assert [sim.value(k) for k in ("CFG_TP_FREQ_TP1", "CFG_TP_FREQ_TP2", "CFG_TP_LEN_TP1")] == [
        5,
        6,
        9,
    ]
    # A new start discards the first one's items.
    port.send(valset([("CFG_TP_FREQ_TP1", 50)], transaction=1))
    port.send(valset([("CFG_TP_FREQ_TP2", 60)], transaction=1))
    port.send(valset([("CFG_TP_LEN_TP1", 90)], transaction=3))
    for _ in range(3):
        assert port.ack_of(0x8A) == "ACK-ACK"
    assert [sim.value(k) for k in ("CFG_TP_FREQ_TP1", "CFG_TP_FREQ_TP2", "CFG_TP_LEN_TP1")] == [
        5,
        60,
        90,
    ]
    # Another CFG message (a VALGET) cancels an open transaction: its apply is then refused.
    port.send(valset([("CFG_TP_FREQ_TP1", 500)], transaction=1))
    assert port.ack_of(0x8A) == "ACK-ACK"
    port.send(valget(["CFG_TP_FREQ_TP1"]))
    assert port.ack_of(0x8B) == "ACK-ACK"
    port.send(valset([("CFG_TP_LEN_TP1", 900)], transaction=3))
    assert port.ack_of(0x8A) == "ACK-NAK"
    port.send(valset([("CFG_TP_LEN_TP1", 900)], transaction=2))
    assert port.ack_of(0x8A) == "ACK-NAK"
    # A refused VALGET is a CFG message too.
    port.send(valset([("CFG_TP_FREQ_TP1", 500)], transaction=1))
    assert port.ack_of(0x8A) == "ACK-ACK"
    port.send(valget([0x10AA0001]))
    assert port.ack_of(0x8B) == "ACK-NAK"
    port.send(valset([("CFG_TP_LEN_TP1", 900)], transaction=3))
    assert port.ack_of(0x8A) == "ACK-NAK"
    assert sim.value("CFG_TP_FREQ_TP1") == 5 and sim.value("CFG_TP_LEN_TP1") == 90


def test_valset_nak_cases():
    """R-UBX-SIM-3, R-UBX-SIM-6: NAK for an unknown key, a key in `unsupported_keys` (set at
    start or while running), no layer bit, an unknown message version, the nak_next_valset
    fault, a locked configuration; a refused message changes nothing."""
    with SimulatedF9t(unsupported_keys=["CFG-SIGNAL-GPS-L5-ENA"]) as sim:
        port = HostPort(sim.device)
        unknown = UBXMessage.config_set(1, 0, [(0x10AA0001, b"\x01"), ("CFG_TP_FREQ_TP1", 3)])
        for msg in (
            unknown,
            valset([("CFG_SIGNAL_GPS_L5_ENA", 1), ("CFG_TP_FREQ_TP1", 3)]),
            valset([("CFG_TP_FREQ_TP1", 3)], layers=0),
            UBXMessage("CFG", "CFG-VALSET", SET, payload=b"\x02\x01\x00\x00"),
        ):
            port.send(msg)
            assert port.ack_of(0x8A) == "ACK-NAK"
        sim.set_unsupported_keys(["CFG_TP_FREQ_TP2"])
        port.send(valset([("CFG_TP_FREQ_TP2", 3)]))
        assert port.ack_of(0x8A) == "ACK-NAK"
        sim.nak_next_valset()
        port.send(valset([("CFG_TP_FREQ_TP1", 3)]))
        assert port.ack_of(0x8A) == "ACK-NAK"
        assert sim.value("CFG_TP_FREQ_TP1") == 1 and sim.value("CFG_TP_FREQ_TP2") == 0
        port.send(valset([("CFG_TP_FREQ_TP1", 3)]))
        assert port.ack_of(0x8A) == "ACK-ACK"
        port.send(valset([("CFG_SEC_CFG_LOCK", 1)]))
        assert port.ack_of(0x8A) == "ACK-ACK"
        port.send(valset([("CFG_TP_FREQ_TP1", 4)]))
        assert port.ack_of(0x8A) == "ACK-NAK"
        assert sim.value("CFG_TP_FREQ_TP1") == 3
        port.close()


def test_valget_nak_cases(sim, port):
    """R-UBX-SIM-3, R-UBX-SIM-6, R-UBX-INIT-8: VALGET is NAKed for more than 64 keys, an
    unknown key, an unsupported key, a version other than 0 and by the nak_next_valget fault
    (no answer message); `position` skips keys."""
    many = list(UBX_CONFIG_DATABASE)[:65]
    # pyubx2 builds at most 64 keys a poll: the 65-key one is built from its payload.
    keys = b"".join(UBX_CONFIG_DATABASE[k][0].to_bytes(4, "little") for k in many)
    port.send(UBXMessage("CFG", "CFG-VALGET", POLL, payload=b"\x00\x00\x00\x00" + keys))
    assert port.ack_of(0x8B) == "ACK-NAK"
    port.send(valget([0x10AA0001]))
    assert port.ack_of(0x8B) == "ACK-NAK"
    sim.set_unsupported_keys(["CFG_SIGNAL_GPS_L5_ENA"])
    port.send(valget(["CFG_SIGNAL_GPS_L5_ENA"]))
    assert port.ack_of(0x8B) == "ACK-NAK"
    sim.nak_next_valget()
    port.send(valget(["CFG_TP_FREQ_TP1"]))
    seen = port.messages(lambda m: m.identity == "ACK-NAK")
    assert [m.identity for m in seen if m.identity.startswith(("CFG", "ACK"))] == ["ACK-NAK"]
    port.send(valget(many[:64]))
    assert port.expect("CFG-VALGET") and port.ack_of(0x8B) == "ACK-ACK"
    # Version 1 is an answer's, not a poll's.
    port.send(UBXMessage("CFG", "CFG-VALGET", POLL, payload=b"\x01\x00\x00\x00" + keys[:4]))
    assert port.ack_of(0x8B) == "ACK-NAK"
    # `position` skips that many keys of the answer.
    port.send(UBXMessage.config_poll(0, 1, ["CFG_TP_FREQ_TP1", "CFG_UART1_BAUDRATE"]))
    answer = port.expect("CFG-VALGET")
    assert answer.position == 1 and valget_values(answer) == {"CFG_UART1_BAUDRATE": 115200}


def test_wrong_readback_fault(sim, port):
    """R-UBX-SIM-6, R-UBX-INIT-8: chosen keys read back different from what was stored, for
    every type (the stored value itself is unchanged); a misspelt key or layer is a clear
    error."""
    port.send(valset(TYPED_ITEMS))
    assert port.ack_of(0x8A) == "ACK-ACK"
    sim.wrong_readback([k for k, _ in TYPED_ITEMS])
    port.send(valget([k for k, _ in TYPED_ITEMS]))
    answer = port.expect("CFG-VALGET")
    for key, wanted in TYPED_ITEMS:
        assert getattr(answer, key) != pytest.approx(wanted)
    assert sim.value("CFG_TP_FREQ_TP1") == 7
    sim.wrong_readback([])
    port.send(valget(["CFG_TP_FREQ_TP1"]))
    assert port.expect("CFG-VALGET").CFG_TP_FREQ_TP1 == 7
    with pytest.raises(ValueError, match="unknown configuration key 'CFG_NO_SUCH_KEY'"):
        sim.wrong_readback(["CFG_NO_SUCH_KEY"])
    with pytest.raises(ValueError, match="unknown configuration key 'CFG-TP-NOPE'"):
        sim.value("CFG-TP-NOPE")
    with pytest.raises(ValueError, match="layer must be RAM, BBR, FLASH or DEFAULT, not 'ROM'"):
        sim.value("CFG_TP_FREQ_TP1", "ROM")
    with pytest.raises(ValueError, match="unknown configuration key 'CFG_TP_TYPO'"):
        SimulatedF9t(unsupported_keys=["CFG_TP_TYPO"])


@pytest.mark.parametrize(
    ("name", "answer"), [("CFG_USBOUTPROT_UBX", []), ("CFG_USBINPROT_UBX", ["ACK-ACK"])]
)
def test_turning_ubx_off_on_the_hosts_port_cuts_the_link(name, answer):
    """R-UBX-SIM-3: UBX output off in RAM on the chip's own port silences it at once (that
    VALSET's ACK included); input off acknowledges, then ignores every UBX frame. On another
    layer the running configuration, and the link, stay."""
    chip = ChipModel()
    got = chip.handle(valset([(name, 0)], layers=1).serialize(), 0.0)
    assert [UBXReader.parse(f).identity for f in got] == answer
    assert chip.handle(valget([name], 0).serialize(), 0.0) == []
    other = ChipModel()
    got = other.handle(valset([(name, 0)], layers=2).serialize(), 0.0)
    assert [UBXReader.parse(f).identity for f in got] == ["ACK-ACK"]
    assert other.value(name, "BBR") == 0 and other.value(name, "RAM") != 0


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_key_reads_back_what_was_set(data):
    """R-UBX-SIM-3, R-UBX-INIT-8 (the model without I/O): for any key of pyubx2's database and
    any value of its type, VALSET then VALGET on the same layer gives the value back (R4 as its
    float32), except UBX turned off in RAM on the host's own port, which cuts the link."""
    name = data.draw(st.sampled_from(sorted(UBX_CONFIG_DATABASE)))
    typ = UBX_CONFIG_DATABASE[name][1]
    size = int(typ[1:])
    if typ[0] == "L":
        value = data.draw(st.integers(0, 1))
    elif typ[0] == "I":
        value = data.draw(st.integers(-(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1))
    elif typ[0] in "UE":
        value = data.draw(st.integers(0, (1 << (8 * size)) - 1))
    elif typ[0] == "X":
        value = data.draw(st.binary(min_size=size, max_size=size))
    else:
        width = 32 if size == 4 else 64
        value = data.draw(st.floats(allow_nan=False, allow_infinity=False, width=width))
    layer_bit, layer_number = data.draw(st.sampled_from([(1, 0), (2, 1), (4, 2)]))
    chip = ChipModel()
    answer = chip.handle(valset([(name, value)], layers=layer_bit).serialize(), 0.0)
    # Turning UBX off in RAM on the port the host talks over cuts the link, as on the chip:
    # output off, not even that VALSET's ACK; input off, the ACK and then silence.
    link = {f"CFG_{chip.port}OUTPROT_UBX": [], f"CFG_{chip.port}INPROT_UBX": ["ACK-ACK"]}
    if layer_number == 0 and value == 0 and name in link:
        assert [UBXReader.parse(f).identity for f in answer] == link[name]
        assert chip.handle(valget([name], 0).serialize(), 0.0) == []
        assert chip.value(name, "RAM") == 0
        return
    assert [UBXReader.parse(f).identity for f in answer] == ["ACK-ACK"]
    frames = chip.handle(valget([name], layer_number).serialize(), 0.0)
    (got,) = [v for k, v in vars(UBXReader.parse(frames[0])).items() if k.startswith("CFG_")]
    assert got == value
    assert chip.value(name, ["RAM", "BBR", "FLASH"][layer_number]) == value


@settings(max_examples=150, deadline=None)
@given(
    class_id=st.sampled_from(
        [(0x06, 0x8A), (0x06, 0x8B), (0x06, 0x00), (0x0A, 0x04), (0x27, 0x03)]
    ),
    payload=st.binary(max_size=80),
)
def test_any_host_frame_gets_a_valid_answer_or_none(class_id, payload):
    """R-UBX-SIM-3, R-UBX-SIM-5 (a hostile host): any checksum-valid frame of the CFG-VALSET,
    CFG-VALGET, another CFG, MON-VER or SEC-UNIQID class/id with any payload is answered with
    whole, decodable frames (a CFG message at least with its ACK or NAK), never an exception."""
    chip = ChipModel()
    frames = chip.handle(build_frame(*class_id, payload), 0.0)
    names = [UBXReader.parse(f).identity for f in frames]
    if class_id[0] == 0x06:
        assert names[-1] in ("ACK-ACK", "ACK-NAK")
        assert UBXReader.parse(frames[-1]).msgID == class_id[1]


def test_shipped_config_applies_and_verifies_through_the_protocol_module(sim, port):
    """R-UBX-SIM-2, R-UBX-SIM-3 with the server's own builders (R-UBX-INIT-5..8): the shipped
    example config, planned by settings.plan_init, is ACKed message by message; every item reads
    back equal by protocol.value_matches (R8 duty cycles, I4 positions); identity parses to the
    expected model and UID; 70 items go out as one transaction and apply together."""
    (chip,) = load_chip_requests(example_config_path())
    plan = plan_init({**chip.request, "device": sim.device})
    port.send(poll_frame("MON-VER"))
    assert chip_version(port.expect("MON-VER")).model == "ZED-F9T"
    port.send(poll_frame("SEC-UNIQID"))
    assert chip_uid(port.expect("SEC-UNIQID")) == plan.uid == "DF03A241BC"
    items = [*plan.signal_items, *plan.other_items]
    for group in (plan.signal_items, plan.other_items):
        for frame in valset_frames(list(group), plan.layers):
            port.send(frame)
            assert port.ack_of(0x8A) == "ACK-ACK"
    got = {}
    for frame in valget_frames([key for key, _ in items], plan.verify_layer):
        port.send(frame)
        got.update(valget_values(port.expect("CFG-VALGET")))
        assert port.ack_of(0x8B) == "ACK-ACK"
    assert all(value_matches(key, wanted, got[key]) for key, wanted in items)
    assert sim.value("CFG_TMODE_LAT", "BBR") == 374219999
    assert sim.value("CFG_TMODE_LAT", "FLASH") == 0
    others = [k for k in UBX_CONFIG_DATABASE if k.startswith("CFG_MSGOUT_UBX_MON")]
    many = [(k, 0) for k in [*others[:69], "CFG_MSGOUT_UBX_NAV_TIMEUTC_USB"]]
    frames = valset_frames(many, ["RAM"])
    assert len(frames) == 2
    port.send(frames[0])
    assert port.ack_of(0x8A) == "ACK-ACK"
    assert sim.value("CFG_MSGOUT_UBX_NAV_TIMEUTC_USB") == 1
    port.send(frames[1])
    assert port.ack_of(0x8A) == "ACK-ACK"
    assert sim.value("CFG_MSGOUT_UBX_NAV_TIMEUTC_USB") == 0


POOL = {
    "CFG_TP_FREQ_TP1": st.integers(0, 2**32 - 1),
    "CFG_TP_TP1_ENA": st.integers(0, 1),
    "CFG_TP_ANT_CABLEDELAY": st.integers(-(2**15), 2**15 - 1),
    "CFG_TP_DUTY_TP1": st.floats(allow_nan=False, allow_infinity=False),
    "CFG_NAVMASK_EL_MASK_000_020": st.binary(min_size=8, max_size=8),
    "CFG_TMODE_MODE": st.integers(0, 255),
}
LAYER_BITS = {"RAM": 1, "BBR": 2, "FLASH": 4}


class LayersMachine(RuleBasedStateMachine):
    """R-UBX-SIM-3 as rules: a VALSET without a transaction writes its layers at once; a
    transaction buffers from its start to its apply (a new start discards the buffer, steps
    must name the start's layers, any other CFG message cancels it); no layer bit or an
    ongoing/apply step with nothing open is NAKed and changes nothing; VALGET reads back."""

    def __init__(self) -> None:
        super().__init__()
        self.chip = ChipModel()
        self.layers = {name: {} for name in LAYER_BITS}
        self.open: tuple[int, dict] | None = None

    def answer(self, msg: UBXMessage) -> list[str]:
        return [UBXReader.parse(f).identity for f in self.chip.handle(msg.serialize(), 0.0)]

    @rule(data=st.data(), mask=st.sampled_from([0, 1, 3, 6]), action=st.sampled_from([0, 1]))
    def valset_now_or_start(self, data, mask, action):
        self.valset(data, mask, action)

    # Transaction steps mostly name the layers they were started with (layers 3), so that
    # start, start again, ongoing and apply sequences are common.
    @rule(data=st.data(), mask=st.sampled_from([0, 3, 3, 3, 6]), action=st.sampled_from([1, 2, 3]))
    def transaction_step(self, data, mask, action):
        self.valset(data, mask, action)

    def valset(self, data, mask, action):
        keys = data.draw(st.lists(st.sampled_from(sorted(POOL)), min_size=1, max_size=4))
        items = {key: data.draw(POOL[key]) for key in keys}
        if "CFG_TP_DUTY_TP1" in items:  # R8 read back exactly: no -0.0 / 0.0 ambiguity
            items["CFG_TP_DUTY_TP1"] += 0.0
        valid = mask != 0 and (action in (0, 1) or (self.open is not None and self.open[0] == mask))
        names = self.answer(valset(list(items.items()), mask, action))
        assert names == ["ACK-ACK" if valid else "ACK-NAK"]
        if not valid:
            self.open = None
        elif action == 0:
            self.open = None
            self.store(mask, items)
        elif action == 1:
            self.open = (mask, dict(items))
        else:
            self.open[1].update(items)
            if action == 3:
                self.store(*self.open)
                self.open = None

    def store(self, mask: int, items: dict) -> None:
        for layer, bit in LAYER_BITS.items():
            if mask & bit:
                self.layers[layer].update(items)

    @rule(layer=st.sampled_from(sorted(LAYER_BITS)), refused=st.booleans())
    def another_cfg_message_cancels(self, layer, refused):
        self.open = None
        if refused:
            assert self.answer(poll("CFG-RATE")) == ["ACK-NAK"]
            return
        keys = sorted(POOL)
        frames = self.chip.handle(valget(keys, ["RAM", "BBR", "FLASH"].index(layer)).serialize(), 0)
        got = valget_values(UBXReader.parse(frames[0]))
        for key in keys:
            wanted = self.layers[layer].get(key, self.chip.value(key, "DEFAULT"))
            assert got[key] == wanted

    @invariant()
    def layers_hold_what_was_applied(self):
        for layer, stored in self.layers.items():
            for key in POOL:
                assert self.chip.value(key, layer) == stored.get(
                    key, self.chip.value(key, "DEFAULT")
                )


TestLayersMachine = pytest.mark.timeout(30)(LayersMachine.TestCase)
TestLayersMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# --- output -------------------------------------------------------------------------------


def test_no_ubx_output_until_msgout_set_then_tim_tp_and_timeutc(sim, port):
    """R-UBX-SIM-4, R-UBX-INIT-9: a factory-default chip sends NMEA, no UBX; once the RAM MSGOUT
    keys for its port (USB) are 1, each epoch brings a TIM-TP then a NAV-TIMEUTC; UART1's keys
    alone do nothing on USB; switching NMEA output off stops the sentences; a rate N sends
    every N-th epoch."""
    while b"$GNGGA" not in port.raw:
        assert port.read_some(2.0)
    assert b"\xb5\x62" not in port.raw
    port.send(valset([("CFG_MSGOUT_UBX_TIM_TP_UART1", 1), ("CFG_MSGOUT_UBX_NAV_TIMEUTC_UART1", 1)]))
    assert port.ack_of(0x8A) == "ACK-ACK"
    port.raw.clear()
    for _ in range(5):
        port.read_some(FAST)
    assert port.splitter.feed(bytes(port.raw)) == []
    port.send(valset([("CFG_MSGOUT_UBX_TIM_TP_USB", 1), ("CFG_MSGOUT_UBX_NAV_TIMEUTC_USB", 1)]))
    names = port.collect("NAV-TIMEUTC", 4)
    timing = [n for n in names if n in ("TIM-TP", "NAV-TIMEUTC")]
    assert timing[:6] == ["TIM-TP", "NAV-TIMEUTC"] * 3
    port.send(valset([("CFG_USBOUTPROT_NMEA", 0)]))
    assert port.ack_of(0x8A) == "ACK-ACK"
    port.sync()
    port.raw.clear()
    port.collect("NAV-TIMEUTC", 3)
    assert b"$GN" not in port.raw
    # Rate 3: a TIM-TP every third epoch.
    port.send(valset([("CFG_MSGOUT_UBX_TIM_TP_USB", 3)]))
    assert port.ack_of(0x8A) == "ACK-ACK"
    port.sync()
    names = port.collect("NAV-TIMEUTC", 9)
    assert names.count("TIM-TP") in (2, 3, 4)


def test_synthetic_timing_follows_the_host_clock(sim, port):
    """R-UBX-SIM-4: synthetic TIM-TP is for the next whole UTC second (UTC time base, week and
    towMS of that second, qErr from the recording, utc 1, raim 2); NAV-TIMEUTC is for the
    current second with iTOW in GPS time (UTC + 18 s) and valid flags set."""
    before = time.time()
    port.send(valset([("CFG_MSGOUT_UBX_TIM_TP_USB", 1), ("CFG_MSGOUT_UBX_NAV_TIMEUTC_USB", 1)]))
    tp = port.expect("TIM-TP")
    utc = port.expect("NAV-TIMEUTC")
    after = time.time()
    gps_epoch = 315964800  # 1980-01-06 as Unix time
    pulse = gps_epoch + tp.week * 604800 + tp.towMS // 1000
    assert int(before) + 1 <= pulse <= int(after) + 1 and tp.towMS % 1000 == 0
    assert (tp.timeBase, tp.utc, tp.raim, tp.qErrInvalid, tp.utcStandard) == (1, 1, 2, 0, 3)
    assert -3986 <= tp.qErr <= 3499
    stamp = calendar.timegm((utc.year, utc.month, utc.day, utc.hour, utc.min, utc.sec))
    assert int(before) <= stamp <= int(after)
    assert utc.iTOW == ((int(stamp) - gps_epoch + 18) % 604800) * 1000
    assert (utc.validTOW, utc.validWKN, utc.validUTC) == (1, 1, 1)
    assert 58 <= utc.tAcc <= 94


def test_recorded_source_replays_the_file_byte_for_byte():
    """R-UBX-SIM-4, R-UBX-SIM-8: the recorded source sends the recording's TIM-TP and NAV-TIMEUTC
    frames unchanged, each name in file order; the synthetic builders reproduce a recorded
    TIM-TP exactly from its second and qErr."""
    recorded = recorded_frames()
    assert len(recorded) == 81 and recorded[0][0] == "ACK-ACK"
    tim_tp = [f for n, f in recorded if n == "TIM-TP"]
    timeutc = [f for n, f in recorded if n == "NAV-TIMEUTC"]
    with SimulatedF9t(source="recorded", period_s=0.01) as sim:
        port = HostPort(sim.device)
        port.send(valset([("CFG_MSGOUT_UBX_TIM_TP_USB", 1), ("CFG_MSGOUT_UBX_NAV_TIMEUTC_USB", 1)]))
        port.expect("ACK-ACK")
        got: dict[str, list[bytes]] = {"TIM-TP": [], "NAV-TIMEUTC": []}
        while len(got["TIM-TP"]) < 45:
            msg = port.messages(lambda m: m.identity in got)[-1]
            got[msg.identity].append(msg.serialize())
        port.close()
    start = tim_tp.index(got["TIM-TP"][0])
    assert got["TIM-TP"] == (tim_tp * 3)[start : start + len(got["TIM-TP"])]
    first = timeutc.index(got["NAV-TIMEUTC"][0])
    assert got["NAV-TIMEUTC"] == (timeutc * 3)[first : first + len(got["NAV-TIMEUTC"])]
    sample = UBXReader.parse(tim_tp[0])
    second = 315964800 + sample.week * 604800 + sample.towMS // 1000
    assert tim_tp_frame(second, sample.qErr) == tim_tp[0]


def test_polls_get_fresh_timing_answers_map_or_nothing():
    """R-UBX-SIM-5, R-UBX-POLL-5: TIM-TP and NAV-TIMEUTC polls are answered with output off; a
    name in the `answers` map gets its frame (set at start or while running); other polls get
    no answer (the next answered poll's answer comes first), CFG-class ones a NAK."""
    hw = UBXMessage("MON", "MON-HW", GET).serialize()
    with SimulatedF9t(answers={"MON-HW": hw}) as sim:
        port = HostPort(sim.device)
        port.send(poll("TIM-TP"))
        port.expect("TIM-TP")
        port.send(poll("NAV-TIMEUTC"))
        port.expect("NAV-TIMEUTC")
        port.send(poll("MON-HW"))
        assert port.expect("MON-HW").serialize() == hw
        port.send(poll("NAV-PVT"))
        port.send(poll("MON-VER"))
        seen = [m.identity for m in port.messages(lambda m: m.identity == "MON-VER")]
        assert "NAV-PVT" not in seen
        sim.set_answer("NAV-PVT", hw)
        sim.set_answer("MON-HW", None)
        port.send(poll("NAV-PVT"))
        assert port.expect("MON-HW").serialize() == hw
        port.send(poll("MON-HW"))
        port.send(poll("SEC-UNIQID"))
        seen = [m.identity for m in port.messages(lambda m: m.identity == "SEC-UNIQID")]
        assert "MON-HW" not in seen
        assert sim.received("MON-HW") == 2 and sim.received("NAV-PVT") == 2
        # A CFG-class poll is refused (NAK) unless the map answers it.
        port.send(poll("CFG-RATE"))
        assert port.ack_of(0x08) == "ACK-NAK"
        sim.set_answer("CFG-RATE", hw)
        port.send(poll("CFG-RATE"))
        assert port.expect("MON-HW").serialize() == hw
        times = sim.received_at("CFG-RATE")
        assert len(times) == 2 and times[0] <= times[1] <= time.time()
        port.close()


# --- unplug, baud -------------------------------------------------------------------------


def test_unplug_is_a_read_error_on_the_slave(sim, port):
    """R-UBX-SIM-1, R-UBX-SIM-6 (R-UBX-INIT-12): unplugging closes the master; the host's next
    read returns no data (EOF) or fails (EIO), as on a pulled USB cable; the device is gone."""
    port.send(poll("MON-VER"))
    port.expect("MON-VER")
    device = sim.device
    sim.unplug()
    assert not sim.running
    with pytest.raises(RuntimeError, match="not plugged in"):
        sim.host_speed()
    with pytest.raises((EOFError, OSError)):
        for _ in range(3):
            port.read_some(2.0)
    assert not os.path.exists(device)


def test_host_closing_and_reopening_the_port_finds_the_same_chip(sim):
    """R-UBX-SIM-1 (R-UBX-INIT-3, a re-init): the pty outlives the host closing its port; a host
    opening it again (and flushing) talks to the same chip, whose RAM kept its settings."""
    port = HostPort(sim.device)
    port.send(valset([("CFG_TP_FREQ_TP1", 7)]))
    assert port.ack_of(0x8A) == "ACK-ACK"
    for _ in range(3):
        port.close()
        port = HostPort(sim.device)
        port.sync()
    port.send(valget(["CFG_TP_FREQ_TP1"]))
    assert port.expect("CFG-VALGET").CFG_TP_FREQ_TP1 == 7
    port.close()
    assert sim.running


def test_baud_mismatch_gives_noise_usb_ignores_speed():
    """R-UBX-SIM-7, R-UBX-INIT-5: a host at 38400 against a chip at 115200 gets no answer to
    MON-VER, only noise (no frame to find), and the chip ignores its bytes; with usb=True the
    speed does not matter."""
    with SimulatedF9t(period_s=FAST) as sim:
        port = HostPort(sim.device, speed=termios.B38400)
        assert sim.host_speed() == 38400
        port.send(poll("MON-VER"))
        wait_until(lambda: sim.ignored_bytes == 8)
        while len(port.raw) < 300:
            assert port.read_some(1.0)
        assert port.splitter.feed(bytes(port.raw)) == [] and b"\xb5" not in port.raw
        assert b"$GN" not in port.raw
        assert sim.received("MON-VER") == 0
        port.close()
    with SimulatedF9t(usb=True) as sim:
        port = HostPort(sim.device, speed=termios.B38400)
        port.send(poll("MON-VER"))
        assert port.expect("MON-VER")
        port.close()


def test_protocol_keys_cut_the_link(sim, port):
    """R-UBX-SIM-4 (spec section 10, R-UBX-INIT-7/11): UBX output off on the chip's port ends
    every UBX frame, that VALSET's ACK included (the host sees an ACK timeout); UBX input off
    makes the chip deaf to UBX; NMEA goes on in both cases."""
    port.send(valset([("CFG_MSGOUT_UBX_TIM_TP_USB", 1)]))
    assert port.ack_of(0x8A) == "ACK-ACK"
    port.expect("TIM-TP")
    sim.silence()  # nothing in flight from before the cut once the sync's answer is read
    port.sync()
    port.send(valset([("CFG_USBOUTPROT_UBX", 0)]))
    assert sim.wait_received("CFG-VALSET", 2)
    port.send(poll("MON-VER"))
    assert sim.wait_received("MON-VER", 2)
    sim.silence(False)
    port.raw.clear()
    while port.raw.count(b"$GNGGA") < 3:
        assert port.read_some(2.0)
    assert b"\xb5\x62" not in port.raw
    assert sim.value("CFG_USBOUTPROT_UBX") == 0
    with SimulatedF9t(period_s=FAST) as deaf:
        host = HostPort(deaf.device)
        host.send(valset([("CFG_USBINPROT_UBX", 0)]))
        assert host.ack_of(0x8A) == "ACK-ACK"
        host.send(poll("MON-VER"))
        assert deaf.wait_received("MON-VER")
        host.raw.clear()
        while host.raw.count(b"$GNGGA") < 3:
            assert host.read_some(2.0)
        assert b"\xb5\x62" not in host.raw
        host.close()


def test_uart1_speed_follows_cfg_uart1_baudrate():
    """R-UBX-SIM-7, R-UBX-SIM-4 (section 10, link-cutting keys): on UART1 the chip's MSGOUT keys
    for UART1 count, and setting CFG_UART1_BAUDRATE moves the chip to that speed: the host
    hears noise until it follows; on USB that key leaves the link alone."""
    with SimulatedF9t(port="UART1", speed=38400, period_s=FAST) as sim:
        port = HostPort(sim.device, speed=termios.B38400)
        port.send(valset([("CFG_MSGOUT_UBX_TIM_TP_UART1", 1)]))
        assert port.ack_of(0x8A) == "ACK-ACK"
        port.expect("TIM-TP")
        port.send(valset([("CFG_UART1_BAUDRATE", 115200)]))
        assert sim.wait_received("CFG-VALSET", 2)
        assert sim.value("CFG_UART1_BAUDRATE") == 115200
        port.send(poll("MON-VER"))
        wait_until(lambda: sim.ignored_bytes == 8)
        assert sim.received("MON-VER") == 0
        attrs = termios.tcgetattr(port.fd)
        attrs[4] = attrs[5] = termios.B115200
        termios.tcsetattr(port.fd, termios.TCSANOW, attrs)
        port.send(poll("MON-VER"))
        port.expect("MON-VER")
        port.close()
    # On USB the UART's speed key does not touch the link.
    with SimulatedF9t() as sim:
        port = HostPort(sim.device)
        port.send(valset([("CFG_UART1_BAUDRATE", 9600)]))
        assert port.ack_of(0x8A) == "ACK-ACK"
        port.sync()
        port.close()


# --- faults -------------------------------------------------------------------------------


def test_mute_answers_nothing_output_goes_on(sim, port):
    """R-UBX-SIM-6 (R-UBX-INIT-5/7 no answer): a muted chip reads the host's frames but answers
    none; periodic output continues; unmuted it answers again."""
    port.send(valset([("CFG_MSGOUT_UBX_TIM_TP_USB", 1)]))
    assert port.ack_of(0x8A) == "ACK-ACK"
    sim.mute()
    port.send(poll("MON-VER"))
    assert sim.wait_received("MON-VER")
    seen = [m.identity for m in port.messages(lambda m: m.identity == "TIM-TP")]
    seen += [m.identity for m in port.messages(lambda m: m.identity == "TIM-TP")]
    assert "MON-VER" not in seen
    sim.mute(False)
    port.send(poll("MON-VER"))
    port.expect("MON-VER")


def test_bad_checksums_garbage_and_split_writes(sim, port):
    """R-UBX-SIM-6 (R-UBX-STATE-2): every Nth frame with a bad checksum (counted by the
    splitter, the others intact), garbage between frames (skipped), frames split across writes
    with pauses (still whole frames to the splitter)."""
    port.send(valset([("CFG_MSGOUT_UBX_TIM_TP_USB", 1), ("CFG_USBOUTPROT_NMEA", 0)]))
    assert port.ack_of(0x8A) == "ACK-ACK"
    sim.bad_checksum_every(3)
    port.messages(lambda m: port.splitter.bad_checksums >= 3)
    assert port.collect("TIM-TP", 3).count("TIM-TP") == 3
    sim.bad_checksum_every(0)
    sim.garbage_between_frames(17)
    port.sync()
    skipped = port.splitter.skipped_bytes
    port.collect("TIM-TP", 3)
    assert port.splitter.skipped_bytes - skipped >= 3 * 17
    sim.garbage_between_frames(0)
    sim.split_frames(0.05)
    port.sync()
    mid_frame_reads = 0
    for _ in range(4):
        port.expect("TIM-TP")
        mid_frame_reads += port.splitter.pending > 0
    assert mid_frame_reads > 0


def test_silence_and_burst(sim, port):
    """R-UBX-SIM-6 (R-UBX-CAP-6/7): silence stops the output (polls still answered); burst
    raises the epoch rate to N a second."""
    port.send(valset([("CFG_MSGOUT_UBX_TIM_TP_USB", 1), ("CFG_USBOUTPROT_NMEA", 0)]))
    port.expect("TIM-TP")
    sim.silence()
    port.send(poll("MON-VER"))
    port.expect("MON-VER")
    port.splitter.feed(port.read_some(0.2))
    port.raw.clear()
    for _ in range(4):
        port.read_some(FAST)
    assert port.splitter.feed(bytes(port.raw)) == []
    sim.silence(False)
    port.expect("TIM-TP")
    sim.burst(400)
    start = time.monotonic()
    port.collect("TIM-TP", 200)
    assert 200 / (time.monotonic() - start) > 100
    sim.burst(0)


def test_a_host_that_stops_reading_costs_bounded_memory():
    """R-UBX-SIM-6 burst (R-UBX-CAP-6): while the host reads nothing, the chip's output fills
    the pty and then at most 64 KiB of queue, the rest is dropped and counted; the chip stays
    responsive, and once the host reads again it gets whole frames and answers."""
    with SimulatedF9t(source="recorded") as sim:
        port = HostPort(sim.device)
        try:
            flood_and_drain(sim, port)
        finally:
            port.close()


def flood_and_drain(sim: SimulatedF9t, port: HostPort) -> None:
    port.send(valset([("CFG_MSGOUT_UBX_TIM_TP_USB", 1), ("CFG_USBOUTPROT_NMEA", 0)]))
    assert port.ack_of(0x8A) == "ACK-ACK"
    sim.burst(1_000_000)  # faster than the chip can build epochs: always behind schedule
    wait_until(lambda: sim.dropped_bytes > 1000, timeout_s=8.0)
    sim.silence()
    port.send(poll("MON-VER"))
    assert sim.wait_received("MON-VER")
    backlog = 0
    while chunk := port.read_some(0.2):
        backlog += len(chunk)
    assert 64 * 1024 <= backlog <= 64 * 1024 + 256 * 1024
    sim.silence(False)
    sim.burst(0)
    port.sync()
    port.expect("TIM-TP")


def test_stray_acks_and_raw_bytes(sim, port):
    """R-UBX-SIM-6 (R-UBX-INIT-7: only ACKs for 06 8A count): with stray ACKs on, each VALSET
    answer is preceded by the recording's ACK-ACK for CFG-VALGET; send_raw puts bytes on the
    wire as given."""
    sim.stray_acks()
    sim.nak_next_valset()
    port.send(valset([("CFG_TP_FREQ_TP1", 3)]))
    acks = port.messages(lambda m: m.identity == "ACK-NAK")
    assert [(m.identity, m.msgID) for m in acks if m.identity.startswith("ACK")] == [
        ("ACK-ACK", 0x8B),
        ("ACK-NAK", 0x8A),
    ]
    sim.send_raw(b"$GNTXT,raw*00\r\n" + sim.recorded_ack())
    port.expect("ACK-ACK")
    assert b"$GNTXT,raw" in port.raw


def test_identity_model_builds_mon_ver_and_uid_bytes():
    """R-UBX-SIM-2, R-UBX-INIT-6 (no I/O): the UID string is the 5 wire bytes read as a
    little-endian integer; MON-VER's strings are NUL-padded fields."""
    ident = Identity(uid="DF03A241BC", fwver="TIM 2.24")
    unique = UBXReader.parse(ident.sec_uniqid_frame())
    assert unique.payload[4:] == bytes.fromhex("bc41a203df")
    ver = UBXReader.parse(ident.mon_ver_frame())
    assert ver.extension_02.rstrip(b"\x00") == b"FWVER=TIM 2.24"
    assert ver.swVersion.rstrip(b"\x00") == b"EXT CORE 1.00 (e3b3a6)"


# --- command line -------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "panoseti_daq.ublox.simulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.timeout(30)  # a Python process starting on a busy machine
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_the_device_first_and_exits_0_on_signal(signum):
    """R-UBX-SIM-1, R-UBX-SIM-2 (CLI): the first stdout line is the device path alone; the
    device answers with the given UID; SIGTERM/SIGINT unplugs it and the process exits 0."""
    proc = run_cli("--uid", "0102030405", "--period", "0.1")
    try:
        device = proc.stdout.readline().strip()
        assert stat.S_ISCHR(os.stat(device).st_mode)
        port = HostPort(device)
        port.send(poll("SEC-UNIQID"))
        assert chip_uid(port.expect("SEC-UNIQID")) == "0102030405"
        proc.send_signal(signum)
        assert proc.wait(timeout=5) == 0
        with pytest.raises((EOFError, OSError)):
            for _ in range(3):
                port.read_some(2.0)
        port.close()
        assert not os.path.exists(device)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--uid", "12345"], "UID must be 10 hex digits, not '12345'"),
        (["--period", "0"], "argument --period: must be > 0, not 0"),
        (["--period", "nan"], "argument --period: must be > 0, not nan"),
        (["--speed", "12345"], "speed 12345 is not a serial speed this system supports"),
    ],
)
def test_cli_refuses_bad_arguments(args, error):
    """R-UBX-SIM-2 (CLI): a bad UID, period or speed is one clear error line naming it, exit 2,
    nothing on stdout (no device was opened)."""
    proc = run_cli(*args)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and out == ""
    assert err.strip().splitlines()[-1].endswith(error)
