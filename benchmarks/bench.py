"""`make bench`: the CPU benchmarks on an existing full-size models folder, one after the other,
each in a process of its own and timed, then the README's tables and the targets' table.

    .venv/bin/python benchmarks/bench.py --models DIR [--configs torch,fp32,int8,int8-low-memory]
        [--rounds 1] [--batch 0] [--results benchmarks/results]

The steps (what each measures is in its own docstring):

1. ``graph_step.py --rounds 3``: each network alone, PyTorch eager against ONNX Runtime, interleaved;
2. ``pipeline.py``: the whole inpainting per configuration (``--batch N``: and a folder of N photos
   per ONNX Runtime configuration, about two inpaintings' time each);
3. ``photo_size.py --precision int8``: 1 and 24 MP photos with the same hole, and a 1024 px hole in
   a 12 MP photo: the cost follows the crop;
4. ``int8_profile.py --reps 2``: where a UNet step's time goes, FP32 and the folder's INT8, by
   operator type and convolution kind with each kind's rate: the profile of a missed speed target;
5. ``report.py``: the README's tables and figure, then the targets' table with what each missed
   speed target asks of the UNet step and, for a miss, the step's profile (only when the results go
   to benchmarks/results, the folder the README is generated from).

Issue 12 gives the CPU set 15 minutes (``BUDGET_S``) on the machine of the issues, which is why
``photo_size`` runs the extremes of its series and the folder runs are opt-in. ``bench.json``
records each step's arguments and wall seconds (the report's few seconds left out) with the
machine and its load before the run; the README's line on the whole run is generated from it. A
failing step stops the run with its exit code and no ``bench.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script: benchmarks.* from the checkout

from benchmarks.machine_info import describe  # noqa: E402

from benchmarks.report import RESULTS  # noqa: E402
from moebius_edge import contract  # noqa: E402

BUDGET_S = 15 * 60
# The configurations of the pipeline step (`make bench`'s BENCH_CONFIGS; the first is the baseline).
CONFIGS = "torch,fp32,int8,int8-low-memory"


def steps(args) -> list:
    """(name, arguments) of each benchmark step, run as ``benchmarks/NAME.py ARGUMENTS`` from the
    caller's folder, so that relative paths (``@DIR`` in the configurations too) mean what they
    meant to the caller; a step's JSON goes to the results folder as NAME.json."""
    return [(name, ["--models", args.models, *more, "--json", str(Path(args.results) / f"{name}.json")])
            for name, more in (
                ("graph_step", ["--rounds", "3"]),
                ("pipeline", ["--configs", args.configs, "--rounds", str(args.rounds), "--batch", str(args.batch)]),
                ("photo_size", ["--precision", "int8", "--megapixels", "1", "24", "--holes", "1024"]),
                ("int8_profile", ["--reps", "2"]))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="a full-size models folder with its variants")
    ap.add_argument("--configs", default=CONFIGS, help="pipeline.py's configurations (the first is the baseline)")
    ap.add_argument("--rounds", type=int, default=1, help="pipeline.py's rounds")
    ap.add_argument("--batch", type=int, default=0, metavar="N", help="pipeline.py's folder of N photos (0: none)")
    ap.add_argument("--results", default=str(RESULTS), help="folder of the JSON files")
    args = ap.parse_args(argv)
    if not (Path(args.models) / contract.MANIFEST_FILE).is_file():
        ap.error(f"no models folder at {args.models} (no {contract.MANIFEST_FILE}): make one with `make bench-models`")
    machine, started, record = describe(), time.monotonic(), []  # the load before the run, not its own
    for name, arguments in steps(args):
        print(f"\n== benchmarks/{name}.py {' '.join(arguments)}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *arguments])
        if rc:
            rc = 128 - rc if rc < 0 else rc  # killed by a signal: the shell's code for it
            print(f"bench: {name} failed (exit code {rc}); no bench.json written", file=sys.stderr)
            return rc
        record.append({"step": name, "arguments": arguments, "wall_s": time.monotonic() - t0})
    result = {"benchmark": "bench", "machine": machine, "budget_s": BUDGET_S, "steps": record,
              "wall_s": time.monotonic() - started}
    path = Path(args.results) / "bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    if path.resolve().parent != RESULTS.resolve():
        print(f"\nwrote {path}; the README is generated from {RESULTS.relative_to(ROOT)} only, so no report")
        return 0
    from benchmarks import report

    return report.main([])


if __name__ == "__main__":
    sys.exit(main())
