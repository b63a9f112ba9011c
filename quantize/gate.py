"""The quality gate: named thresholds and the verdict on a variant's figures.

A variant is judged against the FP32 graphs on held-out photos (``evaluate.py``). The checks:

* **finite** (always enforced, never overridable): no NaN or Inf in any UNet ε on the held-out
  trajectories, in any converted VAE output, and no decoder fallback during the end-to-end runs;
* **outside the hole unchanged** (always enforced): pixels away from the feathered hole equal the
  input, for the variant as for FP32 (a failure is a bug, not a precision loss);
* **hole PSNR**: the minimum over held-out pairs of the final image's PSNR inside the hole
  (peak 255) ≥ ``MIN_HOLE_PSNR_DB[precision]``;
* **step cosine**: the mean over denoising steps of the cosine between variant and FP32 ε on the
  held-out trajectory inputs ≥ ``MIN_MEAN_STEP_COSINE``.

The last two are overridable (``quantize --min-hole-psnr/--min-step-cosine``; the report records
the override). All are enforced unless the weights are random (provenance starting with
``contract.PROVENANCE_RANDOM_INIT``): random weights reach activations of ±400 and produce noise,
so their figures are printed and marked advisory and the variant is kept, and ``run`` warns
when it uses it (``ModelsFolder.gate_advisory``). Non-finite output blocks even then.
"""
from __future__ import annotations

import math

from moebius_edge import contract

FP16_MIN_HOLE_PSNR_DB = 35.0  # Apple ml-stable-diffusion's PSNR ≥ 35 dB acceptance for its conversions
INT8_MIN_HOLE_PSNR_DB = 28.0  # INT8 (issue 11): a visible but acceptable difference inside the hole
MIN_HOLE_PSNR_DB = {"fp16": FP16_MIN_HOLE_PSNR_DB, "int8": INT8_MIN_HOLE_PSNR_DB}
MIN_MEAN_STEP_COSINE = 0.99
GATE_FAILED = "failed"  # not written to any manifest: a failed variant is not kept


def thresholds(precision: str, min_hole_psnr_db: float | None = None, min_mean_step_cosine: float | None = None) -> dict:
    """The thresholds in force and which of them the user overrode."""
    t = {"min_hole_psnr_db": MIN_HOLE_PSNR_DB[precision], "min_mean_step_cosine": MIN_MEAN_STEP_COSINE}
    overridden = {}
    if min_hole_psnr_db is not None and min_hole_psnr_db != t["min_hole_psnr_db"]:
        overridden["min_hole_psnr_db"] = {"default": t["min_hole_psnr_db"], "used": float(min_hole_psnr_db)}
        t["min_hole_psnr_db"] = float(min_hole_psnr_db)
    if min_mean_step_cosine is not None and min_mean_step_cosine != t["min_mean_step_cosine"]:
        overridden["min_mean_step_cosine"] = {"default": t["min_mean_step_cosine"], "used": float(min_mean_step_cosine)}
        t["min_mean_step_cosine"] = float(min_mean_step_cosine)
    return {"thresholds": t, "overridden": overridden}


def _ge(value, threshold) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value >= threshold


def judge(figures: dict, limits: dict, provenance: str) -> dict:
    """The gate record: status (``contract.GATE_PASSED``, ``contract.GATE_ADVISORY`` or
    ``GATE_FAILED``), whether it was enforced, each check with its value, and why it failed.

    ``figures``: {"finite": bool, "outside_changed_px": int, "hole_psnr_min_db": float,
    "mean_step_cosine": float} (``evaluate.gate_figures``)."""
    t = limits["thresholds"]
    checks = [
        {"name": "finite", "value": bool(figures["finite"]), "threshold": True, "always": True,
         "passed": bool(figures["finite"])},
        {"name": "outside_hole_unchanged_px", "value": int(figures["outside_changed_px"]), "threshold": 0,
         "always": True, "passed": int(figures["outside_changed_px"]) == 0},
        {"name": "hole_psnr_min_db", "value": figures["hole_psnr_min_db"], "threshold": t["min_hole_psnr_db"],
         "always": False, "passed": _ge(figures["hole_psnr_min_db"], t["min_hole_psnr_db"])},
        {"name": "mean_step_cosine", "value": figures["mean_step_cosine"], "threshold": t["min_mean_step_cosine"],
         "always": False, "passed": _ge(figures["mean_step_cosine"], t["min_mean_step_cosine"])},
    ]
    enforced = not provenance.startswith(contract.PROVENANCE_RANDOM_INIT)
    blocking = [c for c in checks if not c["passed"] and (c["always"] or enforced)]
    status = GATE_FAILED if blocking else contract.GATE_PASSED if enforced else contract.GATE_ADVISORY
    return {contract.GATE_STATUS: status, "enforced": enforced, "source": provenance,
            "checks_passed": all(c["passed"] for c in checks), **limits, "checks": checks,
            "failed": [c["name"] for c in blocking]}


def summary(record: dict) -> str:
    """One line: status and each check against its threshold."""
    parts = []
    for c in record["checks"]:
        v = c["value"]
        shown = f"{v:.2f}" if isinstance(v, float) and c["name"].endswith("_db") else \
            f"{v:.5f}" if isinstance(v, float) else str(v)
        op = "=" if c["always"] else "≥"
        parts.append(f"{c['name']} {shown} ({op} {c['threshold']}{'' if c['passed'] else ' FAILED'})")
    mode = "" if record["enforced"] else " (random-init weights: advisory, not enforced)"
    return f"gate {record[contract.GATE_STATUS]}{mode}: " + ", ".join(parts)
