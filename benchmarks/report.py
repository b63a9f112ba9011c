"""Writes the README's measured tables from benchmarks/results/*.json: numbers are never typed.

    .venv/bin/python benchmarks/report.py [--check]

Each table sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in README.md or
docs/mobile.md (``DOCUMENTS``) and is rebuilt by the renderer of that name below from
``benchmarks/results/NAME.json``. ``--check`` exits 1 when a document differs from what the JSON
gives (a test runs it). Without ``--check`` it also draws docs/figures/pipeline.png from
``benchmarks/results/pipeline.json`` (matplotlib, the ``bench`` extra); ``--check`` leaves the
figure alone (its bytes depend on matplotlib's version). Without ``--check`` it also prints the
performance targets' table (``TARGETS``: met or missed, where a miss is profiled, and what a missed
speed target asks of the UNet step) and, when a speed target is missed, the step's profile
(``int8_profile``): what ``make bench`` ends with, before its own time.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from moebius_edge import contract
from moebius_edge.models import total_bytes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


def thin_strokes(r: dict) -> str:
    # Wall time stays in the JSON: this benchmark checks pixels, and it ran beside other jobs.
    w, h = r["photo"]
    m = r["machine"]
    lines = [f"A {r['wire_px_width']} px wire on a generated {w}×{h} photo, {r['steps']} steps, models "
             f"`{r['models_provenance']}` ({r['native']} px native), {m['cores']} cores "
             f"(`benchmarks/thin_strokes.py`):", "",
             "| fidelity | wire px | wire px changed | pasted below full weight | outside the latent mask | "
             "hole sent to the model (native px) |", "|---|---|---|---|---|---|"]
    for run in r["runs"]:
        lines.append(f"| {run['fidelity']} | {run['wire_px']:,} | {run['wire_px_changed']:,} | "
                     f"{run['underweight_px']:,} | {run['unseen_px']:,} | {run['model_native_px']:,} "
                     f"(hole area {run['hole_native_px']:,.0f}) |")
    return "\n".join(lines)


def _fp16_row(name: str, q: dict) -> str:
    u, e, lat = q["unet_steps"], q["end_to_end"], q["latency"]
    status = q["gate"]["status"] + ("" if q["gate"]["enforced"] else " (advisory: random weights)")
    keep = q["keep"].get("unet", {}).get("keep_fp32", {})
    vae = ", ".join(f"{k.split('_')[1]} {'fp16' if v['converted'] else 'fp32'}" for k, v in q["keep"].items()
                    if k != "unet")
    return (f"| {name} | {status} | {e['hole_psnr_min_db']:.1f} | {e['crop_ssim_min']:.4f} | {u['psnr_min_db']:.1f} | "
            f"{u['cosine_mean']:.6f} | {100 * q['unet_ratio']:.1f} % | {len(keep)} | {vae} | "
            f"{lat['fp32_median_s']:.3f} / {lat['variant_median_s']:.3f} | "
            f"{q['wall_s'] / 60:.0f} min, {q['peak_rss_mb'] / 1024:.1f} GB |")


def quantize_fp16(r: dict) -> str:
    lines = ["`benchmarks/quantize_fp16.py` (the shipped FP16 recipe through `moebius-edge quantize`; gate: hole "
             "PSNR ≥ 35 dB, mean step ε cosine ≥ 0.99, no NaN/Inf; the CPU provider computes Conv/MatMul/Gemm in "
             "FP32, so CPU step times say nothing of FP16 speed on a GPU or NPU):", "",
             "| model | gate | hole PSNR min dB | crop SSIM min | UNet ε PSNR min dB | mean step ε cosine | FP16 UNet / "
             "FP32 | UNet nodes kept FP32 | VAE | CPU step s, FP32 / FP16 | quantize time, peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, name in (("standin", "trained stand-in (tiny, 128 px)"), ("full_random_init", "full size, random init (512 px)")):
        if key in r:
            lines.append(_fp16_row(name, r[key]))
    full = r.get("full_random_init", {})
    if len(full.get("precisions_in_run") or []) > 1:
        lines += ["", f"Full size: `{full['command']}` made fp16 and int8 from one set of FP32 runs; its time and "
                  f"peak RSS above are those of the run up to the end of the FP16 variant (the FP32 runs peaked at "
                  f"{full['fp32_runs_peak_rss_mb'] / 1024:.1f} GB, the FP16 build and evaluation at "
                  f"{full['variant_peak_rss_mb'] / 1024:.1f} GB)."]
    return "\n".join(lines)


def _isa(m: dict) -> str:
    if m.get("avx512_vnni"):
        return "AVX-512 VNNI"
    return "AVX-512, no VNNI" if m.get("avx512f") else ("AVX2, no AVX-512 or VNNI" if m.get("avx2") else "no AVX2")


def quantize_int8(r: dict) -> str:
    st = r.get("standin", {})
    full = r.get("full_random_init", {})
    fr = {c["name"]: c for c in full.get("tradeoff", [])}
    lines = ["`benchmarks/quantize_int8.py`: candidate recipes from everything quantized to the most careful. "
             "Stand-in columns go through the real gate (hole PSNR ≥ 28 dB, mean step ε cosine ≥ 0.99); full-size "
             "columns are random weights (figures advisory); their step times come from a loop interleaving FP32 and "
             "the candidates (one loop for all unless said below). "
             f"CPU: {r['machine'].get('processor', r['machine'].get('cpu'))}, {r['machine']['cores']} cores, "
             f"{_isa(r['machine'])}, onnxruntime {r['machine']['onnxruntime']}.", "",
             "| recipe | kept FP32 | activations | stand-in gate | hole PSNR min dB | mean ε cosine | full: UNet / FP32 "
             "| full: CPU step vs FP32 | full: mean ε cosine (advisory) |", "|---|---|---|---|---|---|---|---|---|"]
    shipped = r.get("shipped_candidate")
    for c in st.get("tradeoff", []):
        f = fr.get(c["name"])
        mark = " **(shipped)**" if c["name"] == shipped else ""
        lines.append(f"| {c['name']}{mark} | {', '.join(c['exclude']) or 'nothing'} | {c['activation_type']} | "
                     f"{c['gate']} | {c['hole_psnr_min_db']:.1f} | {c['eps_cosine_mean']:.4f} | "
                     + (f"{100 * f['unet_ratio']:.1f} % | "
                        + (f"{1 / f['latency']['ratio']:.2f}x faster | " if "latency" in f else "– | ")
                        + f"{f['eps']['cosine_mean']:.4f} |" if f else "– | – | – |"))
    passes = {}  # rows timed in one interleaved loop (each against that loop's FP32 runs)
    for c in full.get("tradeoff", []):
        if "latency" in c:
            passes.setdefault((c.get("models"), tuple(c["latency"]["interleaved_with"])), []).append(c["name"])
    if len(passes) > 1:
        lines += ["", "The full-size columns come from " + str(len(passes)) + " passes, each interleaving FP32 with its own "
                  "candidates (ratios compare across passes, seconds do not): " + "; ".join(
                      f"{', '.join(names)} on {'`' + Path(m).name + '`' if m else 'an earlier export'}"
                      for (m, _), names in passes.items()) + "."]
    pick = r.get("fastest_passing")
    if pick and shipped and pick != shipped:
        lines += ["", f"In this run the selection rule ({r['selection_rule']}) picks **{pick}**, not the shipped "
                  f"{shipped}: the shipped recipe changes only once a run of its own confirms the ranking and the "
                  "full-size variant is rebuilt with it."]
    if not fr:
        lines += ["", "Full-size columns: not measured yet (`benchmarks/quantize_int8.py --skip-standin --models DIR` "
                  "on a `make export RANDOM_INIT=1` folder); until then the shipped recipe is chosen by the stand-in "
                  "gate and the FLOP share of what it keeps FP32 (conv_in, conv_out and the time MLP: ~0 %), not "
                  "by a measured speed ranking."]
    sens = st.get("sensitivity", {})
    fsens = full.get("sensitivity", {})
    if sens:
        lines += ["", "Sensitivity per group (UNet ε PSNR min over held-out steps, dB; higher is better): the group "
                  "alone quantized, and everything but the group and the λ MatMuls quantized:", "",
                  "| group | nodes | stand-in: only this group | stand-in: all but this group | full size: only this "
                  "group (advisory) |", "|---|---|---|---|---|"]
        for g, v in sens.items():
            loo = v.get("all_but_this")
            fs = fsens.get(g, {}).get("only_this")
            lines.append(f"| {g} | {v['nodes']} | {v['only_this']['psnr_min_db']:.1f} | "
                         f"{loo['psnr_min_db']:.1f} |" if loo else f"| {g} | {v['nodes']} | "
                         f"{v['only_this']['psnr_min_db']:.1f} | – |")
            lines[-1] += f" {fs['psnr_min_db']:.1f} |" if fs else " – |"
    sh = full.get("shipped")
    if sh:
        changed = sh.get("recipe_changes") or {}
        data = (" with " + ", ".join(f"`{k}` {json.dumps(v)}" for k, v in changed.items()) + ", the shipped recipe "
                "otherwise" if changed else "")
        lines += ["", f"The shipped recipe on the full-size random-init folder (`{sh['command']}`{data}): UNet "
                  f"{100 * sh['unet_ratio']:.1f} % of FP32, CPU step {sh['latency']['fp32_median_s']:.2f} s → "
                  f"{sh['latency']['variant_median_s']:.2f} s ({1 / sh['latency']['ratio']:.2f}x in the quantize run's own "
                  f"{sh['latency']['reps']} interleaved reps, on whatever else the machine ran: the trade-off table's "
                  "pass is the speed figure), quantize "
                  f"{sh['seconds']['total'] / 60:.0f} min at {sh['peak_rss_mb'] / 1024:.1f} GB peak RSS"
                  + (f" (a `--precision {' + '.join(sh['precisions_in_run'])}` run; its FP32 runs peaked at "
                     f"{sh['fp32_runs_peak_rss_mb'] / 1024:.1f} GB and the INT8 build and evaluation at "
                     f"{sh['variant_peak_rss_mb'] / 1024:.1f} GB)" if sh.get("variant_peak_rss_mb") else "")
                  + f"; gate {sh['gate']} (random weights)."]
    return "\n".join(lines)


def scale(r: dict) -> str:
    w, h = r["photo"]
    m = r["machine"]
    lines = [f"{r['rows']} generated {w}×{h} photos, {r['steps']} steps, models `{r['models_provenance']}` "
             f"({r['native']} px native), {m['cores']} cores, load average {m['load_average'][0]:.1f} from other "
             f"jobs (`benchmarks/scale.py`). Wall time is the whole `run` command, or the actor pool's start (model "
             f"loading included) to its last row; busy is an actor's own seconds per image:", "",
             "| config | wall s | images/min | busy s per image |", "|---|---|---|---|"]
    for run in r["runs"]:
        lines.append(f"| {run['config']} | {run['wall_s']:.1f} | {run['images_per_min']:.1f} | "
                     f"{run['busy_s_per_image']:.3f} |")
    one = next((run for run in r["runs"] if run["actors"] == 1 and run["cpus_per_actor"] == 1), None)
    if one:
        busy = one["busy_s_per_image"]
        lines += ["", f"Sizing a cluster: seconds per image × rows / actors. At the {busy:.3f} s per image "
                  f"measured here for one 1-CPU actor, 10,000 rows on 10 such actors take about "
                  f"{busy * 10_000 / 10 / 60:.0f} min; measure seconds per image on one actor of your node "
                  f"type and model (docs/scale.md §6)."]
    return "\n".join(lines)


def bundle_rewrites(r: dict) -> str:
    m = r["machine"]
    eps = (("nnapi", "NNAPI"), ("coreml_neuralnetwork", "CoreML NN"), ("coreml_mlprogram", "MLProgram"),
           ("xnnpack", "XNNPACK"))
    lines = [f"`benchmarks/bundle_rewrites.py`, fp32 graphs at batch 1: partitions per EP (static analysis) and "
             f"ONNX Runtime CPU time of one call under each rewrite set, interleaved in one loop "
             f"({m.get('processor', m.get('cpu'))}, {m['cores']} cores, onnxruntime {m['onnxruntime']}):", "",
             "| model | graph | rewrites | " + " | ".join(f"{label} partitions" for _, label in eps)
             + " | CPU time per call | vs none |", "|---|---|---|" + "---|" * len(eps) + "---|---|"]
    for name, f in r["folders"].items():
        for graph, sets in f["partitions"].items():
            for label, p in sets.items():
                c = f["cpu"][graph][label]
                lines.append(f"| {name} | {graph} | {label} | " + " | ".join(str(p[e]["partitions"]) for e, _ in eps)
                             + f" | {c['median_s']:.3f} s | {c['ratio_vs_none']:.2f}x |")
    return "\n".join(lines)


# Manifest and bundle.json keys the records below reuse.
PRECISION, SIZE = contract.manifest_key(contract.META_PRECISION), contract.manifest_key(contract.META_IMAGE_SIZE)
PROVENANCE, FILE, BYTES = contract.manifest_key(contract.META_PROVENANCE), contract.GRAPH_FILE, contract.GRAPH_BYTES


def photo_size(r: dict) -> str:
    lines = [f"`moebius-edge run` on one photo per row, {r['variant']}, {r['steps']} steps, in a process of its own "
             f"(`benchmarks/photo_size.py`; models `{r['models_provenance']}`; {_machine_line(r['machine'])}). "
             "Read is the file's decoding and the mask, write the JPEG's encoding and writing; the model sees the "
             f"crop resized to {r['native_px']}², whatever the photo:", "",
             "| photo | MP | file | hole | crop | read s | model s (encode + denoise + decode) | paste s | write s | "
             "total s | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["photo_size"] + r["hole_size"]:
        s = x["seconds"]
        lines.append(f"| {x['size'][0]}×{x['size'][1]} | {x['megapixels']:.1f} | {x['file_mb']:.1f} MB | "
                     f"{x['hole_px']}² | {x['crop_px'][0]}×{x['crop_px'][1]} | {s['read']:.2f} | "
                     f"{s['encode'] + s['denoise'] + s['decode']:.1f} | {s['paste']:.2f} | {s['write']:.2f} | "
                     f"{s['total']:.1f} | {x['peak_rss_mb']:,.0f} |")
    return "\n".join(lines)


def export_full(r: dict) -> str:
    where = f"; {_machine_line(r['machine'])}" if "machine" in r else ""
    lines = [f"Export of the full-size model at {r['image_side']}×{r['image_side']} (`benchmarks/export_full.py`{where}):",
             "", "| graph | MiB | ONNX Runtime vs PyTorch, relative L2 |", "|---|---|---|"]
    for key, g in r[contract.MANIFEST_GRAPHS].items():
        lines.append(f"| {g[FILE]} | {total_bytes(g) / 2**20:.1f} | {r['parity_by_graph'][key]['rel_l2']:.2e} |")
    lines += ["", f"The whole export (trace, simplify and parity gate of the three graphs, and the streamed decoder's "
              f"derivation and check) takes {r['wall_s']:.0f} s "
              f"and peaks at {r['peak_rss_mb'] / 1000:.1f} GB RSS."]
    return "\n".join(lines)


def encode_batch(r: dict) -> str:
    rows = r["rows"]
    lines = [f"The two VAE encodes of a {r['image_side']}² inpainting (photo and hole-masked photo) as two calls or "
             f"as one batch-2 call, interleaved in one process (`benchmarks/encode_batch.py`, {r['rounds']} rounds; "
             f"{_machine_line(r['machine'])}):", "", "| encodes | median s | peak RSS of the first round MB |",
             "|---|---|---|"]
    lines += [f"| {name} | {x['median_s']:.2f} | {x['first_round_peak_rss_mb']:,.0f} |" for name, x in rows.items()]
    lines += ["", f"Two calls over one batch-2 call, per-round median: {r['speedup_of_batch']:.2f}x; the largest "
              f"difference between their latents: {r['max_abs_diff']:.0e}."]
    return "\n".join(lines)


def graph_memory(r: dict) -> str:
    n = r.get("repeats", 1)
    lines = [f"One call of the {r['variant']} `{r['network']}` at {r['image_side']}², each session setting in "
             f"{'a process of its own' if n == 1 else f'{n} processes of its own, taken in turn (medians, min–max)'}, "
             "RSS sampled every 2 ms through the first call (`benchmarks/graph_memory.py"
             f"{f' --repeats {n}' if n > 1 else ''}`; {_machine_line(r['machine'])}):", "",
             "| setting | peak RSS of the load MB | RSS after load MB | peak RSS of the call MB | call s |",
             "|---|---|---|---|---|"]

    def cell(x, key, fmt):
        lo, hi = x.get(f"{key}_range", (x[key], x[key]))
        return format(x[key], fmt) + (f" ({lo:{fmt}}–{hi:{fmt}})" if n > 1 and lo != hi else "")

    lines += [f"| {x['setting']} | {cell(x, 'load_peak_rss_mb', ',.0f') if 'load_peak_rss_mb' in x else '–'} | "
              f"{cell(x, 'rss_after_load_mb', ',.0f')} | {cell(x, 'peak_rss_mb', ',.0f')} | "
              f"{cell(x, 'call_s', '.2f')} |" for x in r["runs"]]
    p = next((x["profile"] for x in r["runs"] if "profile" in x), None)
    if p:
        live = ", ".join(f"{x['op']} {x['mb']:,.0f} MB" for x in p["live_at_peak"])
        lines += ["", f"With the runtime's setting the RSS first reaches its top in `{p['peak_block']}` "
                  f"({p['peak_op']}); the largest tensors alive there: {live} ({p['live_at_peak_mb']:,.0f} MB of "
                  "tensors in all). The blocks that raise the RSS most (each adds only what exceeds the highest RSS "
                  "before it):", "",
                  "| block | s | adds MB | highest RSS in it MB |", "|---|---|---|---|"]
        lines += [f"| `{b['block']}` | {b['seconds']:.2f} | {b['growth_mb']:,.0f} | {b['peak_rss_mb']:,.0f} |"
                  for b in p["blocks"][:6]]
    return "\n".join(lines)


VAE_LABELS = {"tiny": "tiny (the stand-in's VAE)", "full": "SDXL layout"}


def vae_tiling(r: dict) -> str:
    lines = [f"A tiled decode (diffusers' `AutoencoderKL` tiling, tiles overlapping by {r['overlap']:.0%}) against "
             f"the untiled decode of the same latents, in PyTorch, random-init weights "
             f"(`benchmarks/vae_tiling.py --full-size`; {_machine_line(r['machine'])}). Gate: ≥ {r['gate_db']:.0f} dB "
             "against the untiled decode:", "",
             "| VAE | image | tile, latent px | tiles | min PSNR vs untiled, dB | decode s | peak RSS MB | gate |",
             "|---|---|---|---|---|---|---|---|"]
    for v in r["vaes"]:
        u, side = v["untiled"], f"{v['image_side']}² ({len(v['photos'])} photos)"
        lines.append(f"| {VAE_LABELS.get(v['vae'], v['vae'])} | {side} | untiled | 1 | – | "
                     f"{statistics.median(u['seconds']):.2f} | {_peak(u['peak_rss_mb']):,.0f} | – |")
        for x in v["rows"]:
            psnr = "equal" if x["psnr_min_db"] is None else f"{x['psnr_min_db']:.1f}"
            lines.append(f"| | | {x['tile_latent']} | {x['tiles']} | {psnr} | {statistics.median(x['seconds']):.2f} | "
                         f"{_peak(x['peak_rss_mb']):,.0f} | {'passed' if x['passes_gate'] else 'failed'} |")
    return "\n".join(lines)


def _peak(values: list) -> float:
    return max((v for v in values if v is not None), default=0.0)


EP_COLUMNS = (("nnapi", "NNAPI"), ("coreml_neuralnetwork", "CoreML NN"), ("coreml_mlprogram", "MLProgram"),
              ("xnnpack", "XNNPACK"))


def bundle(r: dict) -> str:
    lines = ["`benchmarks/bundle.py`: the `.ort` graphs of each bundle, the build's time and peak RSS on the CPU it "
             "names (onnxruntime 1.32; older records did not name theirs), the UNet's parity against the models "
             "folder, and the UNet's partitions per EP (" + " / ".join(label for _, label in EP_COLUMNS)
             + "; static analysis, §6):", "",
             "| bundle | weights | " + " | ".join(f"{g.key}.ort" for g in contract.GRAPHS) + " | build | build CPU | "
             "build peak RSS | UNet rel-L2 | UNet partitions | UNet nodes taken |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, b in r["bundles"].items():
        unet = {e["ep"]: e for e in b["eps"] if e["graph_key"] == contract.UNET.key}
        mib = " | ".join(f"{b[BYTES][g.key] / 2**20:.1f} MiB" for g in contract.GRAPHS)
        cpu = b["machine"]["processor"] if "machine" in b else "not recorded"
        lines.append(f"| {name} | {b[PROVENANCE]} | {mib} | {b['seconds']:.0f} s | {cpu} | "
                     f"{max(b['peak_rss_mb'].values()) / 1000:.1f} GB | {b['parity_rel_l2'][contract.UNET.key]:.1e} | "
                     + " / ".join(str(unet[e]["partitions"]) if e in unet else "–" for e, _ in EP_COLUMNS) + " | "
                     + " / ".join(f"{100 * unet[e]['node_share']:.0f} %" if e in unet else "–" for e, _ in EP_COLUMNS)
                     + " |")
    return "\n".join(lines)


def bundle_memory(r: dict) -> str:
    lines = [f"Peak RSS of the reference loop per bundle ({r['note']}):", "",
             "| bundle | native size | graphs | steps run | peak RSS, no arena (`phone`) | peak RSS, arena (`desktop`) | "
             "of which Python and NumPy |", "|---|---|---|---|---|---|---|"]
    for name, b in r["bundles"].items():
        steps = b.get("steps", "all")
        lines.append(f"| {name.rsplit('-', 1)[0]} | {b[SIZE]}² | {b['graph_mib']:.1f} MiB | {steps} | "
                     f"{b['phone']['peak_rss_mb']:,} MB | {b['desktop']['peak_rss_mb']:,} MB | "
                     f"{b['phone']['baseline_rss_mb']} MB |")
    return "\n".join(lines)


def bundle_parity(r: dict) -> str:
    lines = [f"The reference loop over a bundle against `moebius-edge run` on the same models folder, photo and noise "
             f"(`benchmarks/bundle_parity.py`; {_machine_line(r['machine'])}):",
             "", "| bundle | native size | photo | steps | max difference | pixels equal | within 1 LSB | PSNR | "
             "app loop | runtime |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, b in r["bundles"].items():
        lines.append(f"| {b['target']}-{b[PRECISION]} | {b[SIZE]}² | {b['photo']} | {b['steps']} | "
                     f"{b['max_abs_diff']} LSB | {100 * b['equal_share']:.2f} % | {100 * b['within_1_share']:.2f} % | "
                     f"{b['psnr_db']:.1f} dB | {b['app_s']:.0f} s | {b['runtime_s']:.0f} s |")
    return "\n".join(lines)


# int8_profile's rows besides the convolutions: operator types summed into one row each.
LAYOUT_OPS = ("Transpose", "ReorderInput", "ReorderOutput")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def int8_profile(r: dict) -> str:
    g = r["profiles"]
    names = list(g)
    kinds = list(dict.fromkeys(k for n in names for k in g[n]["conv_ms_per_step_by_kind"]))  # "other": unattributed
    note = f"; {r['note']}" if r.get("note") else ""

    def ops_ms(n, ops):
        return sum(x["ms_per_step"] for x in g[n]["by_op"] if x["op"] in ops)

    def conv(n, k):
        ms, rate = g[n]["conv_ms_per_step_by_kind"].get(k, 0), g[n].get("conv_gop_per_s_by_kind", {}).get(k)
        return f"{ms:.0f}" + (f" ({rate:,.0f})" if rate else "")

    lines = ["Where a full-size CFG step's CPU time goes (`benchmarks/int8_profile.py`, onnxruntime's profiler, "
             f"ms per step of its kernels, the warm-up call left out; a convolution kind's rate in brackets: GFLOP/s in "
             f"FP32, GOP/s in INT8 (an INT8 graph's kinds include the convolutions its recipe keeps FP32), 2 per "
             f"multiply-add; {_machine_line(r['machine'])}{note}):", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines.append("| all kernels | " + " | ".join(f"{g[n]['kernel_ms_per_step']:.0f}" for n in names) + " |")
    for k in kinds:
        label = "other (unattributed) convolutions" if k == "other" else f"{k} convolutions"
        lines.append(f"| {label} | " + " | ".join(conv(n, k) for n in names) + " |")
    rest = {n: g[n]["kernel_ms_per_step"] - sum(g[n]["conv_ms_per_step_by_kind"].values()) for n in names}
    for label, ops in (("layout: " + ", ".join(LAYOUT_OPS), LAYOUT_OPS), ("INT8 edges: " + ", ".join(QDQ_OPS), QDQ_OPS)):
        lines.append(f"| {label} | " + " | ".join(f"{ops_ms(n, ops):.0f}" for n in names) + " |")
        rest = {n: v - ops_ms(n, ops) for n, v in rest.items()}
    lines.append("| everything else (norms, MatMuls, Gemms, element-wise) | "
                 + " | ".join(f"{rest[n]:.0f}" for n in names) + " |")
    return "\n".join(lines)


def _machine_line(m: dict) -> str:
    return (f"{m['processor']}, {m['cores']} cores, {_isa(m)}, load average {m['load_average'][0]:.1f}, "
            f"onnxruntime {m['onnxruntime']}")


def graph_step(r: dict) -> str:
    lines = [f"One call of each network at {r['image_side']}², side by side in one process "
             f"(`benchmarks/graph_step.py`, {r['rounds']} interleaved rounds, torch {r['torch']} with "
             f"{r['torch_threads']} threads, ONNX Runtime threads not spinning; {_machine_line(r['machine'])}). "
             "The ratio is the per-round median of PyTorch's time over the contender's:", "",
             "| network | contender | median s | min–max s | vs PyTorch eager | GFLOP/s | rel-L2 vs PyTorch |",
             "|---|---|---|---|---|---|---|"]
    for g in r["networks"]:
        for name, row in g["rows"].items():
            gf = f"{row['gflop_per_s']:.0f}" if "gflop_per_s" in row else "–"
            lines.append(f"| {g['network']} | {name} | {row['median_s']:.2f} | {row['min_s']:.2f}–{row['max_s']:.2f} | "
                         f"{row['ratio']:.2f}x | {gf} | {row['rel_l2_vs_torch']:.1e} |")
    return "\n".join(lines)


def _pipeline_label(run: dict) -> str:
    """A pipeline configuration (``@DIR`` as the folder's name), with the VAE graphs its variant
    quantized (where any)."""
    config, _, folder = run["config"].partition("@")
    if folder:
        config += f" ({Path(folder).name})"
    quantized = [k.split("_")[1] for k, v in run.get("vae", {}).items() if v != "fp32"]
    return f"{config} + {' and '.join(quantized)} {run['vae'][f'vae_{quantized[0]}']}" if quantized else config


def _spread(run: dict, key: str) -> str:
    """`` (lo–hi)`` of a ratio over a run's rounds, `` (max N)`` of a peak; empty for one round."""
    values = [x[key] for x in run.get("rounds", [])]
    if len(values) < 2 or min(values) == max(values) or key == "peak_rss_mb" and round(max(values)) == round(run[key]):
        return ""  # one round, the baseline's own ratio, or the median round's peak is the highest
    return f" ({min(values):.2f}–{max(values):.2f})" if key == "speedup_vs_first" else f" (max {max(values):,.0f})"


def pipeline(r: dict, figure: bool = True) -> str:
    runs = r["runs"]
    first = runs[0]
    rounds = r.get("rounds", 1)
    how = (f"`benchmarks/pipeline.py --rounds {rounds}`: the configurations in turn, {rounds} times; a row is the "
           "configuration's median round, its ratio the median of the per-round ratios (of an even number, the "
           "lower middle one; their range in brackets), "
           "its peak RSS the median round's (the highest round's in brackets)" if rounds > 1 else
           "`benchmarks/pipeline.py`")
    lines = [f"One {first['image_px'][0]}×{first['image_px'][1]} inpainting, {first['model_steps']} UNet steps + 2 VAE "
             f"encodes + 1 decode, each configuration in its own process, one after the other "
             f"({how}; {_machine_line(r['machine'])}). Inpainting seconds leave out session "
             "creation (ONNX Runtime) and module building (PyTorch), shown as load:", "",
             f"| configuration | s per UNet step | encode s | decode s | inpainting s | vs {_pipeline_label(first)} | "
             "load s | peak RSS MB | peak in encode / denoise / decode MB |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        s = run["seconds"]
        lines.append(f"| {_pipeline_label(run)} | {run['unet_step_s']:.2f} | {s['encode']:.1f} | {s['decode']:.1f} | "
                     f"{run['compute_s']:.1f} | {run['speedup_vs_first']:.2f}x{_spread(run, 'speedup_vs_first')} | "
                     f"{run['load_s']:.1f} | {run['peak_rss_mb']:,.0f}{_spread(run, 'peak_rss_mb')} | "
                     + " / ".join(f"{run['phase_peak_rss_mb'].get(p, 0):,.0f}" for p in ("encode", "denoise", "decode"))
                     + " |")
    batches = [run for run in runs if "batch" in run]
    if batches:
        lines += ["", "`moebius-edge run` over a folder of native-size photos (one process per configuration, from "
                  "the command's start to its end: session creation and image files included):", "",
                  "| configuration | photos | images per minute | s per image | peak RSS MB |", "|---|---|---|---|---|"]
        lines += [f"| {_pipeline_label(run)} | {run['batch']['images']} | {run['batch']['images_per_min']:.2f} | "
                  f"{run['batch']['wall_s'] / run['batch']['images']:.1f} | {run['batch']['peak_rss_mb']:,.0f} |"
                  for run in batches]
    repeated = [run for run in runs if run.get("later_calls")]
    if repeated:
        lines += ["", f"Each process then inpainted the same photo again, {len(repeated[0]['later_calls'])} more "
                  f"time(s), without keeping its sessions (`--calls {r.get('calls')}`: a library caller's loop); "
                  "what the process keeps from one call to the next lies under the later calls' peaks:", "",
                  "| configuration | call | inpainting s | session creation s | peak RSS MB | "
                  "peak in encode / denoise / decode MB |",
                  "|---|---|---|---|---|---|"]
        for run in repeated:
            for i, call in enumerate([run, *run["later_calls"]], 1):
                load = call["load_s"] - call.get("open_models_s", 0.0)  # the first call's includes opening the folder
                lines.append(f"| {_pipeline_label(run)} | {i} | {call['compute_s']:.1f} | {load:.1f} | "
                             f"{call['peak_rss_mb']:,.0f} | "
                             + " / ".join(f"{call['phase_peak_rss_mb'].get(p, 0):,.0f}" for p in PHASES) + " |")
    if figure:  # drawn from benchmarks/results/pipeline.json only
        lines += ["", "![Seconds and peak RSS per phase and configuration](docs/figures/pipeline.png)"]
    return "\n".join(lines)


# Issue 12's targets for a 512² inpainting, checked against benchmarks/results/pipeline.json (whose first
# run is PyTorch eager): (what, configuration, measure, bound, where a miss is profiled). A measure is
# "vs torch" (at least the bound), "peak RSS MB" or "UNet session s" (at most the bound). Runs of the
# same configuration from another models folder (``int8@DIR``: an opt-in variant) are listed under it.
TARGETS = (
    ("whole inpainting, int8", "int8", "vs torch", 2.5, "`benchmarks/int8_profile.py`: the INT8 step"),
    ("whole inpainting, int8 (stretch)", "int8", "vs torch", 3.0, "`benchmarks/int8_profile.py`: the INT8 step"),
    ("whole inpainting, fp32", "fp32", "vs torch", 2.0, "`benchmarks/int8_profile.py`: the FP32 step"),
    ("peak RSS, fp32", "fp32", "peak RSS MB", 2000, "`benchmarks/graph_memory.py`"),
    ("peak RSS, int8", "int8", "peak RSS MB", 1200, "`benchmarks/graph_memory.py`: the FP32 decoder"),
    ("int8 UNet session start", "int8", "UNet session s", 3.0, "`benchmarks/pipeline.py`: load s"),
    ("peak RSS, low-memory mode with int8", "int8-low-memory", "peak RSS MB", 800,
     "`benchmarks/graph_memory.py --precision int8`: the decoder"),
)


def _measure(run: dict, measure: str) -> float:
    """A run's figure for a target: the ratio its row gives (the median over rounds), its UNet
    session's creation, or the highest peak RSS of its rounds."""
    if measure == "vs torch":
        return run["speedup_vs_first"]
    if measure == "UNet session s":
        return run["seconds"]["unet_load"]
    return max(x["peak_rss_mb"] for x in run.get("rounds", [run]))


def target_rows(r: dict) -> list:
    """One row per target and run of its configuration: (target, measure, bound, run label, value,
    met, run), with value and met None where the run has no such configuration (run None too), or,
    for a ratio, where its first configuration is not PyTorch."""
    rows = []
    for what, config, measure, bound, _ in TARGETS:
        runs = [run for run in r["runs"] if run["config"].partition("@")[0] == config]
        for run in runs or [None]:
            baseline_ok = measure != "vs torch" or r["runs"][0]["config"] == "torch"
            value = None if run is None or not baseline_ok else _measure(run, measure)
            met = None if value is None else (value >= bound if measure == "vs torch" else value <= bound)
            rows.append((what, measure, bound, _pipeline_label(run) if run else config, value, met, run))
    return rows


def targets(r: dict) -> str:
    baseline = _pipeline_label(r["runs"][0])
    rounds = r.get("rounds", 1)
    over = f"; a peak is the highest of the {rounds} rounds" if rounds > 1 else ""
    lines = [f"The performance targets against the pipeline table above (`benchmarks/pipeline.py`; the ratios are "
             f"against {baseline} in the same run{over}; a configuration with a folder in brackets is an opt-in "
             "variant). A missed target names the benchmark that profiles it:", "",
             "| target | bound | configuration | measured | verdict |", "|---|---|---|---|---|"]
    where = {what: w for what, *_, w in TARGETS}
    for what, measure, bound, label, value, met, run in target_rows(r):
        sign = "≥" if measure == "vs torch" else "≤"
        unit = {"vs torch": "x", "peak RSS MB": " MB", "UNet session s": " s"}[measure]
        fmt = {"vs torch": ".2f", "peak RSS MB": ",.0f", "UNet session s": ".1f"}[measure]
        shown = "not in this run" if value is None else f"{value:{fmt}}{unit}"
        if value is not None and measure == "vs torch":
            shown += _spread(run, "speedup_vs_first")  # the rounds' range: a median near its bound says so
        verdict = "not measured" if met is None else ("met" if met else f"missed; profile: {where[what]}")
        lines.append(f"| {what} | {sign} {bound:{fmt}}{unit} | {label} | {shown} | {verdict} |")
    return "\n".join(lines + _speed_gaps(r))


def _speed_gaps(r: dict) -> list:
    """For each missed speed target, what it asks of the run: the seconds the bound allows against
    the median rounds' seconds, and the UNet step it would take with the rest of the run as measured."""
    missed = [(what, bound, label, run) for what, measure, bound, label, value, met, run in target_rows(r)
              if measure == "vs torch" and met is False]
    if not missed:
        return []
    base = r["runs"][0]["compute_s"]
    lines = ["", f"What a missed speed target asks (from the median rounds: {_pipeline_label(r['runs'][0])} "
             f"{base:.1f} s per inpainting; \"rest\" is all but the denoising loop: preparing the crop, the encodes, "
             "the decode, pasting):", "",
             "| target | configuration | inpainting s: bound / measured | UNet steps s | rest s | "
             "s per UNet step: measured / needed with this rest |", "|---|---|---|---|---|---|"]
    for what, bound, label, run in missed:
        steps_s = run["model_steps"] * run["unet_step_s"]
        rest = run["compute_s"] - steps_s
        need = (base / bound - rest) / run["model_steps"]
        needed = (f"{need:.2f} ({100 * (1 - need / run['unet_step_s']):.0f} % less)" if need > 0 else
                  "none: the rest alone is over the bound")
        lines.append(f"| {what} | {label} | {base / bound:.1f} / {run['compute_s']:.1f} | {steps_s:.1f} | {rest:.1f} | "
                     f"{run['unet_step_s']:.2f} / {needed} |")
    return lines


def bench(r: dict) -> str:
    """The whole `make bench` run (``benchmarks/bench.py``): each step's wall time against the budget."""
    parts = ", ".join(f"`{x['step']}` {x['wall_s'] / 60:.1f}" for x in r["steps"])
    pipe = next(x["arguments"] for x in r["steps"] if x["step"] == "pipeline")
    pipe = " ".join(pipe[:pipe.index("--json")])
    verdict = "within it" if r["wall_s"] <= r["budget_s"] else "over it"
    return (f"`make bench` (`benchmarks/bench.py`) ran its steps in **{r['wall_s'] / 60:.1f} min** ({parts} min; "
            f"the pipeline step `{pipe}`), against the issue's budget of {r['budget_s'] / 60:.0f} min: {verdict} "
            f"({_machine_line(r['machine'])}).")


RENDERERS = {"thin_strokes": thin_strokes, "quantize_fp16": quantize_fp16, "quantize_int8": quantize_int8,
             "scale": scale, "bundle_rewrites": bundle_rewrites, "int8_profile": int8_profile,
             "graph_step": graph_step, "pipeline": pipeline, "bundle": bundle, "bundle_memory": bundle_memory,
             "bundle_parity": bundle_parity, "photo_size": photo_size,
             "export_full": export_full, "encode_batch": encode_batch, "vae_tiling": vae_tiling,
             "graph_memory": graph_memory, "targets": targets, "bench": bench,
             "mapped_weights": lambda r: pipeline(r, figure=False),
             "local_queries": lambda r: pipeline(r, figure=False), "graph_memory_unet_layout": graph_memory,
             "graph_memory_decoder_layout": graph_memory, "repeated_calls": lambda r: pipeline(r, figure=False)}
# Renderers whose JSON is another's (block name -> results file name).
SOURCES = {"targets": "pipeline", "mapped_weights": "pipeline_mapped_weights",
           "local_queries": "pipeline_local_queries",
           "repeated_calls": "pipeline_repeated_calls"}  # the rest: the block's own name
# The files that hold measured tables.
DOCUMENTS = (README, ROOT / "docs" / "mobile.md")
FIGURE = ROOT / "docs" / "figures" / "pipeline.png"
PHASES = ("encode", "denoise", "decode")


def pipeline_figure(r: dict, path: Path = FIGURE) -> None:
    """Seconds per phase and peak RSS per phase of each configuration of benchmarks/pipeline.py,
    side by side (matplotlib, the ``bench`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = r["runs"]
    names = [_pipeline_label(run) for run in runs]
    y = range(len(runs))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 0.6 * len(runs) + 1.6), sharey=True)
    left = [0.0] * len(runs)
    parts = [("load", [run["load_s"] for run in runs])]
    parts += [(p, [run["seconds"][p] for run in runs]) for p in PHASES]
    parts.append(("prepare + paste", [run["seconds"].get("prepare", 0) + run["seconds"].get("paste", 0)
                                      for run in runs]))
    for label, values in parts:
        ax_t.barh(y, values, left=left, label=label)
        left = [a + b for a, b in zip(left, values)]
    ax_t.set_yticks(list(y), names)
    ax_t.invert_yaxis()
    side = runs[0]["image_px"]
    ax_t.set_xlabel(f"seconds (one {side[0]}×{side[1]} inpainting)")
    ax_t.legend(fontsize=8, loc="lower right")
    width = 0.8 / len(PHASES)
    for i, p in enumerate(PHASES):
        ax_m.barh([k + (i - 1) * width for k in y], [run["phase_peak_rss_mb"].get(p, 0) for run in runs],
                  height=width, label=p)
    ax_m.set_xlabel("peak RSS in the phase (MB)")
    ax_m.legend(fontsize=8, loc="lower right")
    m = r["machine"]
    fig.suptitle(f"benchmarks/pipeline.py: {m['processor']}, {m['cores']} cores, onnxruntime {m['onnxruntime']}",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def render(text: str) -> str:
    for name, fn in RENDERERS.items():
        path = RESULTS / f"{SOURCES.get(name, name)}.json"
        if not path.is_file():
            continue
        block = fn(json.loads(path.read_text()))
        pattern = re.compile(rf"(<!-- bench:{name} -->\n)(?:.*?\n)?(<!-- /bench:{name} -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(2), text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that the documents are up to date")
    args = ap.parse_args(argv)
    stale = []
    for doc in DOCUMENTS:
        old = doc.read_text()
        new = render(old)
        if new == old:
            continue
        stale.append(doc.relative_to(ROOT))
        if not args.check:
            doc.write_text(new)
    if args.check:
        if stale:
            print(f"{', '.join(map(str, stale))} out of date with benchmarks/results: run benchmarks/report.py",
                  file=sys.stderr)
            return 1
        return 0
    print(f"tables rewritten in {', '.join(map(str, stale))}" if stale else "tables already up to date")
    source = RESULTS / "pipeline.json"
    if source.is_file():
        verdicts = json.loads(source.read_text())
        print("\n" + targets(verdicts) + "\n")  # the verdicts, at the end of `make bench`
        profile = RESULTS / "int8_profile.json"
        if _speed_gaps(verdicts) and profile.is_file():  # a missed speed target: where the step's time goes
            print(int8_profile(json.loads(profile.read_text())) + "\n")
        if (RESULTS / "bench.json").is_file():
            print(bench(json.loads((RESULTS / "bench.json").read_text())) + "\n")
        try:
            pipeline_figure(json.loads(source.read_text()))
        except ImportError:
            print("no figure: matplotlib is missing (pip install -e '.[bench]')", file=sys.stderr)
            return 2
        print(f"figure written: {FIGURE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
