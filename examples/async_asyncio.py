"""Async client on asyncio: the seed's AioDaqDataClient workflow with `asyncio.run`.

python examples/async_asyncio.py [daq_config.json network_config.json] [--max-frames N]
"""

from __future__ import annotations

import asyncio

from _common import parse_args

from panoseti_daq import AsyncDaqClient


async def main() -> None:
    args = parse_args(__doc__)
    async with AsyncDaqClient(args.daq_config, args.network_config) as client:
        hosts = await client.get_valid_daq_hosts()
        if not hosts:
            raise SystemExit("no DAQ node answered")
        if not args.no_init and not await client.init_sim(hosts):
            raise SystemExit("the simulation did not start on every node")
        count = 0
        async for image in client.stream_images(
            hosts=hosts,
            stream_movie_data=True,
            stream_pulse_height_data=True,
            update_interval_seconds=0.5,
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
