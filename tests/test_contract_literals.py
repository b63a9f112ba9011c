"""The contract is the single source of shared names: none is retyped as a string literal.

Graph file names and the manifest file name may not appear as a literal anywhere outside
``runtime/contract.py``. ONNX input/output names, metadata keys and manifest fields are ordinary
words ("image", "mask", "file"), so they are flagged where they act as names: dict keys,
subscripts (``manifest["graphs"]``), comparisons and ``.get("...")``. Tests are not scanned: they
read the official reference arrays, whose keys happen to match I/O names, and they must be free
to spell out what they check.
"""
import ast
from pathlib import Path

import pytest

from moebius_edge import contract

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("runtime", "export", "quantize", "scale", "mobile", "benchmarks")
CONTRACT = ROOT / "runtime" / "contract.py"
# (file, name): why the word is not the contract's name there.
ALLOWED = {
    ("export/config.py", "image_size"): "a field of the official moebius.yaml schema",
    ("runtime/imageio.py", "image"): "the word for the photo in messages (\"image\" or \"mask\" file)",
    ("runtime/commands/run.py", "mask"): "the --json record's field for the mask file the user gave",
}


def _file_names() -> set:
    return {g.file for g in contract.GRAPHS} | {contract.MANIFEST_FILE}


def _names() -> set:
    io = {t.name for g in contract.GRAPHS for t in (*g.inputs, *g.outputs)}
    meta = {v for k, v in vars(contract).items() if k.startswith("META_") and isinstance(v, str)}
    manifest = {v for k, v in vars(contract).items()
                if k.startswith(("MANIFEST_", "GRAPH_")) and isinstance(v, str)} - {contract.MANIFEST_FILE}
    return io | meta | {contract.manifest_key(m) for m in meta} | manifest


def _name_uses(tree: ast.AST):
    """String constants used as names: dict keys, subscripts, comparisons, .get()/.pop() keys."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            yield from (k for k in node.keys if k is not None)
        elif isinstance(node, ast.Subscript):
            yield node.slice
        elif isinstance(node, ast.Compare):
            yield node.left
            yield from node.comparators
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("get", "pop", "setdefault") and node.args):
            yield node.args[0]


def violations(path: Path) -> list:
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(ROOT).as_posix()
    files, names = _file_names(), _names() - {n for f, n in ALLOWED if f == rel}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in files:
            out.append(f"{rel}:{node.lineno}: file name {node.value!r}")
    for node in _name_uses(tree):
        if isinstance(node, ast.Constant) and node.value in names:
            out.append(f"{rel}:{node.lineno}: contract name {node.value!r}")
    return out


def _sources() -> list:
    return sorted(p for d in SCANNED if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.py") if p != CONTRACT)


def test_no_contract_name_is_retyped():
    found = [v for p in _sources() for v in violations(p)]
    assert not found, "use the contract's constant instead:\n" + "\n".join(found)


@pytest.mark.parametrize("snippet", [
    'path = folder / "unet.onnx"',
    'sess.run(None, {"latent": x})',
    'size = entry["bytes"]',
    'if key == "provenance": pass',
    'manifest.get("graphs")',
])
def test_the_check_catches_a_retyped_name(tmp_path, snippet):
    src = ROOT / "runtime" / "_probe_for_literal_test.py"  # inside the scanned tree, for relative_to
    try:
        src.write_text(snippet + "\n")
        assert violations(src)
    finally:
        src.unlink()


def test_ordinary_words_elsewhere_are_allowed(tmp_path):
    src = ROOT / "runtime" / "_probe_for_literal_test.py"
    try:
        src.write_text('raise ValueError("mask not found: image is fine")\nopen_mask(path, "mask")\n')
        assert violations(src) == []
    finally:
        src.unlink()
