"""Reading images from disk: every format a user may have, one clear error for a bad file."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from mnasnet import limits
from mnasnet.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_IMAGE_PIXELS = limits.MAX_IMAGE_PIXELS


def load_image(path: str | os.PathLike) -> Image.Image:
    """Opens an image as 8-bit RGB, honouring its EXIF orientation.

    Raises:
        DataError: the file is missing, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(f"image {path} is {width}x{height} pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels")
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"image {path} is too large to decode in memory") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read image {path}: {error}") from None
    except Exception as error:  # noqa: BLE001 (PIL's decoders raise many types on malformed files)
        raise DataError(f"cannot read image {path}: {type(error).__name__}: {error}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit (or 32-bit) grayscale: scale to 8 bits instead of clipping. 16-bit modes
        # always span 0-65535; a 32-bit "I" image is 16-bit data when it exceeds 255.
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        sixteen_bit = image.mode.startswith("I;16") or array.max(initial=0) > 255
        peak = 65535.0 if sixteen_bit else 255.0
        array = np.clip(array * (255.0 / peak), 0, 255)
        image = Image.fromarray(array.round().astype("uint8"))
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def find_images(path: str | os.PathLike) -> list[Path]:
    """The image files in a folder (recursively, sorted), or the path itself if it is a file."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [path]
