"""`moebius-edge quantize`: FP16 and INT8 variants (not part of this release yet)."""
from moebius_edge import contract
from moebius_edge.errors import UserError


def _quantize(args):
    raise UserError("quantized variants are not available in this release yet; use --precision fp32")


def register(sub):
    p = sub.add_parser("quantize", help="make FP16/INT8 variants of an exported models folder (not available yet)")
    p.add_argument("--models", default=contract.DEFAULT_MODELS_DIR, help="models folder written by `moebius-edge export`")
    p.set_defaults(func=_quantize)
