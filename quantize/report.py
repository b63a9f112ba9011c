"""``report.json`` and ``report.md`` of a variant (``contract.QUANTIZE_REPORT_FILE`` / ``_MD``).

The JSON holds every figure ``job.py`` measured (strict JSON: an infinite PSNR, two identical
images, is written as the string "inf", a NaN as "nan"); the Markdown is the same for people:
gate verdict, sizes, keep-list with the measurement behind each entry, per-step UNet figures,
end-to-end figures per held-out pair, VAE checks, latency, and the CPU caveat.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from moebius_edge import contract


def jsonable(x):
    """Non-finite floats as strings, tuples as lists, recursively (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):  # numpy scalars
        return jsonable(x.item())
    return x


def _f(x, digits=2) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and not math.isfinite(x):
        return "∞" if x > 0 else ("nan" if math.isnan(x) else "−∞")
    return f"{x:.{digits}f}"


def markdown(r: dict) -> str:
    g = r["gate"]
    out = [f"# {r['variant']} variant: quality report", ""]
    mode = "enforced" if g["enforced"] else "random-init weights: figures printed, not enforced"
    out += [f"**Gate: {g[contract.GATE_STATUS]}** ({mode}). Source: `{r['source']}`; onnxruntime "
            f"{r['onnxruntime']}, onnx {r['onnx']}, moebius-edge {r['moebius_edge']}; mask/paste mode "
            f"`{r['fidelity']}` (the runtime's default); execution provider {r['execution_provider']}.", ""]
    out += ["| check | value | threshold | passed |", "|---|---|---|---|"]
    for c in g["checks"]:
        out.append(f"| {c['name']} | {_f(c['value'], 4) if isinstance(c['value'], float) else c['value']} | "
                   f"{c['threshold']} | {'yes' if c['passed'] else 'NO'} |")
    if g["overridden"]:
        out += ["", f"Thresholds overridden on the command line: `{json.dumps(g['overridden'])}`."]
    out += ["", f"> {r['cpu_note']}", ""]
    out += ["## Sizes", "", "| graph | FP32 MB | variant MB | ratio | file |", "|---|---|---|---|---|"]
    for k, s in r["sizes"].items():
        out.append(f"| {k} | {s['fp32_bytes'] / 1e6:.1f} | {s['variant_bytes'] / 1e6:.1f} | "
                   f"{100 * s['ratio']:.1f} % | `{s['graph_file']}` |")
    out += ["", "## Graphs and keep-lists", ""]
    for k, d in r["conversion"].items():
        state = (f"converted to {r['variant'].upper()}" if d.get("converted")
                 else "kept FP32 (referenced, not copied)")
        out.append(f"### {k}: {state}")
        if d.get("why"):
            out.append(f"{d['why']}.")
        if "groups" in d:  # int8
            out += [f"Static QDQ: activations {d['activation_type']}, weights {d['weight_type']}, calibration "
                    f"{d['calibration_method']} on {d['calibration_inputs']} UNet inputs.", "",
                    "| group | what | quantizable | quantized |", "|---|---|---|---|"]
            out += [f"| {g} | {v['what']} | {v['quantizable']} | {v['quantized']} |" for g, v in d["groups"].items()]
            excluded = d.get("excluded") or {}
            reasons = {}
            for name, e in excluded.items():
                reasons.setdefault(json.dumps(e, sort_keys=True), []).append(name)
            if reasons:
                out += ["", "Kept FP32 (recipe exclusions):", ""]
                for e, names in reasons.items():
                    e = json.loads(e)
                    what = f"group `{e['group']}`" if "group" in e else f"nodes matching `{e['node']}`"
                    out.append(f"- {what} ({len(names)} nodes): {e.get('reason', '')}")
        if "quantized_ops" in d:  # an int8 VAE graph, kept or not
            out.append(f"{'Static' if d.get('converted') else 'Tried static'} QDQ of its {', '.join(d['quantized_ops'])} "
                       f"nodes: activations {d['activation_type']}, "
                       f"weights {d['weight_type']}, calibration {d['calibration_method']} on "
                       f"{d['calibration_inputs']} inputs; {d['qdq_nodes']} Q/DQ nodes.")
        if "activation_abs_max" in d:
            out.append(f"Largest |activation| on calibration inputs: {_f(d['activation_abs_max'], 1)}; "
                       f"tensors beyond the safe range: {len(d['range_flagged_tensors'])}.")
        for rnd in d.get("error_pass", []):
            s = rnd["summary"]
            out.append(f"Error pass round {rnd['round']}: graph output rel-L2 {_f(rnd['output_rel_error'], 5)}; "
                       f"per-node gain median {_f(s.get('gain_p50'))}, p99 {_f(s.get('gain_p99'))}, "
                       f"max {_f(s.get('gain_max'))}; newly kept {len(rnd['new'])}.")
        keep = d.get("keep_fp32") or {}
        if keep:
            out += ["", "| node | op | reason | measurement |", "|---|---|---|---|"]
            for name, e in keep.items():
                m = {k2: v for k2, v in e.items() if k2 not in ("op", "reason")}
                out.append(f"| `{name}` | {e['op']} | {e['reason']} | "
                           f"{', '.join(f'{k2} {_f(v, 4) if isinstance(v, float) else v}' for k2, v in m.items())} |")
        elif d.get("converted") and "groups" not in d and "quantized_ops" not in d:
            out.append("No node kept in FP32.")
        out.append("")
    u = r["unet"]
    out += ["## UNet alone, held-out trajectories", "",
            f"{u['inputs']} inputs. ε PSNR (peak max|ε_fp32| per step): min {_f(u['psnr_min_db'])} dB, mean "
            f"{_f(u['psnr_mean_db'])} dB; cosine: min {_f(u['cosine_min'], 6)}, mean {_f(u['cosine_mean'], 6)}.", "",
            "| step | t | PSNR dB | cosine |", "|---|---|---|---|"]
    out += [f"| {s['step']} | {s['t']} | {_f(s['psnr_db'])} | {_f(s['cosine'], 6)} |" for s in u["steps"]]
    e = r["end_to_end"]
    out += ["", "## End to end, held-out pairs (same photo, mask and seed as FP32)", "",
            f"Hole PSNR min {_f(e['hole_psnr_min_db'])} dB (mean {_f(e['hole_psnr_mean_db'])}); crop PSNR min "
            f"{_f(e['crop_psnr_min_db'])} dB; crop SSIM min {_f(e['crop_ssim_min'], 4)}; pixels changed away from "
            f"the hole: {e['outside_changed_px']}; decoder fallbacks: {e['decoder_fallbacks']}.", "",
            "| photo | mask | hole px | hole PSNR dB | crop PSNR dB | crop SSIM |", "|---|---|---|---|---|---|"]
    out += [f"| {p['photo']} | {p['mask_kind']} | {p['hole_px']} | {_f(p['hole_psnr_db'])} | {_f(p['crop_psnr_db'])} | "
            f"{_f(p['crop_ssim'], 4)} |" for p in e["pairs"]]
    out += ["", "## VAE graphs alone, held-out inputs", ""]
    for k, v in r["vae"].items():
        out.append(f"- {k}: " + (f"reconstruction PSNR vs FP32 min {_f(v['psnr_min_db'])} dB, mean "
                                 f"{_f(v['psnr_mean_db'])} dB ({v['inputs']} inputs)" if v["converted"]
                                 else "kept FP32"))
    lat = r["latency"]
    out += ["", "## CPU latency of one UNet step (FP32 and variant alternating, same process)", "",
            f"FP32 {_f(lat['fp32_median_s'], 4)} s, {r['variant']} {_f(lat['variant_median_s'], 4)} s "
            f"(×{_f(lat['ratio'], 2)}), median of {lat['reps']}.", "",
            "## Data", "",
            f"Calibration photos {', '.join(r['data']['calibration']['photos'])} "
            f"({len(r['data']['calibration']['pairs'])} pairs, {r['data']['calibration']['unet_inputs']} UNet inputs); "
            f"held-out photos {', '.join(r['data']['held_out']['photos'])} ({len(r['data']['held_out']['pairs'])} pairs: "
            f"{', '.join(r['data']['held_out']['pairs'])}). {r['data']['steps']} steps, strength "
            f"{r['data']['strength']}, guidance {r['data']['guidance']}, seed {r['data']['seed']}.", "",
            f"Time: {_f(r['seconds']['total'], 1)} s (FP32 runs {_f(r['seconds']['fp32_runs'], 1)}, build "
            f"{_f(r['seconds']['build'], 1)}, evaluation {_f(r['seconds']['evaluate'], 1)}); peak RSS "
            f"{_f(r['peak_rss_mb'], 0)} MB.", ""]
    return "\n".join(out)


def write_report(folder, report: dict) -> None:
    folder = Path(folder)
    (folder / contract.QUANTIZE_REPORT_FILE).write_text(json.dumps(jsonable(report), indent=1) + "\n")
    (folder / contract.QUANTIZE_REPORT_MD).write_text(markdown(report))
