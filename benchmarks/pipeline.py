"""Time and peak memory of one 512×512 inpainting, per precision and runtime configuration.

Each configuration runs in its own child process, so every peak RSS belongs to that run alone. A
configuration is ``PRECISION[-MODE]`` or ``torch``:

* ``fp32``, ``fp16``, ``int8``  the NumPy runtime on ONNX Runtime (no torch) with that models
                                folder: sessions created lazily and released after each phase
                                (what `moebius-edge run` does);
* ``…-low-memory``              the same in the runtime's low-memory mode (``--low-memory``: no arena
                                for the VAE graphs, large blocks mapped on their own);
* ``…-keep``                    all three sessions kept alive (``Inpainter(keep_sessions=True)``):
                                what the lazy release saves;
* ``torch``                     the same pipeline with the PyTorch modules in eager mode
                                (``benchmarks/torch_pipeline.py``): the official-equivalent baseline;
* ``…@DIR``                     that precision from the models folder DIR instead (e.g. an int8
                                variant quantized with another recipe); each run records which VAE
                                graphs its variant quantized.

    .venv/bin/python benchmarks/pipeline.py [--models models] [--configs torch,fp32,int8]
                                            [--steps 20] [--threads 0] [--batch N] [--json FILE]

``--calls N`` has each process inpaint N times in a row without keeping sessions (a library caller's
loop): a row stays the first call's, and the JSON adds each later call's time and peaks
(``later_calls``): whatever the process keeps from one call to the next shows in their peaks.

``--batch N`` also times, per ONNX Runtime configuration and in a process of its own, `moebius-edge
run` over a folder of N native-size photos (the centres of tests/data/photos, one hole each): images
per minute from the command's start to its end, session creation and image files included, with
its peak RSS (batch mode keeps its sessions from photo to photo unless ``low-memory``).

Without a models folder it first exports the full-size random-init model to a temporary folder
(needs the export extra, ~7 minutes on 2 cores). Random weights time and size exactly like the
official ones. The photo is the centre 512×512 of tests/data/demo_photo.jpg with its mask. The
ratios are against the first configuration, on the inpainting's time without session creation
(or, for PyTorch, module building: loading is reported apart), from runs in sequence, each minutes
long and in its own process. ``--rounds N`` runs the whole sequence N times: a row is then the
configuration's median round (by inpainting time), its ratio the median of the per-round ratios
(each against the first configuration's run of the same round), and the JSON keeps every round's
time, ratio and peak RSS (``rounds``; the targets' table checks the highest peak). The JSON records
the machine and its load.

benchmarks/results/runtime.json is this measurement by the script's first version (configurations
default, low-memory and keep = fp32, fp32-low-memory, fp32-keep), on the AVX-512 machine of the
issues; docs/scale.md and the Ray actor's memory request cite it.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moebius_edge import contract
from moebius_edge.models import open_models, total_bytes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script: benchmarks.* from the checkout

from benchmarks.machine_info import describe  # noqa: E402
TORCH = "torch"
LOAD_PHASES = ("encoder_load", "unet_load", "decoder_load")  # RunInfo.seconds: session creation
MODES = ("low-memory", "keep")
DEFAULT_CONFIGS = ("fp32", "fp32-low-memory")


def parse_config(config: str, models: str = "") -> tuple:
    """``PRECISION[-MODE][@DIR]`` → (precision, mode or "", models folder: DIR or ``models``);
    ``torch`` → ("torch", "", models)."""
    config, _, folder = config.partition("@")
    if config == TORCH and not folder:
        return TORCH, "", models
    precision, _, mode = config.partition("-")
    if precision not in contract.PRECISIONS or mode not in ("", *MODES):
        raise ValueError(f"unknown configuration {config!r}: use torch or PRECISION[-MODE][@DIR] with PRECISION in "
                         f"{', '.join(contract.PRECISIONS)} and MODE in {', '.join(MODES)}")
    return precision, mode, folder or models


def vae_precisions(models: str, precision: str) -> dict:
    """{VAE graph key: the precision it runs in} for a variant (a VAE graph the variant references
    is the FP32 file)."""
    fp32, variant = open_models(models, "fp32"), open_models(models, precision)
    return {s.key: "fp32" if variant.graph_path(s).samefile(fp32.graph_path(s)) else precision
            for s in (contract.VAE_ENCODER, contract.VAE_DECODER)}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _watch_phases(inp) -> dict:
    """{phase: peak RSS MB within it} filled as ``inp`` runs its encode, denoise and decode phases
    (Linux: VmHWM reset per phase; empty elsewhere)."""
    from moebius_edge.quantize.job import phase_peak_rss_mb, reset_peak_rss

    peaks = {}
    for phase in ("encode", "denoise", "decode"):
        method = getattr(inp, f"_{phase}")

        def watched(*args, _method=method, _phase=phase, **kwargs):
            reset_peak_rss()
            try:
                return _method(*args, **kwargs)
            finally:
                if (mb := phase_peak_rss_mb()) is not None:
                    peaks[_phase] = round(mb, 1)
        setattr(inp, f"_{phase}", watched)
    return peaks


def _call(seconds: dict, phase_peaks: dict) -> dict:
    """One inpainting's figures: its time without creating sessions (ORT) or building modules
    (PyTorch), what the configurations are compared on; that creation apart; its peaks."""
    load = sum(seconds[k] for k in LOAD_PHASES)
    # Resetting VmHWM per phase (clear_refs) resets getrusage's peak too: the call's peak is the
    # largest of the phases' and what getrusage saw since the last reset.
    return {"compute_s": round(seconds["total"] - load, 3), "load_s": round(load, 3),
            "phase_peak_rss_mb": dict(phase_peaks), "peak_rss_mb": round(max(_rss_mb(), *phase_peaks.values()), 1)}


def worker(models: str, config: str, steps: int, threads: int, calls: int = 1) -> dict:
    """One run in this process (and ``calls - 1`` more of the same inpainting after it, as
    ``later_calls``); returns timings and peak RSS."""
    import numpy as np
    from PIL import Image

    from moebius_edge.pipeline import Inpainter

    base_mb = _rss_mb()
    photo = np.asarray(Image.open(ROOT / "tests/data/demo_photo.jpg").convert("RGB"))
    mask = np.asarray(Image.open(ROOT / "tests/data/demo_mask.png").convert("L"))
    precision, mode, models = parse_config(config, models)
    if precision == TORCH:
        from benchmarks.torch_pipeline import torch_inpainter

        inp, open_s = torch_inpainter(models, threads)
    else:
        t = time.perf_counter()
        inp = Inpainter.from_models(models, precision, providers="cpu", threads=threads,
                                    low_memory=mode == "low-memory", keep_sessions=mode == "keep")
        open_s = time.perf_counter() - t
    phase_peaks = _watch_phases(inp)
    n = inp.image_size
    # A native-size window around the hole: processed whole, exactly the official pipeline.
    h, w = photo.shape[:2]
    ys, xs = np.nonzero(mask)
    cx, cy = int(xs.mean()), int(ys.mean())
    x0, y0 = min(max(cx - n // 2, 0), w - n), min(max(cy - n // 2, 0), h - n)
    image, hole = photo[y0:y0 + n, x0:x0 + n], mask[y0:y0 + n, x0:x0 + n]
    t = time.perf_counter()
    inp.inpaint(image, hole, seed=0, steps=steps)
    wall = time.perf_counter() - t
    info = inp.last_run
    first, later = _call(info.seconds, phase_peaks), []
    for _ in range(calls - 1):
        phase_peaks.clear()  # _watch_phases refills it on each call
        inp.inpaint(image, hole, seed=0, steps=steps)
        later.append(_call(inp.last_run.seconds, phase_peaks))
    return {"config": config, "models": str(models), "models_provenance": open_models(models).provenance,
            "vae": {} if precision == TORCH else vae_precisions(models, precision),
            "image_px": [n, n], "model_steps": info.steps, "threads": threads,
            "open_models_s": round(open_s, 3), "wall_s": round(wall, 3),
            "seconds": {k: round(v, 3) for k, v in info.seconds.items()},
            "unet_step_s": round(info.seconds["denoise"] / info.steps, 3),
            "compute_s": first["compute_s"], "load_s": round(open_s + first["load_s"], 3),
            "peak_rss_mb": first["peak_rss_mb"], "rss_before_mb": round(base_mb, 1),
            "phase_peak_rss_mb": first["phase_peak_rss_mb"],
            "providers": info.providers, **({"later_calls": later} if later else {})}


def batch_folder(folder: Path, n: int, side: int) -> tuple:
    """N photos (the centre squares of tests/data/photos, in turn) and their masks (one rectangle
    each) at the native size, as PNG files: (photos dir, masks dir)."""
    import numpy as np
    from PIL import Image

    photos, masks = folder / "photos", folder / "masks"
    photos.mkdir(parents=True)
    masks.mkdir()
    sources = sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))
    mask = np.zeros((side, side), np.uint8)
    mask[side * 3 // 8:side * 5 // 8, side // 4:side * 3 // 4] = 255
    for i in range(n):
        img = Image.open(sources[i % len(sources)]).convert("RGB")
        s = min(img.size)
        left, top = (img.width - s) // 2, (img.height - s) // 2
        img.crop((left, top, left + s, top + s)).resize((side, side), Image.Resampling.LANCZOS).save(
            photos / f"{i:03d}.png")
        Image.fromarray(mask).save(masks / f"{i:03d}.png")
    return photos, masks


def batch_worker(models: str, config: str, steps: int, threads: int, n: int) -> dict:
    """`moebius-edge run` over a folder of ``n`` photos in this process: images per minute, peak RSS."""
    from moebius_edge import cli

    precision, mode, models = parse_config(config, models)
    side = open_models(models, precision).image_size
    with tempfile.TemporaryDirectory() as tmp:
        photos, masks = batch_folder(Path(tmp), n, side)
        argv = ["run", str(photos), "--masks", str(masks), "-o", str(Path(tmp) / "out"), "--models", str(models),
                "--precision", precision, "--steps", str(steps), "--threads", str(threads), "--provider", "cpu",
                "--no-progress", "-q", *(["--low-memory"] if mode == "low-memory" else [])]
        t = time.perf_counter()
        rc = cli.main(argv)
        wall = time.perf_counter() - t
        written = len(list((Path(tmp) / "out").iterdir()))
    if rc or written != n:
        raise SystemExit(f"batch run of {config} failed (exit {rc}, {written} of {n} images written)")
    return {"images": n, "wall_s": round(wall, 2), "images_per_min": round(60 * n / wall, 2),
            "peak_rss_mb": round(_rss_mb(), 1)}


def summarise(runs: list, baseline: list) -> dict:
    """A configuration's row from its runs, one per round: its median round (by inpainting time)
    with ``speedup_vs_first``, the median of its per-round ratios to ``baseline`` (the first
    configuration's runs); with more than one round also ``rounds``, each round's figures."""
    ratios = [b["compute_s"] / r["compute_s"] for r, b in zip(runs, baseline)]
    row = dict(sorted(runs, key=lambda r: r["compute_s"])[(len(runs) - 1) // 2])  # the lower median
    row["speedup_vs_first"] = round(statistics.median_low(ratios), 3)  # a round's own, never a mean
    if len(runs) > 1:
        row["rounds"] = [{"compute_s": r["compute_s"], "unet_step_s": r["unet_step_s"],
                          "speedup_vs_first": round(x, 3), "peak_rss_mb": r["peak_rss_mb"]}
                         for r, x in zip(runs, ratios)]
    return row


def _export(out: Path) -> None:
    print(f"no models folder given: exporting the full-size random-init model to {out} (takes minutes) ...",
          flush=True)
    subprocess.run([sys.executable, "-m", "moebius_edge.cli", "export", "--random-init", "--preset", "moebius",
                    "--seed", "0", "--out", str(out)], check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=contract.DEFAULT_MODELS_DIR, help="models folder (exported when missing)")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help="comma-separated: torch, or PRECISION[-low-memory|-keep][@DIR] (@DIR: that precision "
                         "from another models folder); ratios are against the first")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps (strength 0.99 runs one fewer)")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's choice)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the configurations this many times in turn: medians, per-round ratios")
    ap.add_argument("--calls", type=int, default=1, metavar="N",
                    help="inpaintings per process, in a row, sessions not kept (rows are the first call's)")
    ap.add_argument("--batch", type=int, default=0, metavar="N",
                    help="also time `moebius-edge run` over a folder of N photos per ONNX Runtime configuration")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/pipeline.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--batch-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.models, args.worker, args.steps, args.threads, args.calls)))
        return 0
    if args.batch_worker:
        print(json.dumps(batch_worker(args.models, args.batch_worker, args.steps, args.threads, args.batch)))
        return 0

    if args.rounds < 1:
        ap.error("--rounds must be 1 or more")
    if args.calls < 1:
        ap.error("--calls must be 1 or more")
    if args.calls > 1 and any(parse_config(c)[1] == "keep" for c in args.configs.split(",") if c):
        ap.error("--calls times calls without kept sessions: leave out the -keep configurations")
    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        try:
            parse_config(c)
        except ValueError as e:
            ap.error(str(e))
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(args.models)
        if not (models / contract.MANIFEST_FILE).is_file():
            models = Path(tmp) / "models"
            _export(models)
        runs = {c: [] for c in configs}  # per configuration, its run of each round
        for i in range(args.rounds):
            for c in configs:
                print(f"running {c}{f' (round {i + 1} of {args.rounds})' if args.rounds > 1 else ''} ...", flush=True)
                proc = subprocess.run([sys.executable, __file__, "--worker", c, "--models", str(models),
                                       "--steps", str(args.steps), "--threads", str(args.threads),
                                       "--calls", str(args.calls)],
                                      capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"{c} failed:\n{proc.stderr}")
                runs[c].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        rows = [summarise(runs[c], runs[configs[0]]) for c in configs]
        for c, row in zip(configs, rows):
            if args.batch <= 0 or c == TORCH:
                continue
            print(f"running {c} over a folder of {args.batch} photos ...", flush=True)
            proc = subprocess.run([sys.executable, __file__, "--batch-worker", c, "--models", str(models),
                                   "--steps", str(args.steps), "--threads", str(args.threads),
                                   "--batch", str(args.batch)], capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{c} batch failed:\n{proc.stderr}")
            row["batch"] = json.loads(proc.stdout.strip().splitlines()[-1])
        manifest = open_models(models)

    first = rows[0]
    hdr = f"{'config':<16} {'open s':>7} {'enc load':>8} {'encode':>7} {'unet load':>9} {'per step':>8} " \
          f"{'decode':>7} {'total s':>8} {'vs ' + first['config']:>12} {'peak RSS':>9}"
    machine = describe()
    print(f"\n{first['image_px'][0]}×{first['image_px'][1]}, {first['model_steps']} model steps, CPU, onnxruntime "
          f"{machine['onnxruntime']}, {machine['processor']}, threads {args.threads or 'auto'}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        s = r["seconds"]
        print(f"{r['config']:<16} {r['open_models_s']:>7.2f} {s['encoder_load']:>8.2f} {s['encode']:>7.2f} "
              f"{s['unet_load']:>9.2f} {r['unet_step_s']:>8.2f} {s['decode']:>7.2f} {s['total']:>8.1f} "
              f"{r['speedup_vs_first']:>11.2f}x {r['peak_rss_mb']:>7.0f} MB")
    for r in rows:
        if "batch" in r:
            b = r["batch"]
            print(f"{r['config']:<16} folder of {b['images']}: {b['images_per_min']:.2f} images/min "
                  f"({b['wall_s']:.1f} s with loading), peak RSS {b['peak_rss_mb']:.0f} MB")
    result = {"benchmark": "pipeline_512", "machine": machine, "models_provenance": manifest.provenance,
              "threads": args.threads, "steps": args.steps, "rounds": args.rounds, "calls": args.calls,
              "graph_bytes": {s.key: total_bytes(manifest.entry(s)) for s in contract.GRAPHS}, "runs": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
