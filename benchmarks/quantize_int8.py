"""INT8: sensitivity per group, the recipe trade-off, and the shipped recipe on the full-size model.

    .venv/bin/python benchmarks/quantize_int8.py [--models DIR] [--skip-standin] [--skip-full] [--json FILE]
        [--skip-candidates] [--skip-sensitivity] [--candidates NAME ...] [--speed-only] [--keep DIR]

On the trained stand-in (tests/data/standin_weights.safetensors, exported into a temporary folder;
this part needs torch), with the shipped recipe's photos and masks:

* **sensitivity**: for each group of quantizable nodes (``int8.GROUPS``), the UNet with *only*
  that group quantized, and with everything *but* that group (and the λ MatMuls) quantized: ε
  PSNR and cosine against FP32 on every held-out trajectory input; plus the per-tensor SQNR of
  the all-quantized graph from ``onnxruntime.quantization.qdq_loss_debug`` (the worst tensors);
* **calibration**: MinMax, Percentile and Entropy, U8 and S8 activations, on the shipped exclusions;
* **trade-off**: each candidate recipe (``CANDIDATES``) through the real gate (``job.stage_variant``:
  end-to-end hole PSNR on held-out pairs), its UNet size and its CPU step time against FP32 in
  the same run.

On a full-size random-init folder (``make export RANDOM_INIT=1``), with fewer pairs (random
weights make the figures advisory anyway): the same candidates' size and ε figures, and the
per-group sensitivity (only-this-group); then the **speed pass**: FP32 and every candidate UNet
(kept in DIR/.bench-int8-candidates) in one interleaved loop, so every ratio is measured against
the same FP32 runs under the same load (``--speed-only`` repeats just this pass). The shipped recipe's own run is
``make quantize MODELS=DIR PRECISION=int8`` in a process of its own (so that its peak RSS is its
own): its ``DIR/int8/report.json`` (time, peak RSS, gate figures) is summarised here when present.

Writes benchmarks/results/quantize_int8.json; prints the trade-off table last.
"""
import argparse
import json
import logging
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.inputs import unet_feed  # noqa: E402
from benchmarks.machine_info import describe  # noqa: E402
from moebius_edge import contract, models  # noqa: E402
from moebius_edge.quantize import evaluate, gate, int8, job  # noqa: E402
from moebius_edge.quantize import graph as G  # noqa: E402
from moebius_edge.quantize import recipe as recipes  # noqa: E402

PHOTOS = ROOT / "tests" / "data" / "photos"
LM = int8.LAMBDA_MATMUL
# (name, what, excluded groups, activation type). From everything quantized to the most careful.
CANDIDATES = (
    ("all", "every Conv, MatMul and Gemm", (), "uint8"),
    ("no-lambda-matmul", "λ MatMuls FP32", (LM,), "uint8"),
    ("no-lambda-matmul-s8", "λ MatMuls FP32, S8 activations", (LM,), "int8"),
    ("edges-fp32", "conv_in, conv_out, time MLP FP32", ("conv_in", "conv_out", "time_mlp"), "uint8"),
    # The shipped recipe up to 2026-12-06: the Mix-FFN's gate (int8.GATE_OPS) FP32 as well.
    ("edges-gate-fp32", "conv_in, conv_out, time MLP, Mix-FFN gate FP32", ("conv_in", "conv_out", "time_mlp",
                                                                           "ffn_gate"), "uint8"),
    ("edges-lambda-fp32", "λ MatMuls, conv_in, conv_out, time MLP FP32", (LM, "conv_in", "conv_out", "time_mlp"),
     "uint8"),
    # ONNX Runtime's x86 QLinearConv gains little on the 15×15 position conv (one input channel: an
    # im2col GEMM of depth 225; benchmarks/int8_profile.py: 1.3x against 3.6x for the 1×1 convs).
    ("edges-pos-fp32", "conv_in, conv_out, time MLP, position conv FP32", ("conv_in", "conv_out", "time_mlp",
                                                                            "pos_conv"), "uint8"),
    ("lambda-fp32", "λ MatMuls, λ projections, position conv FP32", (LM, "lambda_proj", "pos_conv"), "uint8"),
    ("convs-only", "only the DW.Res, Mix-FFN, sampler and stage convs", (LM, "lambda_proj", "pos_conv", "time_mlp",
                                                                         "time_proj", "conv_in", "conv_out",
                                                                         "ffn_gate"), "uint8"),
)


def _file_bytes(path: Path) -> int:
    """A graph's size on disk, with its external-data sidecar (the UNet's weights) if it has one."""
    sidecar = models.external_data_path(path)
    return path.stat().st_size + (sidecar.stat().st_size if sidecar.is_file() else 0)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Context:
    """One model folder's FP32 runs, pre-processed UNet and calibration ranges, shared by every
    candidate (they differ only in what is excluded)."""

    def __init__(self, folder: Path, rcp: recipes.Recipe, threads: int, work: Path, eval_inputs: int = 0):
        self.fp32 = models.open_models(folder, "fp32")
        self.rcp, self.threads, self.work = rcp, threads, work
        self.data = job.fp32_runs(self.fp32, rcp, PHOTOS, threads)
        self.pre = int8.pre_process(self.fp32.graph_path(contract.UNET), work / "pre.onnx")
        import onnx

        proto = onnx.load(str(self.pre))
        self.cal = job._spread(self.data.calibration.feeds[contract.UNET.key], rcp.calibration_inputs)
        t = time.perf_counter()
        self.ranges = int8.measure_ranges(proto, self.cal, threads)
        self.range_s = time.perf_counter() - t
        self.groups = int8.groups(proto)
        del proto
        held = self.data.held_out
        idx = job._spread(list(range(len(held.feeds[contract.UNET.key]))), eval_inputs)
        self.held = type(held)(pairs=held.pairs, infos=held.infos,
                               feeds={contract.UNET.key: [held.feeds[contract.UNET.key][i] for i in idx]},
                               outputs={contract.UNET.key: [held.outputs[contract.UNET.key][i] for i in idx]},
                               owner={contract.UNET.key: [held.owner[contract.UNET.key][i] for i in idx]})

    def quantize(self, exclude: list, activation_type: str = "uint8", method: str = "minmax"):
        return int8.make_int8(self.pre, self.cal, exclude=exclude, activation_type=activation_type, method=method,
                              ranges=self.ranges if method == "minmax" else None, pre_processed=True,
                              threads=self.threads, work=self.work)

    def eps(self, proto) -> dict:
        """ε figures of a candidate UNet on the held-out trajectory inputs."""
        u = evaluate.unet_steps(self.held, G.GraphRunner(proto, self.threads))
        return {k: u[k] for k in ("psnr_min_db", "psnr_mean_db", "cosine_min", "cosine_mean", "finite", "inputs")}


def exclude_groups(names) -> list:
    return [{"group": g, "reason": "benchmark candidate"} for g in names]


def sensitivity(ctx: Context, leave_one_out: bool) -> dict:
    out = {}
    for g in int8.GROUP_NAMES:
        if g not in ctx.groups.values():
            continue
        only = ctx.quantize(exclude_groups([x for x in int8.GROUP_NAMES if x != g]))
        row = {"nodes": sum(v == g for v in ctx.groups.values()), "only_this": ctx.eps(only.proto)}
        if leave_one_out and g != LM:
            row["all_but_this"] = ctx.eps(ctx.quantize(exclude_groups([LM, g])).proto)
        out[g] = row
        logging.info("sensitivity %s: only %.2f dB%s", g, row["only_this"]["psnr_min_db"],
                     f", all but {row['all_but_this']['psnr_min_db']:.2f} dB" if "all_but_this" in row else "")
    return out


def qdq_debug(ctx: Context, worst: int = 15) -> list:
    """Per-tensor SQNR of the all-quantized UNet (``qdq_loss_debug``): the ``worst`` activations."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    res = ctx.quantize([])
    qpath, fpath = ctx.work / "dbg_q.onnx", ctx.work / "dbg_f.onnx"
    onnx.save(res.proto, str(qpath))
    feeds = ctx.held.feeds[contract.UNET.key][:4]  # collect_activations iterates its reader
    dbg.modify_model_output_intermediate_tensors(str(qpath), str(ctx.work / "aug_q.onnx"))
    dbg.modify_model_output_intermediate_tensors(str(ctx.pre), str(fpath))
    qa = dbg.collect_activations(str(ctx.work / "aug_q.onnx"), list(feeds))
    fa = dbg.collect_activations(str(fpath), list(feeds))
    err = dbg.compute_activation_error(dbg.create_activation_matching(qa, fa))
    rows = [{"tensor": k, "local_sqnr_db": float(v["qdq_err"]), "vs_fp32_sqnr_db": float(v.get("xmodel_err", np.nan))}
            for k, v in err.items()]
    rows.sort(key=lambda r: r["local_sqnr_db"])
    return rows[:worst]


def _selected(names) -> list:
    return [c for c in CANDIDATES if not names or c[0] in names]


def _merge(old: list, new: list) -> list:
    """Rows of ``new`` replace those of ``old`` with the same name; CANDIDATES order."""
    rows = {r["name"]: r for r in old}
    rows.update({r["name"]: r for r in new})
    return [rows[c[0]] for c in CANDIDATES if c[0] in rows]


def standin_tradeoff(folder: Path, threads: int, reps: int, names=()) -> list:
    """Each candidate through the real gate on the stand-in (``job.stage_variant``)."""
    fp32 = models.open_models(folder, "fp32")
    base = recipes.Recipe(precision="int8")
    data = job.fp32_runs(fp32, base, PHOTOS, threads)
    limits = gate.thresholds("int8")
    rows = []
    for name, what, groups, act in _selected(names):
        rcp = base.replace(exclude=tuple(exclude_groups(groups)), activation_type=act, latency_reps=reps)
        staging = models.staging_folder(fp32.root, "bench-int8")
        try:
            s = job.stage_variant(fp32, "int8", rcp, limits, data, staging, threads=threads)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        f, v = s["figures"], s["verdict"]
        rows.append({"name": name, "what": what, "exclude": list(groups), "activation_type": act,
                     "gate": v[contract.GATE_STATUS], "hole_psnr_min_db": f["end_to_end"]["hole_psnr_min_db"],
                     "eps_cosine_mean": f["unet"]["cosine_mean"], "eps_psnr_min_db": f["unet"]["psnr_min_db"],
                     "unet_ratio": f["sizes"][contract.UNET.key]["ratio"], "latency": f["latency"]})
        logging.info("stand-in %s: %s, hole %.2f dB, cosine %.5f, step x%.2f", name, rows[-1]["gate"],
                     rows[-1]["hole_psnr_min_db"], rows[-1]["eps_cosine_mean"], f["latency"]["ratio"])
    return rows


def calibration_methods(ctx: Context) -> list:
    rows = []
    shipped = list(recipes.INT8_EXCLUDE)
    for method in int8.CALIBRATION_METHODS:
        for act in int8.ACTIVATION_TYPES:
            r = ctx.quantize(shipped, act, method)
            rows.append({"method": method, "activation_type": act, **ctx.eps(r.proto)})
            logging.info("calibration %s/%s: %.2f dB, cosine %.5f", method, act, rows[-1]["psnr_min_db"],
                         rows[-1]["cosine_mean"])
    return rows


def full_tradeoff(ctx: Context, keep: Path, names=()) -> list:
    """Each candidate's size and ε figures; its UNet is kept in ``keep`` for ``speed``."""
    rows = []
    keep.mkdir(exist_ok=True)
    for name, what, groups, act in _selected(names):
        t = time.perf_counter()
        r = ctx.quantize(exclude_groups(groups), act)
        q_s = time.perf_counter() - t
        G.save(r.proto, keep / f"{name}.onnx")
        rows.append({"name": name, "what": what, "exclude": list(groups), "activation_type": act,
                     "models": str(ctx.fp32.root),
                     "unet_ratio": _file_bytes(keep / f"{name}.onnx") / _file_bytes(ctx.fp32.graph_path(contract.UNET)),
                     "eps": ctx.eps(r.proto), "quantize_s": q_s})
        logging.info("full %s: size %.1f %%, eps cosine %.4f", name, 100 * rows[-1]["unet_ratio"],
                     rows[-1]["eps"]["cosine_mean"])
        del r
    return rows


def speed(folder: Path, keep: Path, names, reps: int, threads: int) -> dict:
    """CPU step time of FP32 and of every kept candidate UNet in one interleaved loop (each round
    runs every session once, the order rotated per round, after one warm-up each), so that all of
    them see the same machine load; seeded inputs of the model's shapes. Returns {name: latency}."""
    import statistics

    import onnx

    from moebius_edge.session import GraphSession, SessionConfig

    fp32 = models.open_models(folder, "fp32")
    feed = unet_feed(fp32.latent_size)
    runners = {"fp32": GraphSession(fp32, contract.UNET, SessionConfig(provider="cpu", threads=threads))}
    for name in names:
        runners[name] = G.GraphRunner(onnx.load(str(keep / f"{name}.onnx")), threads)
    times = {k: [] for k in runners}
    order = list(runners)
    for r in runners.values():
        r.run(**feed)
    for i in range(reps):
        for k in order[i % len(order):] + order[:i % len(order)]:
            t = time.perf_counter()
            runners[k].run(**feed)
            times[k].append(time.perf_counter() - t)
        logging.info("speed round %d/%d: %s", i + 1, reps, ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    ref = statistics.median(times["fp32"])
    # The ratio is the median over rounds of (candidate / FP32 in the same round): the load of the
    # machine drifts between rounds (±25 % seen here) more than within one.
    return {k: {"fp32_median_s": ref, "variant_median_s": statistics.median(v),
                "ratio": statistics.median(a / b for a, b in zip(v, times["fp32"])),
                "ratio_of_medians": statistics.median(v) / ref,
                "fp32_s": times["fp32"], "variant_s": v, "reps": reps, "interleaved_with": order}
            for k, v in times.items() if k != "fp32"}


def export_standin(out: Path) -> None:
    from tests.goldens import export_standin as export

    export(out)


def save(path: Path, results: dict, key: str) -> None:
    """Write ``results[key]`` into the JSON at ``path``, keeping the other sections as they are
    on disk now (the stand-in and full-size parts may run as separate processes)."""
    on_disk = json.loads(path.read_text()) if path.is_file() else {}
    on_disk[key] = results[key]
    on_disk["machine"] = results["machine"]
    path.write_text(json.dumps(on_disk, indent=1) + "\n")


# Step times within this fraction of the fastest candidate's count as a tie (the machine's run-to-
# run spread); the tie with the best stand-in quality (mean ε cosine) is picked.
SPEED_TIE = 0.03


def choose(results: dict) -> None:
    """Record the selection rule's pick (the fastest candidate at full size among those that pass
    the gate on the stand-in, ties within ``SPEED_TIE`` going to the better stand-in ε cosine) and
    which candidate the shipped recipe is; they should agree."""
    st = {c["name"]: c for c in results.get("standin", {}).get("tradeoff", [])}
    full = {c["name"]: c for c in results.get("full_random_init", {}).get("tradeoff", [])}
    passing = [n for n, c in st.items() if c["gate"] != gate.GATE_FAILED]

    results["selection_rule"] = (f"fastest full-size CPU step among candidates passing the stand-in gate; within "
                                 f"{100 * SPEED_TIE:g} % of the fastest, the best stand-in mean ε cosine")
    shipped = recipes.Recipe(precision="int8")
    groups = sorted(e["group"] for e in shipped.exclude if "group" in e)
    results["shipped_candidate"] = next((n for n, _, g, act in CANDIDATES
                                         if sorted(g) == groups and act == shipped.activation_type), None)
    if not all("latency" in full.get(n, {}) for n in passing):  # the stand-in's step times are not the model's
        results["fastest_passing"] = None
        logging.warning("full-size step times missing for %s: no speed ranking",
                        ", ".join(n for n in passing if n not in full))
        return

    def step_ratio(n):
        return full[n]["latency"]["ratio"]

    best = min((step_ratio(n) for n in passing), default=None)
    ties = [n for n in passing if step_ratio(n) <= best * (1 + SPEED_TIE)]
    results["fastest_passing"] = max(ties, key=lambda n: st[n]["eps_cosine_mean"]) if ties else None
    if results["shipped_candidate"] != results["fastest_passing"]:
        logging.warning("the shipped recipe (%s) is not the fastest candidate passing the stand-in gate (%s)",
                        results["shipped_candidate"], results["fastest_passing"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="full-size random-init models folder (make export RANDOM_INIT=1)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/quantize_int8.json"))
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--skip-standin", action="store_true")
    ap.add_argument("--skip-candidates", action="store_true",
                    help="full size: only summarise DIR/int8/report.json (keep the candidates already in the JSON)")
    ap.add_argument("--skip-sensitivity", action="store_true", help="full size: candidates only")
    ap.add_argument("--sensitivity-only", action="store_true",
                    help="full size: only the per-group sensitivity (keep the candidates already in the JSON)")
    ap.add_argument("--candidates", nargs="*", default=(), metavar="NAME",
                    help="only these candidate recipes (their rows replace those in the JSON; nothing else runs)")
    ap.add_argument("--speed-only", action="store_true",
                    help="full size: only the interleaved step times of the candidate UNets kept by an earlier run")
    ap.add_argument("--keep", metavar="DIR", help="full size: where the candidate UNets are kept for the speed "
                    "pass (default DIR/.bench-int8-candidates; about 230 MB each)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reps", type=int, default=5, help="timed UNet steps per candidate (and as many FP32)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # a script
    for name in ("moebius_edge.pipeline", "moebius_edge.session"):
        logging.getLogger(name).setLevel(logging.WARNING)
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["machine"] = describe()
    if not args.skip_standin:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            export_standin(tmp / "standin")
            ctx = Context(tmp / "standin", recipes.Recipe(precision="int8"), args.threads, tmp)
            st = results.setdefault("standin", {})
            parts = (("qdq_loss_debug_worst", lambda: qdq_debug(ctx)),
                     ("sensitivity", lambda: sensitivity(ctx, leave_one_out=True)),
                     ("calibration", lambda: calibration_methods(ctx)),
                     ("tradeoff", lambda: _merge(st.get("tradeoff", []) if args.candidates else [],
                                                 standin_tradeoff(tmp / "standin", args.threads, args.reps,
                                                                  args.candidates))))
            for part, fn in parts:
                if args.candidates and part != "tradeoff":
                    continue
                st[part] = fn()
                save(path, results, "standin")  # each part as it comes
    if not args.skip_full:
        if not args.models:
            raise SystemExit("give --models DIR (a full-size random-init export) or --skip-full")
        folder = Path(args.models)
        keep = Path(args.keep) if args.keep else folder / ".bench-int8-candidates"
        full = results.setdefault("full_random_init", {})
        if not (args.skip_candidates or args.speed_only):
            # One calibration and one held-out pair, 8 calibration inputs: at full size this part
            # measures size and speed (random weights make its ε figures advisory, and calibration
            # data changes no timing); the shipped recipe's own run (DIR/int8/report.json) uses the
            # shipped data.
            rcp = recipes.Recipe(precision="int8", calibration_photos=recipes.CALIBRATION_PHOTOS[:1],
                                 held_out_photos=recipes.HELD_OUT_PHOTOS[:1], calibration_masks=1, held_out_masks=1,
                                 calibration_inputs=8)
            with tempfile.TemporaryDirectory(prefix=".bench-int8-", dir=folder) as tmp:
                ctx = Context(folder, rcp, args.threads, Path(tmp), eval_inputs=4)
                if not args.sensitivity_only:
                    rows = full_tradeoff(ctx, keep, args.candidates)
                    full.update(range_pass_s=ctx.range_s,
                                tradeoff=_merge(full.get("tradeoff", []) if args.candidates else [], rows))
                    save(path, results, "full_random_init")
                if not (args.skip_sensitivity or args.candidates):
                    full["sensitivity"] = sensitivity(ctx, leave_one_out=False)
                full["sensitivity_peak_rss_mb" if args.sensitivity_only else "peak_rss_mb"] = _peak_mb()
                save(path, results, "full_random_init")
                del ctx
        if not (args.skip_candidates or args.sensitivity_only) and full.get("tradeoff"):
            G.release_memory()
            names = [r["name"] for r in full["tradeoff"] if (keep / f"{r['name']}.onnx").is_file()]
            lat = speed(folder, keep, names, args.reps, args.threads)
            for r in full["tradeoff"]:
                if r["name"] in lat:
                    r["latency"] = lat[r["name"]]
            save(path, results, "full_random_init")
        report = folder / contract.precision_subdir("int8") / contract.QUANTIZE_REPORT_FILE
        if report.is_file():
            rep = json.loads(report.read_text())
            # what the folder's run changed from the shipped recipe (e.g. fewer masks, to save time)
            shipped_fields = recipes.Recipe(precision="int8").to_json()
            changes = {k: v for k, v in rep["recipe"].items() if shipped_fields.get(k) != v}
            full["shipped"] = {
                "command": f"make quantize MODELS={folder} PRECISION=int8"
                           + (f" RECIPE={folder / contract.precision_subdir('int8') / contract.QUANTIZE_RECIPE_FILE}" if changes else ""),
                "gate": rep["gate"][contract.GATE_STATUS],
                "checks": {c["name"]: c["value"] for c in rep["gate"]["checks"]},
                "recipe_changes": changes,
                "unet_ratio": rep["sizes"][contract.UNET.key]["ratio"], "latency": rep["latency"],
                "seconds": rep["seconds"], "peak_rss_mb": rep["peak_rss_mb"], "recipe": rep["recipe"],
                "variant_peak_rss_mb": rep.get("variant_peak_rss_mb"),
                "fp32_runs_peak_rss_mb": rep.get("fp32_runs_peak_rss_mb"),
                "precisions_in_run": rep.get("precisions_in_run", ["int8"]),
                "unet": {k: rep["unet"][k] for k in ("psnr_min_db", "psnr_mean_db", "cosine_mean", "inputs")},
                "onnxruntime": rep["onnxruntime"]}
        save(path, results, "full_random_init")
    results = {**json.loads(path.read_text()), "machine": results["machine"]}  # both parts, as on disk
    choose(results)
    path.write_text(json.dumps(results, indent=1) + "\n")
    from benchmarks.report import quantize_int8 as render

    print(render(results))


if __name__ == "__main__":
    main()
