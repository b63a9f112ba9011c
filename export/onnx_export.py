"""PyTorch → ONNX: the guided UNet and the two VAE graphs, each behind a parity gate.

One function per graph (``export_unet``, ``export_vae_encoder``, ``export_vae_decoder``): each
traces a wrapper that holds the graph's fixed arithmetic (contract.py says which), simplifies it
with onnxsim, records provenance in ONNX metadata, runs ONNX Runtime against the *unfused*
PyTorch reference on seeded inputs and raises ``ParityError`` beyond ``PARITY_REL_L2``.
Files are written under a temporary name and renamed; ``export_models`` stages all three graphs
and the manifest in a private folder and moves them into place only when every gate passed, so
an interrupted export never leaves a half-written model. The UNet (``GraphSpec.mapped_weights``),
and any graph over protobuf's 2 GB limit, keeps its weights in one ``<graph>.onnx.data`` sidecar,
moved, hashed and listed with it. The low-memory mode's streamed decoder is derived from the
exported decoder and checked against it in the same staging (``export/streamed_decoder.py``).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from moebius_edge import __version__, contract, models, onnx_files
from moebius_edge.errors import UserError
from moebius_edge.export.config import MoebiusConfig
from moebius_edge.export.model import RemovalModel
from moebius_edge.export.transforms import fold_batchnorm, order_local_queries
from moebius_edge.export.streamed_decoder import add_streamed_decoder

log = logging.getLogger(__name__)

# The TorchScript exporter (dynamo=False) at opset 17 reproduces the reference to 1.6e-6; the
# dynamo exporter is not used.
ONNX_OPSET = 17
# Above this size any graph is written with external data (protobuf's 2 GB limit, with margin);
# the UNet always is (GraphSpec.mapped_weights).
EXTERNAL_DATA_THRESHOLD_BYTES = onnx_files.EXTERNAL_DATA_THRESHOLD_BYTES
# Parity gate: relative L2 error of ONNX Runtime against the unfused PyTorch model (measured
# ≤ 1.2e-5 at full size, benchmarks/results/export_full.json).
PARITY_REL_L2 = 1e-4
# The VAE posterior's log-variance clamp (diffusers DiagonalGaussianDistribution).
LOGVAR_CLAMP = (-30.0, 20.0)


class ParityError(UserError):
    """ONNX Runtime disagrees with PyTorch beyond the named tolerance."""


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextmanager
def stage(what: str):
    """Log a named step of the export with its time and the peak memory so far."""
    log.info("%s ...", what)
    t0 = time.perf_counter()
    yield
    log.info("%s done in %.1f s (peak RSS so far %.0f MB)", what, time.perf_counter() - t0, peak_rss_mb())


def alphas_cumprod() -> np.ndarray:
    """The DDIM ᾱ table exactly as torch computes it in float32 (scaled-linear β, docs/pipeline.md §5.1).

    A NumPy float64 recomputation differs in 976 of the 1000 entries (up to 3.6e-7), enough to
    move outputs by an LSB, so the runtime reads these values instead of recomputing them."""
    betas = torch.linspace(contract.BETA_START ** 0.5, contract.BETA_END ** 0.5,
                           contract.NUM_TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0).numpy()


def rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm((a - ref).ravel()) / max(np.linalg.norm(ref.ravel()), 1e-30))


# ---------------------------------------------------------------------------------------------
# Wrappers: the arithmetic each graph holds
class GuidedUNet(nn.Module):
    """The guided denoiser of ``contract.UNET``.

    The category context is fixed (uncond ids 10..19, cond ids 0..9), so everything that depends
    only on it (embedding, encoder_hid_proj, the cross-λ keys, values and content lambdas) is
    computed here once and stored as constants ``[Λc ; Vm]`` per stage and CFG half. At run time
    the graph runs what both halves share once, doubles the batch before the first cross-λ
    (``MoebiusUNet.forward(shared_prefix=True)``), runs the rest and applies guidance."""

    def __init__(self, model: RemovalModel):
        super().__init__()
        model = order_local_queries(fold_batchnorm(copy.deepcopy(model))).eval()
        self.unet = model.diff_model
        ids = torch.tensor([contract.UNCOND_IDS, contract.COND_IDS], dtype=torch.int64)
        with torch.no_grad():
            ctx = model.context(ids)  # (2, L, D)
            for i, stage in enumerate(self.unet.stages()):
                attn2 = stage.transformer_blocks[0].attn2
                self.register_buffer(f"cross_lambdas_{i}", attn2.context_lambdas(ctx))  # (2, K+L, V)
                # The context path is folded into the constants above; drop what the graph no
                # longer needs so that it does not end up as dead initializers.
                attn2.to_k = attn2.to_v = attn2.norm_v = None
        self.n_stages = i + 1
        self.unet.encoder_hid_proj = None

    def forward(self, latent, mask, masked_latent, timestep, guidance_scale):
        b = latent.shape[0]
        parts = dict(zip(contract.UNET.input_names, (latent, mask, masked_latent)))
        x = torch.cat([parts[name] for name, _, _ in contract.UNET_INPUT_CHANNELS], dim=1)  # (B, 9, h, w)
        lambdas = []  # rows 0..B-1 uncond, B..2B-1 cond
        for i in range(self.n_stages):
            lam = getattr(self, f"cross_lambdas_{i}")  # (2, K+L, V)
            lambdas.append(lam[:, None].expand(-1, b, -1, -1).reshape(-1, lam.shape[1], lam.shape[2]))
        eps = self.unet(x, timestep, lambdas=lambdas, shared_prefix=True)  # (2B, 4, h, w)
        eps = eps.reshape(2, b, *eps.shape[1:])
        eps_u, eps_c = eps[0], eps[1]
        return eps_u + guidance_scale.reshape(1, 1, 1, 1) * (eps_c - eps_u)


class VaeEncoder(nn.Module):
    """``image`` in [-1, 1] and ``noise`` → scaled posterior sample (docs/pipeline.md §4.2). Zero noise: the mean."""

    def __init__(self, vae, scaling_factor: float):
        super().__init__()
        self.encoder, self.quant_conv = vae.encoder, vae.quant_conv
        self.scaling_factor = float(scaling_factor)

    def forward(self, image, noise):
        h = self.encoder(image)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = h.chunk(2, dim=1)
        logvar = logvar.clamp(*LOGVAR_CLAMP)
        return (mean + torch.exp(0.5 * logvar) * noise) * self.scaling_factor


class VaeDecoder(nn.Module):
    """Scaled latent → image in [0, 1]: ``clamp((decode(z / sf) + 1) / 2, 0, 1)`` (docs/pipeline.md §6.1)."""

    def __init__(self, vae, scaling_factor: float):
        super().__init__()
        self.decoder, self.post_quant_conv = vae.decoder, vae.post_quant_conv
        self.scaling_factor = float(scaling_factor)

    def forward(self, latent):
        z = latent / self.scaling_factor
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return ((self.decoder(z) + 1) / 2).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# References for the parity gates (deliberately not the wrappers above)
def reference_guided_eps(model: RemovalModel, latent, mask, masked_latent, timestep, g: float) -> np.ndarray:
    """The official forward with ids, CFG applied outside (docs/pipeline.md §5.5)."""
    b = latent.shape[0]
    parts = dict(zip(contract.UNET.input_names, (latent, mask, masked_latent)))
    x = torch.from_numpy(np.concatenate([parts[name] for name, _, _ in contract.UNET_INPUT_CHANNELS], axis=1))
    ids = torch.tensor([contract.UNCOND_IDS] * b + [contract.COND_IDS] * b, dtype=torch.int64)
    t = torch.from_numpy(np.concatenate([timestep, timestep]))
    with torch.no_grad():
        eps = model(torch.cat([x, x]), t, ids).numpy()
    eps_u, eps_c = eps[:b], eps[b:]
    return eps_u + np.float32(g) * (eps_c - eps_u)


def _ort_session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _unet_parity(path, model: RemovalModel, cfg: MoebiusConfig, batch: int) -> dict:
    rng = np.random.default_rng(1234)
    h = cfg.latent_size
    sess = _ort_session(path)
    cases = [([900, 37], 0.0), ([450, 999], 1.0), ([0, 650], 2.5)]
    worst = 0.0
    for ts, g in cases:
        ts = np.array(ts[:batch] if batch <= 2 else (ts * batch)[:batch], dtype=np.int64)
        latent = rng.standard_normal((batch, 4, h, h), dtype=np.float32)
        mask = (rng.random((batch, 1, h, h)) > 0.6).astype(np.float32)
        masked = rng.standard_normal((batch, 4, h, h), dtype=np.float32)
        feeds = dict(zip(contract.UNET.input_names, (latent, mask, masked, ts, np.array([g], dtype=np.float32))))
        out = sess.run(contract.UNET.output_names, feeds)[0]
        ref = reference_guided_eps(model, latent, mask, masked, ts, g)
        err = rel_l2(out, ref)
        log.debug("unet parity t=%s g=%s: rel-L2 %.2e", ts.tolist(), g, err)
        worst = max(worst, err)
    return {"rel_l2": worst, "tolerance": PARITY_REL_L2, "reference": "torch RemovalModel, CFG outside",
            "cases": len(cases), "batch": batch}


def _vae_parity(path, graph: contract.GraphSpec, vae, sf: float, image_size: int, batch: int) -> dict:
    rng = np.random.default_rng(4321)
    h = image_size // contract.VAE_FACTOR
    sess = _ort_session(path)
    if graph is contract.VAE_ENCODER:
        image = rng.uniform(-1, 1, (batch, 3, image_size, image_size)).astype(np.float32)
        noise = rng.standard_normal((batch, 4, h, h), dtype=np.float32)
        out = sess.run(graph.output_names, dict(zip(graph.input_names, (image, noise))))[0]
        with torch.no_grad():
            dist = vae.encode(torch.from_numpy(image)).latent_dist
            ref = ((dist.mean + dist.std * torch.from_numpy(noise)) * sf).numpy()
    else:
        latent = (rng.standard_normal((batch, 4, h, h), dtype=np.float32) * sf * 4).astype(np.float32)
        out = sess.run(graph.output_names, dict(zip(graph.input_names, (latent,))))[0]
        with torch.no_grad():
            ref = ((vae.decode(torch.from_numpy(latent) / sf).sample + 1) / 2).clamp(0, 1).numpy()
    return {"rel_l2": rel_l2(out, ref), "tolerance": PARITY_REL_L2,
            "reference": "diffusers AutoencoderKL", "batch": batch}


# ---------------------------------------------------------------------------------------------
# Writing
def _trace(wrapper: nn.Module, graph: contract.GraphSpec, args: tuple, static_batch: bool):
    """torch.onnx (TorchScript exporter, opset 17) → onnxsim → ModelProto."""
    import onnx

    dynamic_axes = None
    if not static_batch:
        dynamic_axes = {t.name: {0: contract.BATCH_AXIS} for t in graph.inputs + graph.outputs
                        if t.shape and t.shape[0] == contract.BATCH_AXIS}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        # no_grad: with autograd on, tracing keeps every activation alive (16 GB at 512², vs 6 GB).
        with stage(f"trace {graph.key}"), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings on shape arithmetic are expected
            torch.onnx.export(wrapper, args, str(raw), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=graph.input_names, output_names=graph.output_names,
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
        proto = onnx.load(str(raw))
    with stage(f"simplify {graph.key}"):
        try:
            import onnxsim

            simplified, ok = onnxsim.simplify(proto)
            if not ok:
                raise RuntimeError("onnxsim could not validate the simplified graph")
            proto = simplified
        except Exception as e:  # onnxsim failures are not fatal: keep the traced graph
            log.warning("onnxsim failed on %s (%s); keeping the unsimplified graph", graph.key, e)
    return proto


def _save(proto, path: Path, metadata: dict) -> None:
    """``onnx_files.save`` with this module's threshold (read at call time: tests lower it)."""
    onnx_files.save(proto, path, metadata, threshold=EXTERNAL_DATA_THRESHOLD_BYTES)


def _update_metadata(path: Path, extra: dict) -> None:
    """Add metadata to a written graph without touching its external data."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    onnx_files.set_metadata(proto, {**meta, **extra})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        onnx.save_model(proto, str(tmp))  # tensors keep pointing at the sidecar by name
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_graph(path: Path) -> None:
    path.unlink(missing_ok=True)
    models.external_data_path(path).unlink(missing_ok=True)


def _gate(path: Path, parity: dict, graph: contract.GraphSpec) -> Path:
    """Raise (deleting the files) when parity failed; else record the figures in the graph."""
    if not parity["rel_l2"] <= PARITY_REL_L2:  # also catches NaN
        _remove_graph(path)
        raise ParityError(f"{graph.key}: ONNX Runtime vs PyTorch relative L2 error {parity['rel_l2']:.3g} "
                          f"exceeds PARITY_REL_L2 = {PARITY_REL_L2:g}; nothing was written")
    log.info("%s parity: relative L2 %.2e (tolerance %.0e)", graph.key, parity["rel_l2"], PARITY_REL_L2)
    _update_metadata(path, {contract.META_PARITY: parity})
    return path


def common_metadata(cfg: MoebiusConfig, scaling_factor: float, provenance: str, weights_sha256: str | None) -> dict:
    """Typed values under their ONNX metadata keys (the manifest holds the same values)."""
    return {
        contract.META_CONTRACT_VERSION: contract.CONTRACT_VERSION,
        contract.META_TOOLKIT_VERSION: __version__,
        contract.META_PRECISION: "fp32",
        contract.META_PROVENANCE: provenance,
        contract.META_WEIGHTS_SHA256: weights_sha256 or "",
        contract.META_MODEL_CONFIG: cfg.to_dict(),
        contract.META_IMAGE_SIZE: cfg.image_size,
        contract.META_LATENT_SIZE: cfg.latent_size,
        contract.META_SCALING_FACTOR: float(scaling_factor),
        contract.META_SCHEDULER: contract.scheduler_metadata(),
        contract.META_LICENSES: contract.LICENSES,
    }


def export_unet(model: RemovalModel, out_dir, metadata: dict, *, static_batch: bool = False) -> Path:
    """``unet.onnx``: the guided denoiser, parity-checked against ``model`` (left unchanged)."""
    cfg = model.cfg
    batch = 1 if static_batch else 2
    h = cfg.latent_size
    wrapper = GuidedUNet(model).eval()
    args = (torch.zeros(batch, 4, h, h), torch.zeros(batch, 1, h, h), torch.zeros(batch, 4, h, h),
            torch.full((batch,), 500, dtype=torch.int64), torch.ones(1))
    proto = _trace(wrapper, contract.UNET, args, static_batch)
    del wrapper
    path = Path(out_dir) / contract.UNET.file
    meta = {**metadata, contract.META_GRAPH: contract.UNET.key,
            contract.META_ALPHAS_CUMPROD: [float(a) for a in alphas_cumprod()]}
    _save(proto, path, meta)
    del proto
    with stage("parity unet"):
        parity = _unet_parity(path, model, cfg, batch)
    return _gate(path, parity, contract.UNET)


def _export_vae_part(graph, wrapper, vae, sf, image_size, out_dir, metadata, static_batch) -> Path:
    batch = 1 if static_batch else 2
    h = image_size // contract.VAE_FACTOR
    args = ((torch.zeros(batch, 3, image_size, image_size), torch.zeros(batch, 4, h, h))
            if graph is contract.VAE_ENCODER else (torch.zeros(batch, 4, h, h),))
    proto = _trace(wrapper.eval(), graph, args, static_batch)
    path = Path(out_dir) / graph.file
    _save(proto, path, {**metadata, contract.META_GRAPH: graph.key})
    del proto
    with stage(f"parity {graph.key}"):
        parity = _vae_parity(path, graph, vae, sf, image_size, batch)
    return _gate(path, parity, graph)


def export_vae_encoder(vae, scaling_factor: float, image_size: int, out_dir, metadata: dict, *,
                       static_batch: bool = False) -> Path:
    """``vae_encoder.onnx`` at the native image size, parity-checked against diffusers."""
    return _export_vae_part(contract.VAE_ENCODER, VaeEncoder(vae, scaling_factor), vae, scaling_factor,
                            image_size, out_dir, metadata, static_batch)


def export_vae_decoder(vae, scaling_factor: float, image_size: int, out_dir, metadata: dict, *,
                       static_batch: bool = False) -> Path:
    """``vae_decoder.onnx`` at the native latent size, parity-checked against diffusers."""
    return _export_vae_part(contract.VAE_DECODER, VaeDecoder(vae, scaling_factor), vae, scaling_factor,
                            image_size, out_dir, metadata, static_batch)


def export_models(model: RemovalModel, vae, scaling_factor: float, out_dir, *, provenance: str,
                  weights_sha256: str | None = None, static_batch: bool = False) -> dict:
    """Export the three graphs and ``manifest.json`` into ``out_dir``; returns the manifest.

    Everything is staged in a private folder inside ``out_dir`` and moved into place only after
    all three parity gates passed; on any failure or interrupt nothing new is left behind. The
    old manifest goes first and the new one last, so a folder caught mid-move is no models
    folder at all rather than a mix; the old quantized variants are removed (their source is gone)."""
    import onnx

    cfg = model.cfg
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    staging = models.staging_folder(out_dir, "export")
    try:
        meta = common_metadata(cfg, scaling_factor, provenance, weights_sha256)
        paths = [
            export_unet(model, staging, meta, static_batch=static_batch),
            export_vae_encoder(vae, scaling_factor, cfg.image_size, staging, meta, static_batch=static_batch),
            export_vae_decoder(vae, scaling_factor, cfg.image_size, staging, meta, static_batch=static_batch),
        ]
        manifest = {contract.manifest_key(k): v for k, v in meta.items()}
        manifest[contract.MANIFEST_STATIC_BATCH] = static_batch
        manifest[contract.MANIFEST_ALPHAS_CUMPROD] = [float(a) for a in alphas_cumprod()]
        manifest[contract.MANIFEST_GRAPHS] = {}
        parity_key = contract.manifest_key(contract.META_PARITY)
        manifest[parity_key] = {}
        for graph, path in zip(contract.GRAPHS, paths):
            parity = next(p.value for p in onnx.load(str(path), load_external_data=False).metadata_props
                          if p.key == contract.META_PARITY)
            manifest[parity_key][graph.key] = json.loads(parity)
            manifest[contract.MANIFEST_GRAPHS][graph.key] = models.graph_entry(path, staging)
        with stage("streamed decoder (low-memory mode)"):
            decoder = dict(zip((g.key for g in contract.GRAPHS), paths))[contract.VAE_DECODER.key]
            streamed = add_streamed_decoder(staging, decoder,
                                            manifest[contract.MANIFEST_GRAPHS][contract.VAE_DECODER.key][
                                                contract.GRAPH_SHA256], cfg.latent_size)
        if streamed is not None:
            manifest[contract.MANIFEST_STREAMED_DECODER] = streamed
        models.write_manifest(staging, manifest)
        (out_dir / contract.MANIFEST_FILE).unlink(missing_ok=True)
        models.purge_variants(out_dir)
        for graph in contract.GRAPHS:
            for name in (models.external_data_path(graph.file).name, graph.file):  # the data first
                if (staging / name).exists():
                    os.replace(staging / name, out_dir / name)
                else:
                    (out_dir / name).unlink(missing_ok=True)  # a stale sidecar of an older export
        if streamed is not None:
            models.replace_folder(staging / contract.STREAMED_DECODER_DIR, out_dir / contract.STREAMED_DECODER_DIR)
        else:
            shutil.rmtree(out_dir / contract.STREAMED_DECODER_DIR, ignore_errors=True)
        os.replace(staging / contract.MANIFEST_FILE, out_dir / contract.MANIFEST_FILE)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and out_dir.exists() and not any(out_dir.iterdir()):
            out_dir.rmdir()
