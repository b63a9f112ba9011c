"""The quantize stage on the trained stand-in (tests/data/standin_weights.*): the FP16 recipe passes
its gate, deliberately broken variants fail it, and what it writes is what the runtime reads.

The stand-in is the tiny preset trained briefly as a denoiser (export/train_standin.py), so the
gate is tested on trained activation statistics, not on random weights. Recipes here are shrunk
(fewer masks and steps) to keep the suite fast; the shipped recipe's figures are in the README.
"""
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moebius_edge import cli, contract, models
from moebius_edge.errors import UserError

onnx = pytest.importorskip("onnx")

DATA = Path(__file__).parent / "data"
PHOTOS = DATA / "photos"
# The shipped recipe with fewer pairs and steps: 2 calibration pairs, 4 held-out pairs (thin
# stroke, medium and thick brush, box), 7 UNet steps per pair.
FAST = {"calibration_masks": 1, "held_out_masks": 2, "steps": 8, "error_inputs": 2, "latency_reps": 1}


def _copy(src, tmp_path, name="models"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _recipe_file(tmp_path, **fields):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({**FAST, **fields}))
    return path


BLOCK_TORCH = """
import importlib.abc, json, sys
attempts = []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torch':
            attempts.append(name)
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from moebius_edge import cli
rc = cli.main(sys.argv[1:])
loaded = sorted(m for m in sys.modules
                if m.split('.')[0] in ('torch', 'diffusers', 'onnxsim', 'safetensors') or m.startswith('onnxruntime.tools'))
print(json.dumps({'rc': rc, 'torch_import_attempts': attempts, 'heavy_modules': loaded}))
"""


@pytest.fixture(scope="module")
def fp16_dir(standin_dir, tmp_path_factory):
    """A whole `moebius-edge quantize` run in a subprocess where importing torch raises; returns
    the models folder and what the subprocess reported about its imports."""
    tmp = tmp_path_factory.mktemp("fp16")
    root = _copy(standin_dir, tmp)
    recipe = _recipe_file(tmp)
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "-q", "quantize", "--models", str(root), "--precision",
                           "fp16", "--recipe", str(recipe), "--photos", str(PHOTOS)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The shipped FP16 recipe on the trained stand-in


def test_quantize_imports_no_torch_at_run_time(fp16_dir):
    _, imports = fp16_dir
    assert imports["rc"] == 0
    assert imports["torch_import_attempts"] == [] and imports["heavy_modules"] == []


def test_fp16_variant_of_the_standin_passes_its_gate(fp16_dir):
    root, _ = fp16_dir
    variant = models.open_models(root, "fp16")
    variant.verify()
    gate = variant.quantize_gate
    assert gate[contract.GATE_STATUS] == contract.GATE_PASSED and gate["enforced"] and not variant.gate_advisory
    report = json.loads((variant.folder / contract.QUANTIZE_REPORT_FILE).read_text())
    assert report["gate"]["checks_passed"] and report["fidelity"] == contract.DEFAULT_FIDELITY
    assert report["end_to_end"]["hole_psnr_min_db"] >= 35.0  # measured ≈ 59 dB
    assert report["unet"]["cosine_mean"] >= 0.99 and report["unet"]["psnr_min_db"] > 50
    assert report["end_to_end"]["outside_changed_px"] == 0
    assert {p["mask_kind"] for p in report["end_to_end"]["pairs"]} == {"thin_stroke", "medium_brush",
                                                                       "thick_brush", "box"}
    # Calibration and held-out photos are disjoint.
    assert not set(report["data"]["calibration"]["photos"]) & set(report["data"]["held_out"]["photos"])
    # The keep-list was measured: FP16 rounding of sin(t·f) is found and kept FP32, with its figures.
    keep = report["conversion"][contract.UNET.key]["keep_fp32"]
    sin = next(v for k, v in keep.items() if v["op"] == "Sin")
    assert sin["reason"] == "fp16 error" and sin["gain"] > 8
    # The UNet is stored in FP16 (the tiny graph's fixed overhead keeps it above the full model's 50 %).
    assert report["sizes"][contract.UNET.key]["ratio"] < 0.6
    assert (variant.folder / contract.QUANTIZE_REPORT_MD).read_text().startswith("# fp16 variant")
    recipe = json.loads((variant.folder / contract.QUANTIZE_RECIPE_FILE).read_text())
    assert set(recipe["keep"][contract.UNET.key]) == set(keep)
    # Source digests recorded; no staging folder left behind.
    assert variant.manifest[contract.MANIFEST_SOURCE_GRAPHS] == models.source_digests(models.open_models(root).manifest)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def run_precisions(root, tmp_path, precisions) -> tuple:
    """`moebius-edge run` on a held-out photo with a box mask, once per precision: ({precision:
    (H, W, 3) int array}, the mask)."""
    from PIL import Image

    photo = np.asarray(Image.open(PHOTOS / "grace_hopper.jpg").convert("RGB"))
    mask = np.zeros(photo.shape[:2], np.uint8)
    mask[200:260, 150:330] = 255
    Image.fromarray(photo).save(tmp_path / "p.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    outs = {}
    for p in precisions:
        assert cli.main(["-q", "run", str(tmp_path / "p.png"), str(tmp_path / "m.png"), "--models", str(root),
                         "--precision", p, "-o", str(tmp_path / f"{p}.png"), "--json"]) == 0
        outs[p] = np.asarray(Image.open(tmp_path / f"{p}.png")).astype(int)
    return outs, mask


def test_variant_folder_is_as_readable_as_its_models_folder(fp16_dir):
    """A variant is staged in a private folder (tempfile's 0700) and published by a rename: the
    published folder must not stay private, or a models folder shared between users (exported by
    one, run by a service user) would have an fp16/int8 variant no one else can open."""
    root, _ = fp16_dir
    variant = models.open_models(root, "fp16")
    assert variant.folder != Path(root)
    assert variant.folder.stat().st_mode & 0o777 == Path(root).stat().st_mode & 0o777


def test_replace_folder_publishes_with_the_umask_mode(tmp_path):
    """The rename that publishes a staged folder (variants, bundles) leaves it with the mode a
    folder made under the umask gets, whatever tempfile gave the staging folder (0700)."""
    import os

    old = os.umask(0o022)
    try:
        staged = models.staging_folder(tmp_path, "test")
        (staged / "manifest.json").write_text("{}")
        models.replace_folder(staged, tmp_path / "variant")
    finally:
        os.umask(old)
    assert (tmp_path / "variant").stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in (tmp_path / "variant").iterdir()) == ["manifest.json"]  # the probe is gone


def test_run_and_info_use_the_fp16_variant(fp16_dir, tmp_path, capsys):
    root, _ = fp16_dir
    outs, mask = run_precisions(root, tmp_path, ("fp32", "fp16"))
    hole = mask > 127
    mse = ((outs["fp16"][hole] - outs["fp32"][hole]) ** 2).mean()
    assert mse == 0 or 10 * np.log10(255 ** 2 / mse) >= 35
    assert (outs["fp16"][~hole] == outs["fp32"][~hole]).mean() > 0.99
    capsys.readouterr()
    assert cli.main(["info", "--models", str(root)]) == 0
    text = capsys.readouterr().out
    assert "[fp16]" in text and "gate passed" in text and "hole PSNR min" in text
    assert cli.main(["info", "--models", str(root), "--json"]) == 0
    v = json.loads(capsys.readouterr().out)["models"]["variants"]["fp16"]
    assert v[contract.MANIFEST_QUANTIZE_GATE][contract.GATE_STATUS] == contract.GATE_PASSED
    unet, entry = v[contract.MANIFEST_GRAPHS][contract.UNET.key], models.open_models(root, "fp16").entry(contract.UNET)
    assert unet[contract.GRAPH_BYTES] == models.total_bytes(entry) > entry[contract.GRAPH_BYTES]  # with its sidecar
    assert v["own_bytes"] < sum(models.total_bytes(g) for g in  # graph files and the UNet's sidecar
                                json.loads((root / contract.MANIFEST_FILE).read_text())[contract.MANIFEST_GRAPHS].values())


def test_variant_of_reexported_graphs_is_refused(fp16_dir, tmp_path):
    root = _copy(fp16_dir[0], tmp_path)
    fp32 = json.loads((root / contract.MANIFEST_FILE).read_text())
    fp32[contract.MANIFEST_GRAPHS][contract.UNET.key][contract.GRAPH_SHA256] = "0" * 64
    (root / contract.MANIFEST_FILE).write_text(json.dumps(fp32))
    with pytest.raises(UserError, match="made from other FP32 graphs"):
        models.open_models(root, "fp16")


# ---------------------------------------------------------------------------------------------
# Broken variants fail the gate


def _overflowing(root, scale=2.0 ** 16) -> list:
    """Rewrite the UNet so that its first LayerNormalization reads its input multiplied by
    ``scale``: the same function in FP32 (layer norm is scale-invariant and a power of two is
    exact), beyond FP16's 65504 for any |value| > 1. A LayerNormalization because ONNX Runtime's
    CPU provider runs it in FP16, so its input really is stored in FP16 there (Mul, Conv and most
    other ops run in FP32 between casts it removes again). Returns the two nodes' names."""
    from onnx import helper, numpy_helper

    path = root / contract.UNET.file
    proto = onnx.load(str(path))
    i, norm = next((i, n) for i, n in enumerate(proto.graph.node) if n.op_type == "LayerNormalization")
    x = norm.input[0]
    norm.input[0] = f"{x}_big"
    proto.graph.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), "test_scale"))
    up = "test_overflow_up"
    proto.graph.node.insert(i, helper.make_node("Mul", [x, "test_scale"], [f"{x}_big"], name=up))
    onnx.save(proto, str(path))
    m = models.read_manifest(root)
    m[contract.MANIFEST_GRAPHS][contract.UNET.key] = models.graph_entry(path, root)
    models.write_manifest(root, m)
    return [up, norm.name]


def _unet_feeds(n, latent=16, seed=0):
    rng = np.random.default_rng(seed)
    names = contract.UNET.input_names
    return [dict(zip(names, (rng.standard_normal((1, 4, latent, latent), dtype=np.float32),
                             (rng.random((1, 1, latent, latent)) > 0.5).astype(np.float32),
                             rng.standard_normal((1, 4, latent, latent), dtype=np.float32),
                             np.array([t], np.int64), np.array([contract.DEFAULT_GUIDANCE], np.float32))))
            for t in np.linspace(900, 0, n).astype(int)]


def test_measured_keep_list_keeps_an_overflowing_activation(standin_dir, tmp_path):
    """The range pass finds activations beyond FP16's range and keeps their producers and readers
    in FP32, and the FP32→FP16→FP32 round trips the converter leaves between them are removed;
    with the keep-list emptied, or with the round trips left in, the FP16 graph returns inf/NaN."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from moebius_edge.quantize import fp16
    from moebius_edge.quantize import graph as G

    root = _copy(standin_dir, tmp_path)
    up, norm = _overflowing(root)
    proto = G.load(root / contract.UNET.file)
    feeds = _unet_feeds(3)
    res = fp16.make_fp16(proto, feeds, feeds[:1], key=contract.UNET.key, rounds=0)
    assert res.keep.entries[up]["reason"] == "range" and res.keep.entries[up]["max"] > fp16.FP16_MAX
    assert res.keep.entries[norm]["reason"] == "range (reads it)"
    name = contract.UNET.output_names[0]
    ref = G.session(proto).run([name], feeds[0])[0]
    kept = G.session(res.proto).run([name], feeds[0])[0]
    assert np.isfinite(kept).all() and fp16.rel_l2(kept, ref) < 1e-2
    bare = G.session(fp16.convert(proto, [])).run([name], feeds[0])[0]
    assert not np.isfinite(bare).all()
    no_collapse = convert_float_to_float16(proto, keep_io_types=True, node_block_list=[up, norm])
    assert not np.isfinite(G.session(no_collapse).run([name], feeds[0])[0]).all()


def test_broken_variant_fails_the_gate_and_leaves_no_variant(standin_dir, tmp_path, capsys):
    """The overflowing UNet quantized with the keep-list emptied (no measurement): NaN/Inf
    blocks; exit 2, one line, no variant, no staging folder."""
    root = _copy(standin_dir, tmp_path)
    _overflowing(root)
    recipe = _recipe_file(tmp_path, measure=False, keep={}, vae="fp32")
    rc = cli.main(["-q", "quantize", "--models", str(root), "--precision", "fp16", "--recipe", str(recipe),
                   "--photos", str(PHOTOS)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    errors = [line for line in err if line.startswith("moebius-edge quantize: error:")]
    assert errors == err[-1:] and "rejected, nothing written" in err[-1] and "finite False" in err[-1]
    assert not (root / "fp16").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def fp32_data(standin_dir):
    from moebius_edge.quantize import job, recipe

    fp32 = models.open_models(standin_dir)
    rcp = recipe.from_dict(FAST, "fp16")
    return fp32, rcp, job.fp32_runs(fp32, rcp, PHOTOS, 0)


def test_corrupted_weights_fail_the_gate(fp16_dir, fp32_data, tmp_path):
    """The passing variant with its UNet conv weights perturbed by 20 % multiplicative noise: both
    quality checks fail (measured: hole PSNR 27 dB, mean step cosine 0.988; at 5 % noise the
    variant still passes with 37 dB and 0.9990)."""
    from onnx import numpy_helper

    from moebius_edge.quantize import gate, job

    fp32, rcp, data = fp32_data
    root = _copy(fp16_dir[0], tmp_path)
    folder = root / "fp16"
    proto = onnx.load(str(folder / contract.UNET.file))
    rng = np.random.default_rng(0)
    for t in proto.graph.initializer:
        w = numpy_helper.to_array(t)
        if w.dtype == np.float16 and w.ndim == 4 and w.size > 1000:  # conv weights
            t.CopyFrom(numpy_helper.from_array((w * (1 + 0.2 * rng.standard_normal(w.shape))).astype(np.float16), t.name))
    onnx.save(proto, str(folder / contract.UNET.file))
    fp32 = models.open_models(root)
    manifest = models.read_manifest(folder)
    manifest[contract.MANIFEST_GRAPHS][contract.UNET.key] = models.graph_entry(folder / contract.UNET.file, folder)
    variant = models.ModelsFolder(root=root, folder=folder, precision="fp16", manifest=manifest)
    figures = job.evaluate_variant(fp32, variant, data, rcp, 0)
    verdict = gate.judge(job.evaluate.gate_figures(figures["unet"], figures["end_to_end"], figures["vae"]),
                         gate.thresholds("fp16"), fp32.provenance)
    assert verdict[contract.GATE_STATUS] == gate.GATE_FAILED
    assert set(verdict["failed"]) == {"hole_psnr_min_db", "mean_step_cosine"}, gate.summary(verdict)


def test_decoder_fallback_with_a_real_variant(fp16_dir, caplog):
    """Start noise ×800 gives latents ~1,400× the usual (still finite through the FP16 UNet) that
    overflow the FP16 decoder; the runtime decodes the crop again with the FP32 decoder, and the
    result is exactly what the FP32 decoder gives on the variant's latents."""
    from PIL import Image

    from moebius_edge.pipeline import Inpainter, draw_noise
    from moebius_edge.session import GraphSession

    root, _ = fp16_dir
    variant = models.open_models(root, "fp16")
    assert not variant.graph_path(contract.VAE_DECODER).samefile(root / contract.VAE_DECODER.file)
    photo = np.asarray(Image.open(PHOTOS / "grace_hopper.jpg").convert("RGB"))
    mask = np.zeros(photo.shape[:2], np.uint8)
    mask[200:260, 150:330] = 255
    noise = draw_noise(np.random.default_rng(0), variant.latent_size)
    noise["noise_base"] = noise["noise_base"] * 800
    inp = Inpainter.from_models(root, "fp16", "cpu")
    with caplog.at_level(logging.WARNING, logger="moebius_edge"):
        out = inp.inpaint(photo, mask, noise=noise)
    assert inp.last_run.decoder_fallback and "fp32 decoder" in caplog.text
    ref = Inpainter.from_models(root, "fp16", "cpu")
    ref.graphs[contract.VAE_DECODER.key] = GraphSession(models.open_models(root), contract.VAE_DECODER, ref.config)
    expected = ref.inpaint(photo, mask, noise=noise)
    assert not ref.last_run.decoder_fallback
    assert np.array_equal(out, expected)


def test_random_init_gate_is_advisory_and_run_warns(fp16_dir, fp32_data, tmp_path, caplog):
    """Random-init provenance: a failing figure (here an impossible threshold, recorded as an
    override) is printed, marked advisory, and the variant kept; `run` warns when it uses it."""
    from moebius_edge.pipeline import Inpainter
    from moebius_edge.quantize import gate, job

    _, rcp, data = fp32_data
    root = _copy(fp16_dir[0], tmp_path)
    shutil.rmtree(root / "fp16")
    m = models.read_manifest(root)
    m[contract.manifest_key(contract.META_PROVENANCE)] = contract.PROVENANCE_RANDOM_INIT + "0"
    models.write_manifest(root, m)
    keep = json.loads((fp16_dir[0] / "fp16" / contract.QUANTIZE_RECIPE_FILE).read_text())["keep"]
    limits = gate.thresholds("fp16", min_hole_psnr_db=1000.0)
    result = job.make_variant(models.open_models(root), "fp16", rcp.replace(measure=False, keep=keep), limits, data)
    v = result["gate"]
    assert v[contract.GATE_STATUS] == contract.GATE_ADVISORY and not v["enforced"] and not v["checks_passed"]
    assert v["overridden"] == {"min_hole_psnr_db": {"default": 35.0, "used": 1000.0}}
    variant = models.open_models(root, "fp16")
    assert variant.gate_advisory
    with caplog.at_level(logging.WARNING, logger="moebius_edge"):
        Inpainter.from_models(root, "fp16", "cpu")
    assert "advisory" in caplog.text


def test_interrupted_quantize_leaves_the_old_variant_and_no_staging(fp16_dir, fp32_data, tmp_path, monkeypatch):
    from moebius_edge.quantize import gate, job

    _, rcp, data = fp32_data
    root = _copy(fp16_dir[0], tmp_path)
    before = {p.name: p.read_bytes() for p in (root / "fp16").iterdir()}

    def interrupted(fp32, staging, *a, **k):
        (staging / contract.UNET.file).write_bytes(b"half-written")
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "build_fp16", interrupted)
    with pytest.raises(KeyboardInterrupt):
        job.make_variant(models.open_models(root), "fp16", rcp, gate.thresholds("fp16"), data)
    assert {p.name: p.read_bytes() for p in (root / "fp16").iterdir()} == before
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    models.open_models(root, "fp16").verify()


# ---------------------------------------------------------------------------------------------
# Command line and recipes


@pytest.mark.parametrize("args, message", [
    (["--recipe", "{missing}"], "recipe not found"),
    (["--recipe", "{bad_field}"], "unknown recipe fields: colour"),
    (["--recipe", "{overlap}"], "must be disjoint"),
    (["--photos", "{nowhere}"], "photos folder not found"),
])
def test_quantize_user_errors_are_one_line(standin_dir, tmp_path, capsys, args, message):
    files = {"missing": tmp_path / "none.json", "nowhere": tmp_path / "nowhere"}
    (tmp_path / "bad.json").write_text(json.dumps({"colour": 1}))
    (tmp_path / "overlap.json").write_text(json.dumps({"held_out_photos": ["chelsea.jpg"]}))
    files.update(bad_field=tmp_path / "bad.json", overlap=tmp_path / "overlap.json")
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    assert cli.main(["quantize", "--models", str(standin_dir), "--precision", "fp16", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (standin_dir / "fp16").exists()


def test_cli_defaults_agree_with_the_stage(capsys):
    """The command spells its choices and the gate's defaults itself (so `--help` does not import
    the stage); they must be the stage's."""
    from moebius_edge.commands import quantize as command
    from moebius_edge.quantize import gate, job, recipe

    assert command.PRECISION_CHOICES == job.PRECISION_CHOICES
    assert command.DEFAULT_PHOTOS_DIR == recipe.DEFAULT_PHOTOS_DIR
    with pytest.raises(SystemExit):
        cli.main(["quantize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{gate.FP16_MIN_HOLE_PSNR_DB:g} dB for fp16, {gate.INT8_MIN_HOLE_PSNR_DB:g} for int8" in text
    assert f"default: {gate.MIN_MEAN_STEP_COSINE:g};" in text
