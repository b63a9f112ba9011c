"""The ``moebius-edge quantize`` job: FP32 models folder in, gated variant folders out.

For each precision asked for (``PRECISIONS``):

1. open and hash-check the FP32 folder; run the FP32 pipeline on the calibration pairs and on
   the held-out pairs (``calibration.run_pairs``), recording every graph's inputs (once for
   all precisions whose recipes ask for the same data);
2. in a private staging folder inside the models folder, build the variant's graphs from the
   calibration data: FP16 (``fp16.make_fp16``; a VAE graph is converted only if its own check
   passes on these weights, otherwise the variant references the FP32 file and the report says
   why) or INT8 (``int8.make_int8`` for the UNet; ``int8.make_int8_vae`` for each VAE graph, kept
   only if the same check passes);
3. judge the staged variant against FP32 on the held-out pairs (``evaluate``, ``gate``);
4. pass: write ``recipe.json``, ``report.json``, ``report.md`` and the manifest (with the gate's
   verdict), then swap the folder into ``<models>/<precision>/`` by renames. Fail: delete the
   staging folder and raise ``UserError`` (exit 2): no variant is written, and an earlier one,
   if any, is left as it was.

An interrupted run leaves at most a hidden ``.quantize-*`` staging folder, never a half-written
variant (``models.publish_variant``).
"""
from __future__ import annotations

import json
import logging
import math
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moebius_edge import __version__, contract, models
from moebius_edge.errors import UserError
from moebius_edge.quantize import calibration, evaluate, fp16, gate, int8
from moebius_edge.quantize import graph as G
from moebius_edge.quantize import recipe as recipes
from moebius_edge.quantize.report import write_report

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "int8")  # made by this version, in this order for --precision all
PRECISION_CHOICES = ("fp16", "int8", "all")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> None:
    """Start a new peak for ``phase_peak_rss_mb`` (Linux: writing 5 to /proc/self/clear_refs resets
    the process's VmHWM; elsewhere nothing happens and the phase peak is unknown)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def phase_peak_rss_mb() -> float | None:
    """Peak RSS since the last ``reset_peak_rss`` (VmHWM), or None where /proc cannot tell."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@dataclass
class Data:
    """FP32 runs shared by every precision of one job."""

    calibration: calibration.Runs
    held_out: calibration.Runs
    seconds: dict = field(default_factory=dict)
    peak_rss_mb: float | None = None  # of the FP32 runs (``quantize_models``), where known


def _spread(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them when n is 0 or ≥ len)."""
    if n <= 0 or n >= len(items):
        return list(items)
    return [items[int(round(i))] for i in np.linspace(0, len(items) - 1, n)]


def fp32_runs(fp32: models.ModelsFolder, rcp: recipes.Recipe, photos_dir, threads: int) -> Data:
    from moebius_edge.pipeline import Inpainter
    from moebius_edge.session import SessionConfig

    t = time.perf_counter()
    cal_photos = calibration.load_photos(photos_dir, rcp.calibration_photos)
    held_photos = calibration.load_photos(photos_dir, rcp.held_out_photos)
    # Different mask seeds for the two sets: the held-out masks are not the calibration ones either.
    cal_pairs = calibration.make_pairs(cal_photos, rcp.calibration_masks, rcp.seed)
    held_pairs = calibration.make_pairs(held_photos, rcp.held_out_masks, rcp.seed + 1)
    # keep_sessions: one session per graph for all pairs (creating them per pair costs more than
    # running the tiny model, and seconds per graph at full size); released by run_pairs.
    inp = Inpainter(fp32, SessionConfig(provider="cpu", threads=threads), keep_sessions=True)
    settings = dict(seed=rcp.seed, steps=rcp.steps, guidance=rcp.guidance, strength=rcp.strength,
                    fidelity=contract.DEFAULT_FIDELITY)
    cal = calibration.run_pairs(inp, cal_pairs, desc="fp32 calibration runs", **settings)
    held = calibration.run_pairs(inp, held_pairs, desc="fp32 held-out runs", **settings)
    del inp
    G.release_memory()
    return Data(calibration=cal, held_out=held, seconds={"fp32_runs": time.perf_counter() - t})


# ---------------------------------------------------------------------------------------------
# FP16


def _vae_check(key: str, candidate, fp32: models.ModelsFolder, feeds: list, threads: int) -> dict:
    """PSNR of a candidate FP16 VAE graph against FP32 on calibration inputs."""
    from moebius_edge.session import GraphSession, SessionConfig

    config = SessionConfig(provider="cpu", threads=threads)
    ref = {s.key: GraphSession(fp32, s, config) for s in (contract.VAE_ENCODER, contract.VAE_DECODER)}
    mine = G.GraphRunner(candidate, threads)
    if key == contract.VAE_ENCODER.key:
        values = evaluate.vae_encoder(feeds, mine, ref[key], ref[contract.VAE_DECODER.key])
    else:
        values = evaluate.vae_decoder(feeds, mine, ref[key])
    finite = not any(math.isnan(v) for v in values)
    return {"psnr_min_db": min(values) if finite else float("nan"), "finite": finite, "inputs": len(values)}


VAE_KEPT_BY_RECIPE = "the recipe keeps the VAE in FP32 (vae: fp32)"


def _vae_passes(precision: str, key: str, proto, d: dict, fp32: models.ModelsFolder, feeds: list,
                rcp: recipes.Recipe, threads: int) -> bool:
    """Run the VAE check of a candidate graph into ``d`` ("check", and "converted": False with the
    reason when it fails; "why" either way); True if the candidate is kept."""
    check = _vae_check(key, proto, fp32, feeds, threads)
    floor = rcp.vae_min_psnr_db
    d["check"] = {**check, "min_psnr_db": floor}
    name = precision.upper()
    if check["finite"] and check["psnr_min_db"] >= floor:
        d["why"] = f"{name} check passed ({check['psnr_min_db']:.1f} dB ≥ {floor:g} dB)"
        return True
    why = "non-finite output" if not check["finite"] else f"PSNR {check['psnr_min_db']:.1f} dB < {floor:g} dB"
    d.update(converted=False, why=f"{name} check failed on these weights ({why} against FP32 on "
                                  f"{check['inputs']} calibration inputs); kept FP32")
    log.warning("%s: %s", key, d["why"])
    return False


def build_fp16(fp32: models.ModelsFolder, staging: Path, data: Data, rcp: recipes.Recipe, threads: int) -> dict:
    """Write the FP16 graphs into ``staging``; returns {"paths": {key: path}, "conversion": {key: details}}."""
    cal = data.calibration
    paths, details = {}, {}
    for spec in contract.GRAPHS:
        key = spec.key
        is_vae = spec is not contract.UNET
        src = fp32.graph_path(spec)
        if is_vae and rcp.vae == "fp32":
            details[key] = {"converted": False, "why": VAE_KEPT_BY_RECIPE}
            continue
        feeds = cal.feeds[key]
        error_feeds = _spread(feeds, rcp.vae_error_inputs if is_vae else rcp.error_inputs)
        t = time.perf_counter()
        proto = G.load(src)
        res = fp16.make_fp16(proto, _spread(feeds, rcp.range_inputs), error_feeds, key=key,
                             safe_abs_max=rcp.safe_abs_max, error_min=rcp.error_min, error_gain=rcp.error_gain,
                             rounds=rcp.error_rounds, extra_keep=rcp.keep.get(key, ()), measure=rcp.measure,
                             threads=threads)
        d = {"keep_fp32": res.keep.entries, "activation_abs_max": res.ranges_abs_max,
             "range_flagged_tensors": res.range_flagged, "error_pass": res.error_rounds,
             "calibration_inputs": {"range": len(_spread(feeds, rcp.range_inputs)) if rcp.measure else 0,
                                    "error": len(error_feeds) if rcp.measure else 0},
             "seconds": None}
        if is_vae and not _vae_passes("fp16", key, res.proto, d, fp32, feeds, rcp, threads):
            details[key] = d
            continue
        out = staging / spec.file
        G.save(res.proto, out, {contract.META_PRECISION: "fp16"})
        paths[key] = out
        d.update(converted=True, seconds=round(time.perf_counter() - t, 2))
        details[key] = d
        log.info("%s: fp16 written (%d nodes kept in FP32)", key, len(res.keep.entries))
    return {"paths": paths, "conversion": details}


# ---------------------------------------------------------------------------------------------
# INT8


def build_int8(fp32: models.ModelsFolder, staging: Path, data: Data, rcp: recipes.Recipe, threads: int) -> dict:
    """Write the INT8 UNet into ``staging``, and each VAE graph whose INT8 version passes its check
    (the others stay the FP32 files, referenced)."""
    t = time.perf_counter()
    feeds = _spread(data.calibration.feeds[contract.UNET.key], rcp.calibration_inputs)
    res = int8.make_int8(fp32.graph_path(contract.UNET), feeds, exclude=list(rcp.exclude),
                         activation_type=rcp.activation_type, method=rcp.calibration_method, threads=threads,
                         work=staging)
    out = staging / contract.UNET.file
    G.save(res.proto, out, {contract.META_PRECISION: "int8"})
    d = {"converted": True, **int8.describe(res), "calibration_inputs": len(feeds),
         "activation_type": rcp.activation_type, "weight_type": int8.WEIGHT_TYPE,
         "calibration_method": rcp.calibration_method, "seconds": round(time.perf_counter() - t, 2)}
    log.info("%s: int8 written (%d of %d quantizable nodes kept FP32)", contract.UNET.key, len(res.excluded),
             sum(res.counts.values()))
    del res
    G.release_memory()
    paths, details = {contract.UNET.key: out}, {contract.UNET.key: d}
    for spec in (contract.VAE_ENCODER, contract.VAE_DECODER):
        if rcp.vae == "fp32":
            details[spec.key] = {"converted": False, "why": VAE_KEPT_BY_RECIPE}
            continue
        t = time.perf_counter()
        feeds = data.calibration.feeds[spec.key]
        proto = int8.make_int8_vae(fp32.graph_path(spec), feeds, activation_type=rcp.activation_type,
                                   threads=threads, work=staging)
        d = {"quantized_ops": list(int8.VAE_QUANTIZED_OPS), "calibration_inputs": len(feeds),
             "activation_type": rcp.activation_type, "weight_type": int8.WEIGHT_TYPE,
             "calibration_method": "minmax",
             "qdq_nodes": int8.qdq_nodes(proto)}
        if _vae_passes("int8", spec.key, proto, d, fp32, feeds, rcp, threads):
            out = staging / spec.file
            G.save(proto, out, {contract.META_PRECISION: "int8"})
            paths[spec.key] = out
            d.update(converted=True, seconds=round(time.perf_counter() - t, 2))
            log.info("%s: int8 written (%s)", spec.key, d["why"])
        details[spec.key] = d
        del proto
        G.release_memory()
    return {"paths": paths, "conversion": details,
            "manifest": {contract.MANIFEST_MIN_ONNXRUNTIME: int8.MIN_ONNXRUNTIME}}


# ---------------------------------------------------------------------------------------------
# Evaluation of a staged variant


def evaluate_variant(fp32: models.ModelsFolder, variant: models.ModelsFolder, data: Data, rcp: recipes.Recipe,
                     threads: int) -> dict:
    """Every figure of the report (``evaluate``) for a variant folder, staged or published."""
    from moebius_edge.pipeline import Inpainter
    from moebius_edge.session import GraphSession, SessionConfig

    config = SessionConfig(provider="cpu", threads=threads)
    held = data.held_out
    t = time.perf_counter()
    unet = evaluate.unet_steps(held, GraphSession(variant, contract.UNET, config))
    inp = Inpainter(variant, config, keep_sessions=True)
    var_runs = calibration.run_pairs(inp, held.pairs, seed=rcp.seed, steps=rcp.steps, guidance=rcp.guidance,
                                     strength=rcp.strength, fidelity=contract.DEFAULT_FIDELITY,
                                     desc=f"{variant.precision} held-out runs", record=False)
    e2e = evaluate.end_to_end(held, var_runs, fp32.image_size, contract.DEFAULT_FIDELITY)
    vae = {}
    for spec in (contract.VAE_ENCODER, contract.VAE_DECODER):
        converted = not variant.graph_path(spec).samefile(fp32.graph_path(spec))
        if not converted:
            vae[spec.key] = {"converted": False}
            continue
        ref = {s.key: GraphSession(fp32, s, config) for s in (contract.VAE_ENCODER, contract.VAE_DECODER)}
        mine = GraphSession(variant, spec, config)
        feeds = held.feeds[spec.key]
        values = (evaluate.vae_encoder(feeds, mine, ref[spec.key], ref[contract.VAE_DECODER.key])
                  if spec is contract.VAE_ENCODER else evaluate.vae_decoder(feeds, mine, ref[spec.key]))
        finite = not any(math.isnan(v) for v in values)
        vae[spec.key] = {"converted": True, "finite": finite, "psnr_min_db": min(values) if finite else float("nan"),
                         "psnr_mean_db": float(np.mean(values)) if finite else float("nan"), "inputs": len(values)}
    first = held.feeds[contract.UNET.key][0]
    latency = evaluate.latency(GraphSession(fp32, contract.UNET, config), GraphSession(variant, contract.UNET, config),
                               first, rcp.latency_reps)
    sizes = {}
    for spec in contract.GRAPHS:
        a = sum(p.stat().st_size for p, _ in fp32.files(spec))
        b = sum(p.stat().st_size for p, _ in variant.files(spec))
        sizes[spec.key] = {"fp32_bytes": a, "variant_bytes": b, "ratio": b / a,
                           "graph_file": str(variant.entry(spec)[contract.GRAPH_FILE])}
    new_bytes = sum(p.stat().st_size for p in variant.folder.glob("*.onnx*"))
    return {"unet": unet, "end_to_end": e2e, "vae": vae, "latency": latency, "sizes": sizes,
            "download_bytes": {"fp32": sum(s["fp32_bytes"] for s in sizes.values()), "variant_files": new_bytes},
            "seconds": time.perf_counter() - t}


# ---------------------------------------------------------------------------------------------


def quantize_models(models_dir, precision: str = "fp16", *, recipe_file=None, recipe: recipes.Recipe | None = None,
                    photos_dir=recipes.DEFAULT_PHOTOS_DIR, min_hole_psnr_db=None, min_mean_step_cosine=None,
                    threads: int = 0) -> list:
    """Quantize the FP32 folder ``models_dir``; returns one result per precision:
    {"variant", "folder", "gate", "report"}. Raises ``UserError`` when a gate fails.

    ``recipe_file`` (a JSON file, the CLI's ``--recipe``) or ``recipe`` (a ``Recipe``) replaces
    the shipped recipe; either applies to one precision."""
    if precision not in PRECISION_CHOICES:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    wanted = list(PRECISIONS) if precision == "all" else [precision]
    if (recipe_file is not None or recipe is not None) and len(wanted) > 1:
        raise UserError("--recipe applies to one precision: pass --precision fp16 or int8 with it")
    t0 = time.perf_counter()
    root = Path(models_dir)
    fp32 = models.open_models(root, "fp32")
    fp32.verify()
    results, runs = [], {}
    for p in wanted:
        rcp = recipe or (recipes.load(recipe_file, p) if recipe_file else recipes.Recipe(precision=p))
        if rcp.precision != p:
            raise UserError(f"the recipe is for {rcp.precision}, not {p}")
        recipes.check(rcp)
        limits = gate.thresholds(p, min_hole_psnr_db, min_mean_step_cosine)
        key = data_key(rcp)
        if key not in runs:
            reset_peak_rss()
            runs[key] = fp32_runs(fp32, rcp, photos_dir, threads)
            runs[key].peak_rss_mb = phase_peak_rss_mb()
        results.append(make_variant(fp32, p, rcp, limits, runs[key], threads=threads, t0=t0, in_run=wanted))
    return results


def data_key(rcp: recipes.Recipe) -> tuple:
    """The recipe fields that decide the FP32 runs (two recipes with the same key share them)."""
    return (rcp.calibration_photos, rcp.held_out_photos, rcp.calibration_masks, rcp.held_out_masks, rcp.seed,
            rcp.steps, rcp.guidance, rcp.strength)


def make_variant(fp32: models.ModelsFolder, precision: str, rcp: recipes.Recipe, limits: dict, data: Data, *,
                 threads: int = 0, t0: float | None = None, in_run=()) -> dict:
    """Build, judge and (if the gate lets it) publish one variant from FP32 runs ``data``
    (``fp32_runs``); ``limits`` from ``gate.thresholds``. Raises ``UserError`` when the gate fails.
    ``t0`` and ``in_run``: when the run started and the precisions it makes (the report's time and
    peak RSS are the run's so far)."""
    t0 = time.perf_counter() if t0 is None else t0
    G.release_memory()  # what an earlier variant of the same run left
    reset_peak_rss()
    root = fp32.root
    staging = models.staging_folder(root, f"quantize-{precision}")
    try:
        staged = stage_variant(fp32, precision, rcp, limits, data, staging, threads=threads)
        built, figures, verdict, manifest = staged["built"], staged["figures"], staged["verdict"], staged["manifest"]
        used = rcp
        if precision == "fp16":
            keep = {k: list(d.get("keep_fp32", {})) for k, d in built["conversion"].items() if d.get("converted")}
            used = rcp.replace(keep={**rcp.keep, **keep})
        report = _report(fp32, precision, used, data, built, figures, verdict, staged["build_s"], t0)
        report["precisions_in_run"] = list(in_run) or [precision]
        log.info(gate.summary(verdict))
        if verdict[contract.GATE_STATUS] == gate.GATE_FAILED:
            raise UserError(f"{precision} variant rejected, nothing written: {gate.summary(verdict)}")
        (staging / contract.QUANTIZE_RECIPE_FILE).write_text(json.dumps(used.to_json(), indent=1) + "\n")
        write_report(staging, report)
        manifest[contract.MANIFEST_QUANTIZE_GATE] = _gate_record(verdict, figures)
        models.write_manifest(staging, manifest)
        folder = models.publish_variant(staging, root, precision)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    published = models.open_models(root, precision)
    published.verify()
    log.info("wrote %s (unet %.1f MB = %.0f%% of fp32)", folder, figures["sizes"][contract.UNET.key]["variant_bytes"] / 1e6,
             100 * figures["sizes"][contract.UNET.key]["ratio"])
    return {"variant": precision, "folder": str(folder), "gate": verdict, "report": report}


def stage_variant(fp32: models.ModelsFolder, precision: str, rcp: recipes.Recipe, limits: dict, data: Data,
                  staging: Path, *, threads: int = 0) -> dict:
    """Build a variant into ``staging`` (a folder directly inside the models folder) and judge it:
    {"built", "figures", "verdict", "manifest", "build_s"}. Publishes nothing."""
    t = time.perf_counter()
    build = build_fp16 if precision == "fp16" else build_int8
    built = build(fp32, staging, data, rcp, threads)
    G.release_memory()
    build_s = time.perf_counter() - t
    manifest = models.variant_manifest(fp32, precision, staging, built["paths"], built.get("manifest"))
    models.write_manifest(staging, manifest)
    # The staged folder sits directly inside the models folder, like the final one, so its
    # "../x.onnx" references resolve the same.
    variant = models.ModelsFolder(root=fp32.root, folder=staging, precision=precision, manifest=manifest)
    figures = evaluate_variant(fp32, variant, data, rcp, threads)
    verdict = gate.judge(evaluate.gate_figures(figures["unet"], figures["end_to_end"], figures["vae"]),
                         limits, fp32.provenance)
    return {"built": built, "figures": figures, "verdict": verdict, "manifest": manifest, "build_s": build_s}


def _gate_record(verdict: dict, figures: dict) -> dict:
    """What the manifest keeps of the verdict (``info`` shows it, ``run`` warns on advisory)."""
    return {contract.GATE_STATUS: verdict[contract.GATE_STATUS], "enforced": verdict["enforced"],
            "checks_passed": verdict["checks_passed"],
            "thresholds": verdict["thresholds"], "overridden": verdict["overridden"],
            "figures": {c["name"]: c["value"] for c in verdict["checks"]},
            "unet_bytes_ratio": figures["sizes"][contract.UNET.key]["ratio"],
            "report": contract.QUANTIZE_REPORT_FILE}


def _report(fp32, precision, rcp, data, built, figures, verdict, build_s, t0) -> dict:
    import onnx
    import onnxruntime as ort

    return {
        "variant": precision, "moebius_edge": __version__, "onnxruntime": ort.__version__, "onnx": onnx.__version__,
        "python": platform.python_version(), "source": fp32.provenance, "native_size": fp32.image_size,
        "fidelity": contract.DEFAULT_FIDELITY,
        "execution_provider": "CPUExecutionProvider", "cpu_note": fp16.CPU_NOTE,
        "gate": verdict,
        "conversion": built["conversion"], "sizes": figures["sizes"], "download_bytes": figures["download_bytes"],
        "unet": figures["unet"], "end_to_end": figures["end_to_end"], "vae": figures["vae"],
        "latency": figures["latency"],
        "data": {
            "calibration": {"photos": list(rcp.calibration_photos), "pairs": [p.label for p in data.calibration.pairs],
                            "unet_inputs": len(data.calibration.feeds[contract.UNET.key])},
            "held_out": {"photos": list(rcp.held_out_photos), "pairs": [p.label for p in data.held_out.pairs],
                         "unet_inputs": len(data.held_out.feeds[contract.UNET.key])},
            "steps": rcp.steps, "guidance": rcp.guidance, "strength": rcp.strength, "seed": rcp.seed,
        },
        "recipe": rcp.to_json(),
        "seconds": {"fp32_runs": data.seconds.get("fp32_runs"), "build": build_s,
                    "evaluate": figures["seconds"], "total": time.perf_counter() - t0},
        "peak_rss_mb": peak_rss_mb(),
        # This variant alone (build, judge; the FP32 runs it was given stay in memory), and the FP32
        # runs: where several precisions share one run, these say what each part needed.
        "variant_peak_rss_mb": phase_peak_rss_mb(),
        "fp32_runs_peak_rss_mb": data.peak_rss_mb,
    }
