"""Thin strokes are removed, whatever their width (docs/pipeline.md §3).

The pipeline runs end to end here with stand-in graphs: the decoder returns white, so every
pixel pasted with full weight comes out 255 exactly and any pixel that keeps part of the
original (a photo below 200) does not. The UNet stand-in records the latent mask it is given,
which is checked cell by cell against the user's hole, independently of masks.coverage_report.
``official`` mode is the reference pipeline and fails both checks on thin strokes: that is the
bug these tests pin down.
"""
import numpy as np
import pytest

from moebius_edge import contract
from moebius_edge.crop import plan_crops
from moebius_edge.pipeline import Inpainter

NATIVE = 512


class _Graph:
    """A stand-in GraphSession: fixed outputs, and a record of the UNet's latent masks."""

    def __init__(self, spec, latent):
        self.spec, self.latent = spec, latent
        self.provider, self.load_seconds, self.masks = "stand-in", 0.0, []

    def run(self, **inputs):
        if self.spec is contract.UNET:
            self.masks.append(inputs[contract.UNET.input_names[1]].copy())
            return np.zeros_like(inputs[contract.UNET.input_names[0]])
        if self.spec is contract.VAE_ENCODER:
            return np.zeros((1, contract.LATENT_CHANNELS, self.latent, self.latent), np.float32)
        return np.ones((1, 3, NATIVE, NATIVE), np.float32)  # decoder: white

    def release(self):
        pass


class _Models:
    image_size, latent_size, precision = NATIVE, NATIVE // contract.VAE_FACTOR, "fp32"
    alphas_cumprod = np.linspace(0.9991, 0.0047, contract.NUM_TRAIN_TIMESTEPS, dtype=np.float32)

    def graph_path(self, spec):
        return spec.file


def _inpainter():
    inp = Inpainter(_Models())
    inp.graphs = {s.key: _Graph(s, _Models.latent_size) for s in contract.GRAPHS}
    return inp


def _wire(h, w, width, diagonal):
    """A user's stroke: ``width`` px wide, straight (horizontal) or diagonal, across most of the photo."""
    mask = np.zeros((h, w), np.uint8)
    if diagonal:
        y, x = np.mgrid[0:h, 0:w]
        # distance to the line through (w/10, h/10) and (9w/10, 9h/10), measured along the axis
        d = np.abs((y - h / 10) * w - (x - w / 10) * h) / max(h, w)
        on = (d < width / 2) & (x > w // 10) & (x < 9 * w // 10)
        mask[on] = 255
    else:
        y0 = h // 2
        mask[y0:y0 + width, w // 10:9 * w // 10] = 255
    return mask


def _photo(h, w):
    rng = np.random.default_rng(0)
    return rng.integers(0, 200, (h, w, 3), dtype=np.uint8)  # never 255: a full-weight paste is visible


def _cells_seen(inp, hole, latent_masks):
    """For every hole pixel, is its latent cell in the mask the UNet was given? (hole-pixel bool array)"""
    h, w = hole.shape
    _, crops = plan_crops(hole, NATIVE)
    ys, xs = np.nonzero(hole)
    seen = np.zeros(len(ys), bool)
    f = contract.VAE_FACTOR
    for crop, m in zip(crops, latent_masks):
        b = crop.box
        inside = (xs >= max(b.x0, 0)) & (xs < min(b.x1, w)) & (ys >= max(b.y0, 0)) & (ys < min(b.y1, h))
        # the pixel's centre in native coordinates, then its 8×8 cell
        nx = np.floor((xs[inside] - b.x0 + 0.5) * NATIVE / b.w).astype(int) // f
        ny = np.floor((ys[inside] - b.y0 + 0.5) * NATIVE / b.h).astype(int) // f
        seen[inside] |= m[0, 0, ny, nx] > 0
    return seen


CASES = [(NATIVE, NATIVE, 1, False), (NATIVE, NATIVE, 3, False), (NATIVE, NATIVE, 1, True),
         (NATIVE, NATIVE, 3, True), (4000, 6000, 3, False), (4000, 6000, 3, True), (4000, 6000, 1, True)]
IDS = [f"{w}x{h}-{width}px-{'diagonal' if d else 'straight'}" for h, w, width, d in CASES]


@pytest.mark.parametrize("h, w, width, diagonal", CASES, ids=IDS)
def test_complete_fidelity_replaces_every_pixel_of_a_thin_stroke(h, w, width, diagonal):
    inp = _inpainter()
    photo, mask = _photo(h, w), _wire(h, w, width, diagonal)
    hole = mask >= 128
    out = inp.inpaint(photo, mask, steps=2, fidelity="complete")
    assert (out[hole] == 255).all(), f"{(out[hole] != 255).any(axis=1).sum()} hole px keep part of the original"
    seen = _cells_seen(inp, hole, inp.graphs[contract.UNET.key].masks[::inp.last_run.steps])
    assert seen.all(), f"{(~seen).sum()} of {seen.size} hole px lie in cells the model is not told to fill"
    reports = [c["coverage"] for c in inp.last_run.crops]
    assert sum(r["unseen_px"] for r in reports) == 0 and sum(r["underweight_px"] for r in reports) == 0
    assert sum(r["hole_px"] for r in reports) == hole.sum()
    assert inp.last_run.fidelity == "complete"
    # The feather lies outside the hole: beyond its reach the photo is untouched.
    far = np.ones_like(hole)
    far[max(0, np.nonzero(hole)[0].min() - 200):np.nonzero(hole)[0].max() + 200] = False
    assert np.array_equal(out[far], photo[far])


@pytest.mark.parametrize("h, w, width, diagonal", CASES[:2] + CASES[4:5], ids=IDS[:2] + IDS[4:5])
def test_official_fidelity_loses_thin_strokes(h, w, width, diagonal):
    """The reference rules (kept as a mode) are what the tests above guard against."""
    inp = _inpainter()
    mask = _wire(h, w, width, diagonal)
    hole = mask >= 128
    out = inp.inpaint(_photo(h, w), mask, steps=2, fidelity="official")
    assert (out[hole] != 255).any(axis=1).mean() > 0.5  # most of the stroke keeps part of the original
    reports = [c["coverage"] for c in inp.last_run.crops]
    assert sum(r["underweight_px"] for r in reports) > 0.5 * hole.sum()


def test_growth_is_reported(caplog):
    import logging

    inp = _inpainter()
    mask = _wire(4000, 6000, 3, False)
    with caplog.at_level(logging.INFO, logger="moebius_edge"):
        inp.inpaint(_photo(4000, 6000), mask, steps=2)
    (crop,) = inp.last_run.crops
    r = crop["coverage"]
    assert r["model_native_px"] > 1.5 * r["hole_native_px"] > 0
    assert "grown for the model" in caplog.text
