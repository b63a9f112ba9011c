"""Models folders: reading, checking and writing them. Pure Python + NumPy, never torch.

A models folder (docs/contract.md §5) holds the FP32 graphs of ``contract.GRAPHS`` and
``manifest.json`` at its top, and each quantized variant in ``contract.precision_subdir(p)`` with
a manifest of its own. Export, quantize, bundle and the runtime all go through this module, so
the folder has one reader and one writer:

* reading: ``open_models`` checks a variant cheaply (contract version, precision, sizes, the ᾱ
  table, graph files present with their recorded sizes, and for a variant that its FP32 source
  is still the one beside it); ``ModelsFolder.verify`` hashes every file against the manifest;
* writing: ``graph_entry`` describes a graph file (and its external-data sidecar) for a
  manifest, ``write_manifest`` writes one atomically, ``replace_folder`` swaps a staged variant
  folder into place, ``purge_variants`` removes the variants of a replaced FP32 export;
  ``variant_manifest`` and ``publish_variant`` are what ``quantize`` writes a variant with (its
  manifest also carries the quality gate's verdict, ``ModelsFolder.quantize_gate``).

A variant may keep a graph unchanged (e.g. an FP32 VAE in the int8 folder): its manifest then
references the FP32 file (``"../vae_decoder.onnx"``) instead of holding a copy.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moebius_edge import contract
from moebius_edge.errors import UserError

log = logging.getLogger(__name__)

def sha256_file(path, progress: bool = False) -> str:
    """Hex SHA-256 of a file, streamed (graphs and checkpoints are ~1 GB); a progress bar where
    hashing takes noticeable time and ``progress`` is asked for."""
    from tqdm.auto import tqdm

    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}",
                                     disable=not progress or size < (64 << 20)) as bar:
        while block := f.read(1 << 22):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def check_alphas_cumprod(values, where: str) -> np.ndarray:
    """The ᾱ table as float32, or a one-line error: 1000 finite values, strictly decreasing in (0, 1).

    An edited table would not crash anything: it would quietly produce garbage pixels."""
    if not isinstance(values, (list, tuple)) or len(values) != contract.NUM_TRAIN_TIMESTEPS:
        raise UserError(f"{where}: {contract.MANIFEST_ALPHAS_CUMPROD!r} must hold {contract.NUM_TRAIN_TIMESTEPS} values")
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {contract.MANIFEST_ALPHAS_CUMPROD!r} holds non-numbers") from None
    if not (np.isfinite(a).all() and (a > 0).all() and (a < 1).all() and (np.diff(a) < 0).all()):
        raise UserError(f"{where}: {contract.MANIFEST_ALPHAS_CUMPROD!r} is not a noise schedule (needs finite "
                        f"values strictly decreasing in (0, 1)); export the models again")
    return a.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class ModelsFolder:
    """A checked models folder for one precision."""

    root: Path  # the folder the user named (holds the fp32 graphs)
    folder: Path  # the folder of this precision's graphs and manifest
    precision: str
    manifest: dict

    def get(self, meta_key: str, default=None):
        return self.manifest.get(contract.manifest_key(meta_key), default)

    @property
    def image_size(self) -> int:
        return int(self.get(contract.META_IMAGE_SIZE))

    @property
    def latent_size(self) -> int:
        return int(self.get(contract.META_LATENT_SIZE))

    @property
    def provenance(self) -> str:
        return str(self.get(contract.META_PROVENANCE, ""))

    @property
    def quantize_gate(self) -> dict | None:
        """A variant's quality-gate record (``contract.MANIFEST_QUANTIZE_GATE``); None for fp32."""
        gate = self.manifest.get(contract.MANIFEST_QUANTIZE_GATE)
        return gate if isinstance(gate, dict) else None

    @property
    def gate_advisory(self) -> bool:
        """True for a variant whose gate was not enforced (random-init weights): its quality
        figures were printed, not checked."""
        gate = self.quantize_gate
        return gate is not None and gate.get(contract.GATE_STATUS) == contract.GATE_ADVISORY

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.asarray(self.manifest[contract.MANIFEST_ALPHAS_CUMPROD], dtype=np.float32)

    def entry(self, spec: contract.GraphSpec) -> dict:
        return self.manifest[contract.MANIFEST_GRAPHS][spec.key]

    def graph_path(self, spec: contract.GraphSpec) -> Path:
        return resolve_in(self.root, self.folder, self.entry(spec)[contract.GRAPH_FILE])

    def files(self, spec: contract.GraphSpec) -> list:
        """[(path, manifest entry)] for a graph and its external-data sidecar, if it has one."""
        entry = self.entry(spec)
        out = [(self.graph_path(spec), entry)]
        if isinstance(entry.get(contract.GRAPH_EXTERNAL_DATA), dict):
            data = entry[contract.GRAPH_EXTERNAL_DATA]
            out.append((resolve_in(self.root, self.folder, data[contract.GRAPH_FILE]), data))
        return out

    def verify(self, keys=None) -> None:
        """Sizes and SHA-256 of the graph files against the manifest (reads every byte once)."""
        for spec in contract.GRAPHS:
            if keys is not None and spec.key not in keys:
                continue
            for path, entry in self.files(spec):
                verify_file(path, entry)


def verify_file(path: Path, entry: dict) -> None:
    """A file's SHA-256 against its manifest entry, or a one-line error."""
    t = time.perf_counter()
    digest = sha256_file(path)
    if digest != entry[contract.GRAPH_SHA256]:
        raise UserError(f"{path} does not match its manifest (SHA-256 {digest[:12]}… instead of "
                        f"{str(entry[contract.GRAPH_SHA256])[:12]}…): the file is corrupt or was "
                        f"replaced; export the models again")
    log.debug("%s: SHA-256 ok (%.2f s)", path.name, time.perf_counter() - t)


def resolve_in(root: Path, folder: Path, name) -> Path:
    """``folder / name``, refused when it leaves the models folder (a manifest is data, not trust).
    Symbolic links are not followed for the check: a Hugging Face cache snapshot is a folder of
    links into the cache's blob store."""
    path = Path(os.path.normpath(os.path.abspath(folder / str(name))))
    if not path.is_relative_to(os.path.normpath(os.path.abspath(root))):
        raise UserError(f"{folder / contract.MANIFEST_FILE} points outside the models folder: {name}")
    return path


def exported_precisions(root) -> list:
    root = Path(root)
    return [p for p in contract.PRECISIONS
            if (root / contract.precision_subdir(p) / contract.MANIFEST_FILE).is_file()]


def read_manifest(folder) -> dict:
    path = Path(folder) / contract.MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} is not a moebius-edge manifest")
    return manifest


def check_file(path: Path, entry: dict, where: Path, what: str) -> None:
    if not isinstance(entry, dict) or not {contract.GRAPH_FILE, contract.GRAPH_SHA256, contract.GRAPH_BYTES} <= set(entry):
        raise UserError(f"{where} has no complete entry for {what}")
    if not path.is_file():
        raise UserError(f"{what} missing: {path}")
    size = path.stat().st_size
    if size != int(entry[contract.GRAPH_BYTES]):
        raise UserError(f"{path} has {size} bytes, the manifest says {entry[contract.GRAPH_BYTES]}: the file is "
                        f"truncated or was replaced; export the models again")


def open_models(models_dir, precision: str = "fp32") -> ModelsFolder:
    """Find and check a models folder for ``precision`` (cheap checks; ``verify()`` hashes)."""
    root = Path(models_dir)
    if not root.is_dir():
        raise UserError(f"models folder not found: {root} (make one with `moebius-edge export`, "
                        f"or pass --models DIR)")
    if precision not in contract.PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(contract.PRECISIONS)}")
    folder = root / contract.precision_subdir(precision)
    if not (folder / contract.MANIFEST_FILE).is_file():
        if precision == "fp32":
            raise UserError(f"{root} has no {contract.MANIFEST_FILE}: not a models folder written by "
                            f"`moebius-edge export`")
        have = exported_precisions(root)
        raise UserError(f"precision {precision} is not exported in {root} (available: "
                        f"{', '.join(have) or 'none'}); run `moebius-edge quantize` or choose another")
    manifest = read_manifest(folder)
    where = folder / contract.MANIFEST_FILE
    version = manifest.get(contract.manifest_key(contract.META_CONTRACT_VERSION))
    if str(version) != str(contract.CONTRACT_VERSION):
        raise UserError(f"{where} was written under contract version {version}, this toolkit reads "
                        f"version {contract.CONTRACT_VERSION}: export the models again with this version")
    got = manifest.get(contract.manifest_key(contract.META_PRECISION), precision)
    if got != precision:
        raise UserError(f"{where} says precision {got!r}, expected {precision!r}")
    for key in (contract.META_IMAGE_SIZE, contract.META_LATENT_SIZE):
        if contract.manifest_key(key) not in manifest:
            raise UserError(f"{where} lacks {contract.manifest_key(key)!r}")
    graphs = manifest.get(contract.MANIFEST_GRAPHS)
    if not isinstance(graphs, dict):
        raise UserError(f"{where} lacks the {contract.MANIFEST_GRAPHS!r} table")
    m = ModelsFolder(root=root, folder=folder, precision=precision, manifest=manifest)
    if m.image_size != m.latent_size * contract.VAE_FACTOR:
        raise UserError(f"{where}: image size {m.image_size} is not {contract.VAE_FACTOR}× the latent "
                        f"size {m.latent_size}")
    check_alphas_cumprod(manifest.get(contract.MANIFEST_ALPHAS_CUMPROD), str(where))
    for spec in contract.GRAPHS:
        entry = graphs.get(spec.key)
        if not isinstance(entry, dict) or contract.GRAPH_FILE not in entry:
            raise UserError(f"{where} has no complete entry for graph {spec.key!r}")
        for path, e in m.files(spec):
            check_file(path, e, where, f"graph {spec.key!r}" if e is entry else f"{spec.key!r} external data")
    if precision != "fp32":
        check_source(m)
    check_onnxruntime(m)
    return m


def _version(text: str) -> tuple:
    """(major, minor) of a version string ("1.18", "1.32.0", "1.20.0.dev20240101")."""
    parts = []
    for atom in str(text).split(".")[:2]:
        digits = "".join(ch for ch in atom if ch.isdigit()) if atom[:1].isdigit() else ""
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (2 - len(parts)))


def check_onnxruntime(m: ModelsFolder, installed: str | None = None) -> None:
    """Refuse a folder whose graphs need a newer ONNX Runtime than the one installed."""
    need = m.manifest.get(contract.MANIFEST_MIN_ONNXRUNTIME)
    if not need:
        return
    if installed is None:
        import onnxruntime

        installed = onnxruntime.__version__
    if _version(installed) < _version(need):
        raise UserError(f"the {m.precision} models in {m.folder} need onnxruntime >= {need} (installed: "
                        f"{installed}); upgrade it: pip install -U onnxruntime")


def source_digests(fp32_manifest: dict) -> dict:
    """{graph key: SHA-256} of the FP32 graphs a variant is made from (its ``source_graphs``). The
    graph file's digest covers a sidecar's weights too: its metadata names them (provenance and
    the checkpoint's SHA-256, ``contract.META_WEIGHTS_SHA256``)."""
    return {k: v[contract.GRAPH_SHA256] for k, v in fp32_manifest[contract.MANIFEST_GRAPHS].items()}


def check_source(variant: ModelsFolder) -> None:
    """Refuse a variant made from other FP32 graphs than those now in its root (a re-export)."""
    recorded = variant.manifest.get(contract.MANIFEST_SOURCE_GRAPHS)
    where = variant.folder / contract.MANIFEST_FILE
    if not isinstance(recorded, dict):
        raise UserError(f"{where} does not record the FP32 graphs it was made from; run "
                        f"`moebius-edge quantize` again")
    fp32 = variant.root / contract.MANIFEST_FILE
    if not fp32.is_file():
        raise UserError(f"{variant.root} has no FP32 {contract.MANIFEST_FILE} beside the {variant.precision} "
                        f"variant; export the models again")
    current = source_digests(read_manifest(variant.root))
    if recorded != current:
        raise UserError(f"the {variant.precision} variant in {variant.folder} was made from other FP32 graphs "
                        f"than those in {variant.root} (re-exported since?); run `moebius-edge quantize` again")


# ---------------------------------------------------------------------------------------------
# Writing


def graph_entry(path, folder) -> dict:
    """The manifest entry of a graph file written in (or referenced from) ``folder``: relative
    file name, SHA-256 and size, and the same for its external-data sidecar if it has one."""
    path, folder = Path(path), Path(folder)
    entry = {contract.GRAPH_FILE: os.path.relpath(path, folder), contract.GRAPH_SHA256: sha256_file(path),
             contract.GRAPH_BYTES: path.stat().st_size}
    sidecar = external_data_path(path)
    if sidecar.is_file():
        entry[contract.GRAPH_EXTERNAL_DATA] = {contract.GRAPH_FILE: os.path.relpath(sidecar, folder),
                                        contract.GRAPH_SHA256: sha256_file(sidecar),
                                        contract.GRAPH_BYTES: sidecar.stat().st_size}
    return entry


def total_bytes(entry: dict) -> int:
    """A graph entry's size on disk: its file and its external-data sidecar, if it has one."""
    sidecar = entry.get(contract.GRAPH_EXTERNAL_DATA)
    return int(entry[contract.GRAPH_BYTES]) + (int(sidecar[contract.GRAPH_BYTES]) if isinstance(sidecar, dict) else 0)


def external_data_path(graph_path) -> Path:
    """Where a graph keeps its weights when they are not in its file: a ``mapped_weights`` graph
    (the UNet), or one over protobuf's 2 GB limit (one sidecar per graph)."""
    graph_path = Path(graph_path)
    return graph_path.with_name(graph_path.name + contract.EXTERNAL_DATA_SUFFIX)


def write_manifest(folder, manifest: dict) -> Path:
    """Write ``folder/manifest.json`` atomically."""
    path = Path(folder) / contract.MANIFEST_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def staging_folder(parent, label: str) -> Path:
    """A private folder inside ``parent`` (same filesystem, so the final moves are renames)."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{label}-", dir=parent))


def replace_folder(staged: Path, dest: Path) -> None:
    """Put a complete staged folder at ``dest``, replacing what was there, by renames only: a
    reader sees the old folder or the new one, never a mix. The staged folder is private while it
    is written (``staging_folder``: 0700); the published one is an ordinary folder (the umask's
    mode), readable wherever its parent is."""
    dest = Path(dest)
    probe = Path(staged) / ".mode"  # a folder made the ordinary way has the umask's mode (os.umask is
    probe.mkdir()                   # process-wide: reading it by setting it would race other threads)
    mode = probe.stat().st_mode & 0o777
    probe.rmdir()
    os.chmod(staged, mode)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(staged, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def variant_manifest(fp32: ModelsFolder, precision: str, folder, graphs: dict, extra: dict | None = None) -> dict:
    """The manifest of a variant being written in ``folder`` (a staging folder directly inside
    the models folder, or the variant's own sub-folder): the FP32 manifest with the variant's
    precision, ``source_graphs`` (the SHA-256 of the FP32 graphs it was made from), a graph entry
    for each file in ``graphs`` ({key: path in ``folder``}) and, for every graph not in
    ``graphs``, a reference to the unchanged FP32 file (``"../vae_decoder.onnx"``, not a copy)."""
    if precision == "fp32" or precision not in contract.PRECISIONS:
        raise ValueError(f"not a variant precision: {precision!r}")
    folder = Path(folder)
    # The streamed decoder's plan stays in the FP32 manifest (its paths are relative to it); a
    # variant whose decoder is the FP32 file finds it there (streamed_decoder.find_plan).
    manifest = {k: v for k, v in fp32.manifest.items()
                if k not in (contract.MANIFEST_QUANTIZE_GATE, contract.MANIFEST_STREAMED_DECODER)}
    manifest[contract.manifest_key(contract.META_PRECISION)] = precision
    manifest[contract.MANIFEST_SOURCE_GRAPHS] = source_digests(fp32.manifest)
    manifest[contract.MANIFEST_GRAPHS] = {
        spec.key: graph_entry(graphs[spec.key] if spec.key in graphs else fp32.graph_path(spec), folder)
        for spec in contract.GRAPHS}
    manifest.update(extra or {})
    return manifest


def publish_variant(staged, root, precision: str) -> Path:
    """Swap a complete staged variant folder (written with ``staging_folder(root, ...)`` and
    ``variant_manifest``) into ``root/<precision>`` by renames; returns the new folder."""
    dest = Path(root) / contract.precision_subdir(precision)
    if dest == Path(root):
        raise ValueError("the fp32 graphs are not a variant")
    replace_folder(Path(staged), dest)
    return dest


def purge_variants(root) -> list:
    """Remove the quantized variants under ``root`` (their FP32 source is being replaced). Only
    folders that hold a manifest are variants: a user's own ``fp16/`` folder is left alone."""
    removed = []
    for precision in contract.PRECISIONS:
        sub = contract.precision_subdir(precision)
        if sub and (Path(root) / sub / contract.MANIFEST_FILE).is_file():
            shutil.rmtree(Path(root) / sub)
            removed.append(precision)
    if removed:
        log.info("removed the stale %s variant%s of %s", ", ".join(removed), "s" if len(removed) > 1 else "", root)
    return removed
