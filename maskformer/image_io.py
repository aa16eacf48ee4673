"""Reading any image the user hands us into one (H, W, 3) uint8 RGB array."""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maskformer.errors import ImageReadError

# Refuse images larger than this many pixels (about a 12,000 x 8,300 photo) before decoding them.
# A module constant, not PIL's global ``Image.MAX_IMAGE_PIXELS``, so other code in the process keeps
# PIL's own behaviour. PIL still refuses anything above 2 * Image.MAX_IMAGE_PIXELS on its own.
DEFAULT_MAX_PIXELS = 100_000_000

# Refuse images more elongated than this (long side / short side). The network resizes the short
# side up to its test size with the long side capped, so a 1 x 4000 strip would become 0 pixels
# tall; any real photo or panorama is far below this.
MAX_ASPECT_RATIO = 64

ImageSource = str | os.PathLike | bytes | bytearray | Image.Image | np.ndarray


def load_image(
    src: ImageSource,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect: float | None = MAX_ASPECT_RATIO,
) -> np.ndarray:
    """Read a path, encoded bytes, a PIL image or an array into an RGB uint8 array.

    EXIF orientation is applied. Alpha is dropped (not composited). 16-bit, 32-bit integer and float
    images are scaled to 0..255 (see ``_to_uint8``). Multi-frame files give their first frame.

    Args:
        src: a file path, the bytes of an encoded image, a ``PIL.Image.Image``, or an array of shape
            (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).
        max_pixels: refuse images with more pixels than this (checked on the header, before
            decoding); None disables the check.
        max_aspect: refuse images whose long side is more than this many times the short side
            (the header again); None disables the check.

    Returns:
        (H, W, 3) uint8 RGB array (C-contiguous, owning its memory).

    Raises:
        ImageReadError: missing, empty, truncated, unreadable, or too large input.
    """
    if isinstance(src, np.ndarray):
        out = _array_to_rgb(src, "array")
        check_image_size(out.shape[1], out.shape[0], "array", None, max_aspect)
        return out
    if isinstance(src, Image.Image):
        check_image_size(*src.size, "image", None, max_aspect)
        return _pil_to_rgb(src, "image")
    if isinstance(src, (bytes, bytearray)):
        if len(src) == 0:
            raise ImageReadError("cannot read image from bytes: the data is empty")
        return _decode(io.BytesIO(bytes(src)), "<bytes>", max_pixels, max_aspect)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        _check_file(path)
        try:
            with open(path, "rb") as f:
                return _decode(f, str(path), max_pixels, max_aspect)
        except OSError as e:  # unreadable file, a name too long, permissions
            raise ImageReadError(f"cannot read image {path}: {e.strerror or e}") from None
    raise ImageReadError(f"cannot read an image from a {type(src).__name__}")


def check_image_size(
    width: int,
    height: int,
    name: str,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect: float | None = MAX_ASPECT_RATIO,
) -> None:
    """Raise ImageReadError for an image of no pixels, too many pixels, or a degenerate shape."""
    if width < 1 or height < 1:
        raise ImageReadError(f"cannot read image {name}: it has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            f"cannot read image {name}: {width}x{height} = {width * height / 1e6:.1f} MP exceeds "
            f"the limit of {max_pixels / 1e6:.1f} MP (possible decompression bomb)"
        )
    if max_aspect is not None and max(width, height) > max_aspect * min(width, height):
        raise ImageReadError(
            f"cannot read image {name}: {width}x{height} is too elongated to segment (one side "
            f"more than {max_aspect:g} times the other)"
        )


def _check_file(path: Path) -> None:
    try:
        exists = path.exists()
    except (OSError, ValueError) as e:  # a name too long, a NUL byte
        raise ImageReadError(f"cannot read image {path}: {e}") from None
    if not exists:
        raise ImageReadError(f"cannot read image {path}: the file does not exist")
    if path.is_dir():
        raise ImageReadError(f"cannot read image {path}: it is a directory")
    if path.stat().st_size == 0:
        raise ImageReadError(f"cannot read image {path}: the file is empty (0 bytes)")


def _decode(fp, name: str, max_pixels: int | None, max_aspect: float | None) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # We apply our own limit below; PIL's warning (above its global limit) would be noise,
            # and so would its warnings about a corrupt EXIF block (the pixels are fine).
            warnings.simplefilter("ignore")
            im = Image.open(fp)
    except Image.DecompressionBombError:
        raise ImageReadError(
            f"cannot read image {name}: it is too large to decode safely "
            f"(possible decompression bomb)"
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError(
            f"cannot read image {name}: not a recognised image format (or its header is damaged)"
        ) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"cannot read image {name}: {e}") from None
    with im:
        check_image_size(*im.size, name, max_pixels, max_aspect)
        try:
            im.load()
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise ImageReadError(
                f"cannot read image {name}: the file is truncated or corrupt ({e})"
            ) from None
        return _pil_to_rgb(im, name)


def _pil_to_rgb(im: Image.Image, name: str) -> np.ndarray:
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a broken EXIF block: no rotation, and no noise either
        im = ImageOps.exif_transpose(im) or im
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode.startswith("I") or mode == "F":  # I, I;16, I;16B, I;16L, I;16N, F
        return _array_to_rgb(np.asarray(im), name)
    if mode == "P" or mode == "PA":
        # Palette transparency must go through RGBA (PIL warns when converting straight to RGB).
        im = im.convert("RGBA")
    try:
        return np.array(im.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as e:
        raise ImageReadError(f"cannot read image {name}: unsupported mode {mode!r} ({e})") from None


def _array_to_rgb(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim == 2:
        a = np.repeat(_to_uint8(a)[:, :, None], 3, axis=2)  # (H, W, 3)
    elif a.ndim == 3 and a.shape[2] == 3:
        a = _to_uint8(a)
    else:
        raise ImageReadError(
            f"cannot read image {name}: expected an array of shape (H, W), "
            f"(H, W, 1), (H, W, 3) or (H, W, 4), got {tuple(a.shape)}"
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageReadError(f"cannot read image {name}: it has no pixels ({tuple(a.shape)})")
    return np.ascontiguousarray(a)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Scale any numeric array to uint8.

    - uint8 as is; bool to 0/255.
    - integers: values that fit in 0..255 are kept; otherwise the range is read as the smallest bit
      depth holding the maximum (10, 12, 14, 16 ... bits, so 12-bit sensor data is not nearly black)
      and scaled to 0..255; negative values are min-max stretched.
    - floats: [0, 1] data is multiplied by 255, [0, 255] data is rounded, anything else is min-max
      stretched; NaN/inf become 0.
    """
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo >= 0 and hi <= 255:
            return a.astype(np.uint8)
        if lo >= 0:
            bits = max(8, math.ceil(math.log2(hi + 1)))
            bits = bits + (bits % 2)  # 9 -> 10, 11 -> 12, ...
            return _round_u8(a.astype(np.float64) * (255.0 / (2**bits - 1)))
        return _stretch(a.astype(np.float64))
    a = np.where(np.isfinite(a), a, 0).astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0 and hi <= 1:
        return _round_u8(a * 255.0)
    if lo >= 0 and hi <= 255:
        return _round_u8(a)
    return _stretch(a)


def _stretch(a: np.ndarray) -> np.ndarray:
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return _round_u8((a - lo) * (255.0 / (hi - lo)))


def _round_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
