"""Upload frames to DAQ nodes with UploadImages: here the bundled NGC 7331 pulse-height data.

Uploaded frames reach every StreamImages client exactly like frames the server reads from disk.

    python examples/upload.py [--max-frames N]   # a server of its own

    python examples/upload.py daq_config.json [network_config.json] [--init-sim]
"""

from __future__ import annotations

import anyio
from _common import daq_target, parse_args

from panoseti_daq import AsyncDaqClient, PanoFrame, pff, product_named
from panoseti_daq._bundled import NGC7331_MODULE_ID, NGC7331_PH256


async def frames(limit: int):
    product = product_named("ph256")
    for number, (header, pixels) in enumerate(pff.iter_frames(NGC7331_PH256, product)):
        if limit and number == limit:
            return
        yield PanoFrame.create(
            product, header, pixels, NGC7331_MODULE_ID, NGC7331_PH256.name, number
        )


async def main() -> None:
    args = parse_args(__doc__)
    with daq_target(args):
        async with AsyncDaqClient(args.daq_config, args.network_config) as client:
            hosts = await client.get_valid_daq_hosts()
            if not hosts:
                raise SystemExit("no DAQ node answered")
            await client.upload_images(hosts, frames(args.max_frames))
            print(f"uploaded to {sorted(hosts)}")


if __name__ == "__main__":
    anyio.run(main)
