"""The device steps of InitF9t, in their order (R-UBX-INIT-5 .. R-UBX-INIT-8).

Each talks to the chip through the port owner (write a command, expect its answer) and raises
`UbloxError` naming the device and what went wrong; the controller runs them in order and owns
the state around them.
"""

from __future__ import annotations

import logging

import anyio

from .errors import UbloxError
from .port import PortOwner
from .protocol import (
    ChipVersion,
    Received,
    ack_of,
    byte_reversed_uid,
    chip_uid,
    chip_version,
    poll_frame,
    valget_batches,
    valget_values,
    valset_batches,
    value_matches,
)
from .settings import F9tPlan

log = logging.getLogger(__name__)

__all__ = [
    "ack_for",
    "apply_settings",
    "identify_model",
    "identify_uid",
    "poll_answer",
    "verify_settings",
]

MODEL_PREFIX = "ZED-F9T"
ID_TRIES = 3  # R-UBX-INIT-5, R-UBX-INIT-6
VALSET = (0x06, 0x8A)
VALGET = (0x06, 0x8B)


def ack_for(received: Received, command: tuple[int, int]) -> bool | None:
    """True for an ACK-ACK of `command`, False for its ACK-NAK, None for anything else."""
    ack = ack_of(received.message)
    if ack is None or (ack[1], ack[2]) != command:
        return None
    return bool(ack[0])


async def poll_answer(
    owner: PortOwner, name: str, timeout_s: float, tries: int = ID_TRIES
) -> Received | None:
    """The answer to a poll of `name`, in up to `tries` tries within `timeout_s`; None."""
    frame = poll_frame(name)
    for _ in range(tries):
        with owner.expect(lambda r: r.name == name) as answer:
            await owner.write(frame)
            received = await answer.wait(timeout_s / tries)
        if received is not None:
            return received
    return None


async def identify_model(owner: PortOwner, plan: F9tPlan, timeout_s: float) -> ChipVersion:
    """R-UBX-INIT-5"""
    received = await poll_answer(owner, "MON-VER", timeout_s)
    if received is None:
        raise UbloxError(
            "UNAVAILABLE",
            f"no MON-VER answer from {plan.device} at {plan.baud} baud "
            "(wrong baud rate or not a u-blox receiver?)",
        )
    version = chip_version(received.message)
    log.info(
        "%s: model %s, firmware %s, protocol %s, hardware %s, software %s",
        plan.device,
        version.model,
        version.fwver,
        version.protver,
        version.hw_version,
        version.sw_version,
    )
    if not version.model.startswith(MODEL_PREFIX):
        raise UbloxError(
            "INVALID_ARGUMENT",
            f"Model {version.model} does not match expected prefix {MODEL_PREFIX} "
            f"(device {plan.device})",
        )
    return version


async def identify_uid(owner: PortOwner, plan: F9tPlan, timeout_s: float) -> str:
    """R-UBX-INIT-6"""
    received = await poll_answer(owner, "SEC-UNIQID", timeout_s)
    if received is None:
        raise UbloxError("UNAVAILABLE", f"no SEC-UNIQID answer from {plan.device}")
    detected = chip_uid(received.message)
    if detected != plan.uid.upper():
        details = f"Detected F9T UID {detected} does not match client UID {plan.uid}"
        if byte_reversed_uid(detected) == plan.uid.upper():
            details += f" ({plan.uid} is {detected} byte-reversed)"
        raise UbloxError("INVALID_ARGUMENT", f"{details} (device {plan.device})")
    return detected


async def apply_settings(
    owner: PortOwner, plan: F9tPlan, version: ChipVersion, timeout_s: float, settle_s: float
) -> int:
    """R-UBX-INIT-7: the signal group, settle, then the rest; ACKs of CFG-VALSET only."""
    applied: list[str] = []
    groups = [list(plan.signal_items), list(plan.other_items)]
    for index, items in enumerate(groups):
        if not items:
            continue
        for batch in valset_batches(items, plan.layer_mask):
            chunk = batch.keys
            with owner.expect(lambda r: ack_for(r, VALSET) is not None) as ack:
                await owner.write(batch.frame)
                received = await ack.wait(timeout_s)
            done = f"applied before it: {', '.join(applied) if applied else 'nothing'}"
            if received is None:
                raise UbloxError(
                    "UNAVAILABLE",
                    f"no ACK for CFG-VALSET of {', '.join(chunk)} from {plan.device} within "
                    f"{timeout_s:g} s; {done}",
                )
            if not ack_for(received, VALSET):
                raise UbloxError(
                    "FAILED_PRECONDITION",
                    f"device rejected CFG-VALSET: {', '.join(chunk)} (firmware "
                    f"{version.fwver or version.sw_version}, device {plan.device}); {done}",
                )
            applied += chunk
        if index == 0:
            await anyio.sleep(settle_s)  # the GNSS engine restarts
    return len(applied)


async def verify_settings(owner: PortOwner, plan: F9tPlan, timeout_s: float) -> None:
    """R-UBX-INIT-8: read every applied key back from verify_layer and compare by type."""
    wanted = dict(plan.items)
    if not wanted:
        return
    got: dict[str, object] = {}
    for batch in valget_batches(list(wanted), plan.verify_layer):
        chunk = batch.keys

        def answers(r: Received) -> bool:
            return r.name == "CFG-VALGET" or ack_for(r, VALGET) is False

        with owner.expect(answers) as answer:
            await owner.write(batch.frame)
            received = await answer.wait(timeout_s)
        if received is None:
            raise UbloxError(
                "UNAVAILABLE",
                f"no CFG-VALGET answer from {plan.device} for {', '.join(chunk)} within "
                f"{timeout_s:g} s",
            )
        if received.name == "CFG-VALGET":
            got.update(valget_values(received.message))
    wrong = [
        (key, value, got.get(key))
        for key, value in wanted.items()
        if key not in got or not value_matches(key, value, got[key])
    ]
    if wrong:
        lines = [
            f"Configuration verification failed for {len(wrong)} items on layer "
            f"{plan.verify_layer}:"
        ]
        lines += [
            f"Key: {key}, Wanted: {value}, Got: {'unreadable' if g is None else g}"
            for key, value, g in wrong
        ]
        raise UbloxError("INTERNAL", "\n".join(lines))
