"""What the browser's canvas is sent: the image and the annotation at display resolution.

The server keeps the exact full-size annotation; the browser gets
- the image once per opened image, at most ``DISPLAY_MAX_PIXELS`` (JPEG: it is only looked at);
- the id map as a lossless PNG of segment *indices* at the same display size (8-bit grey while
  there are fewer than 256 segments, 24-bit RGB beyond), with the index -> segment table and a
  colour per segment, which the browser turns into the overlay itself (opacity, outline mode,
  hover and selection cost no round trip);
- only what changed: a picture the browser already holds is referred to by its key.

Display pixel (u, v) shows full-size pixel (floor((u + 0.5) * W / w), floor((v + 0.5) * H / h)).
The browser sends edits in full-size image coordinates (``app.raster``), so nothing the user does
is rounded to the display grid.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
from PIL import Image

from app.render import hex_color, jitter

DISPLAY_MAX_PIXELS = 2_400_000  # about 1900 x 1260: sharp on a 1440 x 900 screen at 100 % zoom
JPEG_QUALITY = 90


def display_size(h: int, w: int, max_pixels: int = DISPLAY_MAX_PIXELS) -> tuple[int, int]:
    """(h, w) of the display copy: the full size when it fits, else scaled to ``max_pixels``."""
    if h * w <= max_pixels:
        return h, w
    s = math.sqrt(max_pixels / (h * w))
    return max(1, int(h * s)), max(1, int(w * s))


def sample_grid(h: int, w: int, dh: int, dw: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-size row and column shown at each display row / column (nearest, centre-aligned)."""
    rows = np.minimum(((np.arange(dh) + 0.5) * h / dh).astype(np.int64), h - 1)  # (dh,)
    cols = np.minimum(((np.arange(dw) + 0.5) * w / dw).astype(np.int64), w - 1)  # (dw,)
    return rows, cols


def downsample_ids(id_map: np.ndarray, dh: int, dw: int) -> np.ndarray:
    """(dh, dw) ids: each display pixel takes the id of the full-size pixel it shows."""
    h, w = id_map.shape
    if (h, w) == (dh, dw):
        return id_map
    rows, cols = sample_grid(h, w, dh, dw)
    return id_map[rows[:, None], cols[None, :]]


def view_image(image: np.ndarray, dh: int, dw: int) -> np.ndarray:
    """(dh, dw, 3) uint8: the image reduced with an antialiasing filter (or itself)."""
    if image.shape[:2] == (dh, dw):
        return image
    return np.asarray(Image.fromarray(image).resize((dw, dh), Image.Resampling.BOX))


def data_url(img: np.ndarray, fmt: str = "PNG") -> str:
    """A ``data:`` URL of an image array (PNG: exact; JPEG: for photos only)."""
    buf = io.BytesIO()
    pil = Image.fromarray(img)
    if fmt == "JPEG":
        pil.save(buf, "JPEG", quality=JPEG_QUALITY)
    else:
        pil.save(buf, "PNG", compress_level=1)
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def index_png(display_ids: np.ndarray, ids: list[int]) -> tuple[str, str]:
    """Encode display ids as segment indices (0 = void, i = ``ids[i - 1]``).

    Returns:
        ``(data_url, mode)``: mode "L" (index = red channel) or "RGB" (index = r + 256 g +
        65536 b) when there are 256 segments or more. PNG keeps every index exact.
    """
    top = int(display_ids.max()) if display_ids.size else 0
    lut = np.zeros(max(top, max(ids, default=0)) + 1, np.uint32)
    lut[np.asarray(ids, np.int64)] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    index = lut[display_ids]  # (dh, dw)
    if len(ids) < 256:
        return data_url(index.astype(np.uint8)), "L"
    rgb = np.stack([(index >> (8 * c)) & 255 for c in range(3)], -1).astype(np.uint8)
    return data_url(rgb), "RGB"


def segment_colors(segments, cats: dict[int, Any]) -> dict[int, tuple[int, int, int]]:
    """Stuff segments in their class colour; thing instances in a jittered one (as detectron2)."""
    out = {}
    for s in segments:
        cat = cats.get(int(s["category_id"]))
        color = tuple(cat.color) if cat else (128, 128, 128)
        out[int(s["id"])] = jitter(color, int(s["id"])) if s.get("isthing") else color
    return out


def segment_rows(segments, cats: dict[int, Any]) -> list[dict[str, Any]]:
    """What the browser lists and colours: one dict per segment, in annotation order."""
    colors = segment_colors(segments, cats)
    rows = []
    for s in segments:
        cat = cats.get(int(s["category_id"]))
        score = s.get("score")
        rows.append(
            {
                "id": int(s["id"]),
                "cat": int(s["category_id"]),
                "cls": cat.name if cat else "?",
                "thing": bool(s.get("isthing")),
                "color": hex_color(colors[int(s["id"])]),
                "area": int(s["area"]),
                "query": None if s.get("query") is None else int(s["query"]),
                "score": None if score is None else round(float(score), 3),
            }
        )
    return rows


def class_rows(cats: list[Any]) -> list[dict[str, Any]]:
    """The classes a segment can be given; the first nine have hotkeys 1-9."""
    return [
        {
            "id": c.id,
            "name": c.name,
            "color": hex_color(c.color),
            "thing": bool(c.isthing),
            "key": str(i + 1) if i < 9 else "",
        }
        for i, c in enumerate(cats)
    ]
