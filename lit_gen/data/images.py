"""Reading users' image files: every file is checked when the data set is built (unreadable ones are skipped
and reported with a count), 16-bit images are scaled to 8 bits instead of clipped, and an image that still
fails to decode mid-fit names its file."""

from __future__ import annotations

import os
import sys

import numpy as np

# 16-bit grey PNG / TIFF (I: 32-bit ints read from them)
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded; the message names it. The fit stops at the step before it."""


def image_extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return IMG_EXTENSIONS


def is_image(name: str) -> bool:
    return name.lower().endswith(image_extensions())


def has_images(root: str) -> bool:
    """Whether ``root`` or one of its sub-folders holds a file with an image extension (stops at the
    first)."""
    return any(is_image(name) for _, _, names in os.walk(root) for name in names)


def load_image(path: str):
    """The image at ``path`` as an RGB PIL image; 16-bit images keep their range (65535 -> 255). Raises
    :class:`UnreadableImageError` naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in HIGH_BIT_MODES:
                array = np.asarray(image, dtype=np.float64)
                scale = 255 / 65535 if array.max(initial=0) > 255 or image.mode != "I" else 1.0
                image = Image.fromarray(np.clip(array * scale + 0.5, 0, 255).astype(np.uint8), mode="L")
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for truncated, corrupt or unknown files
        raise UnreadableImageError(f"cannot read the image {path!r}: {err}") from None


def readable(paths: list[str], root: str) -> list[bool]:
    """Check every file (``PIL.Image.verify``: headers and, for PNG, every chunk's checksum) and report the
    bad ones on stderr with a count; returns one flag per path. Raises a one-line ValueError when none is
    readable."""
    from PIL import Image

    ok, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
            ok.append(True)
        except Exception as err:  # noqa: BLE001 - any failure means the file cannot be used
            ok.append(False)
            bad.append(f"{os.path.relpath(path, root)} ({type(err).__name__})")
    if bad and not any(ok):
        raise ValueError(f"none of the {len(paths)} images in {root!r} can be read, e.g. {bad[0]}")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        print(f"lit-gen: skipped {len(bad)} of {len(paths)} images in {root!r} that cannot be read: {shown}",
              file=sys.stderr)
    return ok
