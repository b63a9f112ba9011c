"""Mobile bundles of a (full-size) models folder: sizes, build time and execution-provider partitions.

    .venv/bin/python benchmarks/bundle.py --models out/full --out out/bundles \\
        --bundle ios:fp16 --bundle android:int8 [--json benchmarks/results/bundle.json]

Builds each TARGET:PRECISION bundle with `moebius-edge bundle` (in process, --force) into
OUT/TARGET-PRECISION and merges one record per bundle into the JSON file (a new record replaces an
older one of the same target and precision): graph sizes, parity figures, what the ORT-format
converter changed, the mobile rewrites (partitions before and after), and per graph and EP the
nodes, partitions and MAC share of bundle-report.json.
The models folder is only read.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine_info import save_record  # noqa: E402
from moebius_edge import contract  # noqa: E402
from moebius_edge.mobile.bundle import REPORT_JSON, build_bundle  # noqa: E402


def _peak_mb(who) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def one(models: Path, out: Path, target: str, precision: str, threads: int, rewrites: str | None = None) -> dict:
    t0 = time.perf_counter()
    manifest = build_bundle(models, target, out, precision=precision, force=True, threads=threads, rewrites=rewrites)
    seconds = time.perf_counter() - t0
    report = json.loads((out / REPORT_JSON).read_text())
    graphs = manifest[contract.MANIFEST_GRAPHS]
    parity_key = contract.manifest_key(contract.META_PARITY)
    key = contract.manifest_key
    return {
        "target": target, key(contract.META_PRECISION): precision, "folder": str(out.relative_to(ROOT) if out.is_relative_to(ROOT)
                                                                else out),
        "seconds": round(seconds, 1),
        contract.GRAPH_BYTES: {k: g[contract.GRAPH_BYTES] for k, g in graphs.items()},
        "total_mib": round(sum(g[contract.GRAPH_BYTES] for g in graphs.values()) / 2**20, 1),
        "parity_rel_l2": {k: g[parity_key]["rel_l2"] for k, g in graphs.items()},
        "ort": manifest["onnxruntime"],
        "converter_changes": report["converter_changes"],
        "rewrites": report["rewrites"],
        "rewrite_gate": {k: g["rewrites"]["gate"]["rel_l2"] for k, g in graphs.items()},
        "eps": [{k: r[k] for k in ("graph_key", "ep", "nodes", "supported_nodes", "partitions", "node_share",
                                   "mac_share", "fallback_ops")} for r in report["summary"]],
        key(contract.META_PROVENANCE): manifest[key(contract.META_PROVENANCE)][key(contract.META_PROVENANCE)],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--out", type=Path, default=ROOT / "out" / "bundles")
    p.add_argument("--bundle", action="append", required=True, metavar="TARGET:PRECISION")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--rewrites", default=None, help="as `bundle --rewrites` (default: the target's)")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bundle.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # a script, not a library
    for spec in args.bundle:
        target, precision = spec.split(":")
        record = one(args.models.resolve(), (args.out / f"{target}-{precision}").resolve(), target, precision,
                     args.threads, args.rewrites)
        record["peak_rss_mb"] = {"self": round(_peak_mb(resource.RUSAGE_SELF)),
                                 "children": round(_peak_mb(resource.RUSAGE_CHILDREN))}
        save_record(args.json, f"{target}-{precision}", record)
        print(f"{target}-{precision}: {record['total_mib']} MiB in {record['seconds']} s; "
              + "; ".join(f"{r['graph_key']}/{r['ep']} {r['partitions']} partitions {100 * r['node_share']:.1f} % nodes"
                          for r in record["eps"] if r["graph_key"] == contract.UNET.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
