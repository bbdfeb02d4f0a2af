"""`make demo`: show parsed frames of the bundled real NGC 7331 pulse-height data."""

from __future__ import annotations

from . import pff
from ._bundled import NGC7331_MODULE_ID, NGC7331_PH256
from .frames import PanoFrame
from .products import product_named


def main() -> None:
    product = product_named("ph256")
    for number, (header, pixels) in enumerate(pff.iter_frames(NGC7331_PH256, product)):
        frame = PanoFrame.create(
            product, header, pixels, NGC7331_MODULE_ID, NGC7331_PH256.name, number
        )
        parsed = frame.to_dict()
        image = parsed["image_array"]
        print(
            f"#{number:3d} module {frame.module_id} quabo {header['quabo_num']} "
            f"{parsed['header']['pandas_unix_timestamp']} "
            f"(WR {'ok' if frame.time.wr_valid else 'unavailable: host clock'}) "
            f"max {int(image.max()):5d} mean {float(image.mean()):7.1f}"
        )


if __name__ == "__main__":
    main()
