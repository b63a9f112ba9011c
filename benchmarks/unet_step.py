"""One guided UNet step (CFG batch 2), PyTorch eager vs the exported graph on ONNX Runtime,
measured side by side in one process on the same inputs.

    .venv/bin/python benchmarks/unet_step.py --models DIR [--reps 5] [--json FILE]

DIR must be a `moebius-edge export --random-init --seed S` folder (any preset): the PyTorch model
is rebuilt from the same seed, so the two are the same weights and the error is reported too.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from moebius_edge import contract
from moebius_edge.models import open_models
from moebius_edge.export.config import MoebiusConfig
from moebius_edge.export.model import build_removal_model
from moebius_edge.export.transforms import perturb_for_testing_
from moebius_edge.export.onnx_export import reference_guided_eps, rel_l2

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, reps):
    fn()  # warm-up
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/unet_step.json"))
    args = ap.parse_args()
    models = open_models(args.models)
    if not models.provenance.startswith(contract.PROVENANCE_RANDOM_INIT):
        raise SystemExit("needs a --random-init export (the PyTorch side is rebuilt from its seed)")
    seed = models.provenance[len(contract.PROVENANCE_RANDOM_INIT):]
    cfg = MoebiusConfig.from_dict(models.get(contract.META_MODEL_CONFIG))
    torch.manual_seed(int(seed))
    model = perturb_for_testing_(build_removal_model(cfg), int(seed))

    h = cfg.latent_size
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, 4, h, h), dtype=np.float32)
    mask = (rng.random((1, 1, h, h)) > 0.5).astype(np.float32)
    masked = rng.standard_normal((1, 4, h, h), dtype=np.float32)
    ts = np.array([500], np.int64)
    g = contract.DEFAULT_GUIDANCE
    sess = ort.InferenceSession(str(Path(args.models) / contract.UNET.file), providers=["CPUExecutionProvider"])
    feeds = dict(zip(contract.UNET.input_names, (latent, mask, masked, ts, np.array([g], np.float32))))
    rows = {}
    with torch.inference_mode():
        rows["PyTorch eager (RemovalModel + CFG outside)"] = timed(
            lambda: reference_guided_eps(model, latent, mask, masked, ts, g), args.reps)
    rows["ONNX Runtime CPU (unet.onnx, CFG inside)"] = timed(lambda: sess.run(None, feeds)[0], args.reps)
    (t_torch, _, ref), (t_ort, _, out) = rows.values()
    print(f"## One guided UNet step, latent {h}x{h} (image {cfg.image_size}), CFG batch 2, "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}, {torch.get_num_threads()} threads\n")
    print("| runtime | median s | timed calls (s) |\n|---|---|---|")
    for name, (med, times, _) in rows.items():
        print(f"| {name} | {med:.3f} | {', '.join(f'{t:.3f}' for t in times)} |")
    print(f"\nONNX Runtime / PyTorch time ratio: {t_ort / t_torch:.2f}; relative L2 difference {rel_l2(out, ref):.2e}")
    Path(args.json).write_text(json.dumps({
        "latent_side": h, "image_side": cfg.image_size, "torch": torch.__version__, "onnxruntime": ort.__version__,
        "rows": {k: {"median_s": v[0], "times_s": v[1]} for k, v in rows.items()},
        "ort_over_torch": t_ort / t_torch, "rel_l2": rel_l2(out, ref)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
