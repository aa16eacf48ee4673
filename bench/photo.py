"""A photo-like test image made procedurally (no internet here): a lake scene at 741 x 500.

Usage: ``python bench/photo.py OUT.jpg [--width 741 --height 500 --seed 0]``.

What it holds: a sky with soft clouds, hazy hills, a lake with ripples and a reflection, a meadow
with grass texture, and five objects lit from the upper left with shadows: a red ball, a wooden
crate, a yellow kite, an orange life ring on the water and a star-shaped sign. Sensor noise,
vignetting, a slight lens blur and JPEG compression make it look like a camera's output rather
than a drawing. Deterministic for a given seed. The shipped demo model knows only 8 synthetic
shape classes, so this tests the app on a picture it was not trained on.
"""

from __future__ import annotations

import argparse
import io
import math

import cv2
import numpy as np
from PIL import Image


def _smooth_noise(h: int, w: int, rng: np.random.Generator, octaves: int = 5) -> np.ndarray:
    """(h, w) float32 fractal noise in about [0, 1]."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 2 ** (o + 2)
        grid = rng.random((cells + 1, int(cells * w / h) + 2)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    out /= total
    return (out - out.min()) / max(float(np.ptp(out)), 1e-6)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t[..., None]


def _blend(img: np.ndarray, color: np.ndarray, alpha: np.ndarray) -> None:
    img[:] = img * (1 - alpha[..., None]) + color * alpha[..., None]


def _soft(mask: np.ndarray, sigma: float = 0.8) -> np.ndarray:
    """Anti-aliased alpha of a bool mask."""
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)


def _scene(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    horizon = 0.40 * h
    # sky: deep blue at the top to a pale haze at the horizon, with clouds
    t = np.clip(ys / horizon, 0, 1)
    img = _lerp(np.array([52, 104, 186], np.float32), np.array([196, 214, 232], np.float32), t)
    clouds = np.clip((_smooth_noise(h, w, rng) - 0.52) * 3.0, 0, 1) * (1 - t) ** 0.5
    _blend(img, np.array([246, 246, 250], np.float32), clouds * 0.85)
    # hazy hills on the horizon
    ridge = (
        horizon
        - 0.07 * h * (0.6 + 0.4 * np.sin(xs[0] / w * 5.1 + 0.7))
        - 0.03 * h * np.sin(xs[0] / w * 13.0)
    )
    hills = ys > ridge[None, :]
    shade = _smooth_noise(h, w, rng, 4)
    hill_col = _lerp(
        np.array([92, 120, 128], np.float32), np.array([70, 96, 88], np.float32), shade
    )
    a = _soft(hills)
    img = img * (1 - a[..., None]) + hill_col * a[..., None]
    # meadow
    ground = ys > horizon
    grass_t = _smooth_noise(h, w, rng, 6)
    blades = rng.normal(0, 1, (h, w)).astype(np.float32)
    blades = cv2.GaussianBlur(blades, (1, 7), 0)  # vertical streaks like blades of grass
    depth = np.clip((ys - horizon) / (h - horizon), 0, 1)
    grass = _lerp(np.array([86, 128, 52], np.float32), np.array([58, 112, 36], np.float32), grass_t)
    grass *= (0.8 + 0.35 * depth)[..., None]
    grass += (blades * (6 + 14 * depth))[..., None]
    a = _soft(ground)
    img = img * (1 - a[..., None]) + grass * a[..., None]
    # lake: a wavy shore on the left, ripples and the sky's reflection
    shore = 0.47 * w + 0.06 * w * np.sin(ys / h * 7.0) + 0.03 * w * np.sin(ys / h * 19.0)
    lake = (ys > horizon + 0.06 * h) & (xs < shore - (ys - horizon) * 0.25)
    ripple = np.sin(ys * 0.9 + 3 * np.sin(xs * 0.031)) * np.exp(-((ys - horizon) / h) * 1.5)
    water = _lerp(
        np.array([60, 96, 150], np.float32), np.array([26, 58, 104], np.float32), depth**0.7
    )
    water += (ripple * 16)[..., None]
    water = water * 0.85 + img[::-1][:h] * 0.0 + np.array([20, 26, 30], np.float32) * 0.15
    a = _soft(lake, 1.2)
    img = img * (1 - a[..., None]) + water * a[..., None]
    _objects(img, xs, ys, w, h, lake)
    return img


def _shadow(img: np.ndarray, xs, ys, cx: float, cy: float, rx: float, ry: float) -> None:
    d = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2
    _blend(img, np.zeros(3, np.float32), np.clip(1 - d, 0, 1) ** 1.5 * 0.55)


def _objects(img: np.ndarray, xs, ys, w: int, h: int, lake: np.ndarray) -> None:
    # a red ball on the meadow, lit from the upper left
    cx, cy, r = 0.70 * w, 0.70 * h, 0.085 * h * 1.3
    _shadow(img, xs, ys, cx + 0.4 * r, cy + 0.9 * r, 1.2 * r, 0.35 * r)
    d = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
    ball = d < r
    light = np.clip(
        1 - np.sqrt((xs - cx + 0.4 * r) ** 2 + (ys - cy + 0.45 * r) ** 2) / (1.6 * r), 0, 1
    )
    col = np.array([120, 18, 22], np.float32) + light[..., None] * np.array(
        [150, 60, 50], np.float32
    )
    spec = np.clip(
        1 - np.sqrt((xs - cx + 0.35 * r) ** 2 + (ys - cy + 0.4 * r) ** 2) / (0.18 * r), 0, 1
    )
    col += (spec**2 * 120)[..., None]
    a = _soft(ball)
    img[:] = img * (1 - a[..., None]) + col * a[..., None]
    # a wooden crate: front face and a darker side face
    x0, y0, s = 0.80 * w, 0.60 * h, 0.16 * h
    _shadow(img, xs, ys, x0 + 0.7 * s, y0 + s + 4, 0.9 * s, 0.18 * s)
    front = (xs > x0) & (xs < x0 + s) & (ys > y0) & (ys < y0 + s)
    side = (
        (xs >= x0 + s)
        & (xs < x0 + 1.3 * s)
        & (ys > y0 - (xs - x0 - s) * 0.5)
        & (ys < y0 + s - (xs - x0 - s) * 0.5)
    )
    top = (
        (ys <= y0)
        & (ys > y0 - 0.15 * s)
        & (xs > x0 + (y0 - ys) * 2)
        & (xs < x0 + s + (y0 - ys) * 2)
    )
    grain = 0.85 + 0.15 * np.sin(ys * 0.8 + np.sin(xs * 0.05) * 4)
    wood = np.array([168, 120, 70], np.float32) * grain[..., None]
    for mask, k in ((front, 1.0), (side, 0.62), (top, 1.15)):
        a = _soft(mask)
        img[:] = img * (1 - a[..., None]) + np.clip(wood * k, 0, 255) * a[..., None]
    planks = front & ((np.abs(xs - (x0 + s / 2)) < 1.2) | (np.abs(ys - (y0 + s / 2)) < 1.2))
    _blend(img, np.array([70, 45, 25], np.float32), planks.astype(np.float32) * 0.8)
    # a yellow kite in the sky with its string
    kx, ky, ks = 0.30 * w, 0.16 * h, 0.07 * h
    kite = (
        (ys > ky - ks)
        & (ys < ky + 1.4 * ks)
        & (np.abs(xs - kx) < (ks * 0.8) * (1 - np.abs(ys - ky) / np.where(ys < ky, ks, 1.4 * ks)))
    )
    a = _soft(kite)
    kite_col = np.array([250, 204, 40], np.float32) * (0.85 + 0.15 * (xs < kx))[..., None]
    img[:] = img * (1 - a[..., None]) + kite_col * a[..., None]
    string = np.abs((xs - kx) - (ys - ky - 1.4 * ks) * 0.9) < 0.7
    string &= (ys > ky + 1.4 * ks) & (ys < 0.55 * h)
    _blend(img, np.array([60, 60, 60], np.float32), string.astype(np.float32) * 0.6)
    # an orange life ring floating on the lake
    rx, ry, ro = 0.18 * w, 0.72 * h, 0.075 * h
    e = np.sqrt(((xs - rx) / ro) ** 2 + ((ys - ry) / (0.55 * ro)) ** 2)
    ring = (e < 1) & (e > 0.55)
    band = (np.arctan2(ys - ry, xs - rx) * 4 / math.pi) % 2 < 1
    ring_col = np.where(band[..., None], [236, 96, 30], [240, 236, 226]).astype(np.float32)
    ring_col *= (0.75 + 0.35 * np.clip((ry - ys) / ro + 0.5, 0, 1))[..., None]
    a = _soft(ring)
    img[:] = img * (1 - a[..., None]) + ring_col * a[..., None]
    # a star-shaped sign on a post
    sx, sy, so = 0.56 * w, 0.50 * h, 0.065 * h
    post = (np.abs(xs - sx) < 2.5) & (ys > sy) & (ys < sy + 0.22 * h)
    _blend(img, np.array([90, 70, 50], np.float32), _soft(post))
    ang = np.arctan2(ys - sy, xs - sx) + math.pi / 2
    rad = np.sqrt((xs - sx) ** 2 + (ys - sy) ** 2)
    k = (ang % (2 * math.pi / 5)) / (2 * math.pi / 5)
    edge = so * (0.45 + 0.55 * np.abs(1 - 2 * k))
    star = rad < edge
    _blend(img, np.array([140, 40, 170], np.float32), _soft(star))
    del lake  # the ring floats on it; the lake mask itself is not drawn twice


def make_photo(width: int = 741, height: int = 500, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8 RGB: the scene through a camera (blur, vignette, noise, JPEG)."""
    rng = np.random.default_rng(seed)
    img = _scene(height, width, rng)
    img = cv2.GaussianBlur(img, (0, 0), 0.7)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xs - width / 2) / width) ** 2 + ((ys - height / 2) / height) ** 2
    img *= (1 - 0.35 * r2)[..., None]
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    rgb = np.clip(img, 0, 255).round().astype(np.uint8)
    return np.asarray(Image.open(io.BytesIO(jpeg_bytes(rgb))).convert("RGB"))


def jpeg_bytes(rgb: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=741)
    ap.add_argument("--height", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with open(args.out, "wb") as f:
        f.write(jpeg_bytes(make_photo(args.width, args.height, args.seed)))


if __name__ == "__main__":
    main()
