"""ONNX export: graphs against the golden vectors and diffusers through ONNX Runtime, parity gate,
metadata, atomic writes."""
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from moebius_edge import contract  # noqa: E402
from moebius_edge.export import onnx_export  # noqa: E402
from moebius_edge.models import sha256_file  # noqa: E402
from moebius_edge.export.onnx_export import ParityError, export_models, export_unet  # noqa: E402

from .goldens import DATA, golden_tolerance, load_golden_model, load_tiny_vae  # noqa: E402


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _golden_rows_through_guided_unet(sess, case):
    """In the goldens the uncond and cond rows have different inputs: rows 0..B-1 at guidance 0
    give ε_u of their own inputs, rows B..2B-1 at guidance 1 give ε_c."""
    g = np.load(DATA / f"tiny_case_{case}.npz")
    x = g["noisy_latents"]
    b = x.shape[0] // 2
    t = np.broadcast_to(g["timesteps"], (2 * b,)).astype(np.int64)
    outs = []
    for rows, guidance in ((slice(0, b), 0.0), (slice(b, 2 * b), 1.0)):
        xr = x[rows]
        feeds = {"latent": xr[:, 0:4], "mask": xr[:, 4:5], "masked_latent": xr[:, 5:9],
                 "timestep": np.ascontiguousarray(t[rows]), "guidance_scale": np.array([guidance], np.float32)}
        outs.append(sess.run(["noise_pred"], feeds)[0])
    return np.abs(np.concatenate(outs) - g["noise_pred"]).max()


def test_unet_graph(tiny_models_dir):
    sess = _session(tiny_models_dir / contract.UNET.file)
    for case in (1, 2):
        err = _golden_rows_through_guided_unet(sess, case)
        assert err <= golden_tolerance("noise_pred"), f"case {case}: {err:.3g}"


def test_unet_graph_latent8_golden(tmp_path):
    model = load_golden_model(0)
    meta = onnx_export.common_metadata(model.cfg, 0.13025, "checkpoint:test", None)
    path = export_unet(model, tmp_path, meta)
    assert _golden_rows_through_guided_unet(_session(path), 0) <= golden_tolerance("noise_pred")


def test_vae_encoder_graph(tiny_models_dir):
    vae, sf = load_tiny_vae()
    sess = _session(tiny_models_dir / contract.VAE_ENCODER.file)
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (1, 3, 128, 128)).astype(np.float32)
    noise = rng.standard_normal((1, 4, 16, 16), dtype=np.float32)
    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(image)).latent_dist
    mean = sess.run(["latent"], {"image": image, "noise": np.zeros_like(noise)})[0]
    np.testing.assert_allclose(mean, dist.mean.numpy() * sf, atol=1e-5, rtol=1e-4)  # zero noise: the mean
    sample = sess.run(["latent"], {"image": image, "noise": noise})[0]
    ref = (dist.mean + dist.std * torch.from_numpy(noise)).numpy() * sf
    assert onnx_export.rel_l2(sample, ref) <= onnx_export.PARITY_REL_L2


def test_vae_decoder_graph(tiny_models_dir):
    vae, sf = load_tiny_vae()
    case = np.load(DATA / "pipeline_case.npz")
    final = case["latents_per_step"][-1]
    out = _session(tiny_models_dir / contract.VAE_DECODER.file).run(["image"], {"latent": final})[0]
    ref = np.clip((case["decoded_f32"] + 1) / 2, 0, 1)
    assert np.abs(out - ref).max() <= 1e-4
    assert out.min() >= 0 and out.max() <= 1


# optimum-style guard: every graph of the contract needs an export test above.
EXPORT_TESTS = {
    contract.UNET.key: test_unet_graph,
    contract.VAE_ENCODER.key: test_vae_encoder_graph,
    contract.VAE_DECODER.key: test_vae_decoder_graph,
}


def test_every_contract_graph_has_an_export_test():
    assert set(EXPORT_TESTS) == {g.key for g in contract.GRAPHS}


def test_graph_io_and_ops_follow_the_contract(tiny_models_dir):
    for graph in contract.GRAPHS:
        m = onnx.load(str(tiny_models_dir / graph.file))
        assert m.opset_import[0].version == onnx_export.ONNX_OPSET
        for spec, vi in zip(graph.inputs + graph.outputs, list(m.graph.input) + list(m.graph.output)):
            assert vi.name == spec.name
            dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            assert len(dims) == len(spec.shape)
            if spec.shape[0] == contract.BATCH_AXIS:
                assert dims[0] == contract.BATCH_AXIS
        ops = {n.op_type for n in m.graph.node}
        assert "Einsum" not in ops and "BatchNormalization" not in ops, graph.key
        inits = {i.name: i for i in m.graph.initializer}
        for n in m.graph.node:
            if n.op_type == "Conv" and n.input[1] in inits:
                assert len(inits[n.input[1]].dims) == 4, "5-D Conv in the graph"


def test_local_queries_reach_the_lambda_product_without_a_transpose(tiny_models_dir):
    """The local λ's queries come out of their projection as (B, N, K, h)
    (``transforms.order_local_queries``): the one (K, h) swap left per stage is the λ product's
    output, so ONNX Runtime's INT8 MatMul gets its queries with no memory-bound Transpose first."""
    m = onnx.load(str(tiny_models_dir / contract.UNET.file), load_external_data=False)
    producer = {o: n for n in m.graph.node for o in n.output}
    swaps = [n for n in m.graph.node if n.op_type == "Transpose"
             and list(onnx.helper.get_attribute_value(n.attribute[0])) == [0, 1, 3, 2]]
    stages = sum(1 for n in m.graph.node if n.op_type == "Conv" and "pos_conv" in n.name)
    assert stages and len(swaps) == stages  # one per stage, not two
    assert all(producer[n.input[0]].op_type == "MatMul" for n in swaps)


def test_unet_constants_do_not_blow_up_the_file():
    """The cross-λ position term must be re-associated (A = Q·R), never folded into Λp = R·Vm."""
    model = load_golden_model(1)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = export_unet(model, tmp, onnx_export.common_metadata(model.cfg, 0.13025, "checkpoint:test", None))
        m = onnx.load(str(path))
    init_bytes = sum(onnx.numpy_helper.to_array(i).nbytes for i in m.graph.initializer)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert init_bytes <= 1.05 * param_bytes


def test_metadata_and_manifest_round_trip(tiny_models_dir):
    manifest = json.loads((tiny_models_dir / contract.MANIFEST_FILE).read_text())
    assert manifest["contract_version"] == contract.CONTRACT_VERSION
    assert manifest["provenance"] == "checkpoint:tiny_weights.safetensors"
    assert manifest["image_size"] == 128 and manifest["latent_size"] == 16
    assert manifest["vae_scaling_factor"] == 0.13025
    assert manifest["scheduler"] == contract.scheduler_metadata()
    golden_alphas = np.load(DATA / "pipeline_case.npz")["alphas_cumprod_all"]
    assert np.array_equal(np.asarray(manifest[contract.MANIFEST_ALPHAS_CUMPROD], np.float32), golden_alphas)
    for graph in contract.GRAPHS:
        entry = manifest[contract.MANIFEST_GRAPHS][graph.key]
        path = tiny_models_dir / entry["file"]
        assert entry["sha256"] == sha256_file(path)
        assert entry["bytes"] == path.stat().st_size
        # The UNet's weights in a sidecar that ORT maps, readable like its graph; the VAE's inline.
        sidecar = entry.get(contract.GRAPH_EXTERNAL_DATA)
        assert (sidecar is not None) == graph.mapped_weights, graph.key
        if sidecar:
            data = tiny_models_dir / sidecar["file"]
            assert data.stat().st_size > path.stat().st_size and sidecar["sha256"] == sha256_file(data)
            assert data.stat().st_mode & 0o777 == path.stat().st_mode & 0o777
        assert manifest["parity"][graph.key]["rel_l2"] <= onnx_export.PARITY_REL_L2
        # The runtime reads metadata without the onnx package: through ORT.
        meta = _session(path).get_modelmeta().custom_metadata_map
        assert meta[contract.META_GRAPH] == graph.key
        for key in (contract.META_PROVENANCE, contract.META_PRECISION):
            assert meta[key] == manifest[contract.manifest_key(key)]
        for key in (contract.META_CONTRACT_VERSION, contract.META_MODEL_CONFIG, contract.META_IMAGE_SIZE,
                    contract.META_LATENT_SIZE, contract.META_SCALING_FACTOR, contract.META_SCHEDULER,
                    contract.META_LICENSES):
            assert json.loads(meta[key]) == manifest[contract.manifest_key(key)], key
        assert json.loads(meta[contract.META_PARITY]) == manifest["parity"][graph.key]


def test_parity_gate_catches_wrong_folded_constants(tmp_path, monkeypatch):
    """Swap the uncond/cond constants in the wrapper only: the gate compares against the unfused
    model with real ids, so it must refuse the export and leave nothing behind."""
    original_init = onnx_export.GuidedUNet.__init__

    def swapped(self, model):
        original_init(self, model)
        lam = self.cross_lambdas_0
        self.cross_lambdas_0 = lam.flip(0).clone()

    monkeypatch.setattr(onnx_export.GuidedUNet, "__init__", swapped)
    vae, sf = load_tiny_vae()
    out = tmp_path / "models"
    with pytest.raises(ParityError, match="PARITY_REL_L2"):
        export_models(load_golden_model(1), vae, sf, out, provenance="checkpoint:test")
    assert not out.exists()


def test_interrupted_export_leaves_no_file(tmp_path, monkeypatch):
    out = tmp_path / "models"
    out.mkdir()
    (out / "keep.txt").write_text("unrelated")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "export_vae_decoder", interrupt)
    vae, sf = load_tiny_vae()
    with pytest.raises(KeyboardInterrupt):
        export_models(load_golden_model(1), vae, sf, out, provenance="checkpoint:test")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_static_batch_export(tmp_path):
    model = load_golden_model(1)
    path = export_unet(model, tmp_path, onnx_export.common_metadata(model.cfg, 0.13025, "checkpoint:test", None),
                       static_batch=True)
    proto = onnx.load(str(path))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 4, 16, 16]
    # The CFG halves share everything up to the first cross-λ: that part runs on one row, the rest
    # on two (uncond, cond). Conv and MatMul nodes by their module (quantize's stable names); the
    # position conv runs on B·V maps and the Gemms on B·N token rows, so their first axis is not B.
    from moebius_edge.quantize.int8 import stable_names

    inferred = onnx.shape_inference.infer_shapes(proto).graph
    batch = {v.name: v.type.tensor_type.shape.dim[0].dim_value for v in list(inferred.value_info) + list(inferred.output)
             if v.type.tensor_type.shape.dim}
    stage0 = "unet.down_blocks.0.attentions.0.transformer_blocks.0."
    prefixes = ("unet.conv_in.", "unet.down_blocks.0.resnets.0.", stage0 + "attn1",
                stage0 + "attn2", stage0 + "ff", "unet.down_blocks.1.", "unet.up_blocks.", "unet.conv_out.")
    rows = {}
    by_name = {n.name: n for n in proto.graph.node}
    for node, module in stable_names(proto).items():
        prefix = next((p for p in prefixes if module.startswith(p)), None)
        if prefix and by_name[node].op_type in ("Conv", "MatMul") and not module.endswith("pos_conv"):
            rows.setdefault(prefix, set()).add(batch[by_name[node].output[0]])
    assert rows == {**{p: {1} for p in prefixes[:3]}, **{p: {2} for p in prefixes[3:]}}


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "moebius_edge.cli", *args], capture_output=True, text=True, **kw)


def test_cli_random_init_tiny_export(tmp_path):
    out = tmp_path / "models"
    r = _cli("export", "--random-init", "--preset", "tiny", "--seed", "3", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / contract.MANIFEST_FILE).read_text())
    assert manifest["provenance"] == "random-init:3"
    assert set(manifest["graphs"]) == {g.key for g in contract.GRAPHS}
    assert all(v["rel_l2"] <= onnx_export.PARITY_REL_L2 for v in manifest["parity"].values())
    assert manifest["vae_scaling_factor"] == 0.13025  # from the packaged config, not a literal
    assert manifest["graphs"]["vae_decoder"]["bytes"] < 2**20  # the tiny VAE layout for the tiny preset


def test_cli_export_without_weights_is_one_line(tmp_path):
    r = _cli("export", "--out", str(tmp_path / "m"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_full_width_export_at_latent16(tmp_path):
    """Every op at the full moebius channel counts (212M parameters), 1/16 of the 512² compute."""
    out = tmp_path / "models"
    r = _cli("export", "--random-init", "--preset", "moebius", "--image-size", "128", "--out", str(out), timeout=1800)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / contract.MANIFEST_FILE).read_text())
    assert manifest["latent_size"] == 16
    assert manifest["parity"]["unet"]["rel_l2"] <= onnx_export.PARITY_REL_L2


def test_cli_export_variant_from_the_hub_cache(tmp_path):
    """`make export` path: official files found in the local Hugging Face cache, no other step
    (the tiny golden weights stand in for the official checkpoint, with --unet-config tiny)."""
    from .test_download import MOEBIUS_COMMIT, PIXELHACKER_COMMIT, add_to_cache

    cache = tmp_path / "hub"
    bin_path = tmp_path / "w.bin"
    torch.save(load_golden_model(1).state_dict(), bin_path)
    add_to_cache(cache, contract.HUB_REPO, MOEBIUS_COMMIT, f"pretrained/{contract.HUB_WEIGHTS_FILE}",
                 bin_path.read_bytes())
    for name, src in (("config.json", "tiny_vae_config.json"),
                      ("diffusion_pytorch_model.safetensors", "tiny_vae_weights.safetensors")):
        add_to_cache(cache, contract.HUB_VAE_REPO, PIXELHACKER_COMMIT, f"{contract.HUB_VAE_SUBFOLDER}/{name}",
                     (DATA / src).read_bytes())
    out = tmp_path / "models"
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    r = _cli("export", "--variant", "pretrained", "--unet-config", "tiny", "--cache-dir", str(cache),
             "--out", str(out), env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / contract.MANIFEST_FILE).read_text())
    assert manifest["provenance"] == "official:pretrained"
    assert manifest["weights_sha256"] == sha256_file(bin_path)
    # Same weights as the golden fixture, so the same UNet numbers.
    assert _golden_rows_through_guided_unet(_session(out / contract.UNET.file), 1) <= golden_tolerance("noise_pred")

    r = _cli("export", "--variant", "ft_ffhq", "--unet-config", "tiny", "--cache-dir", str(cache),
             "--out", str(tmp_path / "m2"), env=env, timeout=600)
    assert r.returncode == 2 and "moebius-edge download --variant ft_ffhq" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "m2").exists()


def test_external_data_graphs_are_moved_hashed_and_verified(tmp_path, monkeypatch, golden):
    """Graphs over protobuf's limit keep their weights in a sidecar: exercised here with a
    threshold of 1 byte, the sidecar must land beside its graph, be listed and checked."""
    from moebius_edge import models
    from moebius_edge.errors import UserError
    from moebius_edge.pipeline import Inpainter

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD_BYTES", 1)
    vae, sf = load_tiny_vae()
    out = tmp_path / "models"
    manifest = export_models(load_golden_model(1), vae, sf, out, provenance="checkpoint:test")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
    for graph in contract.GRAPHS:
        data = manifest[contract.MANIFEST_GRAPHS][graph.key][contract.GRAPH_EXTERNAL_DATA]
        sidecar = out / data[contract.GRAPH_FILE]
        assert sidecar == models.external_data_path(out / graph.file)
        assert data[contract.GRAPH_SHA256] == sha256_file(sidecar)
        assert (out / graph.file).stat().st_size < sidecar.stat().st_size  # the weights are outside
    inp = Inpainter.from_models(out, providers="cpu")  # verify() hashes the sidecars too
    result = inp.inpaint(golden["image_u8"], golden["mask_u8"], noise=golden, fidelity="official")
    assert np.abs(result.astype(int) - golden["output_u8"]).max() <= 1
    sidecar = models.external_data_path(out / contract.VAE_DECODER.file)
    data = bytearray(sidecar.read_bytes())
    data[100] ^= 0xFF
    sidecar.write_bytes(bytes(data))
    with pytest.raises(UserError, match="SHA-256"):
        models.open_models(out).verify()
    sidecar.unlink()
    with pytest.raises(UserError, match="external data missing"):
        models.open_models(out)


def test_export_replaces_the_graphs_and_purges_stale_variants(tmp_path):
    out = tmp_path / "models"
    vae, sf = load_tiny_vae()
    export_models(load_golden_model(1), vae, sf, out, provenance="checkpoint:first")
    variant = out / contract.precision_subdir("int8")
    variant.mkdir()
    (variant / contract.MANIFEST_FILE).write_text("{}")
    (out / "notes.txt").write_text("the user's own file")
    own = out / contract.precision_subdir("fp16")  # a folder of that name without a manifest: not a variant
    own.mkdir()
    (own / "holiday.jpg").write_bytes(b"x")
    manifest = export_models(load_golden_model(2), vae, sf, out, provenance="checkpoint:second")
    assert not variant.exists()
    assert (out / "notes.txt").exists() and (own / "holiday.jpg").exists()
    on_disk = json.loads((out / contract.MANIFEST_FILE).read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk[contract.manifest_key(contract.META_PROVENANCE)] == "checkpoint:second"


# ---------------------------------------------------------------------------------------------
# Issue 9: `export --out` never silently replaces a folder, nor trips over a file


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moebius-edge export: error: "), stderr
    return lines[0]


def test_cli_export_refuses_a_non_empty_folder_without_force(tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    r = _cli("export", "--random-init", "--preset", "tiny", "--out", str(out), timeout=600)
    assert r.returncode == 2 and "--force" in _one_line(r.stderr)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_cli_export_to_an_existing_file_is_one_line(tmp_path):
    (tmp_path / "models").write_text("a file")
    r = _cli("export", "--random-init", "--preset", "tiny", "--out", str(tmp_path / "models"), timeout=600)
    assert r.returncode == 2 and "not a folder" in _one_line(r.stderr)
    assert (tmp_path / "models").read_text() == "a file"


def test_cli_export_force_replaces_the_models_and_their_variants(tmp_path):
    out = tmp_path / "models"
    vae, sf = load_tiny_vae()
    export_models(load_golden_model(1), vae, sf, out, provenance="checkpoint:first")
    variant = out / contract.precision_subdir("fp16")
    variant.mkdir()
    (variant / contract.MANIFEST_FILE).write_text("{}")
    r = _cli("export", "--random-init", "--preset", "tiny", "--seed", "5", "--out", str(out), "--force", timeout=600)
    assert r.returncode == 0, r.stderr
    assert not variant.exists()
    manifest = json.loads((out / contract.MANIFEST_FILE).read_text())
    assert manifest[contract.manifest_key(contract.META_PROVENANCE)] == contract.PROVENANCE_RANDOM_INIT + "5"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_export_failing_mid_move_leaves_no_models_folder_rather_than_a_mix(tmp_path, monkeypatch):
    """The old manifest goes first and the new one last: a folder caught between is refused by
    the runtime, never read as old graphs mixed with new ones."""
    import os

    from moebius_edge import models
    from moebius_edge.errors import UserError

    out = tmp_path / "models"
    vae, sf = load_tiny_vae()
    export_models(load_golden_model(1), vae, sf, out, provenance="checkpoint:first")
    variant = out / contract.precision_subdir("int8")
    variant.mkdir()
    (variant / contract.MANIFEST_FILE).write_text("{}")
    real = os.replace

    def failing(src, dst, *a, **kw):
        if os.path.dirname(os.fspath(dst)) == os.fspath(out) and os.path.basename(dst) == contract.VAE_ENCODER.file:
            raise OSError("disk full")
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        export_models(load_golden_model(2), vae, sf, out, provenance="checkpoint:second")
    monkeypatch.setattr(os, "replace", real)
    with pytest.raises(UserError, match=f"no {contract.MANIFEST_FILE}"):
        models.open_models(out)
    assert not variant.exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
