"""Test helpers around the official reference data copied into tests/data."""
from pathlib import Path

DATA = Path(__file__).parent / "data"

# Max |Δ| against the official golden vectors, per field. Measured on this machine (AVX-512):
# noise_pred ≤ 1.3e-6, temb and the context projection exact, block outputs ≤ 4.8e-5 (they are
# larger in magnitude); the headroom is for AVX2 machines whose kernels sum in another order.
GOLDEN_MAX_ABS = {"noise_pred": 1e-5, "temb": 1e-6, "encoder_hidden_states_proj": 1e-6}
GOLDEN_MAX_ABS_DEFAULT = 1e-4  # block outputs and conv_in


def golden_tolerance(field: str) -> float:
    return GOLDEN_MAX_ABS.get(field, GOLDEN_MAX_ABS_DEFAULT)


def load_golden_model(case: int):
    """The tiny golden model for ``tiny_case_<case>.npz`` (case 0: the latent-8 build)."""
    from safetensors.torch import load_file

    from moebius_edge.export.config import PRESETS
    from moebius_edge.export.model import build_removal_model

    weights = load_file(DATA / "tiny_weights.safetensors")
    cfg = PRESETS["tiny"]
    if case == 0:
        cfg = cfg.replace(image_size=64)
        weights.update(load_file(DATA / "tiny_weights_latent8_relpos.safetensors"))
    model = build_removal_model(cfg)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def load_tiny_vae():
    """The tiny diffusers VAE of pipeline_case.npz and its scaling factor."""
    import json

    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    config = json.loads((DATA / "tiny_vae_config.json").read_text())
    vae = AutoencoderKL.from_config(config)
    vae.load_state_dict(load_file(DATA / "tiny_vae_weights.safetensors"), strict=True)
    return vae.eval(), float(config["scaling_factor"])


def export_standin(out) -> Path:
    """The trained stand-in (standin_weights.safetensors: the tiny preset trained briefly as a
    denoiser by export/train_standin.py) exported like any checkpoint into ``out``."""
    from safetensors.torch import load_file

    from moebius_edge.export.config import PRESETS
    from moebius_edge.export.model import build_removal_model
    from moebius_edge.export.onnx_export import export_models

    model = build_removal_model(PRESETS["tiny"])
    model.load_state_dict(load_file(DATA / "standin_weights.safetensors"), strict=True)
    vae, sf = load_tiny_vae()
    export_models(model.eval(), vae, sf, out, provenance="checkpoint:standin_weights.safetensors")
    return Path(out)
