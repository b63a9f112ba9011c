"""`moebius-edge bundle`: a self-contained mobile bundle (ORT format) of an exported models folder.

    moebius-edge bundle --models DIR --target android|ios [--precision fp32|fp16|int8] [--rewrites LIST] -o BUNDLE

Writes BUNDLE/ (bundle.json, <graph>.ort, required_operators.config, bundle-report.md/.json) in a
staging folder and renames it into place; a corrupt or mismatched models folder, a precision the
folder lacks, or a failed parity gate is one line, exit 2, and nothing is written. Needs the
``mobile`` extra; never imports torch. The stage itself is ``moebius_edge.mobile`` (docs/mobile.md).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from moebius_edge import contract
from moebius_edge.commands import check_writable_folder, require

log = logging.getLogger(__name__)


def _bundle(args) -> int:
    out = Path(args.output)
    check_writable_folder(out.parent if str(out.parent) else Path("."), "the bundle")
    require("onnx", "mobile")
    bundle = require("moebius_edge.mobile.bundle", "mobile")
    bundle.check_output(out, args.force)
    manifest = bundle.build_bundle(args.models, args.target, out, precision=args.precision, force=args.force,
                                   include_onnx=args.include_onnx, threads=args.threads, rewrites=args.rewrites)
    precision = manifest[contract.manifest_key(contract.META_PRECISION)]
    total = 0
    for key, g in manifest[contract.MANIFEST_GRAPHS].items():
        total += g[contract.GRAPH_BYTES]
        parity = g[contract.manifest_key(contract.META_PARITY)]
        print(f"{out}/{g[contract.GRAPH_FILE]}  {g[contract.GRAPH_BYTES] / 2**20:8.1f} MiB  "
              f"parity rel-L2 {parity['rel_l2']:.2e} (≤ {parity['tolerance']:g})")
    ortv = manifest["onnxruntime"]
    print(f"{out}/{contract.BUNDLE_FILE}  {args.target}, {precision}, {total / 2**20:.1f} MiB of graphs, "
          f"written by onnxruntime {ortv['writer_version']} (device runtime ≥ {ortv['min_runtime_version']})")
    print(f"{out}/{manifest['report']['markdown']}  execution-provider readiness")
    if args.json:
        print(json.dumps(manifest, indent=1))
    sys.stdout.flush()
    return 0


def register(sub):
    p = sub.add_parser(
        "bundle", help="write a mobile bundle (ORT format + bundle.json) for Android or iOS (needs the mobile extra)",
        description="Fix every shape at batch 1, convert the graphs of one precision to ONNX Runtime's ORT format "
        "with its own converter, check them against the source graphs (parity gate), and write bundle.json (what "
        "a device app feeds the graphs, the schedule, the pre- and post-processing rules) with an "
        "execution-provider readiness report (NNAPI, CoreML, XNNPACK).")
    p.add_argument("--models", default=contract.DEFAULT_MODELS_DIR, metavar="DIR",
                   help="models folder written by `moebius-edge export` (and `quantize`)")
    p.add_argument("--target", required=True, choices=contract.BUNDLE_TARGETS, help="device platform")
    defaults = ", ".join(f"{t}: {p}" for t, p in contract.BUNDLE_DEFAULT_PRECISION.items())
    p.add_argument("--precision", choices=contract.PRECISIONS, default=None,
                   help=f"graph variant to bundle (default: per target, {defaults})")
    p.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="bundle folder to write")
    p.add_argument("-f", "--force", action="store_true", help="replace an existing bundle folder")
    p.add_argument("--include-onnx", action="store_true",
                   help="also ship the static .onnx graphs the .ort files were made from (in BUNDLE/onnx)")
    p.add_argument("--rewrites", default=None, metavar="LIST",
                   help="mobile rewrites of the static graphs, a comma list of time-table, gather-slice, "
                        "unsqueeze-reshape, matmul-2d, norms, or all or none (default per target: android all but "
                        "norms, ios time-table,gather-slice,unsqueeze-reshape; norms helps NNAPI and CoreML "
                        "NeuralNetwork and slows the CPU EP; docs/mobile.md §3)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads for the parity gate")
    p.add_argument("--json", action="store_true", help="also print bundle.json")
    p.set_defaults(func=_bundle)
