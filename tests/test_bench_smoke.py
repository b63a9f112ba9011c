"""The performance benchmarks in smoke mode on a tiny random-init export: the end-to-end run
(benchmarks/pipeline.py) with its PyTorch baseline (benchmarks/torch_pipeline.py) and its figure,
one call of each network (benchmarks/graph_step.py), photo and hole sizes (benchmarks/photo_size.py)
and the app loop against the runtime (benchmarks/bundle_parity.py). What they run and record, not
how fast: no timing asserts."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("torch")
pytest.importorskip("diffusers")


def _bench(script: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """benchmarks/SCRIPT with ARGS in a child process, as a user runs it."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def random_tiny(tmp_path_factory):
    from moebius_edge.export.job import run_export

    out = tmp_path_factory.mktemp("bench") / "models"
    run_export(out, unet_config="tiny", random_init=True, seed=3)
    return out


def test_torch_baseline_runs_the_same_pipeline_as_the_graphs(random_tiny):
    """The PyTorch modules rebuilt from the folder's seed fill the hole like its graphs do: the
    baseline does the same work on the same weights."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.torch_pipeline import TORCH_LABEL, torch_inpainter
    from moebius_edge.pipeline import Inpainter

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (150, 170, 3), dtype=np.uint8)
    mask = np.zeros((150, 170), np.uint8)
    mask[40:90, 60:120] = 255
    ours = Inpainter.from_models(random_tiny, providers="cpu")
    theirs, _ = torch_inpainter(random_tiny)
    a = ours.inpaint(image, mask, seed=1, steps=4)
    b = theirs.inpaint(image, mask, seed=1, steps=4)
    assert set(theirs.last_run.providers.values()) == {TORCH_LABEL}
    assert not np.array_equal(a, image)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 2 and (diff == 0).mean() > 0.99


def test_pipeline_benchmark_smoke(random_tiny, tmp_path):
    out = tmp_path / "pipeline.json"
    other = tmp_path / "other"  # a configuration from another models folder (@DIR)
    shutil.copytree(random_tiny, other)
    proc = _bench("pipeline.py", "--models", random_tiny, "--configs", f"torch,fp32-keep,fp32@{other}", "--steps", 2,
                  "--batch", 2, "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert [run["config"] for run in r["runs"]] == ["torch", "fp32-keep", f"fp32@{other}"]
    assert r["runs"][2]["models"] == str(other) and r["runs"][1]["models"] == str(random_tiny)
    assert r["runs"][1]["vae"] == {"vae_encoder": "fp32", "vae_decoder": "fp32"}
    assert r["runs"][0]["speedup_vs_first"] == 1.0 and r["runs"][1]["speedup_vs_first"] > 0
    assert r["machine"]["processor"] and r["models_provenance"] == "random-init:3"
    assert all(run["peak_rss_mb"] > 0 and run["model_steps"] == 1 for run in r["runs"])
    for run in r["runs"]:  # Linux: each phase's own peak, within the process's
        assert set(run["phase_peak_rss_mb"]) == {"encode", "denoise", "decode"}
        # VmHWM and getrusage round apart by a fraction of a MB.
        assert 0 < max(run["phase_peak_rss_mb"].values()) <= run["peak_rss_mb"] + 1
    assert "torch" in proc.stdout and "fp32-keep" in proc.stdout
    # --batch: `moebius-edge run` over a folder, per ONNX Runtime configuration (PyTorch has no CLI)
    assert "batch" not in r["runs"][0]
    batch = r["runs"][1]["batch"]
    assert batch["images"] == 2 and batch["images_per_min"] > 0 and batch["peak_rss_mb"] > 0

    sys.path.insert(0, str(ROOT))
    from PIL import Image

    from benchmarks.report import pipeline, pipeline_figure

    figure = tmp_path / "pipeline.png"
    pipeline_figure(r, figure)
    assert Image.open(figure).size[0] > 500
    assert "| fp32-keep | 2 |" in pipeline(r) and "| fp32 (other) | 2 |" in pipeline(r)
    assert r["runs"][2]["models_provenance"] == "random-init:3"
    # a variant that quantized a VAE graph says so in its row
    run = {**r["runs"][2], "config": "int8@a/x", "vae": {"vae_encoder": "fp32", "vae_decoder": "int8"}}
    assert "| int8 (x) + decoder int8 | 2 |" in pipeline({**r, "runs": [r["runs"][0], run]})


def test_photo_size_benchmark_follows_the_crop(random_tiny, tmp_path):
    out = tmp_path / "photo_size.json"
    proc = _bench("photo_size.py", "--models", random_tiny, "--precision", "fp32", "--megapixels", 0.1, 0.5,
                  "--hole-px", 64, "--holes", 64, 256, "--hole-photo-mp", 0.5, "--steps", 2, "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    sizes = [x["size"] for x in r["photo_size"]]
    assert [round(w * h / 1e5) for w, h in sizes] == [1, 5] and all(abs(w * 3 - h * 4) <= 4 for w, h in sizes)
    # the same hole, the same crop, whatever the photo; the 64 px hole of the 0.5 MP photo is not run twice
    assert r["photo_size"][0]["crop_px"] == r["photo_size"][1]["crop_px"]
    assert [x["hole_px"] for x in r["hole_size"]] == [256]
    assert r["hole_size"][0]["crop_px"][0] > r["photo_size"][1]["crop_px"][0]
    for x in r["photo_size"] + r["hole_size"]:
        assert x["seconds"]["read"] > 0 and x["seconds"]["write"] > 0 and x["seconds"]["denoise"] > 0
        assert x["peak_rss_mb"] > 0 and x["file_mb"] > 0


def test_encode_batch_benchmark_times_both_ways_with_the_same_latents(random_tiny, tmp_path):
    out = tmp_path / "encode_batch.json"
    proc = _bench("encode_batch.py", "--models", random_tiny, "--rounds", "2", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert set(r["rows"]) == {"two calls", "one batch-2 call"} and r["max_abs_diff"] == 0.0
    assert all(len(x["times_s"]) == 2 and x["first_round_peak_rss_mb"] > 0 for x in r["rows"].values())
    assert r["speedup_of_batch"] > 0


def test_bundle_parity_benchmark_compares_the_app_loop_with_the_runtime(random_tiny, tmp_path, capsys):
    from moebius_edge import cli

    bundle = tmp_path / "ios"
    assert cli.main(["bundle", "--models", str(random_tiny), "--target", "ios", "--precision", "fp32",
                     "-o", str(bundle), "-q"]) == 0
    out = tmp_path / "bundle_parity.json"
    proc = _bench("bundle_parity.py", "--models", random_tiny, bundle, "--json", out)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(out.read_text())["bundles"]["ios-fp32-128"]
    assert rec["steps"] == 19 and rec["changed_px"] > 0
    assert rec["max_abs_diff"] <= 1 and rec["within_1_share"] == 1.0 and rec["equal_share"] > 0.99


def test_pipeline_benchmark_rejects_unknown_configs(random_tiny):
    proc = _bench("pipeline.py", "--models", random_tiny, "--configs", "fp32,int4", timeout=60)
    assert proc.returncode == 2 and "unknown configuration 'int4'" in proc.stderr


def test_pipeline_benchmark_runs_the_configurations_in_rounds(random_tiny, tmp_path):
    """--rounds 2: each configuration runs once per round, in turn; every round is kept, the row's
    ratio is one of them, and --rounds 0 is refused."""
    out = tmp_path / "pipeline.json"
    proc = _bench("pipeline.py", "--models", random_tiny, "--configs", "fp32,fp32-keep", "--steps", 2,
                  "--rounds", 2, "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("running")] == \
        ["fp32", "fp32-keep", "fp32", "fp32-keep"]
    r = json.loads(out.read_text())
    assert r["rounds"] == 2
    first, keep = r["runs"]
    assert [x["speedup_vs_first"] for x in first["rounds"]] == [1.0, 1.0]
    assert len(keep["rounds"]) == 2 and keep["speedup_vs_first"] in [x["speedup_vs_first"] for x in keep["rounds"]]
    assert keep["compute_s"] in [x["compute_s"] for x in keep["rounds"]]
    proc = _bench("pipeline.py", "--models", random_tiny, "--configs", "fp32", "--rounds", 0, timeout=60)
    assert proc.returncode == 2 and "--rounds must be 1 or more" in proc.stderr


def test_pipeline_benchmark_times_later_calls(random_tiny, tmp_path):
    """--calls 2: each process inpaints twice; the row is the first call's, the second call is kept
    with its own time and per-phase peaks (the highest of which is its peak)."""
    out = tmp_path / "pipeline.json"
    proc = _bench("pipeline.py", "--models", random_tiny, "--configs", "fp32", "--steps", 2, "--calls", 2,
                  "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["calls"] == 2
    (run,) = r["runs"]
    (later,) = run["later_calls"]
    assert later["compute_s"] > 0 and set(later["phase_peak_rss_mb"]) == {"encode", "denoise", "decode"}
    assert later["peak_rss_mb"] == max(later["phase_peak_rss_mb"].values())
    proc = _bench("pipeline.py", "--models", random_tiny, "--configs", "fp32", "--calls", 0, timeout=60)
    assert proc.returncode == 2 and "--calls must be 1 or more" in proc.stderr


def test_graph_step_benchmark_smoke(random_tiny, tmp_path):
    out = tmp_path / "graph_step.json"
    proc = _bench("graph_step.py", "--models", random_tiny, "--rounds", "3", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert [g["network"] for g in r["networks"]] == ["unet", "vae_encoder", "vae_decoder"]
    assert r["ort_allow_spinning"] is False and r["machine"]["processor"]
    for g in r["networks"]:
        torch_row, ort_row = g["rows"].values()
        assert torch_row["ratio"] == 1.0 and len(ort_row["times_s"]) == 3
        # The same weights: the graphs compute what the PyTorch modules do (export parity).
        assert ort_row["rel_l2_vs_torch"] < 1e-4
        assert g["gflop"] is None  # 128 px: the full-size FLOP count does not apply


def test_int8_profile_attributes_every_convolution_and_its_arithmetic(random_tiny, tmp_path):
    """benchmarks/int8_profile.py (a `make bench` step): every convolution kernel of the optimised
    graph is traced to its Conv node, including the ones ONNX Runtime fuses with their ReLU into the
    NCHWc layout and names after the ReLU's output, so each kind gets its time and its rate."""
    import onnx

    sys.path.insert(0, str(ROOT))
    from benchmarks.inputs import unet_feed
    from benchmarks.int8_profile import conv_table
    from moebius_edge import contract, models

    out = tmp_path / "profile.json"
    unet = models.open_models(random_tiny, "fp32").graph_path(contract.UNET)
    proc = _bench("int8_profile.py", "--models", random_tiny, "--reps", 1, "--graph", f"again={unet}", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert list(r["profiles"]) == ["fp32", "again"] and r["machine"]["processor"]
    table = conv_table(unet, unet_feed(models.open_models(random_tiny, "fp32").latent_size))
    convs = {k: v for k, v in table.items() if not isinstance(v, str)}
    graph = onnx.load(str(unet), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    relus = [n for n in graph.node if n.op_type == "Relu" and producer[n.input[0]].op_type == "Conv"]
    assert relus and all(table[n.output[0] + "_nchwc"] == producer[n.input[0]].name for n in relus)
    for p in r["profiles"].values():
        kinds = p["conv_ms_per_step_by_kind"]
        assert "other" not in kinds and {"1x1", "3x3", "15x15", "depthwise"} <= set(kinds)
        assert p["conv_gop_by_kind"]["15x15"] == pytest.approx(
            sum(ops for kind, ops in convs.values() if kind == "15x15") / 1e9)
        assert all(rate > 0 for rate in p["conv_gop_per_s_by_kind"].values())
        assert sum(kinds.values()) < p["kernel_ms_per_step"]
        # one profiled call (--reps 1): each Conv once, the warm-up call's left out
        assert sum(row["nodes"] for row in p["by_op"] if "Conv" in row["op"]) == len(convs)


def test_conv_table_counts_each_kind_by_hand(tmp_path):
    """int8_profile's operation counts on a hand-built graph: a grouped 3x3 conv, a depthwise 5x5 with
    a channel multiplier, and a 1x1 conv with an INT8 weight (through a DequantizeLinear) whose
    output is the graph's; 2 operations per multiply-add, and the NCHWc names of each Conv."""
    sys.path.insert(0, str(ROOT))
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks.int8_profile import _source, conv_table

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("wa", (6, 2, 3, 3)), ("wb", (12, 1, 5, 5)))]
    inits += [numpy_helper.from_array(np.ones((3, 12, 1, 1), np.int8), "wq"),
              numpy_helper.from_array(np.ones(3, np.float32), "ws"), numpy_helper.from_array(np.zeros(3, np.int8), "wz")]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="grouped", group=2, pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wb"], ["b"], name="dw", group=6, pads=[2] * 4),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["b", "wd"], ["y"], name="point")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "g.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    table = conv_table(path, {"x": np.zeros((2, 4, 8, 8), np.float32)})
    assert table["grouped"] == ("3x3 grouped", 2 * (2 * 6 * 8 * 8) * (2 * 3 * 3))
    assert table["dw"] == ("depthwise", 2 * (2 * 12 * 8 * 8) * 25)
    assert table["point"] == ("1x1", 2 * (2 * 3 * 8 * 8) * 12)  # the graph's output: its shape is inferred too
    assert _source("r_nchwc", table) == "grouped"  # Conv + ReLU fused, named after the ReLU's output
    assert _source("b_nchwc", table) == "dw" and _source("point_token_7", table) == "point"


def test_profile_leaves_out_the_warm_up_call():
    """int8_profile's per-step figures are the profiled calls' only: onnxruntime's profiler records
    from the session's creation, so the warm-up call's kernel events come first and are dropped."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.int8_profile import after_warm_up

    def run(ts, dur):
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}

    def kernel(ts):
        return {"cat": "Node", "name": f"conv_{ts}_kernel_time", "ts": ts, "dur": 5, "args": {"op_name": "Conv"}}

    events = [run(0, 100), kernel(10), kernel(90), run(120, 50), kernel(130), run(200, 40), kernel(210)]
    durations, kernels = after_warm_up(events)
    assert durations == [50, 40] and [e["ts"] for e in kernels] == [130, 210]


def test_gpu_benchmark_step_is_the_official_forward_and_runs_on_cpu(random_tiny, tmp_path):
    """benchmarks/gpu.py's on-device guided step computes what the parity reference does; its
    smoke run (--device cpu, eager fp32 only) writes its JSON and says ORT CUDA was not run."""
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu import guided_step
    from benchmarks.inputs import unet_feed
    from moebius_edge import contract
    from moebius_edge.export.config import MoebiusConfig
    from moebius_edge.export.job import random_init_modules
    from moebius_edge.export.onnx_export import reference_guided_eps
    from moebius_edge.models import open_models

    models = open_models(random_tiny)
    model, _, _ = random_init_modules(MoebiusConfig.from_dict(models.get(contract.META_MODEL_CONFIG)), 3)
    model.eval()
    feed = unet_feed(models.latent_size, timestep=321)
    args = [feed[t.name] for t in contract.UNET.inputs]
    ref = reference_guided_eps(model, *args[:4], contract.DEFAULT_GUIDANCE)
    ids = torch.tensor([contract.UNCOND_IDS, contract.COND_IDS])
    with torch.inference_mode():
        got = guided_step(model, *(torch.from_numpy(a) for a in args[:4]), ids, contract.DEFAULT_GUIDANCE).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)

    out = tmp_path / "gpu.json"
    proc = _bench("gpu.py", "--models", random_tiny, "--device", "cpu", "--dtypes", "fp32", "--no-compile",
                  "--reps", 2, "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert list(r["rows"]) == ["PyTorch eager fp32"] and r["rows"]["PyTorch eager fp32"]["reps"] == 2
    assert r["onnxruntime_cuda"] == "not run" and r["device"] == "cpu"


def test_vae_tiling_benchmark_measures_tiles_against_the_untiled_decode(tmp_path):
    """The tile as large as the latent is decoded untiled by diffusers: it must come out equal, so
    the comparison itself is sound; smaller tiles differ and are judged by the gate."""
    out = tmp_path / "vae_tiling.json"
    proc = _bench("vae_tiling.py", "--photos", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    (tiny,) = r["vaes"]
    control, *tiled = sorted(tiny["rows"], key=lambda x: -x["tile_latent"])
    assert control["tile_latent"] == tiny["latent_side"] and control["tiles"] == 1
    assert control["max_abs_diff"] == [0.0] and control["psnr_min_db"] is None and control["passes_gate"]
    assert tiled and all(x["tiles"] > 1 and x["max_abs_diff"][0] > 0 for x in tiled)
    assert all(x["passes_gate"] == (x["psnr_min_db"] >= r["gate_db"]) for x in tiled)
    assert all(x["peak_rss_mb"][0] > 0 for x in tiny["rows"])


def test_graph_memory_benchmark_profiles_each_setting(random_tiny, tmp_path):
    out = tmp_path / "graph_memory.json"
    proc = _bench("graph_memory.py", "--models", random_tiny, "--settings",
                  "runtime,low-memory,split in two,streamed", "--repeats", "2", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert [x["setting"] for x in r["runs"]] == ["runtime", "low-memory", "split in two", "streamed"]
    for x in r["runs"]:
        assert len(x["processes"]) == 2 and x["call_s"] > 0
        assert all(p["peak_rss_mb"] >= p["rss_after_load_mb"] > 0 for p in x["processes"])
        lo, hi = x["peak_rss_mb_range"]
        assert lo <= x["peak_rss_mb"] <= hi
    p = r["runs"][0]["profile"]
    assert p["peak_node"] and p["blocks"] and p["live_at_peak"]
    assert any(b["block"].startswith("/decoder/up_blocks") for b in p["blocks"])
    # the UNet, whose weights are in a sidecar (GraphSpec.mapped_weights): its optimised copies get one too
    settings = ["runtime", "pre-optimised", "one file", "mapped"]
    proc = _bench("graph_memory.py", "--models", random_tiny, "--graph", "unet", "--settings", ",".join(settings),
                  "--repeats", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [x["setting"] for x in runs] == settings and all(x["call_s"] > 0 for x in runs)
    proc = _bench("graph_memory.py", "--models", random_tiny, "--graph", "unet", "--settings", "split in two",
                  "--json", out)
    assert proc.returncode == 2 and "applies to the vae_decoder graph only" in proc.stderr


def test_graph_memory_split_decoder_parts_compose_to_the_decoder(random_tiny, tmp_path):
    """``split in two`` measures the decoder cut before its last upsampler: run one after the other,
    the two parts give the whole graph's output bit for bit (same nodes, same order within each)."""
    import onnxruntime as ort

    from benchmarks.graph_memory import split_before_last_upsampler
    from moebius_edge import contract
    from moebius_edge.models import open_models

    models = open_models(random_tiny)
    path = models.graph_path(contract.VAE_DECODER)
    first, second = split_before_last_upsampler(path, tmp_path)
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, 4, models.latent_size, models.latent_size)).astype(np.float32)

    def run(graph, x):
        s = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        return s.run(None, {s.get_inputs()[0].name: x})[0]

    whole = run(path, latent)
    middle = run(first, latent)
    assert middle.shape[-1] == models.image_size // 2  # cut before the upsampler to the image's size
    assert np.array_equal(run(second, middle), whole)


def test_graph_memory_keeps_a_reshaped_buffer_alive_until_its_alias_is_used():
    """ONNX Runtime's Reshape shares its input's buffer: the buffer is alive until the Reshape's
    output is last read, not freed at the Reshape."""
    from onnx import helper

    sys.path.insert(0, str(ROOT))
    from benchmarks.graph_memory import live_tensors

    mb = 2**20
    order = [(helper.make_node("Conv", ["x", "w"], ["a"], name="conv"), 4 * mb),
             (helper.make_node("Reshape", ["a", "s"], ["r"], name="reshape"), 4 * mb),
             (helper.make_node("Relu", ["x"], ["b"], name="relu"), 2 * mb),
             (helper.make_node("Add", ["b", "r"], ["c"], name="add"), 2 * mb)]
    at_relu = live_tensors(order, 2)
    assert set(at_relu) == {"a", "b"} and at_relu["a"][0] == 4
    assert set(live_tensors(order, 3)) == {"a", "b", "c"}


def test_bench_runs_the_steps_in_turn_and_records_their_time(random_tiny, tmp_path, monkeypatch, capsys):
    """benchmarks/bench.py (`make bench`): every step in its own process, from the caller's folder,
    with its JSON in the results folder, then bench.json with each step's wall time, and the report
    only for benchmarks/results; a failing step stops the run with its exit code and writes no
    bench.json. Shortened steps: the tiny model (fp32 only) at 2 steps and small photos."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import bench

    full = bench.steps
    short = {"graph_step": [], "pipeline": ["--steps", "2"],
             "photo_size": ["--precision", "fp32", "--steps", "2", "--megapixels", "0.1", "--hole-px", "64",
                            "--holes", "128", "--hole-photo-mp", "0.1"],
             "int8_profile": ["--reps", "1"]}
    monkeypatch.setattr(bench, "steps", lambda args: [(name, a + short[name]) for name, a in full(args)])
    monkeypatch.chdir(tmp_path)
    shutil.copytree(random_tiny, "models")
    argv = ["--models", "models", "--configs", "torch,fp32@models", "--results", "results"]  # relative to the caller
    assert bench.main(argv) == 0
    results = tmp_path / "results"
    assert {p.name for p in results.iterdir()} == {"graph_step.json", "pipeline.json", "photo_size.json",
                                                   "int8_profile.json", "bench.json"}
    r = json.loads((results / "bench.json").read_text())
    assert [x["step"] for x in r["steps"]] == ["graph_step", "pipeline", "photo_size", "int8_profile"]
    assert all(x["wall_s"] > 0 for x in r["steps"]) and r["wall_s"] >= sum(x["wall_s"] for x in r["steps"])
    assert r["budget_s"] == 900 and r["machine"]["processor"]
    assert "no report" in capsys.readouterr().out  # the README is generated from benchmarks/results only

    reports = []
    monkeypatch.setattr(bench, "RESULTS", results)  # as if these were benchmarks/results
    monkeypatch.setattr(bench, "steps", lambda args: [(n, a) for n, a in full(args) if n == "pipeline"])
    monkeypatch.setattr("benchmarks.report.main", lambda argv: reports.append(argv) or 0)
    argv[3] = "fp32"
    assert bench.main(argv) == 0 and reports == [[]]
    (results / "bench.json").unlink()
    argv[3] = "fp32,int4"  # pipeline.py refuses it: exit code 2
    assert bench.main(argv) == 2 and reports == [[]]
    assert not (results / "bench.json").exists()


def test_bench_refuses_a_folder_without_a_manifest(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    from benchmarks import bench

    with pytest.raises(SystemExit) as e:
        bench.main(["--models", str(tmp_path)])
    assert e.value.code == 2 and "make bench-models" in capsys.readouterr().err
