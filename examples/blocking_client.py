"""Blocking client: print frames from every DAQ node as they arrive.

python examples/blocking_client.py [--max-frames N]   # a server of its own

python examples/blocking_client.py daq_config.json [network_config.json] [--init-sim]
"""

from __future__ import annotations

from _common import daq_target, parse_args

from panoseti_daq import DaqClient


def main() -> None:
    args = parse_args(__doc__)
    with daq_target(args):
        with DaqClient(args.daq_config, args.network_config) as client:
            hosts = client.get_valid_daq_hosts()
            if not hosts:
                raise SystemExit("no DAQ node answered")
            print(f"connected to: {sorted(hosts)}")
            if args.init_sim and not client.init_sim(hosts):
                raise SystemExit("the simulation did not start on every node")
            stream = client.stream_images(
                hosts=hosts,
                stream_movie_data=True,
                stream_pulse_height_data=True,
                update_interval_seconds=0.5,
                wait_for_ready=True,  # the server may still be starting its simulation
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
