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
that every pixel of the user's hole is replaced, however thin the stroke:

* model side: a native pixel is hole when *any* part of it is covered (official: at least half),
  and the hole is grown to whole 8×8 latent cells, so the latent grid sees every stroke
  (official: the top-left pixel of each cell decides, and a 3 px line can miss every one);
* paste-back: the user's hole gets weight 255, and the feather lies outside it (official: the
  blurred edge straddles the hole, so a thin stroke never reaches full weight).

``coverage_report`` measures, per crop, what the model was told and what can still be lost.
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


def _check_fidelity(fidelity: str) -> None:
    if fidelity not in contract.FIDELITY_MODES:
        raise ValueError(f"fidelity must be one of {contract.FIDELITY_MODES}, got {fidelity!r}")


def coverage(hole: np.ndarray, size: tuple) -> np.ndarray:
    """The fraction of each output pixel that the bool ``hole`` covers, float32, resized to
    ``size`` (W, H) one axis at a time: OpenCV's exact area overlap when shrinking (one covered
    pixel in a 40×40 footprint still counts, 0.000625, and a pixel straddling two outputs counts
    in both), linear interpolation when enlarging. No uint8 rounding anywhere."""
    import cv2

    a = hole.astype(np.float32)
    h, w = a.shape
    tw, th = size
    if (tw, th) == (w, h):
        return a
    a = cv2.resize(a, (tw, h), interpolation=cv2.INTER_AREA if tw <= w else cv2.INTER_LINEAR)
    return cv2.resize(a, (tw, th), interpolation=cv2.INTER_AREA if th <= h else cv2.INTER_LINEAR)


def whole_cells(native: np.ndarray) -> np.ndarray:
    """Grow a native-size bool hole to the whole 8×8 latent cells it touches."""
    f = contract.VAE_FACTOR
    h, w = native.shape
    cells = native.reshape(h // f, f, w // f, f).any(axis=(1, 3))
    return np.repeat(np.repeat(cells, f, axis=0), f, axis=1)


def to_model(hole: np.ndarray, size: tuple, fidelity: str) -> np.ndarray:
    """A crop's bool hole at the model's native ``size`` (W, H).

    official: area filter on uint8, then the re-binarisation at 127.5 (a pixel at least half
    covered is hole). complete: any coverage is hole, then whole latent cells."""
    from moebius_edge.crop import resize_area

    _check_fidelity(fidelity)
    if fidelity == "complete":
        return whole_cells(coverage(hole, size) > 0)
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


def feather(hole: np.ndarray, radius, fidelity: str) -> np.ndarray:
    """Paste-back weights, uint8, 255 = the model's pixel. ``radius`` may be (rx, ry) for a
    squashed crop.

    official: Pillow's GaussianBlur of the binary hole (Pillow's is an extended box blur, not an
    exact Gaussian; the goldens depend on it). complete: the same blur doubled and clipped at 255,
    then 255 on every hole pixel: full weight on the whole hole, the ramp outside it."""
    _check_fidelity(fidelity)
    if isinstance(radius, (tuple, list)) and radius[0] == radius[1]:
        radius = radius[0]
    blurred = np.asarray(Image.fromarray(to_u8(hole)).filter(ImageFilter.GaussianBlur(radius)))
    if fidelity == "official":
        return blurred
    weights = np.minimum(blurred.astype(np.uint16) * 2, 255).astype(np.uint8)
    weights[hole] = 255
    return weights


def coverage_report(hole: np.ndarray, native: np.ndarray, weights: np.ndarray, crop_size: tuple,
                    offset: tuple) -> dict:
    """What the model was told and what can still be lost, for one crop.

    ``hole``: the user's bool hole in the pasted region (full resolution); ``native``: the hole
    sent to the model; ``weights``: the paste-back weights of the region; ``crop_size`` (W, H):
    the crop the model saw, and ``offset`` (x, y): where the region starts inside it.

    * ``hole_px``: pixels of the user's hole;
    * ``model_native_px`` and ``hole_native_px``: hole pixels sent to the model at native size,
      and the user's hole area at that size (their ratio is how much the hole was grown);
    * ``unseen_px``: hole pixels in latent cells the model is not told to fill (they come back
      as the model's reconstruction of the masked image, not as a fill);
    * ``underweight_px``: hole pixels pasted with weight below 255 (partly the original)."""
    n, f = native.shape[0], contract.VAE_FACTOR
    cw, ch = crop_size
    seen = native[::f, ::f].repeat(f, axis=0).repeat(f, axis=1)  # the cells of latent_mask(native)
    seen_full = np.asarray(Image.fromarray(to_u8(seen)).resize((cw, ch), Image.Resampling.NEAREST)) > 0
    x, y = offset
    seen_full = seen_full[y:y + hole.shape[0], x:x + hole.shape[1]]
    hole_native = float(hole.sum()) * (n * n) / float(cw * ch)
    return {"hole_px": int(hole.sum()), "hole_native_px": round(hole_native, 1),
            "model_native_px": int(native.sum()), "unseen_px": int((hole & ~seen_full).sum()),
            "underweight_px": int((hole & (weights < 255)).sum())}


def paste_region(hole: np.ndarray, image_size: int, fidelity: str = contract.DEFAULT_FIDELITY) -> np.ndarray:
    """(H, W) bool: every pixel the paste-back may touch, the union of each crop's feathered hole
    by the runtime's own crop plan and feather; every other pixel is returned unchanged."""
    from moebius_edge import crop

    h, w = hole.shape
    labels, crops = crop.plan_crops(hole, image_size)
    out = np.zeros((h, w), bool)
    for c in crops:
        r = c.region(w, h)
        group = np.isin(labels[r.slices], c.labels)
        out[r.slices] |= feather(group, crop.paste_radius(c.box, image_size), fidelity) > 0
    return out
