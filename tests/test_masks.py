"""The mask rules of masks.py (docs/pipeline.md §3) against the official pipeline's arrays."""
import numpy as np
import pytest

from moebius_edge import contract, crop, masks
from moebius_edge.crop import Box

from .goldens import DATA

N = 512


@pytest.fixture(scope="module")
def case():
    with np.load(DATA / "pipeline_case.npz") as d:
        return {k: d[k] for k in d.files}


def test_binarize_threshold_invert_and_dilate():
    m = np.array([[0, 100, 127, 128, 200, 255]], np.uint8)
    assert masks.binarize(m).tolist() == [[False, False, False, True, True, True]]
    assert masks.binarize(masks.invert(m)).tolist() == [[True, True, True, False, False, False]]
    d = np.zeros((11, 11), bool)
    d[5, 5] = True
    g = masks.dilate(d, 3)
    assert g.dtype == bool
    assert g[5, 2] and g[2, 5] and not g[5, 1] and not g[0, 0]
    assert masks.dilate(d, 0) is d


def test_masks_stay_one_byte_per_pixel():
    # At 50 MP an int64 intermediate is 400 MB; every step must keep 1 byte per pixel.
    m = np.zeros((300, 400), np.uint8)
    m[100:200, 100:300] = 200
    hole = masks.binarize(m)
    for out in (hole, masks.dilate(hole, 2), masks.to_model(hole, (64, 64), "official"), masks.to_model(hole, (64, 64), "complete"), masks.to_u8(hole)):
        assert out.itemsize == 1


def test_official_rules_reproduce_the_reference_arrays(case):
    hole = masks.binarize(case["mask_u8"])
    native = masks.to_model(hole, (128, 128), "official")
    assert np.array_equal(masks.to_u8(native), case["mask_binarized_resized_u8"])
    assert np.array_equal(masks.pixel_mask(native), case["mask_hole01"].astype(np.float32))
    assert np.array_equal(masks.latent_mask(native), case["mask_latent"])
    feathered = masks.feather(native, crop.paste_radius(Box(0, 0, 128, 128), 128), "official")
    assert np.array_equal(feathered, case["mask_blurred_u8"][..., 0])
    out = crop.blend(case["output_nopaste_u8"], case["image_u8"], feathered)
    assert np.array_equal(out, case["output_u8"])
    assert np.array_equal(crop.blend(case["output_nopaste_u8"], case["image_u8"], feathered, rows=7), out)


def test_official_area_resize_keeps_half_covered_pixels():
    hole = np.zeros((600, 700), bool)
    hole[100:400, 100:103] = True  # a 3-px stroke
    hole[300:500, 300:500] = True
    small = masks.to_model(hole, (70, 60), "official")
    assert small.dtype == bool
    assert small[35:45, 35:45].all() and not small[10:40, 10].any()  # the stroke is under 127.5 after area


@pytest.mark.parametrize("side", [512, 1024, 3000])
def test_feather_stays_inside_the_margin(side):
    # The feathered mask must reach zero before the crop's border so nothing outside changes.
    hole = max(4, side // 3)
    m = np.zeros((side, side), bool)
    margin = max(32, hole // 4)
    if side == 3000:
        m[margin:side - margin, margin:side - margin] = True
    else:
        m[side // 2 - hole // 2:side // 2 + hole // 2, side // 2 - hole // 2:side // 2 + hole // 2] = True
    for fidelity in contract.FIDELITY_MODES:
        f = masks.feather(m, crop.paste_radius(Box(0, 0, side, side), N), fidelity)
        assert not f[0].any() and not f[-1].any() and not f[:, 0].any() and not f[:, -1].any()


def test_complete_rules_keep_any_coverage_in_whole_cells():
    hole = np.zeros((4096, 4096), bool)
    hole[1000, 2000] = True  # one pixel in a 8×8 native footprint of 64×64 px
    native = masks.to_model(hole, (64, 64), "complete")
    assert native.sum() == 64 and native[120:128, 248:256].sum() == 0  # exactly one whole 8×8 cell
    assert native[(1000 * 64) // 4096 // 8 * 8, (2000 * 64) // 4096 // 8 * 8]
    assert masks.to_model(hole, (64, 64), "official").sum() == 0  # the official rule drops it
    # A pixel straddling two native pixels counts in both.
    hole = np.zeros((30, 30), bool)
    hole[0, 1] = True  # input column 1 spans [1, 2); at 30 -> 20, output columns span 1.5 px
    cov = masks.coverage(hole, (20, 20))
    assert cov[0, 0] > 0 and cov[0, 1] > 0 and cov[0, 2] == 0


def test_complete_feather_is_full_on_the_hole_and_ramps_outside():
    hole = np.zeros((64, 64), bool)
    hole[32, 10:50] = True  # a 1 px line
    w = masks.feather(hole, 3.0, "complete")
    assert (w[hole] == 255).all()
    assert 0 < w[34, 30] < 255 and w[45, 30] == 0  # the ramp lies outside, and ends
    assert masks.feather(hole, 3.0, "official")[hole].max() < 128  # the official blur never reaches 1 on it
    with pytest.raises(ValueError, match="fidelity"):
        masks.feather(hole, 3.0, "approximate")
