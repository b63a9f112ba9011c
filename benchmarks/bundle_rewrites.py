"""The mobile rewrites (mobile/rewrite.py), measured: EP partitions and CPU time, per rewrite set.

    .venv/bin/python benchmarks/bundle_rewrites.py --models DIR [--models DIR ...] [--reps 5] [--json FILE]

For each models folder (fp32): every graph made static at batch 1 (``static.make_static``), then
rewritten with each set of ``SETS`` (none, android's default, every rewrite); the partitions each
EP gets (``ep_probe``, in a child process as ``bundle`` runs it), and the ONNX Runtime CPU time of
one call of every graph under each set in one interleaved loop (each round runs every set once,
the order rotated per round), so the ratios see the same machine load. The CPU EP is what runs
whatever an accelerator EP does not take, and all of an Android bundle on a phone without one.

Writes benchmarks/results/bundle_rewrites.json; ``benchmarks/report.py`` renders its table into
docs/mobile.md §6.1.
"""
import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine_info import describe  # noqa: E402
from moebius_edge import contract, models  # noqa: E402
from moebius_edge.mobile import bundle, ort_tools, rewrite, static  # noqa: E402

SETS = {"none": (), "android default": rewrite.DEFAULT_REWRITES["android"], "all": rewrite.REWRITES}


def measure(folder: Path, reps: int, threads: int, work: Path) -> dict:
    import onnx

    m = models.open_models(folder, "fp32")
    paths, gates = {}, {}
    for spec in contract.GRAPHS:
        base = work / f"{spec.key}.onnx"
        static.make_static(m, spec, base)
        for label, names in SETS.items():
            proto = onnx.load(str(base))
            rewrite.apply(proto, names, num_timesteps=len(m.alphas_cumprod))
            paths[spec.key, label] = work / f"{spec.key}.{label.replace(' ', '_')}.onnx"
            onnx.save_model(proto, str(paths[spec.key, label]))
            del proto
        logging.info("%s: static and rewritten", spec.key)
    probe = ort_tools.probe_graphs({f"{k}|{label}": (p, "-") for (k, label), p in paths.items()}, work / "probe.json")
    partitions = {}
    for key, g in probe["by_graph"].items():
        graph, label = key.split("|")
        partitions.setdefault(graph, {})[label] = {
            ep: {"partitions": e["partitions"], "supported_nodes": e["supported_nodes"], "nodes": e["nodes"]}
            for ep, e in g["eps"].items()}
    rng = np.random.default_rng(0)
    cpu = {}
    for spec in contract.GRAPHS:
        io = static.graph_io(paths[spec.key, "none"])
        feeds = bundle._feeds(io, rng, 0)
        sessions = {label: bundle.ort_session(paths[spec.key, label], {}, threads) for label in SETS}
        ref = None
        for label, sess in sessions.items():  # warm-up, and the gate's check again
            y = sess.run(None, bundle._as_declared(sess, feeds))[0]
            ref = y if ref is None else ref
            gates[spec.key, label] = bundle._rel_l2(ref, y)
        times = {label: [] for label in sessions}
        order = list(sessions)
        for i in range(reps):
            for label in order[i % len(order):] + order[:i % len(order)]:
                t = time.perf_counter()
                sessions[label].run(None, bundle._as_declared(sessions[label], feeds))
                times[label].append(time.perf_counter() - t)
        base = statistics.median(times["none"])
        cpu[spec.key] = {label: {"median_s": statistics.median(v), "ratio_vs_none": statistics.median(v) / base,
                                 "times_s": v, "rel_l2_vs_none": gates[spec.key, label]} for label, v in times.items()}
        logging.info("%s CPU: %s", spec.key, ", ".join(f"{k} {v['median_s']:.3f} s" for k, v in cpu[spec.key].items()))
        del sessions
    return {"models_provenance": m.provenance, "native_size": m.image_size, "reps": reps, "threads": threads,
            "partitions": partitions, "cpu": cpu, "sets": {k: list(v) for k, v in SETS.items()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", action="append", required=True, metavar="DIR", help="fp32 models folder (repeatable)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/bundle_rewrites.json"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # a script
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["machine"] = describe()
    folders = results.setdefault("folders", {})
    for d in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            r = measure(Path(d), args.reps, args.threads, Path(tmp))
        folders[f"{r['native_size']} px, {r['models_provenance']}"] = r
        path.write_text(json.dumps(results, indent=1) + "\n")
    from benchmarks.report import bundle_rewrites as render

    print(render(results))


if __name__ == "__main__":
    main()
