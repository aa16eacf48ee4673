"""Training augmentations as the official mappers do them, on a numpy image + id map pair.

Every random choice comes from a ``np.random.Generator`` passed in, so a seed fixes the result.
Images are (H, W, 3) uint8 and resized bilinearly; id maps are (H, W) int32 (0 = void) and
resized with nearest neighbour, so ids never mix.

Mappers (``cfg.input.mapper``):
- ``"semantic"`` / ``"panoptic"`` (the official MaskFormer semantic and ADE20K panoptic mappers):
  ResizeShortestEdge("choice") -> random crop ("absolute") -> SSD colour jitter -> flip ->
  pad the image with ``pad_value`` (128, raw pixels) and the id map with 0 to the crop size.
- ``"detr_panoptic"`` (COCO): flip -> ResizeShortestEdge; or, with p = 0.5, flip ->
  ResizeShortestEdge([400, 500, 600]) -> crop ("absolute_range", 384..600) -> ResizeShortestEdge.
  No colour jitter, no padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from maskformer.config import InputConfig

# DETR's crop branch, as in the official detr_panoptic mapper.
DETR_CROP_SHORT_SIZES = (400, 500, 600)
DETR_CROP_RANGE = (384, 600)


def resized_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """(H, W) after ResizeShortestEdge: short side -> ``short``, long side at most ``max_size``."""
    scale = short / min(h, w)
    new_h, new_w = (short, scale * w) if h < w else (scale * h, short)
    if max(new_h, new_w) > max_size:
        s = max_size / max(new_h, new_w)
        new_h, new_w = new_h * s, new_w * s
    return int(new_h + 0.5), int(new_w + 0.5)


def resize(
    image: np.ndarray, id_map: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``size`` = (H, W): image bilinear, id map nearest."""
    h, w = size
    if (h, w) == id_map.shape:
        return image, id_map
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    return image, resize_nearest(id_map, (h, w))


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize sampling at pixel centres (as PIL NEAREST), any dtype."""
    h0, w0 = labels.shape[:2]
    ys = np.minimum(((np.arange(size[0]) + 0.5) * (h0 / size[0])).astype(np.int64), h0 - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * (w0 / size[1])).astype(np.int64), w0 - 1)
    return labels[ys[:, None], xs[None, :]]  # (H, W)


def resize_shortest_edge(
    image: np.ndarray,
    id_map: np.ndarray,
    sizes: Sequence[int],
    max_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """ResizeShortestEdge with sample style "choice": the short side is drawn from ``sizes``."""
    short = int(sizes[int(rng.integers(len(sizes)))])
    h, w = id_map.shape
    return resize(image, id_map, resized_shape(h, w, short, max_size))


def crop(image: np.ndarray, id_map: np.ndarray, box: tuple[int, int, int, int]):
    """Crop ``box`` = (y0, x0, h, w) from both arrays."""
    y0, x0, h, w = box
    return image[y0 : y0 + h, x0 : x0 + w], id_map[y0 : y0 + h, x0 : x0 + w]


def random_crop(
    image: np.ndarray, id_map: np.ndarray, crop_size: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Crop type "absolute": a random (min(crop_h, H), min(crop_w, W)) window."""
    h, w = id_map.shape
    ch, cw = min(crop_size[0], h), min(crop_size[1], w)
    y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    return crop(image, id_map, (y0, x0, ch, cw))


def random_crop_range(
    image: np.ndarray, id_map: np.ndarray, lo: int, hi: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Crop type "absolute_range": crop H in [min(H, lo), min(H, hi)], W likewise."""
    h, w = id_map.shape
    ch = int(rng.integers(min(h, lo), min(h, hi) + 1))
    cw = int(rng.integers(min(w, lo), min(w, hi) + 1))
    return random_crop(image, id_map, (ch, cw), rng)


def hflip(image: np.ndarray, id_map: np.ndarray, rng: np.random.Generator, p: float = 0.5):
    """Horizontal flip of both arrays with probability ``p``."""
    if rng.random() < p:
        return image[:, ::-1], id_map[:, ::-1]
    return image, id_map


def pad_to(
    image: np.ndarray,
    id_map: np.ndarray,
    size: tuple[int, int],
    image_value: int = 128,
    id_value: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right to at least ``size`` = (H, W): image with ``image_value``, ids with void."""
    h, w = id_map.shape
    ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
    if ph == 0 and pw == 0:
        return image, id_map
    image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=image_value)
    id_map = np.pad(id_map, ((0, ph), (0, pw)), constant_values=id_value)
    return image, id_map


# --------------------------------------------------------------------------------------------
# SSD colour jitter (image only), as PointRend's ColorAugSSDTransform


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def color_aug_ssd(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: float = 32,
    contrast: tuple[float, float] = (0.5, 1.5),
    saturation: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """Brightness (p 0.5), then contrast/saturation/hue or saturation/hue/contrast (each p 0.5).

    Works in OpenCV's BGR/HSV convention like the official transform (hue in 0..179).

    Args:
        image: (H, W, 3) uint8 RGB.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    if rng.integers(2):
        bgr = _convert(bgr, beta=rng.uniform(-brightness_delta, brightness_delta))

    def do_contrast(x):
        return _convert(x, alpha=rng.uniform(*contrast)) if rng.integers(2) else x

    def do_saturation(x):
        if not rng.integers(2):
            return x
        hsv = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(*saturation))
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    def do_hue(x):
        if not rng.integers(2):
            return x
        hsv = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
        shift = int(rng.integers(-hue_delta, hue_delta + 1))
        hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + shift) % 180).astype(np.uint8)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    order = (
        (do_contrast, do_saturation, do_hue)
        if rng.integers(2)
        else (do_saturation, do_hue, do_contrast)
    )
    for step in order:
        bgr = step(bgr)
    return np.ascontiguousarray(bgr[:, :, ::-1])


# --------------------------------------------------------------------------------------------
# mappers


def semantic_mapper(
    image: np.ndarray, id_map: np.ndarray, cfg: InputConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The official semantic / ADE20K-panoptic training augmentation (see module docstring).

    The colour jitter draws from its own child generator, so turning it on or off leaves the
    geometry (sizes, crop window, flip) of a given seed unchanged.
    """
    color_rng = np.random.default_rng(int(rng.integers(1 << 63)))
    image, id_map = resize_shortest_edge(image, id_map, cfg.min_size_train, cfg.max_size_train, rng)
    if cfg.crop_size is not None:
        image, id_map = random_crop(image, id_map, cfg.crop_size, rng)
    if cfg.color_aug_ssd:
        image = color_aug_ssd(image, color_rng)
    if cfg.flip:
        image, id_map = hflip(image, id_map, rng)
    if cfg.crop_size is not None:
        image, id_map = pad_to(image, id_map, cfg.crop_size, image_value=cfg.pad_value)
    return np.ascontiguousarray(image), np.ascontiguousarray(id_map)


def detr_panoptic_mapper(
    image: np.ndarray,
    id_map: np.ndarray,
    cfg: InputConfig,
    rng: np.random.Generator,
    crop_range: tuple[int, int] | None = DETR_CROP_RANGE,
) -> tuple[np.ndarray, np.ndarray]:
    """The official COCO (DETR) panoptic augmentation; ``crop_range=None``: no crop branch."""
    use_crop = crop_range is not None and rng.random() < 0.5
    if cfg.flip:
        image, id_map = hflip(image, id_map, rng)
    if use_crop:
        image, id_map = resize_shortest_edge(image, id_map, DETR_CROP_SHORT_SIZES, 1 << 30, rng)
        image, id_map = random_crop_range(image, id_map, crop_range[0], crop_range[1], rng)
    image, id_map = resize_shortest_edge(image, id_map, cfg.min_size_train, cfg.max_size_train, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(id_map)


def train_mapper(
    image: np.ndarray, id_map: np.ndarray, cfg: InputConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch on ``cfg.mapper``: "semantic" | "panoptic" | "detr_panoptic"."""
    if cfg.mapper in ("semantic", "panoptic"):
        return semantic_mapper(image, id_map, cfg, rng)
    if cfg.mapper == "detr_panoptic":
        return detr_panoptic_mapper(image, id_map, cfg, rng)
    raise ValueError(
        f"unknown input.mapper {cfg.mapper!r}; use semantic, panoptic or detr_panoptic"
    )
