"""Writes the README's measured tables from benchmarks/results/*.json: numbers are never typed.

    .venv/bin/python benchmarks/report.py [--check]

Each table sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in README.md and is
rebuilt by the renderer of that name below from ``benchmarks/results/NAME.json``. ``--check``
exits 1 when the README differs from what the JSON gives (a test runs it).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

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


RENDERERS = {"thin_strokes": thin_strokes}


def render(text: str) -> str:
    for name, fn in RENDERERS.items():
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            continue
        block = fn(json.loads(path.read_text()))
        pattern = re.compile(rf"(<!-- bench:{name} -->\n)(?:.*?\n)?(<!-- /bench:{name} -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(2), text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = ap.parse_args(argv)
    old = README.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README.md is out of date with benchmarks/results: run benchmarks/report.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    print("README.md tables rewritten" if new != old else "README.md already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
