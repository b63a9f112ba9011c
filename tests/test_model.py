"""Fidelity of the PyTorch Moebius model: the official state-dict manifest and the golden vectors
produced by the official implementation (tests/data; provenance in tests/data/README.md)."""
import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from moebius_edge import contract  # noqa: E402
from moebius_edge.export.config import PRESETS, MoebiusConfig  # noqa: E402
from moebius_edge.export.model import LocalLambda, build_removal_model  # noqa: E402
from moebius_edge.export.transforms import fold_batchnorm, order_local_queries  # noqa: E402

from .goldens import DATA, golden_tolerance, load_golden_model  # noqa: E402


def test_full_size_state_dict_equals_official_manifest():
    manifest = json.loads((DATA / "moebius_state_dict.json").read_text())
    with torch.device("meta"):
        model = build_removal_model(PRESETS["moebius"])
    sd = model.state_dict()
    assert list(sd) == [e["name"] for e in manifest["state_dict"]]  # names AND order
    for e in manifest["state_dict"]:
        t = sd[e["name"]]
        assert list(t.shape) == e["shape"], e["name"]
        assert str(t.dtype).removeprefix("torch.") == e["dtype"], e["name"]
        is_param = e["name"] in dict(model.named_parameters())
        assert is_param == (e["kind"] == "parameter"), e["name"]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == manifest["totals"]["parameters_total"] == 226_041_531


def test_tiny_key_set_is_full_key_set_minus_the_level2_shortcut():
    manifest = json.loads((DATA / "moebius_state_dict.json").read_text())
    tiny = load_file(DATA / "tiny_weights.safetensors")
    full = [e["name"] for e in manifest["state_dict"]]
    missing = [k for k in full if k not in tiny]
    assert missing == ["diff_model.down_blocks.2.resnets.0.conv_shortcut.weight",
                       "diff_model.down_blocks.2.resnets.0.conv_shortcut.bias"]


@pytest.mark.parametrize("name", ["moebius", "tiny"])
def test_presets_equal_the_official_config_files(name):
    path = DATA / ("moebius_config.json" if name == "moebius" else "tiny_config.json")
    cfg = MoebiusConfig.from_file(path)
    assert cfg == PRESETS[name]
    assert MoebiusConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.latent_size == {"moebius": 64, "tiny": 16}[name]


def test_config_reads_the_official_yaml(tmp_path):
    yaml = pytest.importorskip("yaml")
    d = json.loads((DATA / "moebius_config.json").read_text())
    p = tmp_path / "moebius.yaml"
    p.write_text(yaml.safe_dump(d))
    assert MoebiusConfig.from_file(p) == PRESETS["moebius"]


def test_mix_mlp_ratio_is_ignored_like_the_official_constructor():
    cfg = PRESETS["tiny"].replace(mix_mlp_ratio=4.0)
    sd = build_removal_model(cfg).state_dict()
    # Hidden width stays int(2.5·C): 2·80 = 160 channels for C = 32.
    assert sd["diff_model.down_blocks.0.attentions.0.transformer_blocks.0.ff.inverted_conv.conv.weight"].shape[0] == 160


GOLDEN_CASES = [0, 1, 2]


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_tiny_goldens(case):
    g = np.load(DATA / f"tiny_case_{case}.npz")
    model = load_golden_model(case)
    x = torch.from_numpy(g["noisy_latents"])
    t = torch.from_numpy(g["timesteps"])
    ids = torch.from_numpy(g["input_ids"])
    with torch.no_grad():
        out, blocks = model(x, t, ids, return_block_outputs=True)
        unet = model.diff_model
        fields = {
            "noise_pred": out,
            "temb": unet.time_embedding(t.expand(x.shape[0])),
            "encoder_hidden_states_proj": model.context(ids),
            "conv_in_out": unet.conv_in(x),
            **{f"block_out_{i}": b for i, b in enumerate(blocks)},
        }
    for key, value in fields.items():
        err = np.abs(value.numpy() - g[key]).max()
        assert err <= golden_tolerance(key), f"case {case} {key}: max |Δ| {err:.3g}"


@pytest.mark.parametrize("case", [1, 2])
def test_shared_cfg_prefix_equals_the_forward_on_both_halves(case):
    """``shared_prefix``: one half in, the official forward on ``[x; x]`` out."""
    g = np.load(DATA / f"tiny_case_{case}.npz")
    model = load_golden_model(case)
    x = torch.from_numpy(g["noisy_latents"])
    b = x.shape[0] // 2
    x = x[:b]
    t = torch.from_numpy(g["timesteps"]).expand(2 * b)[:b]  # (1,) or per row (2B,) in the goldens
    ctx = model.context(torch.from_numpy(g["input_ids"]))  # (2B, L, D): uncond rows, then cond rows
    with torch.no_grad():
        shared = model.diff_model(x, t, ctx, shared_prefix=True)
        both = model.diff_model(torch.cat([x, x]), torch.cat([t, t]), ctx)
    assert shared.shape == both.shape == (2 * b, 4, *x.shape[2:])
    assert (shared - both).abs().max().item() <= golden_tolerance("noise_pred")


def test_batchnorm_folding_preserves_the_function():
    model = load_golden_model(1)
    g = np.load(DATA / "tiny_case_1.npz")
    args = [torch.from_numpy(g[k]) for k in ("noisy_latents", "timesteps", "input_ids")]
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    with torch.no_grad():
        err = (folded(*args) - model(*args)).abs().max().item()
    assert err <= golden_tolerance("noise_pred")


def test_local_queries_ordered_by_key_preserve_the_function():
    """``order_local_queries`` reorders the local λ's query rows (export only): the same function,
    on folded BatchNorms only."""
    model = load_golden_model(1)
    g = np.load(DATA / "tiny_case_1.npz")
    args = [torch.from_numpy(g[k]) for k in ("noisy_latents", "timesteps", "input_ids")]
    with pytest.raises(ValueError, match="fold_batchnorm"):
        order_local_queries(copy.deepcopy(model))
    folded = fold_batchnorm(copy.deepcopy(model))
    ordered = order_local_queries(copy.deepcopy(folded))
    lambdas = [m for m in ordered.modules() if isinstance(m, LocalLambda)]
    assert lambdas and all(m.queries_by_key for m in lambdas)
    assert not any(m.queries_by_key for m in model.modules() if isinstance(m, LocalLambda))
    with torch.no_grad():
        a, b = folded(*args), ordered(*args)
        lambdas[0].queries_by_key = False  # reordered rows read the official way: a different function
        c = ordered(*args)
    assert (a - b).abs().max().item() <= 1e-6
    assert (a - c).abs().max().item() > 1e-3


def test_model_built_for_one_latent_size_refuses_another():
    model = load_golden_model(1)
    x = torch.zeros(2, 9, 8, 8)
    with pytest.raises(RuntimeError):
        model(x, torch.tensor([900]), torch.tensor([contract.UNCOND_IDS, contract.COND_IDS]))
