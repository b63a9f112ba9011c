"""Crop-around-the-mask geometry and paste-back, without any graph."""
from pathlib import Path

import numpy as np

from moebius_edge import crop
from moebius_edge.crop import Box, crop_for_hole, plan_crops

DATA = Path(__file__).parent / "data"
N = 512


def _mask(h, w, *boxes):
    m = np.zeros((h, w), np.uint8)
    for x0, y0, x1, y1 in boxes:
        m[y0:y1, x0:x1] = 255
    return m


def _inside(b: Box, w, h):
    return 0 <= b.x0 and 0 <= b.y0 and b.x1 <= w and b.y1 <= h


def test_native_size_is_processed_whole():
    _, crops = plan_crops(_mask(N, N, (10, 10, 20, 20), (400, 400, 500, 500)), N)
    assert [(c.box, c.squashed) for c in crops] == [(Box(0, 0, N, N), False)]


def test_small_hole_in_a_large_photo_gets_a_native_square_around_it():
    h, w = 3000, 4000
    _, crops = plan_crops(_mask(h, w, (2000, 1000, 2100, 1050)), N)
    (c,) = crops
    assert (c.box.w, c.box.h) == (N, N) and not c.squashed and _inside(c.box, w, h)
    # The hole grown by 32 px (25 % of 100 px is less) is inside the square and roughly centred.
    assert c.box.x0 <= 2000 - 32 and c.box.x1 >= 2100 + 32 and c.box.y0 <= 1000 - 32 and c.box.y1 >= 1050 + 32
    assert abs((c.box.x0 + c.box.x1) / 2 - 2050) <= 1 and abs((c.box.y0 + c.box.y1) / 2 - 1025) <= 1


def test_hole_near_the_edge_keeps_the_square_inside():
    h, w = 900, 1600
    _, (c,) = plan_crops(_mask(h, w, (1590, 0, 1600, 10)), N)
    assert c.box == Box(w - N, 0, w, N)


def test_large_hole_gets_a_larger_square_up_to_the_short_side():
    h, w = 3000, 4000
    _, (c,) = plan_crops(_mask(h, w, (1000, 1000, 1800, 1600)), N)
    # 800 px box + 25 % (200 px) on each side = 1200 px square.
    assert (c.box.w, c.box.h) == (1200, 1200) and _inside(c.box, w, h) and not c.squashed
    _, (c,) = plan_crops(_mask(h, w, (600, 500, 2400, 2500)), N)  # grown: 2800 × 3000 (clipped)
    assert (c.box.w, c.box.h) == (3000, 3000) and _inside(c.box, w, h) and not c.squashed
    _, (c,) = plan_crops(_mask(h, w, (500, 400, 2500, 2600)), N)  # grown: 3050 × 3000: no square fits
    assert c.squashed and c.box == Box(0, 0, 3050, 3000)


def test_hole_too_long_for_a_square_is_squashed():
    h, w = 1000, 4000
    _, (c,) = plan_crops(_mask(h, w, (200, 450, 3800, 550)), N)
    assert c.squashed and _inside(c.box, w, h)
    assert c.box.x0 == 0 and c.box.x1 == w  # 3600 px + 900 px margins, clipped
    assert c.box.y0 == 0 and c.box.y1 == h


def test_small_image_is_reflection_padded():
    h, w = 200, 300
    _, (c,) = plan_crops(_mask(h, w, (100, 50, 150, 90)), N)
    assert (c.box.w, c.box.h) == (N, N)
    assert c.box.x0 < 0 and c.box.y0 < 0 and c.box.x1 > w and c.box.y1 > h
    img = np.arange(h * w * 3, dtype=np.uint32).reshape(h, w, 3).astype(np.uint8)
    tile = crop.extract(img, c.box)
    assert tile.shape == (N, N, 3)
    r = c.region(w, h)
    inner = tile[r.y0 - c.box.y0:r.y1 - c.box.y0, r.x0 - c.box.x0:r.x1 - c.box.x0]
    assert np.array_equal(inner, img)
    # reflection without repeating the edge pixel
    assert np.array_equal(tile[-c.box.y0 - 1, -c.box.x0:-c.box.x0 + w], img[1])


def test_far_apart_holes_are_separate_crops_in_top_left_order():
    h, w = 2000, 3000
    m = _mask(h, w, (2500, 100, 2550, 150), (100, 1500, 160, 1560), (200, 120, 240, 160))
    labels, crops = plan_crops(m, N)
    assert len(crops) == 3
    assert [(c.hole.y0, c.hole.x0) for c in crops] == sorted((c.hole.y0, c.hole.x0) for c in crops)
    for c in crops:
        assert (c.box.w, c.box.h) == (N, N)
        assert np.isin(labels[c.hole.slices], c.labels).any()
        others = [o for o in crops if o is not c]
        assert not any(c.box.intersects(o.hole) for o in others)
    assert len(plan_crops(m, N, separate=False)[1]) == 1


def test_nearby_holes_share_a_crop():
    m = _mask(2000, 3000, (1000, 1000, 1040, 1040), (1200, 1100, 1240, 1140))
    _, crops = plan_crops(m, N)
    assert len(crops) == 1 and len(crops[0].labels) == 2


def test_no_hole_no_crop():
    assert plan_crops(np.zeros((100, 200), np.uint8), N)[1] == []


def test_crop_for_hole_on_a_tall_small_image_pads_only_the_short_axis():
    box, squashed = crop_for_hole(Box(100, 300, 200, 400), 300, 800, N)
    assert (box.w, box.h) == (N, N) and not squashed
    assert box.x0 < 0 < 300 < box.x1 and 0 <= box.y0 and box.y1 <= 800


def test_resizes():
    img = np.random.default_rng(0).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    assert crop.resize_image(img, (700, 600)) is not img
    assert np.array_equal(crop.resize_image(img, (700, 600)), img)
    assert crop.resize_image(img, (512, 512)).shape == (512, 512, 3)
    assert crop.resize_image(img[:100], (512, 512)).shape == (512, 512, 3)  # one axis up, one down


def test_blend_is_exact_outside_and_inside_the_mask():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = np.tile(np.arange(256, dtype=np.uint8), 48).reshape(64, 64, 3)
    assert np.array_equal(crop.blend(a, b, np.zeros((64, 64), np.uint8)), b)
    assert np.array_equal(crop.blend(a, b, np.full((64, 64), 255, np.uint8)), a)
