"""Quality figures of a variant against the FP32 graphs, on held-out photos, same inputs and noise.

* UNet alone (``unet_steps``): the variant's ε on the FP32 pipeline's own inputs at every
  denoising step of the held-out runs. Deterministic (no sampling chaos: each step starts from
  the FP32 latent), so it isolates the UNet's error. Per timestep: PSNR with peak max|ε_fp32| and
  cosine, then min and mean over steps.
* End to end (``end_to_end``): the whole pipeline with the variant against the whole pipeline in
  FP32, same photo, mask and seed. PSNR (peak 255) inside the user's hole (the gate's figure:
  minimum over pairs), PSNR and SSIM (Wang et al. 2004, 11×11 Gaussian window, σ = 1.5) over the
  crop the model saw, and the number of pixels outside the feathered hole that differ from the
  input (must be 0 for both).
* Each VAE graph alone (``vae_encoder``, ``vae_decoder``): reconstruction PSNR against FP32
  (images in [0, 1], peak 1): encoder variant then FP32 decoder, and FP32 encoder latents through
  the decoder variant.
* CPU latency of one UNet step, FP32 and variant timed alternately in the same process.
"""
from __future__ import annotations

import logging
import math
import statistics
import time

import numpy as np

from moebius_edge import contract, masks

log = logging.getLogger(__name__)


def psnr(a: np.ndarray, ref: np.ndarray, peak: float) -> float:
    """10·log10(peak² / MSE) in float64; inf when identical, NaN when ``a`` is not finite."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    if not np.isfinite(a).all():
        return float("nan")
    mse = float(np.mean((a - ref) ** 2)) if a.size else 0.0
    return float("inf") if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def cosine(a: np.ndarray, ref: np.ndarray) -> float:
    a, ref = np.asarray(a, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    if not np.isfinite(a).all():
        return float("nan")
    den = np.linalg.norm(a) * np.linalg.norm(ref)
    return 1.0 if den == 0 and not a.any() and not ref.any() else float(a @ ref / max(den, 1e-300))


def ssim(a_u8: np.ndarray, b_u8: np.ndarray) -> float:
    """Mean SSIM over pixels and RGB channels (Wang et al. 2004, Gaussian 11×11, σ = 1.5)."""
    import cv2

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for ch in range(a_u8.shape[2]):
        x, y = a_u8[..., ch].astype(np.float64), b_u8[..., ch].astype(np.float64)

        def blur(z):
            return cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(s.mean())
    return float(np.mean(vals))


def _stats(values: list) -> dict:
    v = list(values)
    if any(math.isnan(x) for x in v):
        return {"min": float("nan"), "mean": float("nan")}
    return {"min": min(v), "mean": float(np.mean(v)) if all(math.isfinite(x) for x in v) else float("inf")}


def unet_steps(held, unet) -> dict:
    """The variant UNet (a ``GraphSession``) on every recorded FP32 UNet input of ``held``."""
    from tqdm.auto import tqdm

    key = contract.UNET.key
    by_step = {}
    finite = True
    for (pair, step), feed, ref in tqdm(list(zip(held.unet_steps(), held.feeds[key], held.outputs[key])),
                                        desc="unet steps", unit="step", leave=False, disable=None):
        out = unet.run(**feed)
        finite &= bool(np.isfinite(out).all())
        by_step.setdefault(step, {"t": int(feed[contract.UNET.input_names[3]][0]), "ref": [], "out": []})
        by_step[step]["ref"].append(ref)
        by_step[step]["out"].append(out)
    unet.release()
    steps = []
    for s in sorted(by_step):
        ref, out = np.concatenate(by_step[s]["ref"]), np.concatenate(by_step[s]["out"])
        steps.append({"step": s, "t": by_step[s]["t"], "psnr_db": psnr(out, ref, float(np.abs(ref).max())),
                      "cosine": cosine(out, ref), "pairs": len(by_step[s]["ref"])})
    p, c = _stats([x["psnr_db"] for x in steps]), _stats([x["cosine"] for x in steps])
    return {"steps": steps, "psnr_min_db": p["min"], "psnr_mean_db": p["mean"], "cosine_min": c["min"],
            "cosine_mean": c["mean"], "finite": finite, "inputs": len(held.feeds[key])}


def end_to_end(ref_runs, var_runs, image_size: int, fidelity: str = contract.DEFAULT_FIDELITY) -> dict:
    """Per held-out pair: PSNR inside the hole, PSNR and SSIM over the crop, pixels changed away
    from the hole; the minimum hole PSNR over pairs is the gate's figure."""
    pairs = []
    for pair, ref, out, info, vinfo in zip(ref_runs.pairs, ref_runs.results, var_runs.results, ref_runs.infos,
                                          var_runs.infos):
        hole = masks.binarize(pair.mask)
        h, w = hole.shape
        x0 = max(0, min(c["box"][0] for c in info.crops))
        y0 = max(0, min(c["box"][1] for c in info.crops))
        x1 = min(w, max(c["box"][2] for c in info.crops))
        y1 = min(h, max(c["box"][3] for c in info.crops))
        away = ~masks.paste_region(hole, image_size, fidelity)
        pairs.append({
            "photo": pair.photo, "mask_kind": pair.kind, "hole_px": int(hole.sum()),
            "hole_psnr_db": psnr(out[hole], ref[hole], 255.0),
            "crop_psnr_db": psnr(out[y0:y1, x0:x1], ref[y0:y1, x0:x1], 255.0),
            "crop_ssim": ssim(out[y0:y1, x0:x1], ref[y0:y1, x0:x1]),
            "outside_changed_px": int((out[away] != pair.image[away]).any(axis=-1).sum()),
            "outside_changed_px_fp32": int((ref[away] != pair.image[away]).any(axis=-1).sum()),
            "decoder_fallback": bool(vinfo.decoder_fallback),
        })
    holes = [p["hole_psnr_db"] for p in pairs]
    return {"pairs": pairs, "hole_psnr_min_db": min(holes), "hole_psnr_mean_db": float(np.mean(holes)),
            "crop_psnr_min_db": min(p["crop_psnr_db"] for p in pairs),
            "crop_ssim_min": min(p["crop_ssim"] for p in pairs),
            "outside_changed_px": sum(p["outside_changed_px"] + p["outside_changed_px_fp32"] for p in pairs),
            "decoder_fallbacks": sum(p["decoder_fallback"] for p in pairs)}


def vae_encoder(feeds: list, enc_var, enc_ref, dec_ref) -> list:
    """PSNR (peak 1) of FP32-decoded variant latents against FP32-decoded FP32 latents."""
    out = []
    for f in feeds:
        zv, zr = enc_var.run(**f), enc_ref.run(**f)
        if not np.isfinite(zv).all():
            out.append(float("nan"))
            continue
        out.append(psnr(dec_ref.run(latent=zv), dec_ref.run(latent=zr), 1.0))
    return out


def vae_decoder(feeds: list, dec_var, dec_ref) -> list:
    """PSNR (peak 1) of the variant decoder against the FP32 decoder on the same latents."""
    return [psnr(dec_var.run(**f), dec_ref.run(**f), 1.0) for f in feeds]


def latency(ref, var, feed: dict, reps: int) -> dict:
    """Median seconds of one call, FP32 (``ref``) and variant (``var``) alternating, after one
    warm-up each, so both see the same machine load."""
    ref.run(**feed)
    var.run(**feed)
    tr, tv = [], []
    for _ in range(reps):
        t = time.perf_counter()
        ref.run(**feed)
        tr.append(time.perf_counter() - t)
        t = time.perf_counter()
        var.run(**feed)
        tv.append(time.perf_counter() - t)
    ref.release()
    var.release()
    return {"fp32_median_s": statistics.median(tr), "variant_median_s": statistics.median(tv),
            "fp32_s": tr, "variant_s": tv, "ratio": statistics.median(tv) / statistics.median(tr), "reps": reps}


def gate_figures(unet: dict, e2e: dict, vae: dict) -> dict:
    """The four numbers the gate judges (``gate.judge``)."""
    finite = (unet["finite"] and e2e["decoder_fallbacks"] == 0
              and all(v.get("finite", True) for v in vae.values())
              and all(math.isfinite(p["hole_psnr_db"]) or p["hole_psnr_db"] == float("inf") for p in e2e["pairs"]))
    return {"finite": bool(finite), "outside_changed_px": e2e["outside_changed_px"],
            "hole_psnr_min_db": e2e["hole_psnr_min_db"], "mean_step_cosine": unet["cosine_mean"]}
