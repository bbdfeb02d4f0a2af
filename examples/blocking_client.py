"""Blocking client: start the simulation on every DAQ node and print frames as they arrive.

python examples/blocking_client.py [daq_config.json network_config.json] [--max-frames N]
"""

from __future__ import annotations

from _common import parse_args

from panoseti_daq import DaqClient


def main() -> None:
    args = parse_args(__doc__)
    with DaqClient(args.daq_config, args.network_config) as client:
        hosts = client.get_valid_daq_hosts()
        if not hosts:
            raise SystemExit("no DAQ node answered")
        print(f"connected to: {sorted(hosts)}")
        if not args.no_init and not client.init_sim(hosts):
            raise SystemExit("the simulation did not start on every node")
        stream = client.stream_images(
            hosts=hosts,
            stream_movie_data=True,
            stream_pulse_height_data=True,
            update_interval_seconds=0.5,
            module_ids=(),
        )
        for count, image in enumerate(stream, start=1):
            print(
                f"module {image['module_id']} {image['type']:<12} {image['shape']} "
                f"{image['header']['pandas_unix_timestamp']} max {image['image_array'].max()}"
            )
            if count == args.max_frames:
                break


if __name__ == "__main__":
    main()
