"""Regenerates tests/data/demo_photo.jpg and demo_mask.png byte for byte (NumPy + Pillow only).

    python tests/data/make_demo_photo.py

A synthetic 768×512 landscape (sky, clouds, mountains, lake, meadow) with a red ball to remove,
and the mask a user would paint over the ball and its shadow, from a fixed seed: no third-party
content, dedicated to the public domain (CC0). Used by `make demo` (examples/demo.py) and the
runtime benchmark.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
PHOTO = HERE / "demo_photo.jpg"
MASK = HERE / "demo_mask.png"
W, H = 768, 512


def _value_noise(rng, h, w, octaves=5, base=4):
    """Fractal value noise in [0, 1]: bicubic-upsampled random grids, halving amplitude per octave."""
    out = np.zeros((h, w))
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = base * 2 ** o
        grid = rng.random((cells + 1, int(cells * w / h) + 1)).astype(np.float32)
        out += amp * np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.Resampling.BICUBIC))
        total += amp
        amp *= 0.5
    out /= total
    return (out - out.min()) / (out.max() - out.min())


def make_photo(seed: int = 0) -> tuple:
    """A landscape (sky, clouds, mountains, lake, meadow) with a red ball to remove, and its mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W, 3))
    # Sky: vertical gradient with clouds.
    t = y / H
    sky = np.stack([90 + 120 * t, 150 + 80 * t, 235 - 10 * t], -1)
    clouds = np.clip((_value_noise(rng, H, W, 6, 3) - 0.55) * 3.0, 0, 1)[..., None]
    img[:] = sky * (1 - clouds) + 245 * clouds
    # Two mountain ranges from 1-D noise.
    for i, (level, rough, colour) in enumerate([(0.38, 70, (110, 120, 150)), (0.48, 50, (70, 95, 85))]):
        ridge = _value_noise(rng, 8, W, 6, 1)[4] * rough + H * level - rough / 2
        shade = 0.85 + 0.3 * _value_noise(rng, H, W, 5, 8)[..., None]
        m = (y >= ridge[None, :])[..., None]
        img = np.where(m, np.array(colour) * shade, img)
    # Lake with a darkened reflection band, then the meadow.
    lake = (y >= H * 0.58) & (y < H * 0.66)
    ripple = 0.9 + 0.1 * np.sin(y * 1.7 + 3 * _value_noise(rng, H, W, 4, 16))
    img[lake] = (np.array([60, 110, 160]) * ripple[lake][:, None])
    meadow = y >= H * 0.66
    grass = _value_noise(rng, H, W, 6, 24)
    g = np.stack([70 + 60 * grass, 120 + 70 * grass, 40 + 30 * grass], -1) * (0.8 + 0.3 * t[..., None])
    img[meadow] = g[meadow]
    # The object to remove: a shaded red ball with a highlight and a shadow on the grass.
    cx, cy, r = 520, 420, 38
    shadow = ((x - cx - 18) / (r * 1.3)) ** 2 + ((y - cy - r + 6) / (r * 0.35)) ** 2 < 1
    img[shadow] *= 0.55
    d = np.hypot(x - cx, y - cy)
    ball = d < r
    light = np.clip(1.15 - np.hypot(x - cx + 12, y - cy + 14) / (1.6 * r), 0.25, 1.0)
    img[ball] = (np.array([215, 30, 35]) * light[ball][:, None]) + 40 * (light[ball][:, None] > 0.97)
    img += rng.normal(0, 3.0, img.shape)  # sensor noise
    photo = np.clip(img, 0, 255).astype(np.uint8)
    # The mask a user would paint: the ball and its shadow, with a generous brush.
    hole = (d < r + 10) | (((x - cx - 18) / (r * 1.3 + 10)) ** 2 + ((y - cy - r + 6) / (r * 0.35 + 8)) ** 2 < 1)
    mask = np.where(hole, 255, 0).astype(np.uint8)
    return photo, mask


def write_photo() -> None:
    photo, mask = make_photo()
    Image.fromarray(photo).save(PHOTO, quality=90, optimize=True)
    Image.fromarray(mask).save(MASK, optimize=True)
    print(f"wrote {PHOTO} ({PHOTO.stat().st_size // 1024} KB) and {MASK} ({MASK.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    write_photo()
