"""ONNX Runtime's mobile tooling, run in child processes.

``onnxruntime.tools`` imports torch whenever torch is installed (its package ``__init__``), and its
usability checker configures logging when it is imported; neither belongs in our process. So the
converter (``python -m onnxruntime.tools.convert_onnx_models_to_ort``) and our probe of the
usability checker (``moebius_edge.mobile.ep_probe``) run as ``python -m`` equivalents in a child
process. The child hides torch from ``importlib`` first (``sys.modules['torch'] = None``): the
tools only *look* for it, and importing it would cost seconds and half a gigabyte for nothing.

``ort_format_version`` reads the format version recorded inside an ``.ort`` file without importing
the tools. ONNX Runtime reads ORT-format files written by the same or an older release, never by a
newer one: bundle.json records the writer's version as the oldest runtime to ship.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

from moebius_edge import contract
from moebius_edge.errors import UserError

log = logging.getLogger(__name__)

CONVERTER = "onnxruntime.tools.convert_onnx_models_to_ort"
PROBE = "moebius_edge.mobile.ep_probe"
# How the converter names its outputs (convert_onnx_models_to_ort._optimization_suffix): ".<level>"
# unless the level is "all", then ".with_runtime_opt" for the "Runtime" style; renamed in the bundle.
RUNTIME_STYLE_SUFFIX = ".with_runtime_opt"
LEVEL_ENV = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"  # the converter's only level setting
CONFIG_STEM = "required_operators"
CONFIG_SUFFIX = ".config"
ORT_FILE_IDENTIFIER = b"ORTM"  # flatbuffer file identifier of ORT-format models


def module_command(module: str, args) -> list:
    """``python -m module args`` in a child process that cannot import torch."""
    code = ("import runpy, sys\n"
            "sys.modules['torch'] = None\n"
            f"sys.argv[0] = {module!r}\n"
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
    return [sys.executable, "-c", code, *map(str, args)]


def _run(module: str, args, what: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = module_command(module, args)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}  # the tools' deprecation chatter is not ours
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise UserError(f"{what} failed: {lines[-1] if lines else f'exit code {proc.returncode}'}")
    return proc


def convert_to_ort(onnx_dir: Path, out_dir: Path, keys, *, style: str = "Runtime", level: str = "all",
                   target_platform: str = "arm") -> dict:
    """Convert every ``<key>.onnx`` of ``onnx_dir`` to ``out_dir/<key>.ort`` with one optimisation
    ``style`` ("Runtime" or "Fixed") and ``level`` ("basic", "extended", "all"), and write one
    ``required_operators.config`` for all of them.

    "Runtime" style: basic optimisations are applied now, and the others are saved as records for
    the device to replay (``session.enable_saved_runtime_optimizations``) on the nodes that
    NNAPI/CoreML/XNNPACK leave to the CPU. "Fixed" bakes them in for the CPU EP, which hides the
    fused nodes (``com.microsoft`` kernels) from the mobile EPs. ``target_platform="arm"`` allows
    the int8 QDQ fusions that ARM kernels run (both targets are ARM).
    Returns {"files": {key: path}, "config": path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _run(CONVERTER, [onnx_dir, "--output_dir", out_dir, "--optimization_style", style,
                     "--target_platform", target_platform], "onnxruntime's ORT-format converter",
         env={LEVEL_ENV: level})
    suffix = (f".{level}" if level != "all" else "") + (RUNTIME_STYLE_SUFFIX if style == "Runtime" else "")
    files = {}
    for key in keys:
        produced = out_dir / f"{key}{suffix}{contract.ORT_MODEL_SUFFIX}"
        if not produced.is_file():
            raise UserError(f"onnxruntime's converter wrote no {produced.name}; its output naming changed "
                            f"(this toolkit was written against onnxruntime 1.32)")
        files[key] = out_dir / f"{key}{contract.ORT_MODEL_SUFFIX}"
        os.replace(produced, files[key])
    produced = out_dir / f"{CONFIG_STEM}{suffix}{CONFIG_SUFFIX}"
    if not produced.is_file():
        raise UserError(f"onnxruntime's converter wrote no {produced.name}")
    config = out_dir / f"{CONFIG_STEM}{CONFIG_SUFFIX}"
    # The converter lists the absolute paths of its (temporary) inputs in comment lines: replace
    # them with the bundle's own file names, so the file is the same wherever it was built.
    body = [ln for ln in produced.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    header = ["# Operators of the ORT-format graphs of this bundle, for a reduced-operator ONNX Runtime build",
              "# (build.py --include_ops_by_config; docs/mobile.md). Graphs:",
              *(f"# - {files[k].name}" for k in keys)]
    config.write_text("\n".join(header + body) + "\n")
    produced.unlink()
    return {"files": files, "config": config}


def ort_format_version(path) -> str:
    """The ORT-format version an ``.ort`` file records (root table field 0, ``ort_version``: despite
    its name, the format's version, "6" since onnxruntime 1.14, not the runtime's)."""
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if len(data) < 8 or data[4:8] != ORT_FILE_IDENTIFIER:
            raise UserError(f"{path} is not an ORT-format model")
        root = struct.unpack_from("<I", data, 0)[0]
        vtable = root - struct.unpack_from("<i", data, root)[0]
        vt_size = struct.unpack_from("<H", data, vtable)[0]
        field = struct.unpack_from("<H", data, vtable + 4)[0] if vt_size > 4 else 0
        if not field:
            return ""
        at = root + field
        at += struct.unpack_from("<I", data, at)[0]
        length = struct.unpack_from("<I", data, at)[0]
        return bytes(data[at + 4:at + 4 + length]).decode("utf-8", "replace")


def probe_graphs(graphs: dict, out_json: Path) -> dict:
    """Run ``ep_probe`` on {key: (static .onnx path, .ort path)} in a child process; returns its JSON."""
    args = [out_json]
    for key, (onnx_path, ort_path) in graphs.items():
        args += [key, onnx_path, ort_path]
    _run(PROBE, args, "the execution-provider probe")
    return json.loads(Path(out_json).read_text())
