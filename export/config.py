"""Model configuration of the Moebius student UNet (docs/model.md §2).

``MoebiusConfig`` is built from the official config schema (``config/model_cfg/moebius.yaml``:
``data``, ``vae`` and ``model`` sections), given as YAML or as the same values in JSON. The
official quirks are reproduced on purpose and documented field by field.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from moebius_edge.errors import UserError

_BLOCK_TYPES = ("DWMixTFDownBlock2D", "DWMixTFUpBlock2D")
_MODEL_TYPE = "UNet2DLambdaDWConvMixFFNConditionModel_prune_down_mid_up_block_8x8"


@dataclass(frozen=True)
class MoebiusConfig:
    # data.image_size: the square image side the weights are built for. It fixes the latent side
    # (image_size / vae_downsample_ratio) and with it the n² rows of every cross-λ rel_pos_emb:
    # the official weights run at 512×512 only (docs/model.md §8).
    image_size: int = 512
    # vae.downsample_ratio: pixels per latent cell (kl-f8 VAE).
    vae_downsample_ratio: int = 8
    # vae.embed_dim: latent channels.
    latent_channels: int = 4
    # model.in_channels: [latent 4 | hole mask 1 | masked-image latent 4].
    in_channels: int = 9
    # model.out_channels: ε prediction.
    out_channels: int = 4
    # model.attention_head_dim: diffusers naming quirk, this is the NUMBER of heads (per-head
    # width and λ key/value depth are C / heads).
    attention_head_dim: int = 8
    # model.cross_attention_dim: width of the category context after encoder_hid_proj.
    cross_attention_dim: int = 768
    # model.encoder_hid_dim: width of the category embedding table and encoder_hid_proj input.
    encoder_hid_dim: int = 3072
    # model.block_out_channels: channels per UNet level; time-embedding width is 4·C0.
    block_out_channels: tuple = (320, 640, 1280)
    # model.mix_mlp_ratio: read from the YAML but IGNORED by the official UNet constructor, which
    # never forwards it; the Mix-FFN ratio is always MIX_FFN_RATIO (2.5). Kept for round-tripping.
    mix_mlp_ratio: float = 2.5
    # Code constant of the official build_removal_model: 10 "cond" + 10 "uncond" category ids.
    num_embeddings: int = 20

    # Fixed by the official code, not configurable there; named here so the model code reads.
    MIX_FFN_RATIO = 2.5  # Mix-FFN hidden width int(2.5·C), whatever mix_mlp_ratio says
    LAYERS_PER_BLOCK = 2  # pairs per down block; up blocks have one more
    NORM_GROUPS = 32  # every GroupNorm
    NORM_EPS = 1e-5  # DW.Res GroupNorms, output GroupNorm, LayerNorms, BatchNorms
    STAGE_NORM_EPS = 1e-6  # the GroupNorm in front of every LλMI stage
    LOCAL_WINDOW = 15  # self-λ position conv is 15×15
    # No mid block (the class name says "mid" and "8x8"; the student has neither).

    @property
    def latent_size(self) -> int:
        """Native latent side: the one square size the λ position tables are built for."""
        return self.image_size // self.vae_downsample_ratio

    @property
    def heads(self) -> int:
        return self.attention_head_dim

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @classmethod
    def from_dict(cls, d: dict) -> "MoebiusConfig":
        """From the official schema: {"data": {...}, "vae": {...}, "model": {...}}."""
        try:
            data, vae, model = d.get("data", {}), d.get("vae", {}), d["model"]
            if model.get("model_type", _MODEL_TYPE) != _MODEL_TYPE:
                raise UserError(f"unsupported model_type {model['model_type']!r} (expected {_MODEL_TYPE})")
            if model.get("mid_block_type") is not None:
                raise UserError("unsupported config: the Moebius student has no mid block")
            for key, want in (("down_block_types", _BLOCK_TYPES[0]), ("up_block_types", _BLOCK_TYPES[1])):
                types = model.get(key, [want] * 3)
                if any(t != want for t in types) or len(types) != 3:
                    raise UserError(f"unsupported {key} {types!r} (expected 3 × {want})")
            if not model.get("use_lambda_cross_attn", True) or not model.get("use_local_self_attn", True):
                raise UserError("unsupported config: the student uses local self-λ and λ cross-attention")
            if model.get("encoder_hid_dim_type", "text_proj") != "text_proj":
                raise UserError("unsupported encoder_hid_dim_type (expected text_proj)")
            for key in ("conv_in_kernel", "conv_out_kernel"):
                if model.get(key, 3) != 3:
                    raise UserError(f"unsupported {key} {model[key]} (expected 3)")
            cfg = cls(
                image_size=int(data.get("image_size", 512)),
                vae_downsample_ratio=int(vae.get("downsample_ratio", 8)),
                latent_channels=int(vae.get("embed_dim", 4)),
                in_channels=int(model["in_channels"]),
                out_channels=int(model["out_channels"]),
                attention_head_dim=int(model["attention_head_dim"]),
                cross_attention_dim=int(model["cross_attention_dim"]),
                encoder_hid_dim=int(model["encoder_hid_dim"]),
                block_out_channels=tuple(int(c) for c in model["block_out_channels"]),
                mix_mlp_ratio=float(model.get("mix_mlp_ratio", 2.5)),
            )
        except KeyError as e:
            raise UserError(f"model config is missing the key {e.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise UserError(f"model config is malformed: {e}") from None
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path) -> "MoebiusConfig":
        """Official ``moebius.yaml``, or the same values as JSON."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise UserError(f"cannot read model config {path}: {e.strerror or e}") from None
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                d = yaml.safe_load(text)
            else:
                d = json.loads(text)
        except Exception as e:  # yaml and json raise different types; both mean "not a config"
            raise UserError(f"{path}: not a valid {path.suffix.lstrip('.') or 'JSON'} file ({e})") from None
        if not isinstance(d, dict):
            raise UserError(f"{path}: not a model config (expected a mapping with a 'model' section)")
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        """The official schema again (round-trips through from_dict)."""
        return {
            "data": {"image_size": self.image_size},
            "vae": {"downsample_ratio": self.vae_downsample_ratio, "embed_dim": self.latent_channels},
            "model": {
                "model_type": _MODEL_TYPE,
                "in_channels": self.in_channels,
                "out_channels": self.out_channels,
                "attention_head_dim": self.attention_head_dim,
                "conv_in_kernel": 3,
                "conv_out_kernel": 3,
                "cross_attention_dim": self.cross_attention_dim,
                "encoder_hid_dim": self.encoder_hid_dim,
                "encoder_hid_dim_type": "text_proj",
                "projection_class_embeddings_input_dim": 2560,  # unused by the student
                "use_lambda_cross_attn": True,
                "use_local_self_attn": True,
                "down_block_types": [_BLOCK_TYPES[0]] * 3,
                "mid_block_type": None,
                "up_block_types": [_BLOCK_TYPES[1]] * 3,
                "block_out_channels": list(self.block_out_channels),
                "mix_mlp_ratio": self.mix_mlp_ratio,
            },
        }

    def replace(self, **changes) -> "MoebiusConfig":
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if len(self.block_out_channels) != 3:
            raise UserError("block_out_channels must have 3 levels")
        for c in self.block_out_channels:
            if c % self.NORM_GROUPS or c % self.heads:
                raise UserError(f"block_out_channels {c} must be divisible by {self.NORM_GROUPS} and by the head count")
        if self.image_size % (self.vae_downsample_ratio * 4):
            raise UserError(f"image_size {self.image_size} must be divisible by {self.vae_downsample_ratio * 4}")
        if self.num_embeddings % 2:
            raise UserError("num_embeddings must be even (cond + uncond halves)")


PRESETS = {
    # The official config/model_cfg/moebius.yaml.
    "moebius": MoebiusConfig(),
    # tests/data/tiny_config.json: the reduced model of the golden vectors.
    "tiny": MoebiusConfig(image_size=128, cross_attention_dim=32, encoder_hid_dim=64, block_out_channels=(32, 64, 64)),
}


def get_config(name_or_path) -> MoebiusConfig:
    """A preset name or a config file path."""
    if str(name_or_path) in PRESETS:
        return PRESETS[str(name_or_path)]
    return MoebiusConfig.from_file(name_or_path)
