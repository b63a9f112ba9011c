"""The runtime needs only the base install: importing it never pulls in torch & co., and every
module it imports is the standard library, the package itself or a base dependency declared in
pyproject.toml."""
import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "runtime"
HEAVY = ("torch", "diffusers", "onnx", "onnxsim", "onnxscript", "safetensors", "huggingface_hub")
# Modules of the runtime package that run on a base install (the CLI commands for the heavy stages
# import their extras lazily, inside the command, through `commands.require`).
BASE_MODULES = ("moebius_edge", "moebius_edge.cli", "moebius_edge.contract", "moebius_edge.errors",
                "moebius_edge.scheduler", "moebius_edge.imageio", "moebius_edge.crop", "moebius_edge.session",
                "moebius_edge.models", "moebius_edge.masks", "moebius_edge.hub",
                "moebius_edge.pipeline", "moebius_edge.commands.run", "moebius_edge.commands.info",
                "moebius_edge.commands.run_dataset")
# Files under runtime/ whose function-level imports are checked too (everything `run` executes).
CORE_FILES = ("__init__.py", "cli.py", "contract.py", "errors.py", "scheduler.py", "imageio.py", "crop.py",
              "session.py", "models.py", "masks.py", "pipeline.py", "commands/__init__.py", "commands/run.py",
              "commands/info.py")


def test_importing_the_runtime_imports_no_heavy_package():
    code = ("import sys, importlib\n"
            f"for m in {BASE_MODULES!r}: importlib.import_module(m)\n"
            "from moebius_edge import Inpainter\n"
            "from moebius_edge.cli import build_parser\n"
            "build_parser()\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# The ray extra (run-dataset): Ray and what it brings along.
RAY_EXTRA = ("ray", "pyarrow", "pandas")


def test_the_base_install_never_imports_ray():
    """Importing the runtime and every command's --help neither import Ray nor need it."""
    code = ("import contextlib, importlib, io, json, sys\n"
            "if sys.argv[1] == 'blocked':\n"
            "    sys.modules['ray'] = None  # as on a base install: `import ray` fails\n"
            f"for m in {BASE_MODULES!r}: importlib.import_module(m)\n"
            "from moebius_edge.cli import COMMANDS, main\n"
            "codes = []\n"
            "for argv in [['--help'], *([c.replace('_', '-'), '--help'] for c in COMMANDS)]:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n"
            "            main(argv)\n"
            "        except SystemExit as e:\n"
            "            codes.append(e.code)\n"
            f"print(json.dumps([codes, len(COMMANDS), sorted(m for m in {RAY_EXTRA!r} if sys.modules.get(m))]))\n")
    for mode in ("installed", "blocked"):
        proc = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        import json

        codes, commands, imported = json.loads(proc.stdout)
        assert len(codes) == commands + 1 and set(codes) == {0} and imported == [], (mode, proc.stdout)


def test_models_module_and_quantize_package_work_with_torch_blocked(tmp_path):
    """quantize and bundle write models folders through moebius_edge.models: it must work where
    importing torch fails outright, not merely where torch is not imported."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {HEAVY[:1]!r}: raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import json, pathlib\n"
        "from moebius_edge import models, contract\n"
        "import moebius_edge.quantize\n"
        f"folder = pathlib.Path({str(tmp_path)!r})\n"
        "(folder / 'g.onnx').write_bytes(b'x' * 10)\n"
        "entry = models.graph_entry(folder / 'g.onnx', folder)\n"
        "models.write_manifest(folder, {contract.MANIFEST_GRAPHS: {'g': entry}})\n"
        "print(json.dumps(models.read_manifest(folder)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    from moebius_edge import contract

    entry = json.loads(proc.stdout)[contract.MANIFEST_GRAPHS]["g"]
    assert entry[contract.GRAPH_BYTES] == 10 and len(entry[contract.GRAPH_SHA256]) == 64


def _declared_base_dependencies() -> set:
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    deps = tomllib.loads(text)["project"]["dependencies"]
    return {_norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in deps}


# Interchangeable builds of a base dependency (GPU users swap onnxruntime for onnxruntime-gpu).
ALIASES = {"onnxruntime-gpu": "onnxruntime", "onnxruntime-directml": "onnxruntime",
           "opencv-python": "opencv-python-headless", "opencv-contrib-python": "opencv-python-headless",
           "opencv-contrib-python-headless": "opencv-python-headless"}


def _norm(name: str) -> str:
    name = re.sub(r"[-_.]+", "-", name).lower()
    return ALIASES.get(name, name)


def _imports(path: Path, top_level_only: bool) -> set:
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_runtime_imports_are_base_dependencies():
    base = _declared_base_dependencies()
    dists = importlib.metadata.packages_distributions()
    found = {}
    for path in sorted(RUNTIME.rglob("*.py")):
        rel = path.relative_to(RUNTIME).as_posix()
        for name in _imports(path, top_level_only=rel not in CORE_FILES):
            found.setdefault(name, set()).add(rel)
    bad = []
    for name, files in sorted(found.items()):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            continue
        if top == "moebius_edge":
            if name.startswith(("moebius_edge.export", "moebius_edge.quantize")):
                bad.append(f"{name} (heavy stage) in {sorted(files)}")
            continue
        owners = {_norm(d) for d in dists.get(top, [])}
        if not owners & base:
            bad.append(f"{name} ({', '.join(sorted(owners)) or 'not installed'}) in {sorted(files)}")
    assert not bad, "runtime imports outside the base dependencies:\n" + "\n".join(bad)
