"""The kl-f8 VAE (export/vae.py): strict loading from a diffusers folder, config checks, the
packaged SDXL-layout config."""
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from moebius_edge import contract  # noqa: E402
from moebius_edge.errors import UserError  # noqa: E402
from moebius_edge.export.vae import build_random_vae, load_vae, packaged_vae_config  # noqa: E402

DATA = Path(__file__).parent / "data"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def make_folder(tmp_path, name="vae", weights=DATA / "tiny_vae_weights.safetensors", **config_changes):
    folder = tmp_path / name
    folder.mkdir()
    config = json.loads((DATA / "tiny_vae_config.json").read_text())
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    if weights is not None:
        shutil.copy(weights, folder / WEIGHTS)
    return folder


def test_tiny_folder_loads_strictly(tmp_path):
    vae, scale = load_vae(make_folder(tmp_path))
    assert not vae.training
    assert scale == 0.13025
    want = safetensors_torch.load_file(str(DATA / "tiny_vae_weights.safetensors"))
    got = vae.state_dict()
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k


def test_scaling_factor_comes_from_the_config(tmp_path):
    _, scale = load_vae(make_folder(tmp_path, scaling_factor=0.5))
    assert scale == 0.5


def test_encode_decode_shapes(tmp_path):
    vae, _ = load_vae(make_folder(tmp_path))
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    side = 64 // contract.VAE_FACTOR
    with torch.no_grad():
        posterior = vae.encode(image).latent_dist
        assert posterior.mean.shape == (1, contract.LATENT_CHANNELS, side, side)
        decoded = vae.decode(posterior.mean).sample
    assert decoded.shape == (1, 3, 64, 64)
    assert torch.isfinite(decoded).all()


def test_bin_weights_and_legacy_attention_names(tmp_path):
    # Pre-0.14 diffusers checkpoints name the mid-block attention query/key/value/proj_attn.
    sd = safetensors_torch.load_file(str(DATA / "tiny_vae_weights.safetensors"))
    legacy = {}
    for k, v in sd.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[k] = v.half()
    assert "encoder.mid_block.attentions.0.proj_attn.weight" in legacy
    folder = make_folder(tmp_path, weights=None)
    torch.save(legacy, folder / "diffusion_pytorch_model.bin")
    vae, _ = load_vae(folder)
    key = "decoder.mid_block.attentions.0.to_out.0.weight"
    assert torch.equal(vae.state_dict()[key], sd[key].half().float())


@pytest.mark.parametrize("changes, needle", [
    ({"shift_factor": 0.0609}, "shift_factor 0.0609 is not supported"),
    ({"latents_mean": [0.0] * 4, "latents_std": [1.0] * 4}, "latents_mean is not supported"),
    ({"latents_std": [1.0] * 4}, "latents_std is not supported"),
    ({"scaling_factor": None}, "scaling_factor must be a positive number"),
    ({"latent_channels": 16}, f"latent_channels 16, the contract needs {contract.LATENT_CHANNELS}"),
    ({"block_out_channels": [8, 16, 16], "down_block_types": ["DownEncoderBlock2D"] * 3,
      "up_block_types": ["UpDecoderBlock2D"] * 3}, f"downsampling factor 4 (3 levels), the contract needs {contract.VAE_FACTOR}"),
    ({"_class_name": "AutoencoderTiny"}, "_class_name AutoencoderTiny, expected AutoencoderKL"),
])
def test_config_refused(tmp_path, changes, needle):
    folder = make_folder(tmp_path, **changes)
    with pytest.raises(UserError) as e:
        load_vae(folder)
    assert needle in str(e.value)
    assert str(folder / "config.json") in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_scaling_factor_refused(tmp_path):
    folder = make_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["scaling_factor"]  # diffusers would fall back to SD-1's 0.18215
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="scaling_factor must be a positive number, found None"):
        load_vae(folder)


def test_wrong_shape_weights_refused(tmp_path):
    sd = safetensors_torch.load_file(str(DATA / "tiny_vae_weights.safetensors"))
    sd["decoder.conv_out.weight"] = torch.zeros(3, 8, 3, 1)
    bad = tmp_path / "bad.safetensors"
    safetensors_torch.save_file(sd, str(bad))
    folder = make_folder(tmp_path, weights=bad)
    with pytest.raises(UserError) as e:
        load_vae(folder)
    assert str(e.value) == (f"{folder / WEIGHTS}: shape mismatch at decoder.conv_out.weight: "
                            "file [3, 8, 3, 1] vs model [3, 8, 3, 3]")


def test_wrong_layout_weights_refused(tmp_path):
    # The tiny weights under a config with other widths: one line, first key in model order.
    folder = make_folder(tmp_path, block_out_channels=[16, 16, 16, 16])
    with pytest.raises(UserError, match=r"shape mismatch at encoder\.conv_in\.weight: file \[8, 3, 3, 3\] "
                                        r"vs model \[16, 3, 3, 3\] \(and \d+ more\)"):
        load_vae(folder)


def test_folder_problems(tmp_path):
    with pytest.raises(UserError, match="no such VAE folder"):
        load_vae(tmp_path / "nope")
    with pytest.raises(UserError, match="no VAE weights"):
        load_vae(make_folder(tmp_path, name="noweights", weights=None))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_vae(empty)
    folder = make_folder(tmp_path, name="truncated")
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt checkpoint"):
        load_vae(folder)


def test_packaged_sdxl_config():
    config = packaged_vae_config()
    assert "UNVERIFIED" in config["_comment"]
    assert config["scaling_factor"] == 0.13025
    assert config["shift_factor"] is None and config["latents_mean"] is None and config["latents_std"] is None
    vae, scale = build_random_vae(0)
    assert scale == 0.13025
    assert not vae.training
    assert list(vae.config.block_out_channels) == [128, 256, 512, 512]
    assert vae.config.latent_channels == contract.LATENT_CHANNELS
    assert vae.config.norm_num_groups == 32 and vae.config.layers_per_block == 2
    assert 83_000_000 < sum(p.numel() for p in vae.parameters()) < 84_000_000  # docs/model.md §9: ≈ 83.7 M


def test_random_vae_is_seeded_and_leaves_the_global_rng_alone():
    config = json.loads((DATA / "tiny_vae_config.json").read_text())
    state = torch.random.get_rng_state()
    a, scale = build_random_vae(3, config)
    assert torch.equal(torch.random.get_rng_state(), state)
    b, _ = build_random_vae(3, config)
    c, _ = build_random_vae(4, config)
    assert scale == config["scaling_factor"]
    key = "encoder.conv_in.weight"
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])
