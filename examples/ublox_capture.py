"""UbloxControl from Python: initialise each chip of an f9t_config, then print its timing.

python examples/ublox_capture.py [--max-messages N]
    starts a simulated ZED-F9T and a server of its own, initialises the chip, captures

python examples/ublox_capture.py f9t_config.json5 [--init] [--max-messages N]
    the chips and servers the file names (InitF9t only with --init: it reconfigures the chips)

The async client runs here on trio; `anyio.run(main)` runs the same code on asyncio, and
`BlockingUbloxClient` offers the same methods without async (also in Jupyter).
"""

from __future__ import annotations

import argparse
import contextlib
import textwrap

import anyio

from panoseti_daq import UbloxClient
from panoseti_daq.ublox.demo import simulated_node


async def show(config: str, init: bool, max_messages: int) -> None:
    async with UbloxClient(config) as client:
        if init:
            for node, result in (await client.init_f9t()).items():
                state = "initialised" if result.ok else f"failed: {result.status}"
                print(f"chip {result.uid} on {node}: {state}")
                print(textwrap.indent(result.message, "  "))
                if not result.ok:
                    raise SystemExit(1)
        for node in client.nodes:
            for answer in await client.poll(["MON-VER$"], node):
                extensions = [v for k, v in answer.parsed.items() if k.startswith("extension")]
                print(f"{node}: {answer.name} {' '.join(extensions) or answer.notice}")
        count = 0
        async with client.capture(patterns=["TIM-TP$", "NAV-TIMEUTC$"]) as stream:
            async for message in stream:
                if message.name == "TIM-TP":
                    print(f"{message.host} pulse {message.utc:%H:%M:%S} qErr {message.qerr_ps} ps")
                elif message.name == "NAV-TIMEUTC":
                    valid = "valid" if message.utc_valid else "NOT valid"
                    print(f"{message.host} UTC {message.utc} ({valid}) tAcc {message.t_acc_ns} ns")
                else:
                    print(f"{message.host}: {message.notice}")
                count += 1
                if count == max_messages:
                    break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("f9t_config", nargs="?", help="default: a simulated chip of our own")
    parser.add_argument("--init", action="store_true", help="InitF9t each chip first")
    parser.add_argument("--max-messages", type=int, default=10, help="stop after N (0: never)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        config, init = args.f9t_config, args.init
        if config is None:
            node = stack.enter_context(simulated_node())
            print(f"started a simulated chip on {node.device}, its server on port {node.port}")
            config, init = str(node.f9t_config), True
        anyio.run(show, config, init, args.max_messages, backend="trio")


if __name__ == "__main__":
    main()
