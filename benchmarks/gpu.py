"""One guided UNet step on a CUDA machine: the project's PyTorch model in eager mode and under
``torch.compile``, in fp32, fp16 and bf16, and the fp32 graph on ONNX Runtime's CUDA execution
provider with IO binding where onnxruntime-gpu is installed (it is not part of this project's
extras: a CPU onnxruntime and onnxruntime-gpu cannot share an environment).

    python benchmarks/gpu.py --models DIR [--reps 50] [--dtypes fp32,fp16,bf16] [--no-compile]

DIR is a ``moebius-edge export --random-init --seed S`` folder (the modules are rebuilt from its
seed; only its unet.onnx with unet.onnx.data and the manifest travel to the GPU machine). Anchors for this model on an
H100 (issue 12): official eager fp32 63.7 ms and bf16 48.7 ms per CFG step; an export-friendly
rewrite with bf16 + torch.compile + CUDA graphs 18.5 ms; the paper reports 26.01 ms.

``--device cpu`` runs the same code on the CPU (the test suite's smoke run on the tiny model).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script: benchmarks.* from the checkout

from benchmarks.inputs import unet_feed  # noqa: E402
from benchmarks.machine_info import describe  # noqa: E402
from moebius_edge import contract  # noqa: E402
from moebius_edge.models import open_models  # noqa: E402

DTYPES = ("fp32", "fp16", "bf16")


def guided_step(model, latent, mask, masked, timestep, ids, guidance: float):
    """The official forward on the CFG batch, guidance applied outside (as
    ``onnx_export.reference_guided_eps``, on device tensors)."""
    import torch

    parts = dict(zip(contract.UNET.input_names, (latent, mask, masked)))
    x = torch.cat([parts[name] for name, _, _ in contract.UNET_INPUT_CHANNELS], dim=1)
    eps = model(torch.cat([x, x]), torch.cat([timestep, timestep]), ids)
    eps_u, eps_c = eps.chunk(2)
    return eps_u + guidance * (eps_c - eps_u)


def _timed(fn, reps: int, sync) -> dict:
    for _ in range(3):  # warm-up (and compilation)
        fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - t))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "reps": reps}


def torch_rows(models, device: str, dtypes, compile_too: bool, reps: int) -> dict:
    import torch

    from benchmarks.torch_pipeline import torch_modules

    base = torch_modules(models)[contract.UNET.key]
    feed = unet_feed(models.latent_size)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    ids = torch.tensor([contract.UNCOND_IDS, contract.COND_IDS], dtype=torch.int64, device=device)
    rows = {}
    model = base.to(device).eval()
    latent, mask, masked = (torch.from_numpy(feed[t.name]).to(device) for t in contract.UNET.inputs[:3])
    timestep = torch.from_numpy(feed[contract.UNET.inputs[3].name]).to(device)
    variants = [("eager", model)] + ([("torch.compile", torch.compile(model))] if compile_too else [])
    for name in dtypes:
        # fp16/bf16 by autocast (weights stay fp32, matmuls and convs run in the low precision),
        # as mixed-precision inference is usually run; the timestep embedding stays fp32.
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name)
        for label, m in variants:
            key = f"PyTorch {label} {name}" + (" (autocast)" if dtype else "")

            def step(m=m, dtype=dtype):
                with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                    return guided_step(m, latent, mask, masked, timestep, ids, contract.DEFAULT_GUIDANCE)
            rows[key] = _timed(step, reps, sync)
            print(f"{key}: {rows[key]['median_ms']:.1f} ms", flush=True)
    return rows


def ort_cuda_row(models, reps: int) -> dict | str:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDA execution provider here (onnxruntime-gpu not installed)"
    sess = ort.InferenceSession(str(models.graph_path(contract.UNET)), providers=["CUDAExecutionProvider"])
    io = sess.io_binding()
    for name, value in unet_feed(models.latent_size).items():
        io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), "cuda", 0))
    io.bind_output(contract.UNET.output_names[0], "cuda")
    return _timed(lambda: sess.run_with_iobinding(io), reps, io.synchronize_outputs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/gpu.json"))
    args = ap.parse_args(argv)
    import torch

    dtypes = [d for d in args.dtypes.split(",") if d]
    if unknown := [d for d in dtypes if d not in DTYPES]:
        ap.error(f"unknown dtypes {unknown}: choose from {', '.join(DTYPES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("no CUDA device: this benchmark is for a GPU machine (--device cpu for a smoke run)")
    models = open_models(args.models)
    if not models.provenance.startswith(contract.PROVENANCE_RANDOM_INIT):
        ap.error("needs a --random-init export (the PyTorch model is rebuilt from its seed)")
    result = {"benchmark": "gpu_unet_step", "machine": describe(), "torch": torch.__version__,
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
              "latent_side": models.latent_size,
              "rows": torch_rows(models, args.device, dtypes, not args.no_compile, args.reps),
              "onnxruntime_cuda": ort_cuda_row(models, args.reps) if args.device.startswith("cuda") else "not run"}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n| {result['device']} | median ms per CFG step |\n|---|---|")
    for name, r in result["rows"].items():
        print(f"| {name} | {r['median_ms']:.1f} |")
    ort_row = result["onnxruntime_cuda"]
    print(f"| ONNX Runtime CUDA (IO binding) fp32 | {ort_row['median_ms']:.1f} |" if isinstance(ort_row, dict)
          else f"\nONNX Runtime CUDA: {ort_row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
