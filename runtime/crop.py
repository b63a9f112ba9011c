"""Crop-around-the-mask geometry and the pixel operations around it (resize, feather, paste-back).

The model only works at its native square size (docs/model.md §8, docs/pipeline.md §7). The official pipeline
squashes every photo to that size and returns a small result; here only a square around the hole
is sent to the model and the result is pasted back into the untouched original:

1. bounding box of the hole (of a group of mask components), grown by a margin on each side
   (``margin``·longer box side, at least ``min_margin`` px), clipped to the image;
2. a square of side max(grown box, native), shrunk to the image's short side when the image is
   at least native-sized, placed to contain the grown box and stay inside the image. When the
   image is smaller than native the square overhangs it and the overhang is reflection-padded.
   When the grown box does not fit in such a square (a long hole in a narrow photo), the grown
   box itself is squashed to the native square, as the official pipeline does with whole images;
3. image crop resized to native (area filter down, Lanczos up); the mask crop goes through
   ``masks.to_model``;
4. after inpainting, the result is resized back with Lanczos and blended into the original through
   the paste-back weights of ``masks.feather`` (radius 3 px at native scale, 3·crop side / native
   side here), with the official float64 blend and truncation (docs/pipeline.md §6.2, §7.4). Where the
   weight is 0 the output equals the input exactly.

Far-apart mask components become separate crops (ordered by their top-left corner); components
are merged whenever one's crop would show another's hole to the model as context.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from moebius_edge import contract


@dataclass(frozen=True)
class Box:
    """Half-open pixel box [x0, x1) × [y0, y1); may extend past the image (padding)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    def intersects(self, o: "Box") -> bool:
        return self.x0 < o.x1 and o.x0 < self.x1 and self.y0 < o.y1 and o.y0 < self.y1

    def clip(self, w: int, h: int) -> "Box":
        return Box(max(self.x0, 0), max(self.y0, 0), min(self.x1, w), min(self.y1, h))

    def union(self, o: "Box") -> "Box":
        return Box(min(self.x0, o.x0), min(self.y0, o.y0), max(self.x1, o.x1), max(self.y1, o.y1))

    @property
    def slices(self) -> tuple:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


@dataclass(frozen=True)
class Crop:
    """One region sent to the model."""

    box: Box  # crop in image coordinates; outside the image only when reflection-padded
    hole: Box  # bounding box of this crop's mask components
    labels: tuple  # connected-component labels (of ``label_components``) this crop fills
    squashed: bool  # a non-square rectangle squashed to the native square

    def region(self, w: int, h: int) -> Box:
        """The part of the crop inside the image."""
        return self.box.clip(w, h)


def label_components(mask: np.ndarray) -> tuple:
    """(labels (H, W) int32, boxes list[Box] indexed by label − 1) of the 8-connected hole parts."""
    import cv2

    hole = mask if mask.dtype == bool else mask > 0
    n, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(hole).view(np.uint8), connectivity=8)
    boxes = [Box(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _ in stats[1:n]]
    return labels, boxes


def _axis_start(g0: int, g1: int, side: int, dim: int) -> int:
    """Start of a window of ``side`` px containing [g0, g1), centred on it, inside [0, dim) if it fits."""
    if side > dim:
        return -((side - dim) // 2)  # overhangs on both sides: centre the image, pad evenly
    start = g0 - (side - (g1 - g0)) // 2
    return min(max(start, 0), dim - side)


def crop_for_hole(hole: Box, w: int, h: int, native: int, margin: float = contract.DEFAULT_MARGIN,
                  min_margin: int = contract.DEFAULT_MIN_MARGIN) -> tuple:
    """(box, squashed) for a hole's bounding box in a w × h image."""
    if w == native and h == native:
        return Box(0, 0, w, h), False  # native size: processed whole, exactly as the official pipeline
    m = max(int(min_margin), int(round(margin * max(hole.w, hole.h))))
    grown = Box(hole.x0 - m, hole.y0 - m, hole.x1 + m, hole.y1 + m).clip(w, h)
    g = max(grown.w, grown.h)
    short = min(w, h)
    if short >= native:
        side = min(max(g, native), short)
        if g > side:
            return grown, grown.w != grown.h
    else:
        side = max(g, native)
    x0 = _axis_start(grown.x0, grown.x1, side, w)
    y0 = _axis_start(grown.y0, grown.y1, side, h)
    return Box(x0, y0, x0 + side, y0 + side), False


def plan_crops(mask: np.ndarray, native: int, *, margin: float = contract.DEFAULT_MARGIN,
               min_margin: int = contract.DEFAULT_MIN_MARGIN, separate: bool = True) -> tuple:
    """Group the hole's components into crops. Returns (labels, crops ordered by top-left corner).

    ``mask`` is the bool hole (binarised and dilated) at the image's resolution. With
    ``separate=False`` the whole hole is one crop.
    """
    h, w = mask.shape
    labels, boxes = label_components(mask)
    if not boxes:
        return labels, []
    groups = [[i + 1] for i in range(len(boxes))] if separate else [list(range(1, len(boxes) + 1))]
    while True:
        holes = []
        for g in groups:
            b = boxes[g[0] - 1]
            for lab in g[1:]:
                b = b.union(boxes[lab - 1])
            holes.append(b)
        crops = [crop_for_hole(b, w, h, native, margin, min_margin) for b in holes]
        merged = _merge_overlapping(groups, holes, [c[0] for c in crops])
        if merged is None:
            break
        groups = merged
    out = [Crop(box=c[0], hole=b, labels=tuple(sorted(g)), squashed=c[1])
           for g, b, c in zip(groups, holes, crops)]
    out.sort(key=lambda c: (c.hole.y0, c.hole.x0))
    return labels, out


def _merge_overlapping(groups, holes, boxes):
    """Union the groups whose crop box overlaps another group's hole box; None when none does."""
    n = len(groups)
    if n < 2:
        return None
    cb = np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes])
    hb = np.array([[b.x0, b.y0, b.x1, b.y1] for b in holes])
    hit = ((cb[:, None, 0] < hb[None, :, 2]) & (hb[None, :, 0] < cb[:, None, 2])
           & (cb[:, None, 1] < hb[None, :, 3]) & (hb[None, :, 1] < cb[:, None, 3]))
    np.fill_diagonal(hit, False)
    if not hit.any():
        return None
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(hit)):
        parent[find(int(i))] = find(int(j))
    merged = {}
    for i in range(n):
        merged.setdefault(find(i), []).extend(groups[i])
    return list(merged.values())


# ---------------------------------------------------------------------------------------------
# Pixel operations


def extract(image: np.ndarray, box: Box) -> np.ndarray:
    """The crop's pixels; where the box overhangs the image, reflection padding (edge not repeated)."""
    h, w = image.shape[:2]
    inner = box.clip(w, h)
    out = image[inner.slices]
    pads = ((inner.y0 - box.y0, box.y1 - inner.y1), (inner.x0 - box.x0, box.x1 - inner.x1))
    if any(p for pair in pads for p in pair):
        mode = "reflect" if min(inner.w, inner.h) > 1 else "edge"  # reflect needs two pixels
        out = np.pad(out, pads + ((0, 0),) * (image.ndim - 2), mode=mode)
    return np.ascontiguousarray(out)


def _resize_axis(im: Image.Image, size: tuple, down, up) -> Image.Image:
    w, h = im.size
    tw, th = size
    if (tw, th) == (w, h):
        return im.copy()
    if (tw <= w) == (th <= h):  # same direction on both axes: one pass
        return im.resize((tw, th), down if tw <= w else up)
    # One axis shrinks, the other grows (a squashed rectangle): each with its own filter.
    im = im.resize((tw, h), down if tw <= w else up)
    return im.resize((tw, th), down if th <= h else up)


def resize_image(image: np.ndarray, size: tuple) -> np.ndarray:
    """Area filter to shrink, Lanczos to enlarge; ``size`` is (W, H). Identity at the same size."""
    im = _resize_axis(Image.fromarray(image), size, Image.Resampling.BOX, Image.Resampling.LANCZOS)
    return np.asarray(im)


def resize_area(gray: np.ndarray, size: tuple) -> np.ndarray:
    """A single-channel uint8 or float32 array resized with the area filter in both directions;
    ``size`` is (W, H)."""
    im = _resize_axis(Image.fromarray(gray), size, Image.Resampling.BOX, Image.Resampling.BOX)
    return np.asarray(im)


def resize_back(image: np.ndarray, size: tuple) -> np.ndarray:
    """Model output (native) back to the crop's size, Lanczos."""
    im = Image.fromarray(image)
    if im.size == tuple(size):
        return image
    return np.asarray(im.resize(tuple(size), Image.Resampling.LANCZOS))


def blend(result: np.ndarray, original: np.ndarray, feathered: np.ndarray, rows: int = 256) -> np.ndarray:
    """The official paste-back: ``uint8((R/255·M + (1 − M)·I/255)·255)`` in float64, truncated,
    with M = feathered/255 (docs/pipeline.md §6.2). M = 0 gives I back exactly (checked for all 256
    values). Done in blocks of ``rows`` so a 50 MP region does not need gigabytes of float64."""
    out = np.empty_like(original)
    for y in range(0, original.shape[0], rows):
        sl = slice(y, y + rows)
        m = (feathered[sl].astype(np.float64) / 255.0)[..., None]
        r = result[sl].astype(np.float64) / 255.0
        i = original[sl].astype(np.float64) / 255.0
        out[sl] = ((r * m + (1.0 - m) * i) * 255.0).astype(np.uint8)
    return out


def paste_radius(crop_box: Box, native: int) -> tuple:
    """Feather radius at the original resolution: 3 px at native scale, per axis."""
    r = contract.PASTE_BLUR_RADIUS
    return (r * crop_box.w / native, r * crop_box.h / native)
