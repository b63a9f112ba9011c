"""FP16 quantize, measured: the full-size random-init folder and the trained stand-in.

    .venv/bin/python benchmarks/quantize_fp16.py --models DIR [--json FILE] [--skip-full] [--skip-standin] [--from-report]

DIR is a full-size `moebius-edge export --random-init` folder (`make export RANDOM_INIT=1`). Each
quantize is what `moebius-edge quantize --models DIR` runs (the shipped recipe, the photos of
tests/data/photos), timed, with the process's peak RSS (the stand-in runs first, so the full-size
figure is the full-size run's); the figures come from the report it writes. The stand-in (tests/data/standin_weights.safetensors, the tiny preset trained briefly
as a denoiser) is exported into a temporary folder first (this part needs torch). Writes
benchmarks/results/quantize_fp16.json and prints the tables of the README.
"""
import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

from moebius_edge import contract

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "tests" / "data" / "photos"


def quantize(models: Path) -> dict:
    """`moebius-edge quantize --models DIR` (the shipped recipe), in this process: wall time, peak
    RSS so far, report. In-process rather than a child `moebius_edge.cli`, whose command line a
    colleague's `pkill -f` on a shared machine may match (a 2-hour run was lost that way)."""
    from moebius_edge.quantize import job

    t = time.perf_counter()
    result = job.quantize_models(models, "fp16", photos_dir=PHOTOS)[0]
    return {"wall_s": time.perf_counter() - t,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "report": result["report"]}


def summary(run: dict) -> dict:
    r = run["report"]
    keep = {}
    for key, d in r["conversion"].items():
        keep[key] = {"converted": d.get("converted"), "why": d.get("why"), "keep_fp32": d.get("keep_fp32", {}),
                     "activation_abs_max": d.get("activation_abs_max"),
                     "error_pass": [{"round": x["round"], "output_rel_error": x["output_rel_error"],
                                     "gain_max": x["summary"].get("gain_max"), "gain_p99": x["summary"].get("gain_p99"),
                                     "newly_kept": len(x["new"])} for x in d.get("error_pass", [])]}
    return {
        "source": r["source"], "native_size": r["native_size"], "onnxruntime": r["onnxruntime"], "fidelity": r["fidelity"],
        "gate": {k: r["gate"][k] for k in (contract.GATE_STATUS, "enforced", "checks_passed", "thresholds")},
        "checks": {c["name"]: c["value"] for c in r["gate"]["checks"]},
        "sizes": r["sizes"], "unet_ratio": r["sizes"][contract.UNET.key]["ratio"],
        "unet_steps": {k: r["unet"][k] for k in ("psnr_min_db", "psnr_mean_db", "cosine_min", "cosine_mean", "inputs")},
        "end_to_end": {k: r["end_to_end"][k] for k in ("hole_psnr_min_db", "hole_psnr_mean_db", "crop_psnr_min_db",
                                                       "crop_ssim_min", "outside_changed_px", "decoder_fallbacks")},
        "vae": r["vae"], "keep": keep,
        "latency": {k: r["latency"][k] for k in ("fp32_median_s", "variant_median_s", "ratio", "reps")},
        "seconds": r["seconds"], "wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"],
        "pairs": {"calibration": r["data"]["calibration"]["pairs"], "held_out": r["data"]["held_out"]["pairs"]},
    }


def export_standin(out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.goldens import export_standin as export

    export(out)


def _table(name: str, s: dict) -> None:
    u, e = s["unet_steps"], s["end_to_end"]
    status = s["gate"][contract.GATE_STATUS] + ("" if s["gate"]["enforced"] else " (advisory)")
    print(f"| {name} | {status} | {e['hole_psnr_min_db']:.2f} | {e['crop_ssim_min']:.4f} | {u['psnr_min_db']:.2f} | "
          f"{u['cosine_mean']:.6f} | {100 * s['unet_ratio']:.1f} % | "
          f"{s['latency']['fp32_median_s']:.3f} / {s['latency']['variant_median_s']:.3f} | "
          f"{s['wall_s']:.0f} s, {s['peak_rss_mb']:,.0f} MB |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="full-size random-init models folder (make export RANDOM_INIT=1)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/quantize_fp16.json"))
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--skip-standin", action="store_true")
    ap.add_argument("--from-report", action="store_true",
                    help="full size: summarise DIR/fp16/report.json written by `make quantize MODELS=DIR` (with "
                         "--precision all the FP32 runs are shared with int8, and time and peak RSS are the run's)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # a script
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() else {}
    if not args.skip_standin:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "standin"
            export_standin(folder)
            results["standin"] = summary(quantize(folder))
    if not args.skip_full:
        if not args.models:
            raise SystemExit("give --models DIR (a full-size random-init export) or --skip-full")
        if args.from_report:
            rep = json.loads((Path(args.models) / contract.precision_subdir("fp16") /
                              contract.QUANTIZE_REPORT_FILE).read_text())
            run = {"wall_s": rep["seconds"]["total"], "peak_rss_mb": rep["peak_rss_mb"], "report": rep}
            results["full_random_init"] = {**summary(run), "command": f"make quantize MODELS={args.models}",
                                           "precisions_in_run": rep.get("precisions_in_run"),
                                           "variant_peak_rss_mb": rep.get("variant_peak_rss_mb"),
                                           "fp32_runs_peak_rss_mb": rep.get("fp32_runs_peak_rss_mb")}
        else:
            results["full_random_init"] = summary(quantize(Path(args.models)))
    path.write_text(json.dumps(results, indent=1) + "\n")
    print("| model | gate | hole PSNR min dB | crop SSIM min | UNet ε PSNR min dB | mean step cosine | FP16 UNet / FP32 "
          "| UNet step s (FP32 / FP16, CPU) | quantize time, peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, key in (("trained stand-in (tiny, 128 px)", "standin"), ("random-init full size (512 px)", "full_random_init")):
        if key in results:
            _table(name, results[key])
    for key, s in results.items():
        print(f"\n{key}: keep-lists")
        for graph, k in s["keep"].items():
            print(f"  {graph}: {'fp16' if k['converted'] else 'fp32'}; {k['why'] or ''}")
            for node, e in k["keep_fp32"].items():
                print(f"    {node} ({e['op']}): {e['reason']} {json.dumps({a: b for a, b in e.items() if a not in ('op', 'reason')})}")


if __name__ == "__main__":
    main()
