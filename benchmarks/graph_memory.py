"""Where one graph's memory goes in ONNX Runtime, and what the session settings change.

    .venv/bin/python benchmarks/graph_memory.py --models DIR [--precision fp32] [--graph vae_decoder]
                                                [--json benchmarks/results/graph_memory.json]

Each setting runs in a process of its own (RSS is per process): the session, a first call with
the RSS sampled every 2 ms and ONNX Runtime's profiler on (the call that grows the arena), then a
second call, timed. Settings:

* ``runtime``: what ``GraphSession`` does for this graph in a fresh process: the runtime's session
  options (``SessionConfig()``: all optimisations applied at load, no memory patterns, the CPU
  arena as ``session.NO_ARENA`` says or the process-wide one as ``session.uses_shared_arena``
  says, the execution order as ``session.PRIORITY_ORDER_GRAPHS`` says), then ``release_memory()``;
* ``low-memory``: what it does with ``--low-memory`` (``NO_ARENA``'s low-memory graphs, and glibc
  mapping large blocks: ``session.map_large_blocks``);
* ``arena`` and ``no arena``: the runtime's options with the session's own CPU arena, or none;
* ``default order``: the runtime's options with ONNX Runtime's default execution order;
* ``untrimmed``: the runtime's options without ``release_memory()`` after the session's creation;
* ``pre-optimised``: the runtime's options on the graph optimised once with the same level, saved,
  and loaded with optimisations off, so that no copy of the weights made before the layout change
  is left;
* ``extended``: the runtime's options without the NCHWc layout (ORT_ENABLE_EXTENDED);
* ``one file`` and ``mapped``: the runtime's options on the graph re-saved with its weights inside
  it, or in a sidecar that ONNX Runtime maps (``GraphSpec.mapped_weights`` says which the contract
  ships; needs the ``onnx`` package);
* ``split in two`` (the VAE decoder only; needs ``onnx``): ``low-memory``'s options on the decoder
  cut in two graphs before its last upsampler (the input of its last Resize), run one after the
  other, the second session created once the first is gone: the weights of the 64²–256² stages
  (nearly all of them) are not held through the 512² stage. Not what the runtime does: it measures
  what releasing weights within the decode would save. Its call includes the second session's
  creation;
* ``streamed`` (the VAE decoder only, of a folder that has the streamed decoder): the low-memory
  mode's decode as the runtime runs it (``moebius_edge.streamed_decoder``: the head graph, then the
  512² stage in strips of rows with the whole image's GroupNorm statistics), with ``low-memory``'s
  process settings. Its call includes its sessions' creation (one per pass).

(The ``runtime`` setting's calls run under the profiler: a little slower than the runtime's.)

Per setting: the peak RSS of the session's creation (sampled the same way) and the RSS after it,
the peak RSS of the call and its seconds, as
medians and ranges over ``--repeats`` processes (the RSS a session is left with after its creation
differs from process to process). For
``runtime`` also the profile: the node that runs at the peak, how much each block of the network
raises the highest RSS so far (node names up to the block: ``/decoder/up_blocks.3/resnets.0``) and the largest
tensors alive at the peak (the profiler's output sizes, freed after their last consumer in the
order ONNX Runtime ran them).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.inputs import unet_feed, vae_feed  # noqa: E402
from benchmarks.machine_info import describe  # noqa: E402
from moebius_edge import contract  # noqa: E402
from moebius_edge.models import external_data_path, open_models  # noqa: E402
from moebius_edge.session import release_memory  # noqa: E402

SPLIT = "split in two"  # the decoder cut in two graphs (above)
STREAMED = "streamed"  # the runtime's streamed decoder (above)
DECODER_ONLY = (SPLIT, STREAMED)
SETTINGS = ("runtime", "low-memory", "arena", "no arena", "default order", "untrimmed", "pre-optimised", "extended",
            "one file", "mapped", *DECODER_ONLY)
SAMPLE_S = 0.002
TOP = 6  # blocks and live tensors in the table
PEAK_SLACK_MB = 8


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _feed(models, spec: contract.GraphSpec) -> dict:
    if spec is contract.UNET:
        return unet_feed(models.latent_size)
    return vae_feed(spec, models.image_size, 0)


def _sampled(fn):
    """(``fn()``, [(time, RSS MB)]): the RSS every SAMPLE_S while ``fn`` runs, and before and after
    it (a call shorter than one sampling period)."""
    samples, done = [(time.perf_counter(), _rss_mb())], threading.Event()

    def sample():
        while not done.is_set():
            samples.append((time.perf_counter(), _rss_mb()))
            time.sleep(SAMPLE_S)

    th = threading.Thread(target=sample)
    th.start()
    try:
        result = fn()
    finally:
        done.set()
        th.join()
    samples.append((time.perf_counter(), _rss_mb()))
    return result, samples


def _options(setting: str, tmp: Path, path: Path, graph: str, image_size: int):
    """(SessionOptions, graph file to load) for a setting."""
    import onnxruntime as ort

    from moebius_edge.session import (SessionConfig, _session_options, map_large_blocks, register_shared_arena,
                                      uses_shared_arena)

    low_memory = setting in ("low-memory", SPLIT)
    if low_memory:
        map_large_blocks()
    config = SessionConfig(provider="cpu", low_memory=low_memory)
    shared = (setting not in ("arena", "no arena") and uses_shared_arena(config, graph)
              and register_shared_arena(image_size))
    so = _session_options(config, graph, shared_arena=shared)
    if setting in ("arena", "no arena"):
        so.enable_cpu_mem_arena = setting == "arena"
    if setting == "default order":
        so.execution_order = ort.ExecutionOrder.DEFAULT
    if setting == "extended":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if setting == "pre-optimised":
        pre = _session_options(SessionConfig(provider="cpu"), graph)
        _write_optimised(pre, path, tmp / "optimised.onnx")
        ort.InferenceSession(str(path), pre, providers=["CPUExecutionProvider"])
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return so, tmp / "optimised.onnx"
    if setting in ("one file", "mapped"):
        import onnx

        dst, mapped = tmp / path.name, setting == "mapped"
        proto = onnx.load(str(path))
        onnx.save_model(proto, str(dst), save_as_external_data=mapped, all_tensors_to_one_file=True,
                        location=external_data_path(dst).name if mapped else None)
        del proto  # the parsed copy is gone (and trimmed) before the session is measured
        release_memory()
        return so, dst
    if setting == "runtime":
        so.enable_profiling = True
        so.profile_file_prefix = str(tmp / "profile")
        _write_optimised(so, path, tmp / "ran.onnx")  # names of the nodes the profile times
    return so, path


def _write_optimised(so, src: Path, dst: Path) -> None:
    """Have the session ``so`` of ``src`` write its optimised graph to ``dst``; a graph whose weights
    are in a sidecar (the UNet's) gets one of its own beside ``dst``."""
    so.optimized_model_filepath = str(dst)
    if external_data_path(src).is_file():
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                    external_data_path(dst).name)


def split_before_last_upsampler(path: Path, tmp: Path) -> tuple:
    """(first graph, second graph) of the VAE decoder cut at the input of its last Resize (the
    upsampler to the image's size), written in ``tmp``."""
    import onnx
    from onnx.utils import Extractor

    model = onnx.load(str(path))
    resize = [n for n in model.graph.node if n.op_type == "Resize"]
    if not resize:
        raise SystemExit(f"{SPLIT}: {path} has no Resize node to cut before")
    cut = resize[-1].input[0]
    extractor = Extractor(model)
    parts = (extractor.extract_model([i.name for i in model.graph.input], [cut]),
             extractor.extract_model([cut], [o.name for o in model.graph.output]))
    paths = (tmp / "first.onnx", tmp / "second.onnx")
    for part, dst in zip(parts, paths):
        onnx.save_model(part, str(dst))
    del model, extractor, parts
    release_memory()
    return paths


def _split_child(so, paths: tuple, feed: dict) -> dict:
    """``split in two``: the two parts in turn, in one sampled call (see the module's docstring)."""
    import numpy as np
    import onnxruntime as ort

    base = _rss_mb()
    first, creation = _sampled(lambda: ort.InferenceSession(str(paths[0]), so, providers=["CPUExecutionProvider"]))
    load_peak = max(v for _, v in creation)
    release_memory()
    loaded = _rss_mb()
    held = [first]
    del first

    def call():
        x = np.array(held[0].run(None, feed)[0], copy=True)
        held.clear()  # the first session (its weights) goes before the second is made
        release_memory()
        second = ort.InferenceSession(str(paths[1]), so, providers=["CPUExecutionProvider"])
        release_memory()
        return second.run(None, {second.get_inputs()[0].name: x})[0]

    t = time.perf_counter()
    _, samples = _sampled(call)
    seconds = time.perf_counter() - t
    return {"setting": SPLIT, "rss_start_mb": base, "load_peak_rss_mb": load_peak,
            "rss_after_load_mb": loaded, "peak_rss_mb": max(v for _, v in samples), "call_s": seconds}


def _streamed_child(models, feed: dict) -> dict:
    """``streamed``: the runtime's streamed decode in one sampled call (see the module's docstring)."""
    from moebius_edge.session import SessionConfig, map_large_blocks
    from moebius_edge.streamed_decoder import StreamedDecoder, find_plan

    plan = find_plan(models)
    if plan is None:
        raise SystemExit(f"{STREAMED}: {models.root} has no streamed decoder (add one: python -m "
                         f"moebius_edge.export.streamed_decoder {models.root})")
    map_large_blocks()
    dec = StreamedDecoder(models.root, plan, SessionConfig(provider="cpu", low_memory=True))
    base = _rss_mb()
    t = time.perf_counter()
    _, samples = _sampled(lambda: dec.run(feed[contract.VAE_DECODER.inputs[0].name]))
    seconds = time.perf_counter() - t
    return {"setting": STREAMED, "rss_start_mb": base, "load_peak_rss_mb": base, "rss_after_load_mb": base,
            "peak_rss_mb": max(v for _, v in samples), "call_s": seconds}


def _child(models_dir: str, precision: str, graph: str, setting: str) -> dict:
    import numpy as np
    import onnxruntime as ort

    models = open_models(models_dir, precision)
    spec = next(g for g in contract.GRAPHS if g.key == graph)
    feed = {k: np.asarray(v) for k, v in _feed(models, spec).items()}
    if setting == STREAMED:
        return _streamed_child(models, feed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        so, path = _options(setting, tmp, models.graph_path(spec), spec.key, models.image_size)
        if setting == SPLIT:
            return _split_child(so, split_before_last_upsampler(path, tmp), feed)
        base = _rss_mb()
        # The session's creation, sampled too: parsing the file and copying the weights out of it
        # can peak above what the session keeps (a graph's weights in its file: both copies at once).
        sess, creation = _sampled(lambda: ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]))
        load_peak = max(v for _, v in creation)
        if setting != "untrimmed":
            release_memory()
        loaded = _rss_mb()
        # The first call is the one that grows the arena, so it is the one sampled; the second is timed.
        _, samples = _sampled(lambda: sess.run(None, feed))
        t0 = samples[0][0]
        t = time.perf_counter()
        sess.run(None, feed)
        seconds = time.perf_counter() - t
        out = {"setting": setting, "rss_start_mb": base, "load_peak_rss_mb": load_peak, "rss_after_load_mb": loaded,
               "peak_rss_mb": max(v for _, v in samples), "call_s": seconds}
        if setting == "runtime":
            out["profile"] = _profile(sess.end_profiling(), tmp / "ran.onnx", samples, t0)
    return out


def _block(name: str) -> str | None:
    """``/decoder/up_blocks.3/resnets.0`` for the nodes of that block (up to 3 levels, without the op
    and ONNX Runtime's fusion suffixes); None for a name without a path."""
    parts = [p for p in name.split("/") if p and "Fusion" not in p][:-1][:3]
    return "/" + "/".join(parts) if parts else None


def live_tensors(order: list, stop: int) -> dict:
    """{tensor: (MB, op, node)} alive while ``order[stop]`` runs, ``order`` being [(NodeProto, output
    bytes)] in the order ONNX Runtime ran them. A tensor lives from its node to its last consumer;
    ONNX Runtime's Reshape hands on its input's buffer, so that buffer lives until the last use of
    any of its aliases, and the Reshape adds nothing."""
    root, last_use = {}, {}
    for i, (node, _) in enumerate(order):
        for x in node.input:
            last_use[root.get(x, x)] = i
        if node.op_type == "Reshape":
            root[node.output[0]] = root.get(node.input[0], node.input[0])
    live = {}
    for i, (node, size) in enumerate(order[:stop + 1]):
        if node.op_type != "Reshape":
            live[node.output[0]] = (size / 2**20, node.op_type, node.name)
        if i < stop:
            for x in {root.get(x, x) for x in node.input}:
                if last_use.get(x) == i:
                    live.pop(x, None)
    return live


def _profile(trace_file: str, ran: Path, samples: list, t0: float) -> dict:
    """The sampled call's nodes against its RSS samples; the tensors alive at the peak."""
    import onnx

    events = json.loads(Path(trace_file).read_text())
    first = next(e for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    start, end = first["ts"], first["ts"] + first["dur"]
    nodes = [e for e in events
             if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and start <= e["ts"] <= end]
    graph = {n.name: n for n in onnx.load(str(ran), load_external_data=False).graph.node}
    peak = max(v for _, v in samples)
    # The peak is where the RSS first gets to its top (with an arena it stays there).
    peak_t = next(t for t, v in samples if v >= peak - PEAK_SLACK_MB)
    blocks, block, peak_node, order = {}, "(graph inputs)", None, []
    top = samples[0][1]  # the highest RSS so far: what each block adds to it is its growth
    for e in nodes:
        name = e["name"][:-len("_kernel_time")]
        s, f = (e["ts"] - start) / 1e6, (e["ts"] - start + e["dur"]) / 1e6
        block = _block(name) or block  # layout nodes (ReorderInput_token_...) belong to the block they serve
        rss = [v for t, v in samples if s <= t - t0 <= f]
        b = blocks.setdefault(block, {"block": block, "seconds": 0.0, "growth_mb": 0.0, "peak_rss_mb": 0.0})
        b["seconds"] += e["dur"] / 1e6
        if rss:
            b["peak_rss_mb"] = max(b["peak_rss_mb"], max(rss))
            b["growth_mb"] += max(0.0, max(rss) - top)
            top = max(top, max(rss))
        if peak_node is None and peak_t - t0 <= f:
            peak_node = (name, e["args"].get("op_name"), block)
        if name in graph:
            order.append((graph[name], int(e["args"].get("output_size", 0))))
    stop = next((i for i, (n, _) in enumerate(order) if peak_node and n.name == peak_node[0]), len(order) - 1)
    live = live_tensors(order, stop)
    largest = sorted(live.values(), reverse=True)[:TOP]
    return {"peak_rss_mb": peak, "peak_node": peak_node[0] if peak_node else None,
            "peak_op": peak_node[1] if peak_node else None, "peak_block": peak_node[2] if peak_node else None,
            "live_at_peak": [{"mb": mb, "op": op, "node": n} for mb, op, n in largest],
            "live_at_peak_mb": sum(mb for mb, _, _ in live.values()),
            "blocks": sorted(blocks.values(), key=lambda b: -b["growth_mb"])}


def _summary(setting: str, rs: list) -> dict:
    """One setting over its processes: the medians, the ranges, and the first process's profile."""
    out = {"setting": setting, "processes": rs}
    for key in ("load_peak_rss_mb", "rss_after_load_mb", "peak_rss_mb", "call_s"):
        values = [r[key] for r in rs]
        out[key] = statistics.median(values)
        out[f"{key}_range"] = [min(values), max(values)]
    if "profile" in rs[0]:
        out["profile"] = rs[0]["profile"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--graph", default=contract.VAE_DECODER.key, choices=[g.key for g in contract.GRAPHS])
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "graph_memory.json"))
    ap.add_argument("--settings", help=f"comma-separated, of {', '.join(SETTINGS)} (default: all that apply to the graph)")
    ap.add_argument("--repeats", type=int, default=1, help="processes per setting (RSS after load varies by process)")
    ap.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not Path("/proc/self/statm").is_file():
        raise SystemExit("graph_memory.py samples /proc/self/statm: it runs on Linux only")
    if not args.settings:
        args.settings = ",".join(s for s in SETTINGS if s not in DECODER_ONLY or args.graph == contract.VAE_DECODER.key)
    unknown = set(args.settings.split(",")) - set(SETTINGS)
    if unknown:
        ap.error(f"unknown settings {sorted(unknown)}; choose from {', '.join(SETTINGS)}")
    if args.child:
        print(json.dumps(_child(args.models, args.precision, args.graph, args.child)))
        return 0
    for setting in set(DECODER_ONLY) & set(args.settings.split(",")):
        if args.graph != contract.VAE_DECODER.key:
            ap.error(f"{setting!r} applies to the {contract.VAE_DECODER.key} graph only")
    models = open_models(args.models, args.precision)
    runs = {s: [] for s in args.settings.split(",")}
    for _ in range(args.repeats):  # round-robin: a slow spell of the machine hits every setting alike
        for setting in runs:
            proc = subprocess.run([sys.executable, __file__, "--models", args.models, "--precision", args.precision,
                                   "--graph", args.graph, "--child", setting], capture_output=True, text=True)
            if proc.returncode:
                last = proc.stderr.strip().splitlines()[-1:] or ["failed"]
                raise SystemExit(f"{setting}: {last[0]}")
            runs[setting].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    runs = [_summary(setting, rs) for setting, rs in runs.items()]
    result = {"benchmark": "graph_memory", "machine": describe(), "network": args.graph, "variant": args.precision,
              "models_provenance": models.provenance, "image_side": models.image_size, "repeats": args.repeats,
              "runs": runs}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}\n")
    for r in runs:
        lo, hi = r["peak_rss_mb_range"]
        print(f"{r['setting']:<14} load peak {r['load_peak_rss_mb']:,.0f} MB, after load {r['rss_after_load_mb']:,.0f} MB, call peak {r['peak_rss_mb']:,.0f} MB "
              f"({lo:,.0f}–{hi:,.0f}), {r['call_s']:.2f} s")
    p = next((r["profile"] for r in runs if "profile" in r), None)
    if p:
        print(f"\npeak in {p['peak_block']} ({p['peak_op']} {p['peak_node']}); live there: "
              + ", ".join(f"{x['op']} {x['mb']:.0f} MB" for x in p["live_at_peak"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
