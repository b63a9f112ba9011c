"""Pieces of the quantize stage that need no model: masks, recipes, the gate's logic, the FP16
round-trip removal (tests/test_quantize.py runs the whole stage on the trained stand-in)."""
import json
import math

import numpy as np
import pytest

from moebius_edge import contract
from moebius_edge.errors import UserError

onnx = pytest.importorskip("onnx")


def test_mask_kinds_are_seeded_and_sized_like_user_masks():
    from moebius_edge.quantize.calibration import MASK_KINDS, draw_mask, make_pairs

    areas = {}
    for kind in MASK_KINDS:
        a = draw_mask(np.random.default_rng(3), 300, 451, kind)
        b = draw_mask(np.random.default_rng(3), 300, 451, kind)
        assert a.dtype == np.uint8 and a.shape == (300, 451) and set(np.unique(a)) == {0, 255}
        assert np.array_equal(a, b)
        areas[kind] = (a > 0).mean()
        assert 0.001 < areas[kind] < 0.4, (kind, areas[kind])
    assert areas["thin_stroke"] < areas["medium_brush"] < areas["thick_brush"]
    photos = {"a.jpg": np.zeros((64, 80, 3), np.uint8), "b.jpg": np.zeros((70, 60, 3), np.uint8)}
    pairs = make_pairs(photos, 3, seed=0)
    assert [p.kind for p in pairs] == [*MASK_KINDS, MASK_KINDS[0]]
    assert [p.photo for p in pairs] == ["a.jpg"] * 3 + ["b.jpg"] * 3


def test_recipe_round_trip_and_errors():
    from moebius_edge.quantize import recipe

    r = recipe.from_dict({"steps": 10, "keep": {contract.UNET.key: ["/a", "/b"]}}, "fp16")
    assert r.steps == 10 and r.keep == {contract.UNET.key: ["/a", "/b"]}
    assert recipe.from_dict(json.loads(json.dumps(r.to_json())), "fp16") == r
    for bad, message in [({"steps": "ten"}, "must be like"), ({"keep": {"nope": []}}, "unknown graphs"),
                         ({"vae": "fp8"}, "'vae' must be one of"), ({"precision": "int8"}, "is for int8"),
                         ({"calibration_photos": []}, "at least one"), ({"measure": 1}, "must be like")]:
        with pytest.raises(UserError, match=message):
            recipe.from_dict(bad, "fp16")


def test_recipe_vae_defaults_follow_the_precision():
    from moebius_edge.quantize import recipe

    fp16, int8 = recipe.Recipe(precision="fp16"), recipe.Recipe(precision="int8")
    assert (fp16.vae, fp16.vae_min_psnr_db) == (recipe.VAE_DEFAULT["fp16"], recipe.VAE_MIN_PSNR_DB["fp16"])
    assert (int8.vae, int8.vae_min_psnr_db) == ("fp32", recipe.VAE_MIN_PSNR_DB["int8"])
    assert fp16.replace(precision="int8") == int8 and int8.replace(precision="fp16") == fp16
    assert fp16.replace(precision="int8", vae="auto").vae == "auto"
    # an int8 recipe file may set them; its recipe.json gives the same recipe back
    r = recipe.from_dict({"vae": "auto", "vae_min_psnr_db": 30}, "int8")
    assert (r.vae, r.vae_min_psnr_db) == ("auto", 30.0)
    assert recipe.from_dict(json.loads(json.dumps(r.to_json())), "int8") == r
    assert recipe.from_dict({}, "int8") == int8  # an older int8 recipe.json (no vae fields): FP32 VAE


@pytest.mark.parametrize("provenance, figures, status, failed", [
    ("checkpoint:x", dict(finite=True, outside_changed_px=0, hole_psnr_min_db=40.0, mean_step_cosine=0.999),
     contract.GATE_PASSED, []),
    ("checkpoint:x", dict(finite=True, outside_changed_px=0, hole_psnr_min_db=30.0, mean_step_cosine=0.999),
     "failed", ["hole_psnr_min_db"]),
    ("checkpoint:x", dict(finite=True, outside_changed_px=0, hole_psnr_min_db=40.0, mean_step_cosine=0.98),
     "failed", ["mean_step_cosine"]),
    ("random-init:0", dict(finite=True, outside_changed_px=0, hole_psnr_min_db=10.0, mean_step_cosine=0.5),
     contract.GATE_ADVISORY, []),
    ("random-init:0", dict(finite=False, outside_changed_px=0, hole_psnr_min_db=math.nan, mean_step_cosine=math.nan),
     "failed", ["finite"]),
    ("random-init:0", dict(finite=True, outside_changed_px=3, hole_psnr_min_db=50.0, mean_step_cosine=1.0),
     "failed", ["outside_hole_unchanged_px"]),
])
def test_gate_verdicts(provenance, figures, status, failed):
    from moebius_edge.quantize import gate

    v = gate.judge(figures, gate.thresholds("fp16"), provenance)
    assert v[contract.GATE_STATUS] == status and v["failed"] == failed
    assert v["enforced"] == (not provenance.startswith(contract.PROVENANCE_RANDOM_INIT))
    assert gate.thresholds("int8")["thresholds"]["min_hole_psnr_db"] == gate.INT8_MIN_HOLE_PSNR_DB == 28.0
    assert gate.FP16_MIN_HOLE_PSNR_DB == 35.0 and gate.MIN_MEAN_STEP_COSINE == 0.99


def test_fp32_round_trips_between_kept_nodes_are_removed():
    """Two nodes kept in FP32 with a value beyond FP16's range between them: the converter puts
    Cast(fp16)→Cast(fp32) there, which overflows; ``collapse_fp16_round_trips`` removes it."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from moebius_edge.quantize import graph as G

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    s = numpy_helper.from_array(np.array(2.0 ** 20, np.float32), "s")
    nodes = [helper.make_node("Mul", ["x", "s"], ["big"], name="up"),
             helper.make_node("Div", ["big", "s"], ["back"], name="down"),
             helper.make_node("Relu", ["back"], ["y"], name="relu")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [s]), opset_imports=[helper.make_opsetid("", 17)])
    feed = {"x": np.array([1.5, -2.0, 3.0, 0.25], np.float32)}
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=["up", "down"])
    assert not np.isfinite(G.session(converted).run(None, feed)[0]).all()
    # Two: between the kept nodes, and between the float32 graph input and the first kept node.
    assert G.collapse_fp16_round_trips(converted) == 2
    assert np.array_equal(G.session(converted).run(None, feed)[0], np.maximum(feed["x"], 0))


def test_fp16_error_pass_matches_separate_runs_in_any_chunking():
    """``measure_errors`` runs both graphs in one session and reduces inside ONNX Runtime. A
    tensor made by an FP16 kernel (LayerNormalization on the CPU) has exactly the error of the
    two graphs run apart with it as an output; one that ORT computes in FP32 and passes straight on
    in FP32 (a Mul) lacks only its own storage rounding (< FP16_UNIT), so an overflow shows where
    the value is next held in FP16 (the range pass flags the tensor itself); whatever the chunking."""
    from onnx import TensorProto, helper, numpy_helper

    from moebius_edge.quantize import fp16
    from moebius_edge.quantize import graph as G

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])
    inits = [numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "g"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(3000.0, np.float32), "k")]
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["n1"], name="ln1", axis=-1),
             helper.make_node("Mul", ["n1", "k"], ["big"], name="scale"),
             helper.make_node("LayerNormalization", ["big", "g", "b"], ["n2"], name="ln2", axis=-1),
             helper.make_node("Mul", ["n2", "n2"], ["sq"], name="square"),
             helper.make_node("Mul", ["sq", "big"], ["huge"], name="overflow"),
             helper.make_node("LayerNormalization", ["huge", "g", "b"], ["y"], name="ln3", axis=-1)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    half = fp16.convert(model, [])
    feeds = [{"x": rng.standard_normal((2, 8)).astype(np.float32)} for _ in range(2)]

    names = ["n1", "big", "n2", "sq", "huge", "y"]
    types16 = fp16._types(half)
    ref = G._with_outputs(model, [(n, TensorProto.FLOAT) for n in names])
    got = G._with_outputs(half, [(n, types16.get(n, TensorProto.FLOAT16)) for n in names])
    apart = dict.fromkeys(names, 0.0)
    for feed in feeds:
        r = dict(zip(names, G.session(ref).run(names, feed)))
        g = dict(zip(names, G.session(got).run(names, feed)))
        for n in names:
            apart[n] = max(apart[n], fp16.rel_l2(g[n], r[n]))

    for budget in (1 << 30, 64):  # one chunk; one tensor per chunk
        errors = fp16.measure_errors(model, half, feeds, budget=budget)
        assert set(errors) == set(names)
        for n in ("n1", "n2"):
            assert 0 < errors[n] == pytest.approx(apart[n], rel=1e-4), n
        for n in ("big", "sq"):
            assert apart[n] - fp16.FP16_UNIT < errors[n] <= apart[n], n
        assert apart["huge"] == math.inf and np.isfinite(errors["huge"])
        assert apart["y"] == errors["y"] == math.inf
