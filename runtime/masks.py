"""Every operation on the user's mask, in one place (docs/pipeline.md §3).

Masks travel as ``bool`` (True = hole) at full resolution, never as int64: at 50 MP an int64
mask is 400 MB, a bool one 50 MB. The user's file is read by ``imageio.read_mask`` (uint8,
255 = fill, not yet binarised); from there:

* ``binarize`` (once, at 127.5), ``invert``, ``dilate``;
* ``to_model``: a crop's hole resized to the model's native square;
* ``latent_mask``: the native hole sampled onto the 8×8 latent grid;
* ``feather``: the paste-back weights (uint8, 255 = take the model's pixel).

Each step that differs between the two fidelity modes (``contract.FIDELITY_MODES``) takes the
mode: ``official`` is the reference pipeline bit for bit; ``complete`` (the default) guarantees
that every pixel of the user's hole is replaced.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from moebius_edge import contract


def binarize(mask: np.ndarray) -> np.ndarray:
    """uint8 mask -> bool hole: the official rule, values ≥ 127.5 are hole (so 128 is, 127 is not)."""
    return np.asarray(mask) >= contract.MASK_THRESHOLD


def invert(mask: np.ndarray) -> np.ndarray:
    """Black = fill instead of white = fill (uint8 in, uint8 out)."""
    return 255 - np.asarray(mask, dtype=np.uint8)


def _disc(pixels: int):
    import cv2

    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))


def dilate(hole: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a bool hole by ``pixels`` with a disc, so thin strokes cover an object's edge."""
    if pixels <= 0:
        return hole
    import cv2

    return cv2.dilate(hole.view(np.uint8), _disc(pixels)).astype(bool)


def to_u8(hole: np.ndarray) -> np.ndarray:
    """bool hole -> uint8 0/255 (Pillow and OpenCV work on uint8)."""
    return hole.view(np.uint8) * np.uint8(255)


def to_model(hole: np.ndarray, size: tuple) -> np.ndarray:
    """A crop's bool hole resized to ``size`` (W, H): area filter, then the official
    re-binarisation at 127.5 (a cell at least half covered is hole)."""
    from moebius_edge.crop import resize_area

    if hole.shape[::-1] == tuple(size):
        return hole.copy()
    return resize_area(to_u8(hole), size) >= contract.MASK_THRESHOLD


def pixel_mask(hole: np.ndarray) -> np.ndarray:
    """(N, N) bool -> (1, 1, N, N) float32, 1 = hole: what the masked image is multiplied by."""
    return hole.astype(np.float32)[None, None]


def latent_mask(hole: np.ndarray) -> np.ndarray:
    """(N, N) bool -> (1, 1, N/8, N/8) float32: the top-left pixel of every 8×8 cell (official)."""
    f = contract.VAE_FACTOR
    return np.ascontiguousarray(hole[::f, ::f].astype(np.float32)[None, None])


def feather(hole: np.ndarray, radius) -> np.ndarray:
    """Paste-back weights: Pillow's GaussianBlur of the binary hole (the official paste-back uses
    Pillow's, an extended box blur, not an exact Gaussian; the goldens depend on it). ``radius``
    may be (rx, ry) for a squashed crop. uint8, 255 = the model's pixel."""
    if isinstance(radius, (tuple, list)) and radius[0] == radius[1]:
        radius = radius[0]
    return np.asarray(Image.fromarray(to_u8(hole)).filter(ImageFilter.GaussianBlur(radius)))
