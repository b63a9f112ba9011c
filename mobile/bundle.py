"""``moebius-edge bundle``: one precision of a models folder as a self-contained mobile bundle.

    BUNDLE/
      bundle.json                 everything the app needs to drive the graphs (docs/mobile.md §2)
      unet.ort vae_encoder.ort vae_decoder.ort
      required_operators.config   operators of all three graphs, for a reduced-operator ORT build
      bundle-report.md, bundle-report.json   execution-provider readiness (``report``)
      onnx/<graph>.onnx           only with include_onnx: the static ONNX graphs the .ort came from

Steps (``build_bundle``): open and hash the models folder (``models.open_models`` + ``verify``);
make each graph static at batch 1 (``static.make_static``); the mobile rewrites (``rewrite``,
per target by default) behind a **rewrite gate**: each rewritten graph against the static graph
before rewriting, relative L2 within ``REWRITE_REL_L2[precision]``; convert to ORT format in a child
process (``ort_tools.convert_to_ort``); a **parity gate**: each ``.ort`` against its source graph
in the models folder, optimised at the converter's level, on seeded inputs, relative L2 within
``PARITY_REL_L2[precision]``; the EP probe of the graphs before and after the rewrites, and the
report; ``bundle.json``. Everything is written in a staging folder beside the output and moved
into place by a rename (``models.replace_folder``): a failure leaves nothing behind.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from moebius_edge import __version__, contract, models
from moebius_edge.errors import UserError
from moebius_edge.scheduler import DDIMSchedule

log = logging.getLogger(__name__)

# Parity gate: relative L2 of each .ort graph (ORT format, saved runtime optimisations replayed)
# against its source .onnx graph in the models folder, optimised at the level the converter used
# (``OPTIMIZATION``), so the gate sees what the static fix, the rewrites and the conversion changed,
# and not which kernels this CPU picks (the rewrite gate runs at the same level). An int8 graph
# must be compared like for like: a last-bit difference in a float kernel (x86 layout transforms
# at level "all", absent from the "extended" .ort) that crosses a quantizer's rounding boundary
# changes a quantized value, and a random-weight network amplifies it: the int8 .ort against the
# source session at level "all" measured 0.145 at full size and up to 0.18 on the tiny UNet on an
# AVX-512 VNNI Xeon (2e-3 on an AVX2 EPYC), and 0 against the source at level "extended".
PARITY_REL_L2 = {"fp32": 1e-4, "fp16": 5e-3, "int8": 1e-4}
PARITY_SEED = 1234
# Rewrite gate: relative L2 of each rewritten static graph against the same graph before the mobile
# rewrites (mobile/rewrite.py), onnxruntime CPU, same seeded inputs. The rewrites are equivalent
# up to summation order and rounding: measured on the tiny UNet with every rewrite, 5e-7 for fp32
# and 3e-7 for int8. A float16 graph rounds to float16 at other places once its norms are
# decomposed: 3.0e-3 between the rewritten and the unrewritten tiny fp16 UNet, whose own distance
# to the fp32 UNet is 3.2e-3 (3.5e-3 rewritten), so fp16 gets float16's own scale.
REWRITE_REL_L2 = {"fp32": 1e-5, "fp16": 1e-2, "int8": 1e-2}
REPORT_MD = "bundle-report.md"
REPORT_JSON = "bundle-report.json"
ONNX_SUBDIR = "onnx"
RUN_ORDER = (contract.VAE_ENCODER, contract.UNET, contract.VAE_DECODER)

# ORT-format optimisation (style, level) per precision. "Runtime" style keeps plain ONNX operators
# for NNAPI/CoreML/XNNPACK and saves the CPU EP's fusions as records the device replays. int8 is
# converted "Fixed" at the "extended" level (its QDQ fusions baked in for ARM, no layout
# transforms): onnxruntime 1.32 cannot replay its own saved record for QDQ MatMul ("Not enough
# produced nodes in the runtime optimization record", measured on the tiny int8 UNet), and the
# int8 bundle's EPs are the CPU EP and XNNPACK, for which ONNX Runtime recommends "Fixed" anyway.
OPTIMIZATION = {"fp32": ("Runtime", "all"), "fp16": ("Runtime", "all"), "int8": ("Fixed", "extended")}
# Session config entries every graph of a bundle needs, and those a phone build should add.
SESSION_REQUIRED = {
    # The files are ORT format (the loader can also tell from the .ort extension, a byte buffer cannot).
    "session.load_model_format": "ORT",
}
SESSION_RUNTIME_STYLE = {
    # Replay the fusions saved by the converter ("Runtime" style) on the nodes that the EP leaves to
    # the CPU; without it those nodes run unoptimised. Trusted models only.
    "session.enable_saved_runtime_optimizations": "1",
}
SESSION_RECOMMENDED = {
    # Create the session from the bytes of the .ort file kept alive by the app (an asset buffer or
    # a memory map) instead of copying them, and let the weights point into that buffer: the
    # weights are then held once, not twice. The buffer must outlive the session.
    "session.use_ort_model_bytes_directly": "1",
    "session.use_ort_model_bytes_for_initializers": "1",
}

# Execution providers per target, in order of preference (CPU is always last and always there).
EXECUTION_PROVIDERS = {
    "android": {
        "providers": [
            {"name": "XNNPACK", "options": {"intra_op_num_threads": "number of big cores (e.g. 4)"},
             "session": {"intra_op_num_threads": 1, "session.intra_op.allow_spinning": "0"},
             "why": "takes the convolutions and fully connected layers (the MACs); its own thread pool does the "
                    "work, so ONNX Runtime's pool is set to 1 thread without spinning"},
            {"name": "CPU", "options": {}, "why": "everything else (norms, element-wise ops, int8 QDQ kernels)"},
        ],
        "optional": [
            {"name": "NNAPI", "options": {"flags": ["NNAPI_FLAG_CPU_DISABLED"]},
             "why": "deprecated from Android 15; int64 and norm operators fall back (bundle-report.md). "
                    "NNAPI_FLAG_CPU_DISABLED keeps NNAPI's own slow CPU reference path out of it"},
        ],
    },
    "ios": {
        "providers": [
            {"name": "CoreML",
             "options": {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL", "RequireStaticInputShapes": "1",
                         "ModelCacheDirectory": "an app-private caches folder, e.g. Library/Caches/coreml"},
             "why": "MLProgram takes float16 natively and nearly all nodes (bundle-report.md); the cache "
                    "folder saves the CoreML compilation (seconds at full size) on every launch after the first"},
            {"name": "CPU", "options": {}, "why": "fallback nodes; all of an int8 graph (CoreML has no QDQ kernels)"},
        ],
        "optional": [],
    },
}

SCHEDULE_NOTE = ("DDIM, eta 0: for i in range(len(timesteps)): eps = unet(latent=x, mask=m_lat, "
                 "masked_latent=z_msk, timestep=[timesteps[i]] (the dtype graphs.unet.inputs declares), "
                 "guidance_scale=[g]); "
                 "x0 = (x - sqrt(1 - alpha_t[i]) * eps) / sqrt(alpha_t[i]); "
                 "x = sqrt(alpha_prev[i]) * x0 + sqrt(1 - alpha_prev[i]) * eps; all float32, in this order")


def _default_precision(target: str) -> str:
    return contract.BUNDLE_DEFAULT_PRECISION[target]


def check_output(out: Path, force: bool) -> None:
    """Refuse, before any work, an output that is a file, a folder holding something that is not
    a bundle (it would be replaced whole), or an existing bundle without ``force``."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / contract.BUNDLE_FILE).is_file():
            raise UserError(f"{out} is a folder that holds something other than a bundle; choose another -o "
                            f"(a bundle replaces its folder whole)")
        if not force:
            raise UserError(f"{out} holds a bundle; pass --force to replace it")


def _feeds(io: dict, rng: np.random.Generator, case: int) -> dict:
    """Seeded inputs for a graph from its static I/O description."""
    feeds = {}
    for t in io["inputs"]:
        shape, name = t["shape"], t["name"]
        if t["dtype"] in ("int64", "int32"):
            feeds[name] = np.full(shape, (900, 50)[case % 2], dtype=t["dtype"])
        elif name == contract.UNET.inputs[4].name:  # guidance_scale
            feeds[name] = np.full(shape, (contract.DEFAULT_GUIDANCE, 1.0)[case % 2], dtype=np.float32)
        elif name == contract.UNET.inputs[1].name:  # the latent hole mask: 0 or 1
            feeds[name] = (rng.random(shape) > 0.6).astype(np.float32)
        elif name == contract.VAE_ENCODER.inputs[0].name:  # an image in [-1, 1]
            feeds[name] = rng.uniform(-1, 1, shape).astype(np.float32)
        else:
            feeds[name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


def session_entries(precision: str) -> dict:
    """The session config entries a graph of a ``precision`` bundle needs."""
    style, _ = OPTIMIZATION[precision]
    return {**SESSION_REQUIRED, **(SESSION_RUNTIME_STYLE if style == "Runtime" else {})}


def _as_declared(session, feeds: dict) -> dict:
    """``feeds`` in the integer types ``session``'s inputs declare (the rewritten UNet takes an int32
    timestep, its source graph int64)."""
    types = {i.name: i.type for i in session.get_inputs()}
    return {k: v.astype(np.int64 if types.get(k) == "tensor(int64)" else np.int32) if v.dtype.kind == "i" else v
            for k, v in feeds.items()}


def _rel_l2(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    err = float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(a.ravel()), 1e-30))
    return err if np.isfinite(err) else float("inf")


def rewrite_graph(spec: contract.GraphSpec, static_path: Path, before_path: Path, names, precision: str,
                  num_timesteps: int, threads: int = 0) -> dict:
    """Apply the mobile rewrites ``names`` to ``static_path`` in place (keeping the graph before them at
    ``before_path``) behind the rewrite gate; returns what changed and the gate's figures."""
    import onnx

    from moebius_edge.mobile import rewrite, static

    os.replace(static_path, before_path)
    proto = onnx.load(str(before_path))
    changes = rewrite.apply(proto, names, num_timesteps=num_timesteps)
    onnx.save_model(proto, str(static_path))
    del proto
    io = static.graph_io(static_path)
    rng = np.random.default_rng(PARITY_SEED)
    # .onnx: no entries; optimised at the converter's level, as the parity gate does
    a, b = (ort_session(p, {}, threads, OPTIMIZATION[precision][1]) for p in (before_path, static_path))
    worst = 0.0
    for case in range(2 if spec is contract.UNET else 1):
        feeds = _feeds(io, rng, case)
        worst = max(worst, _rel_l2(a.run(spec.output_names, _as_declared(a, feeds))[0],
                                   b.run(spec.output_names, _as_declared(b, feeds))[0]))
    tol = REWRITE_REL_L2[precision]
    if not worst <= tol:
        raise UserError(f"{spec.key}: the mobile rewrites ({', '.join(changes)}) change its output by relative L2 "
                        f"{worst:.3g}, beyond {tol:g}; bundle with --rewrites none; nothing was written")
    return {"applied": changes, "gate": {"rel_l2": worst, "tolerance": tol,
                                         "reference": "the static graph before the rewrites, onnxruntime CPU"}}


def ort_session(path, entries: dict, threads: int = 0, level: str = "all"):
    """An ORT-format session as a device app creates it (CPU EP here); ``level``: the graph
    optimisation level ("basic", "extended", "all") for an .onnx graph."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    for k, v in entries.items():
        so.add_session_config_entry(k, v)
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.enable_mem_pattern = False  # as the runtime's sessions (runtime/session.py): a lower peak at 512²
    return ort.InferenceSession(str(path), so, providers=[contract.PROVIDERS["cpu"]])


def parity(models_folder: models.ModelsFolder, spec: contract.GraphSpec, ort_path: Path, io: dict,
           precision: str, threads: int = 0) -> dict:
    """The .ort graph against its source graph, optimised at the converter's level, on seeded inputs;
    raises beyond the tolerance."""
    cases = 2 if spec is contract.UNET else 1
    rng = np.random.default_rng(PARITY_SEED)
    level = OPTIMIZATION[precision][1]
    try:
        src = ort_session(models_folder.graph_path(spec), {}, threads, level)
    except Exception as e:  # noqa: BLE001 - verified by hash, yet not loadable by this onnxruntime
        raise UserError(f"onnxruntime cannot load the source {spec.key} graph {models_folder.graph_path(spec)}: "
                        f"{str(e).splitlines()[0]}; nothing was written") from None
    try:
        dst = ort_session(ort_path, session_entries(precision), threads)
    except Exception as e:  # noqa: BLE001 - an .ort file this onnxruntime cannot load
        raise UserError(f"onnxruntime cannot load the ORT-format {spec.key} graph it wrote: "
                        f"{str(e).splitlines()[0]}; nothing was written") from None
    worst = 0.0
    for case in range(cases):
        feeds = _feeds(io, rng, case)
        a = src.run(spec.output_names, {k: v.astype(np.int64) if v.dtype.kind == "i" else v for k, v in feeds.items()})
        worst = max(worst, _rel_l2(a[0], dst.run(spec.output_names, _as_declared(dst, feeds))[0]))
    tol = PARITY_REL_L2[precision]
    result = {"rel_l2": worst, "tolerance": tol, "reference": f"{precision} graph of the models folder, "
              f"onnxruntime CPU, optimisation level {level}", "cases": cases}
    if not worst <= tol:
        raise UserError(f"{spec.key}: the ORT-format graph differs from its source by relative L2 {worst:.3g}, "
                        f"beyond {tol:g}; nothing was written")
    return result


def _rules() -> tuple:
    """(preprocessing, postprocessing) rules of bundle.json: what the app does around the graphs."""
    f = contract.VAE_FACTOR
    pre = {
        "image_scaling": {"layout": "NCHW, RGB, batch 1", "formula": "x = u8 / 255 * 2 - 1, computed in float64 and stored "
                                                               "as float32"},
        "mask_binarisation": {"threshold": contract.MASK_THRESHOLD, "rule": "hole where the mask byte >= threshold (128 is "
                                                               "hole, 127 is not); 255 = fill"},
        "fidelity": {
            "default": contract.DEFAULT_FIDELITY,
            "modes": {
                "complete": {
                    "native_hole": "per axis (width first): area overlap when shrinking (OpenCV INTER_AREA), linear "
                                   "when enlarging, on the float hole; a native pixel is hole when its coverage > 0",
                    "grow": f"every {f}x{f} cell that holds a hole pixel becomes hole entirely",
                    "paste_weights": "B = GaussianBlur_r(hole * 255); W = min(2 * B, 255); W = 255 on every hole "
                                     "pixel"},
                "official": {
                    "native_hole": "the crop's 0/255 hole resized with Pillow's BOX filter (rounded to uint8), then "
                                   ">= threshold; the identity at the native size",
                    "grow": "none",
                    "paste_weights": "W = GaussianBlur_r(hole * 255)"},
            },
        },
        "masked_image": "masked = x * (1 - hole), hole as float32 0/1 at the native size",
        "latent_mask": {"rule": f"the top-left pixel of every {f}x{f} cell: m_lat[i, j] = hole[{f}i, {f}j]",
                        "stride": f, "dtype": "float32"},
        "random_draws": {"order": ["eps_posterior_image", "eps_posterior_masked", "noise_base", "noise_offset_draw"],
                  "shapes": {"eps_posterior_image": "latent", "eps_posterior_masked": "latent",
                             "noise_base": "latent", "noise_offset_draw": [1, contract.LATENT_CHANNELS, 1, 1]},
                  "distribution": "standard normal, float32; the runtime draws them with NumPy's "
                                  "default_rng(seed).standard_normal in this order (an app may use any generator)"},
        "start_latent": "noise = noise_base + noise_offset * noise_offset_draw (broadcast); "
                        "x = sqrt(alpha_start) * z_img + sqrt(1 - alpha_start) * noise, float32",
        "crop": {"margin": contract.DEFAULT_MARGIN, "min_margin_px": contract.DEFAULT_MIN_MARGIN,
                 "rule": "a square around the hole's box grown by max(min_margin, round(margin * longer side)), at "
                         "least the native size, inside the photo when it fits; resized to the native size with "
                         "Pillow's BOX filter when shrinking and LANCZOS when enlarging (docs/mobile.md §5)"},
    }
    post = {
        "to_uint8": "u8 = uint8(y * 255) with truncation (not rounding), NCHW -> HWC; non-finite values -> 0",
        "feather": {"radius_native_px": contract.PASTE_BLUR_RADIUS,
                    "radius": "r = radius_native_px * (crop width / native, crop height / native)",
                    "blur": "Pillow ImageFilter.GaussianBlur: an extended box blur (3 box passes), not an exact "
                            "Gaussian; docs/mobile.md §4 has the exact port"},
        "blend": "M = W / 255; out = uint8((R / 255 * M + (1 - M) * I / 255) * 255) in float64, truncated; "
                 "where W = 0 this is I exactly",
        "resize_back": "the native result resized to the crop's size with Pillow's LANCZOS (identity at native size)",
    }
    return pre, post


def bundle_manifest(m: models.ModelsFolder, target: str, precision: str, graphs: dict, ort_version: str,
                    format_version: str) -> dict:
    """The content of bundle.json."""
    sched = DDIMSchedule.create(m.alphas_cumprod, contract.DEFAULT_STEPS, contract.DEFAULT_STRENGTH)
    pre, post = _rules()
    key = contract.manifest_key
    scaling = m.get(contract.META_SCALING_FACTOR)
    style, level = OPTIMIZATION[precision]
    session = {"config_entries": session_entries(precision), "recommended_config_entries": dict(SESSION_RECOMMENDED),
               **EXECUTION_PROVIDERS[target]}
    for g in graphs.values():
        g["session"] = session
    out = {
        "bundle_version": contract.BUNDLE_VERSION,
        key(contract.META_CONTRACT_VERSION): contract.CONTRACT_VERSION,
        key(contract.META_TOOLKIT_VERSION): __version__,
        "target": target,
        key(contract.META_PRECISION): precision,
        "onnxruntime": {
            "writer_version": ort_version, "ort_format_version": format_version,
            "min_runtime_version": ".".join(ort_version.split(".")[:2]),
            "note": "ONNX Runtime reads ORT-format files written by the same or an older release only: ship "
                    "onnxruntime-android / onnxruntime-objc / onnxruntime-c at min_runtime_version or newer",
            "optimization_style": style, "optimization_level": level, "target_platform": "arm",
            "required_operators_config": "required_operators.config"},
        key(contract.META_IMAGE_SIZE): m.image_size,
        key(contract.META_LATENT_SIZE): m.latent_size,
        "latent_channels": contract.LATENT_CHANNELS,
        key(contract.META_SCALING_FACTOR): {"value": scaling, "informational": True,
                                            "note": "applied inside both VAE graphs; the app never uses it"},
        key(contract.MANIFEST_GRAPHS): graphs,
        "run_order": [s.key for s in RUN_ORDER],
        "sampling": {
            "steps": contract.DEFAULT_STEPS, "strength": contract.DEFAULT_STRENGTH,
            "guidance": contract.DEFAULT_GUIDANCE, "noise_offset": contract.NOISE_OFFSET,
            "schedule": {"timesteps": [int(t) for t in sched.timesteps],
                         "alpha_t": [float(a) for a in sched.alpha_t],
                         "alpha_prev": [float(a) for a in sched.alpha_prev],
                         "alpha_start": float(sched.alpha_start),
                         "timestep_range": [0, len(m.alphas_cumprod) - 1],
                         "dtype": "float32 values written as decimals: parse as double, then round to float32"},
            "step": SCHEDULE_NOTE,
            key(contract.META_SCHEDULER): m.get(contract.META_SCHEDULER) or contract.scheduler_metadata(),
            contract.MANIFEST_ALPHAS_CUMPROD: [float(a) for a in m.alphas_cumprod],
        },
        "preprocessing": pre,
        "postprocessing": post,
        key(contract.META_PROVENANCE): {
            key(contract.META_PROVENANCE): m.provenance,
            key(contract.META_WEIGHTS_SHA256): m.get(contract.META_WEIGHTS_SHA256, ""),
            key(contract.META_MODEL_CONFIG): m.get(contract.META_MODEL_CONFIG),
            key(contract.META_PARITY): m.get(contract.META_PARITY),
            "models_precision": m.precision,
            contract.MANIFEST_SOURCE_GRAPHS: {k: g["source"][contract.GRAPH_SHA256] for k, g in graphs.items()},
        },
        key(contract.META_LICENSES): m.get(contract.META_LICENSES) or contract.LICENSES,
        contract.MANIFEST_QUANTIZE_GATE: m.quantize_gate,
        "report": {"markdown": REPORT_MD, "json": REPORT_JSON},
    }
    return out


def build_bundle(models_dir, target: str, out, *, precision: str | None = None, force: bool = False,
                 include_onnx: bool = False, threads: int = 0, rewrites: str | None = None) -> dict:
    """Write the bundle for ``target`` into ``out``; returns bundle.json's content. ``rewrites``: the
    mobile rewrites as ``--rewrites`` takes them (None: the target's default)."""
    from moebius_edge.mobile import ort_tools, report, rewrite, static

    if target not in contract.BUNDLE_TARGETS:
        raise UserError(f"unknown target {target!r}; choose one of {', '.join(contract.BUNDLE_TARGETS)}")
    names = rewrite.parse(rewrites, target)
    precision = precision or _default_precision(target)
    out = Path(out)
    check_output(out, force)
    t0 = time.perf_counter()
    m = models.open_models(models_dir, precision)
    m.verify()
    if target == "ios" and precision == "int8":
        log.warning("ios with int8: the CoreML EP has no QDQ kernels, so the int8 graphs run on the CPU EP; "
                    "fp16 is the iOS default")
    staged = models.staging_folder(out.parent if str(out.parent) else Path("."), "bundle")
    try:
        src_dir = staged / ONNX_SUBDIR
        src_dir.mkdir()
        statics, graphs = {}, {}
        for spec in contract.GRAPHS:
            t = time.perf_counter()
            statics[spec.key] = src_dir / f"{spec.key}.onnx"
            graphs[spec.key] = {"static": static.make_static(m, spec, statics[spec.key])}
            log.info("%s: static graph in %.1f s", spec.key, time.perf_counter() - t)
        before_dir = staged / ".before-rewrites"
        before_dir.mkdir()
        for spec in contract.GRAPHS:
            t = time.perf_counter()
            r = rewrite_graph(spec, statics[spec.key], before_dir / f"{spec.key}.onnx", names, precision,
                              len(m.alphas_cumprod), threads)
            graphs[spec.key]["rewrites"] = r
            log.info("%s: mobile rewrites %s in %.1f s, gate relative L2 %.2e", spec.key,
                     ", ".join(r["applied"]) or "(none apply)", time.perf_counter() - t, r["gate"]["rel_l2"])
        t = time.perf_counter()
        style, level = OPTIMIZATION[precision]
        converted = ort_tools.convert_to_ort(src_dir, staged, [s.key for s in contract.GRAPHS], style=style,
                                             level=level)
        log.info("ORT-format conversion in %.1f s", time.perf_counter() - t)
        import onnxruntime

        formats = set()
        for spec in contract.GRAPHS:
            path = converted["files"][spec.key]
            io = static.graph_io(statics[spec.key])
            t = time.perf_counter()
            gate = parity(m, spec, path, io, precision, threads)
            log.info("%s parity: relative L2 %.2e (tolerance %.0e, %.1f s)", spec.key, gate["rel_l2"],
                     gate["tolerance"], time.perf_counter() - t)
            formats.add(ort_tools.ort_format_version(path))
            src_entry = m.entry(spec)
            graphs[spec.key].update({
                **models.graph_entry(path, staged), **io,
                "source": {contract.GRAPH_FILE: os.path.relpath(m.graph_path(spec), m.root),
                           contract.GRAPH_SHA256: src_entry[contract.GRAPH_SHA256]},
                contract.manifest_key(contract.META_PARITY): gate})
        t = time.perf_counter()
        probe = ort_tools.probe_graphs({k: (statics[k], converted["files"][k]) for k in statics},
                                       staged / ".probe.json")
        before = ort_tools.probe_graphs({k: (before_dir / f"{k}.onnx", "-") for k in statics}, staged / ".probe.json")
        (staged / ".probe.json").unlink()
        shutil.rmtree(before_dir)
        log.info("execution-provider probe in %.1f s", time.perf_counter() - t)
        changes = report.converter_changes(probe)
        for key, c in changes.items():
            graphs[key]["converter_changes"] = c
        if precision == "fp16" and any(c["casts_added"] for c in changes.values()):
            log.warning("the ORT-format converter ran the fp16 graphs through this machine's CPU EP and added %d "
                        "Casts to float32 around operators without a float16 kernel here (bundle-report.md)",
                        sum(c["casts_added"] for c in changes.values()))
        manifest = bundle_manifest(m, target, precision, graphs, onnxruntime.__version__, ",".join(sorted(formats)))
        manifest["mobile_rewrites"] = {"applied": list(names), "available": list(rewrite.REWRITES),
                                       "default_for_target": list(rewrite.DEFAULT_REWRITES[target]),
                                       "what": "mobile/rewrite.py; docs/mobile.md §3"}
        report.write(staged, manifest, probe, before)
        if not include_onnx:
            shutil.rmtree(src_dir)
        else:
            manifest["static_onnx"] = {k: f"{ONNX_SUBDIR}/{p.name}" for k, p in statics.items()}
        (staged / contract.BUNDLE_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        models.replace_folder(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    log.info("bundle %s written in %.1f s", out, time.perf_counter() - t0)
    return manifest
