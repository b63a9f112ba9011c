"""`moebius-edge quantize`: FP16 and INT8 variants of an exported models folder.

    moebius-edge quantize --models DIR [--precision fp16|int8|all] [--recipe FILE] [--photos DIR]

Writes ``DIR/<precision>/`` (graphs, manifest, recipe.json, report.json, report.md) only when the
variant passes its quality gate against the FP32 graphs (advisory for random-init weights); a
failed gate is a one-line error, exit 2, and nothing is written. Needs the ``quantize`` extra
(onnx); never imports torch. The stage itself is ``moebius_edge.quantize`` (docs in its modules).
"""
from __future__ import annotations

import json
import logging
import sys

from moebius_edge import contract
from moebius_edge.commands import require

log = logging.getLogger(__name__)

# Spelled here as well as in quantize.job / quantize.recipe so that `--help` stays instant: the
# quantize package imports onnx. A test checks that the two agree.
PRECISION_CHOICES = ("fp16", "int8", "all")
DEFAULT_PHOTOS_DIR = "tests/data/photos"


def _quantize(args) -> int:
    require("onnx", "quantize")
    job = require("moebius_edge.quantize.job", "quantize")
    results = job.quantize_models(args.models, args.precision, recipe_file=args.recipe, photos_dir=args.photos,
                                  min_hole_psnr_db=args.min_hole_psnr, min_mean_step_cosine=args.min_step_cosine,
                                  threads=args.threads)
    from moebius_edge.quantize.gate import summary

    for r in results:
        rep = r["report"]
        unet = rep["sizes"][contract.UNET.key]
        vae = {k: r["variant"] if rep["conversion"][k].get("converted") else "fp32"
               for k in (contract.VAE_ENCODER.key, contract.VAE_DECODER.key)}
        print(f"{r['folder']}: unet {unet['variant_bytes'] / 2**20:.1f} MiB ({100 * unet['ratio']:.1f} % of fp32), "
              f"step ×{1 / rep['latency']['ratio']:.2f} the fp32 speed on this CPU; VAE encoder "
              f"{vae[contract.VAE_ENCODER.key]}, decoder {vae[contract.VAE_DECODER.key]}")
        print(f"  {summary(r['gate'])}")
        print(f"  report: {r['folder']}/{contract.QUANTIZE_REPORT_MD}")
    if args.json:
        from moebius_edge.quantize.report import jsonable

        print(json.dumps(jsonable([r["report"] for r in results]), indent=1))
    sys.stdout.flush()
    return 0


def register(sub):
    p = sub.add_parser(
        "quantize", help="make FP16 and INT8 variants of an exported models folder, behind a quality gate",
        description="Convert the FP32 graphs of a models folder to a smaller precision, keeping in FP32 what "
        "measurement on calibration photos says must stay FP32, and judge the result against FP32 on held-out "
        "photos. A variant that fails its quality gate is not written (exit 2).")
    p.add_argument("--models", default=contract.DEFAULT_MODELS_DIR, metavar="DIR",
                   help="models folder written by `moebius-edge export`")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="all",
                   help="variant to make (default all: fp16 then int8; --recipe needs one precision)")
    p.add_argument("--recipe", metavar="FILE",
                   help="recipe JSON overriding the shipped one (e.g. a variant's recipe.json to rebuild it)")
    p.add_argument("--photos", default=DEFAULT_PHOTOS_DIR, metavar="DIR",
                   help="folder holding the recipe's calibration and held-out photos")
    p.add_argument("--min-hole-psnr", type=float, default=None, metavar="DB",
                   help="override the gate's minimum PSNR inside the hole (default: 35 dB for fp16, 28 for int8; "
                        "the report records the override)")
    p.add_argument("--min-step-cosine", type=float, default=None, metavar="C",
                   help="override the gate's minimum mean per-step ε cosine (default: 0.99; recorded in the report)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its choice)")
    p.add_argument("--json", action="store_true", help="also print the reports as JSON")
    p.set_defaults(func=_quantize)
