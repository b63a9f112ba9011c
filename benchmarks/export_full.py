"""Time and peak memory of the full-size export: `moebius-edge export --random-init --preset moebius`.

Runs the real CLI in a child process (so the peak RSS is the export's alone), prints a table of
the stages it logged, the parity figures and the graph sizes, and writes JSON.

    .venv/bin/python benchmarks/export_full.py [--image-size 512] [--out DIR] [--json FILE]
"""
import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moebius_edge import contract
from moebius_edge.models import open_models, total_bytes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a script: benchmarks.* from the checkout

from benchmarks.machine_info import describe  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--preset", default="moebius")
    ap.add_argument("--out", help="keep the exported models here (default: a temporary folder)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/export_full.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "models")
        cmd = [sys.executable, "-m", "moebius_edge.cli", "export", "--random-init", "--preset", args.preset,
               "--image-size", str(args.image_size), "--out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode != 0:
            sys.exit(f"export failed:\n{proc.stderr}")
        manifest = open_models(out)

    stages = [(m[1], float(m[2]), float(m[3])) for m in
              re.finditer(r"^(.+?) done in ([\d.]+) s \(peak RSS so far (\d+) MB\)", proc.stderr, re.M)]
    print(f"## Full export, {args.preset} at {args.image_size}x{args.image_size} (random-init), CPU\n")
    print("| stage | s | peak RSS so far (MB) |\n|---|---|---|")
    for name, sec, rss in stages:
        print(f"| {name} | {sec:.1f} | {rss:.0f} |")
    print(f"| **total (wall)** | **{wall:.1f}** | **{peak_mb:.0f}** |\n")
    print("| graph | MiB | parity rel-L2 vs PyTorch |\n|---|---|---|")
    parity = manifest.get(contract.META_PARITY)
    for spec in contract.GRAPHS:
        g = manifest.entry(spec)
        print(f"| {g[contract.GRAPH_FILE]} | {total_bytes(g) / 2**20:.1f} | {parity[spec.key]['rel_l2']:.2e} |")
    result = {"preset": args.preset, "image_side": args.image_size, "machine": describe(), "wall_s": wall,
              "peak_rss_mb": peak_mb,
              "stages": [{"stage": n, "seconds": s, "peak_rss_mb_so_far": r} for n, s, r in stages],
              contract.MANIFEST_GRAPHS: manifest.manifest[contract.MANIFEST_GRAPHS], "parity_by_graph": parity}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
