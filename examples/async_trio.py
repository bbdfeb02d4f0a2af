"""Async client on trio, through anyio: the same code runs on asyncio with backend="asyncio".

python examples/async_trio.py [--max-frames N]   # a server of its own

python examples/async_trio.py daq_config.json [network_config.json] [--init-sim]
"""

from __future__ import annotations

import anyio
from _common import daq_target, parse_args

from panoseti_daq import AsyncDaqClient


async def main() -> None:
    args = parse_args(__doc__)
    with daq_target(args):
        async with AsyncDaqClient(args.daq_config, args.network_config) as client:
            status = await client.get_daq_host_status()
            print("hosts:", status)
            hosts = [host for host, ok in status.items() if ok]
            if not hosts:
                raise SystemExit("no DAQ node answered")
            if args.init_sim and not await client.init_sim(hosts):
                raise SystemExit("the simulation did not start on every node")
            count = 0
            # Pulse-height only, from every module, every frame the server sees (interval 0).
            async for image in client.stream_images(
                hosts=hosts,
                stream_movie_data=False,
                stream_pulse_height_data=True,
                update_interval_seconds=0.0,
                wait_for_ready=True,  # the server may still be starting its simulation
            ):
                count += 1
                pixels = image["image_array"]
                print(f"module {image['module_id']} pulse heights {pixels.min()}..{pixels.max()}")
                if count == args.max_frames:
                    break


if __name__ == "__main__":
    anyio.run(main, backend="trio")
