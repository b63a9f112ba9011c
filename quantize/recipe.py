"""Quantization recipes: what data a variant is measured on, and how it is made.

A ``Recipe`` holds every choice of one quantize run that is not a gate threshold: the photo split,
the masks, the pipeline settings of the trajectories, and the precision's own knobs (``FP16_FIELDS``,
``INT8_FIELDS``: a recipe file for one precision may not set the other's). Defaults are the
shipped recipes; ``--recipe FILE`` (JSON, any subset of the fields) overrides them. Each variant
folder gets ``recipe.json`` (``contract.QUANTIZE_RECIPE_FILE``), the effective recipe:

* fp16: ``keep`` filled in with the keep-list that was used, so ``quantize --recipe
  DIR/fp16/recipe.json`` rebuilds the same variant (``"measure": false`` skips the measurement);
* int8: the exclusions (``exclude``), each with its reason and the measurement behind it
  (``INT8_EXCLUDE``, from ``benchmarks/quantize_int8.py``); re-applying the recipe to the same
  FP32 graphs gives the same UNet. With ``"vae": "auto"`` each VAE graph's check runs again, and a
  graph near its floor may land on the other side on another CPU (the report says which was kept).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from moebius_edge import contract
from moebius_edge.errors import UserError
from moebius_edge.quantize import fp16, int8

# The photos of tests/data/photos (licences in its README). Disjoint: the calibration photos
# decide what stays FP32 (and trained the stand-in), the held-out photos judge the result.
CALIBRATION_PHOTOS = ("chelsea.jpg", "rocket.jpg")
HELD_OUT_PHOTOS = ("grace_hopper.jpg", "retina.jpg")
DEFAULT_PHOTOS_DIR = "tests/data/photos"  # relative to the repository root, where `make quantize` runs
VAE_MODES = ("auto", "fp32")  # auto: convert a VAE graph only if its check passes; fp32: never
# The default per precision. INT8 keeps the VAE in FP32 unless a recipe asks for "auto": MinMax
# activation ranges fit the latents the calibration runs end with, and a run whose latents reach
# further saturates the quantized decoder. Measured on the trained stand-in: calibrated on 8-step
# runs (final latents within ±8) the int8 decoder passed its check (39.2 dB) and the held-out gate
# (hole PSNR 34.8 dB), then gave 24.8 dB inside the hole of a default 20-step run (latents to ±16).
VAE_DEFAULT = {"fp16": "auto", "int8": "fp32"}
# A VAE graph is converted (FP16) or quantized (INT8) only if, on calibration inputs, its output
# stays finite and within this PSNR of FP32 (images in [0, 1], peak 1; the encoder's latent is
# judged through the FP32 decoder). Each floor is well inside its precision's end-to-end gate: FP16
# 40 dB (an RMS error of 2.5 uint8 levels) against the gate's 35 dB, INT8 35 dB (4.5 levels)
# against 28 dB. Measured on the trained stand-in, calibrated on 20-step runs: the decoder 41.0 dB
# (quantized), the encoder 34.3 dB (kept FP32).
VAE_MIN_PSNR_DB = {"fp16": 40.0, "int8": 35.0}
# The shipped INT8 exclusions: what stays FP32, each with the reason and the measurement behind it
# (benchmarks/quantize_int8.py; figures in benchmarks/results/quantize_int8.json; "alone": only that
# group quantized, UNet ε PSNR min over the stand-in's held-out steps). Not excluded: the λ MatMuls
# (alone 48.0 dB on the stand-in: the sensitivity pass clears them) and every other group (alone
# ≥ 34.7 dB, and each kept FP32 gains ≤ 0.9 dB while costing speed), the Mix-FFN gate included
# (alone 38.3 dB; with it FP32 as well, the stand-in's hole PSNR 40.3 dB against 40.6 dB quantized,
# and the full-size INT8 step runs slower: benchmarks/quantize_int8.py, candidate edges-gate-fp32).
# Keeping the λ MatMuls FP32 too (candidate edges-lambda-fp32) gains 1.3 dB on the stand-in (41.9 dB)
# but steps slower at full size: 1.67x FP32 against 1.86x in one pass on the export whose CFG halves
# share their prefix (docs/model.md §10.4). On the export before it the order was the reverse
# (1.58x against 1.49x), so this choice is re-measured whenever the graph changes.
INT8_EXCLUDE = (
    {"group": "conv_in",
     "reason": "the most sensitive group: one per-tensor scale for the noisy latent, the 0/1 mask and the masked "
               "latent; quantized alone it leaves 32.4 dB UNet eps PSNR on the stand-in (every other group alone: "
               ">= 34.7 dB), and keeping it FP32 gains +1.4 dB with everything else quantized; ~0 % of the FLOPs"},
    {"group": "conv_out",
     "reason": "writes eps itself: quantized alone 37.1 dB on the stand-in, +0.5 dB kept FP32; C -> 4 channels, "
               "~0 % of the FLOPs"},
    {"group": "time_mlp",
     "reason": "the time embedding every block reads (quantized alone 45.3 dB on the stand-in); two tiny Gemms, "
               "free to keep"},
)


@dataclass(frozen=True)
class Recipe:
    precision: str = "fp16"
    # -- data: FP32 trajectories on photos × seeded masks (quantize/calibration.py)
    calibration_photos: tuple = CALIBRATION_PHOTOS
    held_out_photos: tuple = HELD_OUT_PHOTOS
    calibration_masks: int = 3  # masks per calibration photo (kinds rotate: strokes, brushes, box, blob)
    held_out_masks: int = 3  # masks per held-out photo
    seed: int = 0  # masks, and the pipeline noise of every pair (FP32 and variant see the same noise)
    steps: int = contract.DEFAULT_STEPS
    guidance: float = contract.DEFAULT_GUIDANCE
    strength: float = contract.DEFAULT_STRENGTH
    # -- FP16 keep-list (quantize/fp16.py)
    measure: bool = True  # False: keep exactly `keep`, measure nothing
    keep: dict = field(default_factory=dict)  # {graph key: [node names kept in FP32]}, added to the measured ones
    safe_abs_max: float = fp16.FP16_SAFE_ABS_MAX
    error_min: float = fp16.ERROR_MIN
    error_gain: float = fp16.ERROR_GAIN
    error_rounds: int = fp16.ERROR_ROUNDS
    range_inputs: int = 0  # calibration inputs per graph for the range pass (0: all of them)
    error_inputs: int = 2  # calibration UNet inputs for the error pass (spread: first and last step)
    vae_error_inputs: int = 1  # calibration inputs of each VAE graph for the error pass (512² activations are large)
    # -- both: the VAE graphs
    vae: str | None = None  # VAE_MODES; None: VAE_DEFAULT of the recipe's precision
    vae_min_psnr_db: float | None = None  # None: VAE_MIN_PSNR_DB of the recipe's precision
    # -- INT8 (quantize/int8.py): static QDQ, per-channel symmetric S8 weights
    activation_type: str = "uint8"  # int8.ACTIVATION_TYPES
    calibration_method: str = "minmax"  # int8.CALIBRATION_METHODS (histogram methods: small models only)
    calibration_inputs: int = 0  # calibration UNet inputs (spread over the trajectories; 0: all)
    exclude: tuple = INT8_EXCLUDE  # [{"group": G} | {"node": REGEX}, with "reason"]: kept FP32
    # -- report
    latency_reps: int = 5  # UNet step timings, FP32 and variant interleaved

    def __post_init__(self):
        if self.vae is None:
            object.__setattr__(self, "vae", VAE_DEFAULT.get(self.precision, "auto"))
        if self.vae_min_psnr_db is None:
            object.__setattr__(self, "vae_min_psnr_db", VAE_MIN_PSNR_DB.get(self.precision, max(VAE_MIN_PSNR_DB.values())))

    def to_json(self) -> dict:
        """The fields of this recipe's precision (and the common ones)."""
        d = dataclasses.asdict(self)
        other = INT8_FIELDS if self.precision == "fp16" else FP16_FIELDS
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items() if k not in other}

    def replace(self, **changes) -> "Recipe":
        if changes.get(contract.manifest_key(contract.META_PRECISION), self.precision) != self.precision:
            # the per-precision defaults follow the new precision unless given
            changes = {"vae": None, "vae_min_psnr_db": None, **changes}
        return dataclasses.replace(self, **changes)


# The fields only one precision reads; every other field is common.
FP16_FIELDS = frozenset({"measure", "keep", "safe_abs_max", "error_min", "error_gain", "error_rounds", "range_inputs",
                         "error_inputs", "vae_error_inputs"})
INT8_FIELDS = frozenset({"activation_type", "calibration_method", "calibration_inputs", "exclude"})


def _coerce(name: str, value, default):
    """A recipe value of the default's type, or a one-line error."""
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if name == "exclude":
            if not isinstance(value, (list, tuple)):
                raise TypeError
            int8.check_exclusions(list(value))
            return tuple(dict(v) for v in value)
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise TypeError
            return tuple(value)
        if isinstance(default, dict):
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v)
                    for k, v in value.items()):
                raise TypeError
            unknown = set(value) - {g.key for g in contract.GRAPHS}
            if unknown:
                raise UserError(f"recipe {name!r} names unknown graphs {sorted(unknown)}")
            return {k: list(v) for k, v in value.items()}
        if isinstance(default, int):
            if isinstance(value, bool) or not float(value).is_integer():
                raise TypeError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        raise UserError(f"recipe field {name!r} must be like {default!r}, got {value!r}") from None


def from_dict(d: dict, precision: str) -> Recipe:
    """The default recipe for ``precision`` with the fields of ``d`` (a parsed recipe file)."""
    if not isinstance(d, dict):
        raise UserError("a recipe is a JSON object")
    base = Recipe(precision=precision)
    defaults = {f.name: getattr(base, f.name) for f in dataclasses.fields(Recipe)}
    unknown = set(d) - set(defaults)
    if unknown:
        raise UserError(f"unknown recipe fields: {', '.join(sorted(unknown))} (known: {', '.join(defaults)})")
    foreign = set(d) & (INT8_FIELDS if precision == "fp16" else FP16_FIELDS)
    if foreign:
        raise UserError(f"recipe fields {', '.join(sorted(foreign))} do not apply to {precision}")
    values = {k: _coerce(k, v, defaults[k]) for k, v in d.items()}
    field = contract.manifest_key(contract.META_PRECISION)  # the recipe's own "precision" field
    if values.get(field, precision) != precision:
        raise UserError(f"the recipe is for {values[field]}, not {precision}")
    r = base.replace(**values)
    check(r)
    return r


def load(path, precision: str) -> Recipe:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"recipe not found: {path}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read recipe {path}: {e}") from None
    return from_dict(d, precision)


def check(r: Recipe) -> None:
    """One-line errors for recipes that cannot work."""
    overlap = set(r.calibration_photos) & set(r.held_out_photos)
    if overlap:
        raise UserError(f"calibration and held-out photos must be disjoint; both have {', '.join(sorted(overlap))}")
    if not r.calibration_photos or not r.held_out_photos:
        raise UserError("a recipe needs at least one calibration photo and one held-out photo")
    if r.calibration_masks < 1 or r.held_out_masks < 1:
        raise UserError("calibration_masks and held_out_masks must be at least 1")
    if r.vae not in VAE_MODES:
        raise UserError(f"recipe field 'vae' must be one of {', '.join(VAE_MODES)}, got {r.vae!r}")
    if not 0 < r.safe_abs_max <= fp16.FP16_MAX:
        raise UserError(f"safe_abs_max must be in (0, {fp16.FP16_MAX:g}]")
    if r.activation_type not in int8.ACTIVATION_TYPES:
        raise UserError(f"activation_type must be one of {', '.join(int8.ACTIVATION_TYPES)}, got {r.activation_type!r}")
    if r.calibration_method not in int8.CALIBRATION_METHODS:
        raise UserError(f"calibration_method must be one of {', '.join(int8.CALIBRATION_METHODS)}, "
                        f"got {r.calibration_method!r}")
    if r.calibration_inputs < 0:
        raise UserError("calibration_inputs must be ≥ 0 (0: all)")
    int8.check_exclusions(list(r.exclude))
    if min(r.error_inputs, r.vae_error_inputs, r.latency_reps) < 1 or min(r.range_inputs, r.error_rounds) < 0:
        raise UserError("error_inputs, vae_error_inputs and latency_reps must be ≥ 1, range_inputs and "
                        "error_rounds ≥ 0")
