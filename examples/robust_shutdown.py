"""Robust async workflow: Ctrl+C or SIGTERM ends the stream cleanly, connections closed.

The seed README's "Robust Asynchronous Workflow" with structured concurrency: a signal handler
task cancels the streaming task's scope; leaving `async with` closes every connection.

    python examples/robust_shutdown.py [--max-frames N]   # a server of its own

    python examples/robust_shutdown.py daq_config.json [network_config.json] [--init-sim]
"""

from __future__ import annotations

import logging
import signal

import anyio
from _common import daq_target, parse_args

from panoseti_daq import AsyncDaqClient, RpcError

log = logging.getLogger("examples.robust_shutdown")


async def stream(client: AsyncDaqClient, hosts: set[str], max_frames: int) -> None:
    count = 0
    async for image in client.stream_images(
        hosts=hosts,
        stream_movie_data=True,
        stream_pulse_height_data=True,
        update_interval_seconds=1.0,
        wait_for_ready=True,  # the server may still be starting its simulation
    ):
        count += 1
        print(f"module {image['module_id']} {image['type']}", flush=True)
        if count == max_frames:
            return


async def main() -> None:
    args = parse_args(__doc__)
    with daq_target(args):
        try:
            async with (
                AsyncDaqClient(args.daq_config, args.network_config) as client,
                anyio.create_task_group() as tg,
            ):
                hosts = await client.get_valid_daq_hosts()
                if not hosts:
                    raise SystemExit("no DAQ node answered")
                if args.init_sim:
                    await client.init_sim(hosts)

                async def stop_on_signal() -> None:
                    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for signum in signals:
                            log.info("%s received, closing the stream", signal.Signals(signum).name)
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(stop_on_signal)
                await stream(client, hosts, args.max_frames)
                tg.cancel_scope.cancel()
        except RpcError as exc:
            log.warning("stream ended by the server: %s", exc)
        finally:
            print("stream processing finished", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    anyio.run(main)
