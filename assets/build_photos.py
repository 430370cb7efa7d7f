"""Rebuild ``assets/photos/``: four public-domain / CC0 photographs from scikit-image's bundled
data, shrunk to at most 300 pixels a side (see assets/README.md for each one's licence).

    pip download scikit-image==0.26.0 --no-deps -d /tmp/skimg
    unzip -o /tmp/skimg/scikit_image-0.26.0-*.whl 'skimage/data/*' -d /tmp/skimg
    python assets/build_photos.py /tmp/skimg/skimage/data
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

PHOTOS = {"astronaut.png": "astronaut.jpg", "chelsea.png": "chelsea.jpg",
          "coffee.png": "coffee.jpg", "rocket.jpg": "rocket.jpg"}
MAX_SIDE = 300


def main(data: Path, out: Path = Path(__file__).parent / "photos") -> None:
    out.mkdir(exist_ok=True)
    for src, dst in PHOTOS.items():
        with Image.open(data / src) as im:
            im = im.convert("RGB")
            im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            im.save(out / dst, "JPEG", quality=90, optimize=True)  # no EXIF, no ICC
        print(dst, im.size, (out / dst).stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
