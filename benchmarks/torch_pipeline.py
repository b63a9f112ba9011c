"""The whole inpainting with the PyTorch modules in eager mode: the end-to-end baseline of the
performance benchmarks, measured rather than summed from per-part timings.

The official pipeline's work (docs/pipeline.md): the project's PyTorch ``RemovalModel`` with
classifier-free guidance applied outside it (``reference_guided_eps``, the official forward, which
runs at the official code's eager speed), the diffusers ``AutoencoderKL`` (encoder twice, decoder
once) and DDIM. The crop, masks, DDIM arithmetic and paste are the runtime's own NumPy code: each
model call goes where a graph session would (``TorchGraph``), so the ONNX Runtime runs and this one
differ only in what executes the networks.

The modules are rebuilt from a ``random-init:SEED`` folder's provenance
(``export.job.random_init_modules``): the same weights as its graphs.

    .venv/bin/python benchmarks/pipeline.py --models DIR --configs torch,fp32   # side by side

Needs the export extra (torch, diffusers).
"""
from __future__ import annotations

import time

import numpy as np

from moebius_edge import contract

TORCH_LABEL = "PyTorch eager (official-equivalent)"


class TorchGraph:
    """A PyTorch module behind the runtime's ``GraphSession`` calling convention: ``run(**inputs)``
    with the graph's input names → its first output as float32 NumPy."""

    def __init__(self, spec: contract.GraphSpec, fn):
        self.spec = spec
        self.fn = fn
        self.provider = TORCH_LABEL
        self.load_seconds = 0.0

    def run(self, **inputs) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return np.asarray(self.fn(**inputs), dtype=np.float32)

    def release(self) -> None:
        pass


def torch_modules(models, threads: int = 0) -> dict:
    """{graph key: PyTorch module in eval mode} rebuilt from a random-init models folder's seed
    (``ModelsFolder``): the UNet (``RemovalModel``) and the VAE wrappers the graphs were traced
    from. Exits with one line for a folder of other weights."""
    import torch

    from moebius_edge.export.config import MoebiusConfig
    from moebius_edge.export.job import random_init_modules
    from moebius_edge.export.onnx_export import VaeDecoder, VaeEncoder

    if not models.provenance.startswith(contract.PROVENANCE_RANDOM_INIT):
        raise SystemExit(f"{models.root}: the PyTorch modules are rebuilt from a random-init seed, but this "
                         f"folder's provenance is {models.provenance!r}")
    if threads:
        torch.set_num_threads(threads)
    seed = int(models.provenance[len(contract.PROVENANCE_RANDOM_INIT):])
    model, vae, sf = random_init_modules(MoebiusConfig.from_dict(models.get(contract.META_MODEL_CONFIG)), seed)
    return {contract.UNET.key: model.eval(), contract.VAE_ENCODER.key: VaeEncoder(vae, sf).eval(),
            contract.VAE_DECODER.key: VaeDecoder(vae, sf).eval()}


def torch_graphs(models, threads: int = 0) -> dict:
    """{graph key: TorchGraph} for a random-init models folder (``ModelsFolder``)."""
    import torch

    from moebius_edge.export.onnx_export import reference_guided_eps

    modules = torch_modules(models, threads)
    model, enc, dec = (modules[s.key] for s in contract.GRAPHS)

    def unet(latent, mask, masked_latent, timestep, guidance_scale):
        return reference_guided_eps(model, latent, mask, masked_latent, timestep, float(guidance_scale[0]))

    def encode(image, noise):
        return enc(torch.from_numpy(image), torch.from_numpy(noise)).numpy()

    def decode(latent):
        return dec(torch.from_numpy(latent)).numpy()

    return {contract.UNET.key: TorchGraph(contract.UNET, unet),
            contract.VAE_ENCODER.key: TorchGraph(contract.VAE_ENCODER, encode),
            contract.VAE_DECODER.key: TorchGraph(contract.VAE_DECODER, decode)}


def torch_inpainter(models_dir, threads: int = 0):
    """An ``Inpainter`` whose three networks are the PyTorch modules; (inpainter, build seconds)."""
    from moebius_edge.models import open_models
    from moebius_edge.pipeline import Inpainter

    t = time.perf_counter()
    inp = Inpainter(open_models(models_dir))
    inp.graphs = torch_graphs(inp.models, threads)
    return inp, time.perf_counter() - t
