"""One call of each network, side by side in one process on the same inputs: the project's
PyTorch modules in eager mode (labelled as the official-equivalent baseline: the project's model
runs at the official code's eager speed) against ONNX Runtime CPU with the fp32 graph and, where
the models folder has them, the fp16 and int8 variants.

    .venv/bin/python benchmarks/graph_step.py --models DIR [--graphs unet,vae_encoder,vae_decoder]
                                              [--rounds 5] [--threads 0] [--json FILE]

* unet: one guided denoising step (CFG: the graph doubles the batch inside; PyTorch runs the
  official forward on batch 2 and applies guidance outside);
* vae_encoder: one encode (a photo needs two: the image and the masked image);
* vae_decoder: one decode.

Interleaved rounds (``benchmarks/timing.py``); ONNX Runtime's threads do not spin, so they do not
steal the cores from PyTorch between calls. At full size (512²) the achieved GFLOP/s is reported
against the model's FLOP count (ARCHITECTURE.md §13). DIR must be a ``moebius-edge export
--random-init --seed S`` folder (any preset): the PyTorch modules are rebuilt from the same seed,
so each contender's output is compared with PyTorch's too (relative L2).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script: benchmarks.* from the checkout

from benchmarks.inputs import unet_feed, vae_feed  # noqa: E402
from benchmarks.machine_info import describe  # noqa: E402
from benchmarks.timing import FULL_SIZE_GFLOP, interleaved, ort_session  # noqa: E402
from benchmarks.torch_pipeline import torch_modules  # noqa: E402
from moebius_edge import contract  # noqa: E402
from moebius_edge.errors import UserError  # noqa: E402
from moebius_edge.models import open_models  # noqa: E402

TORCH = "PyTorch eager (official-equivalent)"


def _torch_contender(spec: contract.GraphSpec, modules: dict, feed: dict):
    import torch

    from moebius_edge.export.onnx_export import reference_guided_eps

    if spec is contract.UNET:
        model = modules[spec.key]
        args = [feed[t.name] for t in spec.inputs]

        def call():
            return reference_guided_eps(model, *args[:4], float(args[4][0]))
    else:
        module = modules[spec.key]
        tensors = [torch.from_numpy(feed[t.name]) for t in spec.inputs]

        def call():
            with torch.inference_mode():
                return module(*tensors).numpy()
    return call


def _ort_paths(root: Path, spec: contract.GraphSpec) -> dict:
    """{contender: graph file} for the precisions present; a variant that references the fp32
    graph (a VAE graph the int8 recipe keeps in FP32) is the fp32 graph and is not timed twice."""
    paths = {}
    for precision in contract.PRECISIONS:
        try:
            path = open_models(root, precision).graph_path(spec)
        except UserError:  # a variant not built in this folder
            continue
        if path.resolve() not in {p.resolve() for p in paths.values()}:
            paths[f"ONNX Runtime {precision}"] = path
    return paths


def bench_graph(models, spec: contract.GraphSpec, modules: dict, rounds: int, threads: int) -> dict:
    from moebius_edge.export.onnx_export import rel_l2

    feed = unet_feed(models.latent_size) if spec is contract.UNET else vae_feed(spec, models.image_size)
    contenders = {TORCH: _torch_contender(spec, modules, feed)}
    for name, path in _ort_paths(models.root, spec).items():
        sess = ort_session(path, threads)
        contenders[name] = (lambda s=sess: s.run(None, feed)[0])
    ref = contenders[TORCH]()
    errors = {name: rel_l2(fn(), ref) for name, fn in contenders.items() if name != TORCH}
    # The calls above were each contender's first (its warm-up): no untimed round besides.
    rows = interleaved(contenders, rounds, baseline=TORCH, warmup=0)
    full_size = models.image_size == 512 and models.latent_size == 64
    for name, row in rows.items():
        row["rel_l2_vs_torch"] = errors.get(name, 0.0)
        if full_size:
            row["gflop_per_s"] = FULL_SIZE_GFLOP[spec.key] / row["median_s"]
    return {"network": spec.key, "rows": rows, "gflop": FULL_SIZE_GFLOP[spec.key] if full_size else None}


def table(result: dict) -> str:
    lines = []
    for g in result["networks"]:
        lines += [f"\n{g['network']}: median s per call over {result['rounds']} interleaved rounds",
                  "| contender | median s | min–max s | vs PyTorch (per-round median) | GFLOP/s | rel-L2 vs PyTorch |",
                  "|---|---|---|---|---|---|"]
        for name, r in g["rows"].items():
            gf = f"{r['gflop_per_s']:.0f}" if "gflop_per_s" in r else "–"
            lines.append(f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f}–{r['max_s']:.3f} | "
                         f"{r['ratio']:.2f}x | {gf} | {r['rel_l2_vs_torch']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True)
    ap.add_argument("--graphs", default=",".join(s.key for s in contract.GRAPHS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads, both runtimes (0: their choice)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/graph_step.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # a script
    specs = {s.key: s for s in contract.GRAPHS}
    wanted = [g for g in args.graphs.split(",") if g]
    if unknown := [g for g in wanted if g not in specs]:
        ap.error(f"unknown graphs {unknown}: choose from {', '.join(specs)}")
    if args.rounds < 3:
        ap.error("--rounds must be ≥ 3 (a spread needs rounds)")
    import torch

    models = open_models(args.models)
    modules = torch_modules(models, args.threads)
    result = {"benchmark": "graph_step", "machine": describe(), "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "threads": args.threads, "rounds": args.rounds,
              "ort_allow_spinning": False, "models_provenance": models.provenance, "image_side": models.image_size,
              "networks": [bench_graph(models, specs[g], modules, args.rounds, args.threads) for g in wanted]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
