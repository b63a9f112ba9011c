"""The mobile export variant (mobile/rewrite.py): each rewrite alone is equivalent and removes what
it is for; float16 norms keep float32 statistics; a bundle with every rewrite is one partition per
accelerator EP and still reproduces `moebius-edge run` from bundle.json alone; a rewrite that
changes the output is refused by the rewrite gate with one line and nothing written."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from moebius_edge import cli, contract

onnx = pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def _session(proto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _feeds(sess, rng):
    feeds = {}
    for i in sess.get_inputs():
        if i.name == "timestep":
            feeds[i.name] = np.array([650], np.int32 if "int32" in i.type else np.int64)
        elif i.name == "guidance_scale":
            feeds[i.name] = np.array([2.5], np.float32)
        else:
            feeds[i.name] = rng.standard_normal(i.shape).astype(np.float32)
    return feeds


def _rel(a, b) -> float:
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(a.ravel()))


@pytest.fixture(scope="module")
def static_unet(tiny_models_dir, tmp_path_factory):
    from moebius_edge.mobile import static
    from moebius_edge.models import open_models

    path = tmp_path_factory.mktemp("static") / "unet.onnx"
    static.make_static(open_models(tiny_models_dir), contract.UNET, path)
    return onnx.load(str(path))


def _ops(proto) -> set:
    return {n.op_type for n in proto.graph.node}


def _init(proto) -> dict:
    return {t.name: t for t in proto.graph.initializer}


def _gone(name, proto, before) -> bool:
    """What each rewrite is for is no longer in the graph (and was before)."""
    init = _init(proto)
    if name == "time-table":
        t = next(i for i in proto.graph.input if i.name == "timestep")
        return {"Sin", "Cos"} <= _ops(before) and not {"Sin", "Cos"} & _ops(proto) and \
            t.type.tensor_type.elem_type == onnx.TensorProto.INT32
    if name == "gather-slice":
        def scalar(p):
            i = _init(p)
            return [n for n in p.graph.node if n.op_type == "Gather" and n.input[1] in i and not i[n.input[1]].dims]
        return bool(scalar(before)) and not scalar(proto)
    if name == "unsqueeze-reshape":
        return "Unsqueeze" in _ops(before) and "Unsqueeze" not in _ops(proto)
    if name == "matmul-2d":
        inferred = onnx.shape_inference.infer_shapes(proto).graph
        rank = {v.name: len(v.type.tensor_type.shape.dim) for v in (*inferred.value_info, *inferred.input)}
        linear = [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in init
                  and len(init[n.input[1]].dims) == 2]
        return bool(linear) and all(rank[n.input[0]] == 2 for n in linear)
    return {"InstanceNormalization", "LayerNormalization"} <= _ops(before) and \
        not {"InstanceNormalization", "LayerNormalization"} & _ops(proto)


@pytest.mark.parametrize("name", ["time-table", "gather-slice", "unsqueeze-reshape", "matmul-2d", "norms"])
def test_each_rewrite_is_equivalent_and_removes_what_it_is_for(static_unet, name):
    from moebius_edge.mobile import rewrite

    proto = onnx.ModelProto()
    proto.CopyFrom(static_unet)
    changes = rewrite.apply(proto, [name], num_timesteps=1000)
    onnx.checker.check_model(proto, full_check=True)
    assert name in changes and _gone(name, proto, static_unet)
    a, b = _session(static_unet), _session(proto)
    rng = np.random.default_rng(3)
    for t in (999, 650, 0):  # both ends of the time table
        feeds = _feeds(a, rng)
        feeds["timestep"] = np.array([t], np.int64)
        fb = {k: v.astype(np.int32) if k == "timestep" and name == "time-table" else v for k, v in feeds.items()}
        assert _rel(a.run(None, feeds)[0], b.run(None, fb)[0]) < 1e-5


def _norm_graph(dtype):
    """A float16 or float32 graph: InstanceNormalization, then LayerNormalization over the last axis."""
    h = onnx.helper
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(v.astype(dtype), n) for n, v in (
        ("s", rng.uniform(0.5, 2, 4)), ("b", rng.uniform(-1, 1, 4)), ("ls", rng.uniform(0.5, 2, 6)),
        ("lb", rng.uniform(-1, 1, 6)))]
    nodes = [h.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-5),
             h.make_node("LayerNormalization", ["y", "ls", "lb"], ["z"], axis=-1, epsilon=1e-5)]
    g = h.make_graph(nodes, "norms", [h.make_tensor_value_info("x", elem, [1, 4, 5, 6])],
                     [h.make_tensor_value_info("z", elem, [1, 4, 5, 6])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_float16_norms_keep_float32_statistics():
    """(x - mean)² overflows float16 once |x - mean| > 255: the decomposed float16 norm must compute
    its statistics in float32, as the fused kernel does, or it returns NaN/0 where the fused one does
    not."""
    from onnx.reference import ReferenceEvaluator

    from moebius_edge.mobile import rewrite

    x = (np.random.default_rng(1).standard_normal((1, 4, 5, 6)) * 2000).astype(np.float16)  # activations of ±6000
    for dtype in (np.float16, np.float32):
        before = _norm_graph(dtype)
        after = onnx.ModelProto()
        after.CopyFrom(before)
        rewrite.apply(after, ["norms"], num_timesteps=1000)
        assert not {"InstanceNormalization", "LayerNormalization"} & _ops(after)
        feeds = {"x": x.astype(dtype)}
        want = _session(before).run(None, feeds)[0].astype(np.float64)
        # onnxruntime's CPU EP computes float16 Mul/MatMul in float32 and would hide an overflow; onnx's
        # reference evaluator computes in the graph's own types, as a float16 accelerator does
        for got in (_session(after).run(None, feeds)[0], ReferenceEvaluator(after).run(None, feeds)[0]):
            got = got.astype(np.float64)
            assert np.isfinite(got).all() and np.abs(got).max() > 0.5
            assert _rel(want, got) < (2e-3 if dtype == np.float16 else 1e-5), dtype
        if dtype == np.float16:
            casts = [n for n in after.graph.node if n.op_type == "Cast"]
            assert len(casts) == 4  # to float32 and back, around each of the two norms


def test_bundle_with_every_rewrite(tiny_models_dir, golden, tmp_path):
    """--rewrites all: every UNet node on NNAPI and CoreML NeuralNetwork in one partition, and the
    reference loop reproduces run from the bundle alone."""
    from moebius_edge.pipeline import Inpainter, load_noise_file

    out = tmp_path / "b"
    assert cli.main(["bundle", "--models", str(tiny_models_dir), "--target", "android", "--precision", "fp32",
                     "--rewrites", "all", "-o", str(out)]) == 0
    b = json.loads((out / contract.BUNDLE_FILE).read_text())
    assert b["mobile_rewrites"]["applied"] == ["time-table", "gather-slice", "unsqueeze-reshape", "matmul-2d",
                                               "norms"]
    for g in b[contract.MANIFEST_GRAPHS].values():
        assert g["rewrites"]["gate"]["rel_l2"] <= g["rewrites"]["gate"]["tolerance"]
    report = json.loads((out / "bundle-report.json").read_text())
    rows = {(r["graph_key"], r["ep"]): r for r in report["rewrites"]["before_after"]}
    for ep in ("nnapi", "coreml_neuralnetwork"):
        before, after = rows["unet", ep]["partitions"]
        assert before > 50 and after == 1, ep
        assert rows["unet", ep]["supported_nodes"][1] == rows["unet", ep]["nodes"][1]
        assert {"InstanceNormalization", "LayerNormalization"} <= set(rows["unet", ep]["fallbacks_removed"])
    for key in ("vae_encoder", "vae_decoder"):
        assert rows[key, "nnapi"]["partitions"] == [rows[key, "nnapi"]["partitions"][0], 1]

    spec = importlib.util.spec_from_file_location("mobile_reference", ROOT / "examples" / "mobile_reference.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    noise = load_noise_file(DATA / "pipeline_case.npz")
    image, mask = golden["image_u8"], golden["mask_u8"]
    app = ref.inpaint(ref.load_bundle(out), image, mask, noise)
    run = Inpainter.from_models(tiny_models_dir, providers="cpu").inpaint(image, mask, noise=noise)
    diff = np.abs(app.astype(int) - run)
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999


def test_a_rewrite_that_changes_the_output_is_refused(tiny_models_dir, tmp_path, capsys, monkeypatch):
    """The rewrite gate: a gather-slice that swaps the CFG halves (a plausible off-by-one) is caught,
    the command says so in one line and writes nothing."""
    from moebius_edge.mobile import rewrite

    real = rewrite.gather_slice

    def swapped(gr):  # index 1 - i where the graph says i
        done = set()
        for n in gr.g.node:
            idx = n.input[1] if n.op_type == "Gather" else None
            if idx in gr.init and not gr.init[idx].dims and idx not in done:
                i = int(onnx.numpy_helper.to_array(gr.init[idx]))
                gr.init[idx].CopyFrom(onnx.numpy_helper.from_array(np.array(1 - i, np.int64), idx))
                done.add(idx)
        return real(gr)

    monkeypatch.setattr(rewrite, "gather_slice", swapped)
    out = tmp_path / "out" / "b"
    out.parent.mkdir()
    rc = cli.main(["bundle", "--models", str(tiny_models_dir), "--target", "android", "--precision", "fp32",
                   "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith("moebius-edge bundle: error: unet: the mobile rewrites") and "--rewrites none" in last
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("value", ["bogus", "norms,nope", ","])
def test_unknown_rewrites_are_refused(tiny_models_dir, tmp_path, capsys, value):
    rc = cli.main(["bundle", "--models", str(tiny_models_dir), "--target", "ios", "--precision", "fp32",
                   "--rewrites", value, "-o", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown rewrite" in err.splitlines()[-1] and not (tmp_path / "b").exists()
