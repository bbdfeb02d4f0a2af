"""Async client on asyncio: the seed's AioDaqDataClient workflow with `asyncio.run`.

python examples/async_asyncio.py [--max-frames N]   # a server of its own

python examples/async_asyncio.py daq_config.json [network_config.json] [--init-sim]
"""

from __future__ import annotations

import asyncio

from _common import daq_target, parse_args

from panoseti_daq import AsyncDaqClient


async def main() -> None:
    args = parse_args(__doc__)
    with daq_target(args):
        async with AsyncDaqClient(args.daq_config, args.network_config) as client:
            hosts = await client.get_valid_daq_hosts()
            if not hosts:
                raise SystemExit("no DAQ node answered")
            if args.init_sim and not await client.init_sim(hosts):
                raise SystemExit("the simulation did not start on every node")
            count = 0
            async for image in client.stream_images(
                hosts=hosts,
                stream_movie_data=True,
                stream_pulse_height_data=True,
                update_interval_seconds=0.5,
                wait_for_ready=True,  # the server may still be starting its simulation
            ):
                count += 1
                print(
                    f"module {image['module_id']} {image['type']:<12} "
                    f"{image['header']['pandas_unix_timestamp']}"
                )
                if count == args.max_frames:
                    break


if __name__ == "__main__":
    asyncio.run(main())
