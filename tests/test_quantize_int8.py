"""INT8 on the trained stand-in: the shipped recipe passes its gate, quantizing what it excludes
fails it, the variant runs in the runtime, and the recipe rebuilds the same graph.

Recipes here use fewer pairs and steps than the shipped one (``FAST``); the shipped recipe's
figures on the stand-in and at full size are in benchmarks/results/quantize_int8.json.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from moebius_edge import cli, contract, models
from moebius_edge.errors import UserError

from .test_quantize import BLOCK_TORCH, FAST, PHOTOS, _copy, run_precisions

onnx = pytest.importorskip("onnx")
INT8_FAST = {k: v for k, v in FAST.items() if k not in ("error_inputs",)}


def _recipe_file(tmp_path, **fields):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({**INT8_FAST, **fields}))
    return path


@pytest.fixture(scope="module")
def int8_dir(standin_dir, tmp_path_factory):
    """`moebius-edge quantize --precision int8` in a subprocess where importing torch raises."""
    tmp = tmp_path_factory.mktemp("int8")
    root = _copy(standin_dir, tmp)
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "-q", "quantize", "--models", str(root), "--precision",
                           "int8", "--recipe", str(_recipe_file(tmp)), "--photos", str(PHOTOS)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, json.loads(proc.stdout.strip().splitlines()[-1])


def test_int8_quantize_imports_no_torch(int8_dir):
    _, imports = int8_dir
    assert imports["torch_import_attempts"] == [] and imports["heavy_modules"] == []


def test_int8_variant_of_the_standin_passes_its_gate(int8_dir, tmp_path):
    import onnxruntime as ort

    from moebius_edge.quantize import int8, recipe

    root, _ = int8_dir
    variant = models.open_models(root, "int8")
    variant.verify()
    assert [p.name for p, _ in variant.files(contract.UNET)] == ["unet.onnx", "unet.onnx.data"]  # mapped weights
    assert variant.quantize_gate[contract.GATE_STATUS] == contract.GATE_PASSED and variant.quantize_gate["enforced"]
    report = json.loads((variant.folder / contract.QUANTIZE_REPORT_FILE).read_text())
    assert report["end_to_end"]["hole_psnr_min_db"] >= 28.0 and report["unet"]["cosine_mean"] >= 0.99
    assert report["end_to_end"]["outside_changed_px"] == 0
    # QDQ graph: Conv/MatMul/Gemm read dequantized int8 weights.
    proto = onnx.load(str(variant.graph_path(contract.UNET)))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert {t.data_type for t in proto.graph.initializer} >= {onnx.TensorProto.INT8}
    # ONNX Runtime runs the Mix-FFN's gate on the uint8 maps (silu(inverted) and p * silu(g): two
    # Sigmoid and three Mul per stage), not on dequantized float copies; no other Sigmoid is quantized.
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    # its weights in a sidecar beside it (the graph's own is not beside this copy)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.onnx.data")
    ort.InferenceSession(str(variant.graph_path(contract.UNET)), so, providers=["CPUExecutionProvider"])
    optimized = onnx.load(so.optimized_model_filepath).graph
    fused = [n.op_type for n in optimized.node]
    stages = 15  # LλMI stages of the tiny preset
    assert fused.count("QLinearSigmoid") == 2 * stages and fused.count("QLinearMul") == 3 * stages
    # The position conv's output (uint8, NHWC in ORT's int8 conv) is not moved to NCHW and then
    # permuted again: the model's channels-last reshape cancels ORT's layout transpose.
    producer = {o: n for n in optimized.node for o in n.output}

    def upstream(name):  # the producer, past reshapes and (de)quantization
        n = producer.get(name)
        while n is not None and n.op_type in ("Reshape", "QuantizeLinear", "DequantizeLinear"):
            n = producer.get(n.input[0])
        return n

    def op(node):
        return node.op_type if node is not None else None

    firsts = [upstream(n.input[0]) for n in optimized.node if n.op_type == "Transpose"]
    chained = [t for t in firsts if op(t) == "Transpose" and op(upstream(t.input[0])) == "QLinearConv"]
    assert chained == []
    # The shipped exclusions were applied, by stable names, and the report says which and why.
    unet = report["conversion"][contract.UNET.key]
    shipped = {e["group"] for e in recipe.INT8_EXCLUDE if "group" in e}
    assert {e["group"] for e in unet["excluded"].values()} == shipped
    for g in shipped:
        assert unet["groups"][g]["quantized"] == 0 and unet["groups"][g]["quantizable"] > 0
    assert all(name.startswith("unet.") for name in unet["excluded"])
    assert unet["activation_type"] == recipe.Recipe(precision="int8").activation_type
    # The shipped recipe keeps the VAE graphs in FP32 (recipe.VAE_DEFAULT): the FP32 files, referenced.
    for spec in (contract.VAE_ENCODER, contract.VAE_DECODER):
        assert variant.graph_path(spec).samefile(root / spec.file)
        assert "vae: fp32" in report["conversion"][spec.key]["why"]
    assert variant.manifest[contract.MANIFEST_MIN_ONNXRUNTIME] == int8.MIN_ONNXRUNTIME
    assert report["sizes"][contract.UNET.key]["ratio"] < 0.6
    assert (variant.folder / contract.QUANTIZE_REPORT_MD).read_text().startswith("# int8 variant")


@pytest.fixture(scope="module")
def int8_vae_dir(standin_dir, tmp_path_factory):
    """An int8 variant whose recipe asks for the VAE graphs too ("vae": "auto"), calibrated on runs of
    the default step count."""
    tmp = tmp_path_factory.mktemp("int8vae")
    root = _copy(standin_dir, tmp)
    recipe = _recipe_file(tmp, vae="auto", steps=contract.DEFAULT_STEPS)
    assert cli.main(["-q", "quantize", "--models", str(root), "--precision", "int8", "--recipe", str(recipe),
                     "--photos", str(PHOTOS)]) == 0
    return root


def test_int8_vae_graphs_are_quantized_where_their_check_passes(int8_vae_dir, tmp_path, capsys):
    from moebius_edge.quantize import recipe

    root = int8_vae_dir
    variant = models.open_models(root, "int8")
    variant.verify()
    assert variant.quantize_gate[contract.GATE_STATUS] == contract.GATE_PASSED
    report = json.loads((variant.folder / contract.QUANTIZE_REPORT_FILE).read_text())
    floor = recipe.Recipe(precision="int8").vae_min_psnr_db
    converted = {}
    for spec in (contract.VAE_ENCODER, contract.VAE_DECODER):
        d = report["conversion"][spec.key]
        assert d["check"]["min_psnr_db"] == floor and d["quantized_ops"] == list(recipe.int8.VAE_QUANTIZED_OPS)
        converted[spec.key] = d["converted"]
        assert d["converted"] == (d["check"]["psnr_min_db"] >= floor), d
        if d["converted"]:  # its own file: QDQ convolutions with int8 weights, judged again on held-out inputs
            assert not variant.graph_path(spec).samefile(root / spec.file)
            vae = onnx.load(str(variant.graph_path(spec)))
            assert sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in vae.graph.node) == d["qdq_nodes"] > 0
            assert onnx.TensorProto.INT8 in {t.data_type for t in vae.graph.initializer}
            assert report["vae"][spec.key]["converted"] and report["vae"][spec.key]["psnr_min_db"] > 0
        else:
            assert variant.graph_path(spec).samefile(root / spec.file) and "check failed" in d["why"]
    # measured on the stand-in: decoder 41.0 dB, kept int8 (6 dB above the floor); the encoder's 34.3 dB
    # sits 0.7 dB under it, so which side it lands on is left to the check asserted above
    assert converted[contract.VAE_DECODER.key]
    md = (variant.folder / contract.QUANTIZE_REPORT_MD).read_text()
    decoder = md[md.index(f"### {contract.VAE_DECODER.key}: converted to INT8"):]
    assert decoder.split("###")[1].count("Static QDQ of its Conv nodes") == 1
    # calibrated on runs of the step count the user runs, the int8 decoder stays within the gate
    outs, mask = run_precisions(root, tmp_path, ("fp32", "int8"))
    hole = mask > 127
    mse = ((outs["int8"][hole] - outs["fp32"][hole]) ** 2).mean()
    assert 0 < mse and 10 * np.log10(255 ** 2 / mse) >= 28


def test_run_and_info_use_the_int8_variant(int8_dir, tmp_path, capsys):
    root, _ = int8_dir
    outs, mask = run_precisions(root, tmp_path, ("fp32", "int8"))
    hole = mask > 127
    mse = ((outs["int8"][hole] - outs["fp32"][hole]) ** 2).mean()
    assert 0 < mse and 10 * np.log10(255 ** 2 / mse) >= 28  # different, within the gate
    import cv2

    near = cv2.dilate(mask, np.ones((33, 33), np.uint8)) > 0  # the hole and its feathered band
    assert np.array_equal(outs["int8"][~near], outs["fp32"][~near])
    capsys.readouterr()
    assert cli.main(["info", "--models", str(root)]) == 0
    text = capsys.readouterr().out
    assert "[int8]" in text and "gate passed" in text and "needs onnxruntime >= 1.18" in text


def test_variant_needing_a_newer_onnxruntime_is_refused(int8_dir):
    root, _ = int8_dir
    variant = models.open_models(root, "int8")
    models.check_onnxruntime(variant, installed=variant.manifest[contract.MANIFEST_MIN_ONNXRUNTIME])
    with pytest.raises(UserError, match=r"need onnxruntime >= 1\.18 \(installed: 1\.17\.3\)"):
        models.check_onnxruntime(variant, installed="1.17.3")


@pytest.fixture(scope="module")
def int8_data(standin_dir):
    from moebius_edge.quantize import job, recipe

    fp32 = models.open_models(standin_dir)
    rcp = recipe.from_dict(INT8_FAST, "int8")
    return fp32, rcp, job.fp32_runs(fp32, rcp, PHOTOS, 0)


def test_recipe_rebuilds_the_same_graph(int8_dir, int8_data):
    """The variant's recipe.json, applied again to the same FP32 graphs: same nodes, same
    initializers (names and bytes)."""
    from moebius_edge.quantize import int8, job, recipe

    root, _ = int8_dir
    fp32, _, data = int8_data
    rcp = recipe.load(root / "int8" / contract.QUANTIZE_RECIPE_FILE, "int8")
    feeds = job._spread(data.calibration.feeds[contract.UNET.key], rcp.calibration_inputs)
    again = int8.make_int8(fp32.graph_path(contract.UNET), feeds, exclude=list(rcp.exclude),
                           activation_type=rcp.activation_type, method=rcp.calibration_method).proto
    shipped = onnx.load(str(models.open_models(root, "int8").graph_path(contract.UNET)))

    def content(p):  # values, not serialisations: a tensor read from a sidecar marks where it was
        values = {t.name: (t.data_type, tuple(t.dims), onnx.numpy_helper.to_array(t).tobytes())
                  for t in p.graph.initializer}
        return [(n.op_type, n.name, tuple(n.input), tuple(n.output)) for n in p.graph.node], values

    assert content(again) == content(shipped)


def _stage(int8_data, **changes):
    from moebius_edge.quantize import gate, job

    fp32, rcp, data = int8_data
    staging = models.staging_folder(fp32.root, "test-int8")
    try:
        return job.stage_variant(fp32, "int8", rcp.replace(**changes), gate.thresholds("int8"), data, staging)["verdict"]
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)


def test_the_exclusions_buy_margin(int8_data):
    """Everything quantized (the shipped exclusions too) still passes on the stand-in, so the
    exclusions are measured by what they buy: the mean step ε cosine moves away from the gate's
    0.99 (shipped recipe 0.9955 vs 0.9926 with everything quantized on the shipped data)."""
    from moebius_edge.quantize import gate

    def cosine(v):
        return next(c["value"] for c in v["checks"] if c["name"] == "mean_step_cosine")

    shipped, everything = _stage(int8_data), _stage(int8_data, exclude=())
    assert shipped[contract.GATE_STATUS] == contract.GATE_PASSED, gate.summary(shipped)
    assert cosine(shipped) - cosine(everything) > 0.001, (cosine(shipped), cosine(everything))


def test_crippled_calibration_fails_the_gate(int8_data, tmp_path):
    """Calibration ranges that do not cover the data (the measured ranges shrunk tenfold, as a
    calibration set far narrower than real trajectories would give): activations are clipped and
    the gate fails. A merely small or unrepresentative set does not do it on this stand-in: one
    input, or a flat grey photo, still passes (measured: 32.3 and 32.5 dB, cosine 0.995), because the
    start noise dominates the UNet's input ranges."""
    import shutil

    from moebius_edge.quantize import gate, int8, job
    from moebius_edge.quantize import graph as G

    fp32, rcp, data = int8_data
    feeds = data.calibration.feeds[contract.UNET.key]
    pre = int8.pre_process(fp32.graph_path(contract.UNET), tmp_path / "pre.onnx")
    ranges = int8.measure_ranges(onnx.load(str(pre)), feeds)
    narrow = {k: (lo / 10, hi / 10) for k, (lo, hi) in ranges.items()}
    res = int8.make_int8(pre, feeds, exclude=list(rcp.exclude), ranges=narrow, pre_processed=True)
    staging = models.staging_folder(fp32.root, "test-int8")
    try:
        G.save(res.proto, staging / contract.UNET.file)
        manifest = models.variant_manifest(fp32, "int8", staging, {contract.UNET.key: staging / contract.UNET.file})
        variant = models.ModelsFolder(root=fp32.root, folder=staging, precision="int8", manifest=manifest)
        figures = job.evaluate_variant(fp32, variant, data, rcp, 0)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    verdict = gate.judge(job.evaluate.gate_figures(figures["unet"], figures["end_to_end"], figures["vae"]),
                         gate.thresholds("int8"), fp32.provenance)
    assert verdict[contract.GATE_STATUS] == gate.GATE_FAILED, gate.summary(verdict)


def test_failed_int8_gate_is_one_line_and_writes_nothing(standin_dir, tmp_path, capsys):
    """A gate the variant cannot meet (an overridden step-cosine threshold): exit 2, one line,
    no int8 folder, no staging folder left."""
    root = _copy(standin_dir, tmp_path)
    rc = cli.main(["-q", "quantize", "--models", str(root), "--precision", "int8", "--recipe",
                   str(_recipe_file(tmp_path)), "--photos", str(PHOTOS), "--min-step-cosine", "0.99999"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "int8 variant rejected, nothing written" in err[-1]
    assert not (root / "int8").exists() and not [p for p in root.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------
# Names, groups, recipes (no quantization)


def test_stable_names_and_groups_cover_every_quantizable_node(standin_dir, tmp_path):
    from moebius_edge.quantize import int8

    proto = onnx.load(str(standin_dir / contract.UNET.file))
    names = int8.stable_names(proto)
    quantizable = [n for n in proto.graph.node if int8.quantizable(n)]
    assert len(names) == len(quantizable) == len(set(names.values()))
    assert all(v.startswith("unet.") and "#" not in v for v in names.values())
    groups = int8.groups(proto)
    assert "other" not in groups.values() and set(groups.values()) == set(int8.GROUP_NAMES)
    stages = 15  # LλMI stages of the tiny preset (docs/model.md)
    counts = {g: list(groups.values()).count(g) for g in int8.GROUP_NAMES}
    assert counts[int8.LAMBDA_MATMUL] == 3 * stages and counts["pos_conv"] == stages
    assert counts["conv_in"] == counts["conv_out"] == counts["time_mlp"] == 2
    # the Mix-FFN gate: silu(inverted) and p * silu(g), 2 Sigmoid and 3 Mul per stage; no other
    # Sigmoid or Mul of the graph is quantizable
    assert counts["ffn_gate"] == 5 * stages
    gates = [n for n in proto.graph.node if n.op_type in int8.GATE_OPS]
    assert len(gates) > 5 * stages and sum(n.name in names for n in gates) == 5 * stages
    # The exporter's names repeat a module's scope across blocks (resnets.0 of every block) and
    # generate others (Gemm_12): the stable names are the state-dict paths.
    assert any(k.startswith("Gemm_") for k in names)
    assert "unet.up_blocks.1.resnets.0.conv_shortcut" in names.values()
    # quant_pre_process (ORT's basic optimisations) renames nothing a recipe refers to.
    pre = onnx.load(str(int8.pre_process(standin_dir / contract.UNET.file, tmp_path / "pre.onnx")))
    assert sorted(int8.stable_names(pre).values()) == sorted(names.values())


def test_int8_recipe_errors_are_one_line(standin_dir, tmp_path, capsys):
    for fields, message in ((dict(exclude=[{"group": "colour"}]), "unknown int8 group 'colour'"),
                            (dict(exclude=[{"node": "("}]), "is not a regular expression"),
                            (dict(keep={}), "do not apply to int8"),
                            (dict(activation_type="int4"), "activation_type must be one of")):
        path = tmp_path / "r.json"
        path.write_text(json.dumps(fields))
        assert cli.main(["quantize", "--models", str(standin_dir), "--precision", "int8", "--recipe", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (standin_dir / "int8").exists()
