"""Calibration and held-out data: real photos, seeded user-like masks, and FP32 trajectories.

Quantization is judged on what the pipeline really feeds the graphs (docs/style.md §4): the
UNet's inputs at every denoising step of the FP32 pipeline, and the VAE's inputs of the same
runs, on real photos (``tests/data/photos``, licences in its README) with masks of the kinds
users draw. Calibration photos (used to *choose* what stays FP32) and held-out photos (used to
*judge* the variant) are disjoint, so the gate never grades the data it was tuned on.

* ``draw_mask``: one seeded mask of a kind in ``MASK_KINDS`` (thin stroke, medium brush, thick
  brush, box, blob), sized relative to the photo so a kind means the same at any resolution.
* ``make_pairs``: photos × masks, the mask kinds rotating so every kind appears.
* ``Recorder``: stands in for a ``GraphSession`` (same ``run``/``release``/``provider``/
  ``load_seconds``) and records every feed and output, so the unmodified ``Inpainter`` yields
  the trajectories (no copy of the sampling loop to drift from the runtime's).
* ``run_pairs``: the FP32 (or any) pipeline on the pairs with recorders on all three graphs.

NumPy, OpenCV and the runtime only: never torch (the stand-in training in
``moebius_edge.export.train_standin`` reuses ``draw_mask`` so it trains on the same kinds).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moebius_edge import contract
from moebius_edge.errors import UserError

log = logging.getLogger(__name__)

MASK_KINDS = ("thin_stroke", "medium_brush", "thick_brush", "box", "blob")
# Brush widths as a fraction of the photo's short side (at 512 px: 4, 20 and 51 px).
_STROKE_WIDTH = {"thin_stroke": 0.008, "medium_brush": 0.04, "thick_brush": 0.1}


def _stroke(rng: np.random.Generator, h: int, w: int, width: int) -> np.ndarray:
    """A random-walk polyline of 2-5 segments, as a brush drawn across an object."""
    import cv2

    s = min(h, w)
    out = np.zeros((h, w), np.uint8)
    pts = [np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])]
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(2, 6))):
        angle += rng.normal(0, 0.8)
        step = rng.uniform(0.08, 0.2) * s
        nxt = pts[-1] + step * np.array([np.cos(angle), np.sin(angle)])
        pts.append(np.clip(nxt, [0.05 * w, 0.05 * h], [0.95 * w, 0.95 * h]))
    cv2.polylines(out, [np.round(np.array(pts)).astype(np.int32)], False, 255, thickness=max(width, 1),
                  lineType=cv2.LINE_8)
    return out


def draw_mask(rng: np.random.Generator, height: int, width: int, kind: str) -> np.ndarray:
    """A uint8 mask (255 = fill) of one of ``MASK_KINDS``, drawn from ``rng``."""
    import cv2

    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; one of {MASK_KINDS}")
    h, w, s = height, width, min(height, width)
    if kind in _STROKE_WIDTH:
        return _stroke(rng, h, w, int(round(_STROKE_WIDTH[kind] * s)))
    out = np.zeros((h, w), np.uint8)
    if kind == "box":
        bw, bh = (rng.uniform(0.15, 0.4, 2) * s).astype(int)
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        out[y0:y0 + bh, x0:x0 + bw] = 255
        return out
    # blob: a few overlapping ellipses around one centre, an object-shaped hole
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    for _ in range(int(rng.integers(3, 7))):
        c = (int(cx + rng.normal(0, 0.06 * s)), int(cy + rng.normal(0, 0.06 * s)))
        axes = tuple(int(a) for a in rng.uniform(0.04, 0.14, 2) * s)
        cv2.ellipse(out, c, axes, float(rng.uniform(0, 180)), 0, 360, 255, thickness=-1)
    return out


@dataclass(frozen=True)
class Pair:
    """One photo and one mask: an inpainting job of the calibration or held-out set."""

    photo: str  # file name
    kind: str  # mask kind (MASK_KINDS)
    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8 RGB
    mask: np.ndarray = field(repr=False)  # (H, W) uint8, 255 = fill

    @property
    def label(self) -> str:
        return f"{Path(self.photo).stem}/{self.kind}"


def load_photos(folder, names) -> dict:
    """{name: RGB uint8} for the named photos of ``folder`` (one-line error when one is missing)."""
    from moebius_edge.imageio import read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"photos folder not found: {folder} (pass --photos DIR; the repository has "
                        f"tests/data/photos)")
    out = {}
    for name in names:
        if not (folder / name).is_file():
            raise UserError(f"{folder} has no photo {name!r} named by the recipe")
        out[name] = read_image(folder / name).rgb
    return out


def make_pairs(photos: dict, masks_per_photo: int, seed: int) -> list:
    """Each photo with ``masks_per_photo`` seeded masks; the kinds rotate across the whole set
    so that every kind appears once there are five pairs."""
    rng = np.random.default_rng(seed)
    pairs, k = [], 0
    for name, image in photos.items():
        for _ in range(masks_per_photo):
            kind = MASK_KINDS[k % len(MASK_KINDS)]
            pairs.append(Pair(name, kind, image, draw_mask(rng, *image.shape[:2], kind)))
            k += 1
    return pairs


class Recorder:
    """Stands in for a ``GraphSession`` and records every feed and output.

    It has the session's interface (``run(**inputs)``, ``release()``, ``provider``,
    ``load_seconds``, ``spec``), so it can replace ``Inpainter.graphs[key]`` without the
    pipeline knowing: the trajectories come from the very loop users run."""

    def __init__(self, graph):
        self.graph = graph
        self.feeds = []  # [{input name: array}] in call order
        self.outputs = []  # [array]

    def run(self, **inputs) -> np.ndarray:
        out = self.graph.run(**inputs)
        self.feeds.append({k: np.array(v, copy=True) for k, v in inputs.items()})
        self.outputs.append(out)
        return out

    def __getattr__(self, name):  # release, provider, load_seconds, spec, ...
        return getattr(self.graph, name)


@dataclass
class Runs:
    """What the pipeline did on a list of pairs: results and every graph's feeds and outputs."""

    pairs: list
    results: list = field(default_factory=list)  # (H, W, 3) uint8 per pair
    infos: list = field(default_factory=list)  # RunInfo per pair
    feeds: dict = field(default_factory=dict)  # graph key -> [feed]
    outputs: dict = field(default_factory=dict)  # graph key -> [output]
    owner: dict = field(default_factory=dict)  # graph key -> [pair index of each feed]
    seconds: float = 0.0

    def unet_steps(self) -> list:
        """[(pair index, step index)] of every recorded UNet feed (a pair with far-apart holes
        runs several crops, each through the whole schedule)."""
        out, seen = [], {}
        for p in self.owner.get(contract.UNET.key, []):
            n = seen.get(p, 0)
            seen[p] = n + 1
            out.append((p, n % max(self.infos[p].steps, 1)))
        return out


def run_pairs(inpainter, pairs: list, *, seed: int, steps: int, guidance: float, strength: float,
              fidelity: str, desc: str, record: bool = True) -> Runs:
    """Run ``inpainter`` on every pair (same seed per pair, so two variants see the same noise),
    recording the feeds of all three graphs when ``record``."""
    import time

    from tqdm.auto import tqdm

    runs = Runs(pairs=pairs)
    t0 = time.perf_counter()
    saved = dict(inpainter.graphs)
    recorders = {k: Recorder(g) for k, g in saved.items()} if record else {}
    inpainter.graphs.update(recorders)
    # The runtime's per-run notes (sessions created, holes grown) would repeat for every pair of
    # every variant; warnings still show.
    quiet = [logging.getLogger(n) for n in ("moebius_edge.pipeline", "moebius_edge.session")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(max(q.getEffectiveLevel(), logging.WARNING))
    try:
        for i, pair in enumerate(tqdm(pairs, desc=desc, unit="pair", leave=False, disable=None)):
            before = {k: len(r.feeds) for k, r in recorders.items()}
            runs.results.append(inpainter.inpaint(pair.image, pair.mask, seed=seed, steps=steps,
                                                  guidance=guidance, strength=strength, fidelity=fidelity))
            runs.infos.append(inpainter.last_run)
            for k, r in recorders.items():
                runs.owner.setdefault(k, []).extend([i] * (len(r.feeds) - before[k]))
    finally:
        inpainter.graphs.update(saved)
        inpainter.release()
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    for k, r in recorders.items():
        runs.feeds[k], runs.outputs[k] = r.feeds, r.outputs
    runs.seconds = time.perf_counter() - t0
    log.info("%s: %d pairs in %.1f s", desc, len(pairs), runs.seconds)
    return runs
