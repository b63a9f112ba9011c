"""Memory proxy of a phone: peak RSS of the reference app loop over a bundle, per bundle.

    .venv/bin/python benchmarks/mobile_memory.py BUNDLE [BUNDLE ...] [--json benchmarks/results/bundle_memory.json]

Runs examples/mobile_reference.py's ``inpaint`` on a synthetic native-size photo in a fresh child
process per bundle and per option set, and records the child's peak resident memory:

* ``phone``: one session alive at a time (encoder, UNet, decoder), no CPU memory arena;
* ``desktop``: one session at a time too, with ONNX Runtime's arena (its default).

The bundle's recommended ``session.use_ort_model_bytes_directly`` / ``..._for_initializers``
(weights held once, in the app's buffer) cannot be exercised from Python (examples/
mobile_reference.py ``open_session`` says why), so a phone that sets them should need about one
copy of the largest graph's weights less than ``phone`` here.

A **proxy** for a phone, not a measurement of one: desktop x86-64 onnxruntime and its CPU EP, a
Python process (the interpreter and NumPy add ~50 MB, reported as ``baseline_rss_mb``), and a
phone's EPs (XNNPACK, CoreML) allocate their own buffers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from moebius_edge import contract

ROOT = Path(__file__).resolve().parent.parent
SIZE, PRECISION = contract.manifest_key(contract.META_IMAGE_SIZE), contract.manifest_key(contract.META_PRECISION)

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {examples!r})
import numpy as np
import mobile_reference as mr

bundle = mr.load_bundle(sys.argv[1])
phone = sys.argv[2] == "phone"
steps = int(sys.argv[3])
sched = bundle["sampling"]["schedule"]
for key in ("timesteps", "alpha_t", "alpha_prev"):
    sched[key] = sched[key][:steps or None]
n = bundle["image_size"]
y, x = np.mgrid[0:n, 0:n]
image = np.stack([x * 255 // n, y * 255 // n, (x + y) * 127 // n], -1).astype(np.uint8)
mask = np.zeros((n, n), np.uint8)
mask[n // 4:n // 2, n // 3:2 * n // 3] = 255
noise = mr.draw_noise(bundle, 0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
out = mr.inpaint(bundle, image, mask, noise, phone=phone)
print(json.dumps({{"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "baseline_rss_mb": round(base), "seconds": round(time.perf_counter() - t, 1),
                  "changed_px": int((out != image).any(-1).sum())}}))
"""


def measure(bundle: Path, mode: str, steps: int = 0) -> dict:
    code = CHILD.format(examples=str(ROOT / "examples"))
    proc = subprocess.run([sys.executable, "-c", code, str(bundle), mode, str(steps)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{bundle} ({mode}): {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", type=Path, nargs="+")
    p.add_argument("--steps", type=int, default=0,
                   help="denoising steps run (0: the bundle's schedule); every step holds the same memory, so "
                        "2 measure the peak of a full run in a tenth of its time")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bundle_memory.json")
    args = p.parse_args(argv)
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    results["note"] = ("proxy for a phone: peak RSS of a child process running examples/mobile_reference.py on "
                       "desktop x86-64 onnxruntime (CPU EP); see the script's docstring")
    for bundle in args.bundles:
        b = json.loads((bundle / contract.BUNDLE_FILE).read_text())
        graphs = b[contract.MANIFEST_GRAPHS].values()
        record = {"target": b["target"], SIZE: b[SIZE],
                  "graph_mib": round(sum(g[contract.GRAPH_BYTES] for g in graphs) / 2**20, 1),
                  "steps": args.steps or len(b["sampling"]["schedule"]["timesteps"])}
        for mode in ("phone", "desktop"):
            record[mode] = measure(bundle, mode, args.steps)
            print(f"{bundle.name} [{mode}]: peak RSS {record[mode]['peak_rss_mb']} MB "
                  f"(baseline {record[mode]['baseline_rss_mb']} MB), {record[mode]['seconds']} s")
        results.setdefault("bundles", {})[f"{b['target']}-{b[PRECISION]}-{b[SIZE]}"] = record
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
