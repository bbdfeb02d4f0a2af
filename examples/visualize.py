"""Live visualisation: the frame previewer of the seed README, fed by the blocking client.

The previewer's figure is written as DIR/preview.png when the stream ends (--png DIR, default
panoseti_plots or $PANOSETI_PLOT_DIR); with a display, its window also updates as frames arrive.

    python examples/visualize.py [--max-frames N] [--png DIR]   # a server of its own

    python examples/visualize.py daq_config.json [network_config.json] [--init-sim]
"""

from __future__ import annotations

import argparse
import os

from _common import daq_target, parse_args

from panoseti_daq import DaqClient, plots


def _png_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--png",
        metavar="DIR",
        default=os.environ.get("PANOSETI_PLOT_DIR", "panoseti_plots"),
        help="where preview.png is written (default: panoseti_plots, or $PANOSETI_PLOT_DIR)",
    )


def main() -> None:
    args = parse_args(__doc__, _png_option)
    with daq_target(args):
        out = args.png
        with DaqClient(args.daq_config, args.network_config) as client:
            hosts = client.get_valid_daq_hosts()
            if args.init_sim:
                client.init_sim(hosts)
            previewer = plots.PanoImagePreviewer(
                stream_movie_data=True, stream_pulse_height_data=True
            )
            stream = client.stream_images(
                hosts=hosts,
                stream_movie_data=True,
                stream_pulse_height_data=True,
                update_interval_seconds=0.5,
                wait_for_ready=True,
                parse_pano_images=True,
            )
            for count, pano_image in enumerate(stream, start=1):
                previewer.update(pano_image)
                if count == args.max_frames:
                    break
            os.makedirs(out, exist_ok=True)
            path = os.path.join(out, "preview.png")
            previewer.save(path)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
