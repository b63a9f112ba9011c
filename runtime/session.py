"""ONNX Runtime sessions for an exported models folder: thin, lazy and checked.

A models folder (written by ``moebius-edge export``) holds ``manifest.json`` and the graphs of
``contract.GRAPHS``; quantized variants live in ``contract.precision_subdir(p)`` with their own
manifest. This module

* reads and checks the manifest (contract version, graph files, sizes and SHA-256 before anything
  runs);
* picks execution providers (``--provider auto|cpu|cuda|coreml|nnapi|xnnpack``) with a CPU
  fallback and logs what actually runs;
* creates each graph's session only when it is first needed and drops it on ``release()``: the
  three fp32 graphs at 512×512 would otherwise hold ~9 GB between them in ORT's arenas;
* checks each graph's metadata (``session.get_modelmeta()``; the base install has no ``onnx``
  package) against the manifest, and feeds inputs by contract name after checking them against
  the session's own declared inputs (Apple ml-stable-diffusion's ``_verify_inputs``).
Constructors never download anything.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moebius_edge import contract
from moebius_edge.errors import UserError

log = logging.getLogger(__name__)

# --provider choices -> ONNX Runtime execution provider names.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
}
PROVIDER_CHOICES = ("auto", *PROVIDERS)
# "auto": the first of these that this onnxruntime build has, then CPU.
AUTO_ORDER = ("cuda", "coreml", "nnapi", "xnnpack")

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(double)": np.float64}


def available_providers() -> list:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_providers(choice="auto") -> list:
    """The execution-provider chain for a ``--provider`` choice, always ending in CPU.

    ``choice`` is a ``PROVIDER_CHOICES`` entry or an explicit list, in order of preference, of
    short names ("cuda") or ONNX Runtime names ("CUDAExecutionProvider"); unavailable ones are
    skipped with a warning."""
    if isinstance(choice, (list, tuple)):
        available = available_providers()
        chain = []
        for c in choice:
            name = PROVIDERS.get(c, c)
            if name == PROVIDERS["cpu"] or name in chain:
                continue
            if name in available:
                chain.append(name)
            else:
                log.warning("%s is not available in this onnxruntime build (it has %s); skipping it",
                            name, ", ".join(available))
        return [*chain, PROVIDERS["cpu"]]
    if choice not in PROVIDER_CHOICES:
        raise UserError(f"unknown provider {choice!r}; choose one of {', '.join(PROVIDER_CHOICES)}")
    available = available_providers()
    cpu = PROVIDERS["cpu"]
    if choice == "auto":
        chain = [PROVIDERS[c] for c in AUTO_ORDER if PROVIDERS[c] in available]
    elif choice == "cpu":
        chain = []
    elif PROVIDERS[choice] in available:
        chain = [PROVIDERS[choice]]
    else:
        log.warning("%s is not available in this onnxruntime build (it has %s); falling back to CPU",
                    PROVIDERS[choice], ", ".join(available))
        chain = []
    return [*chain, cpu]


@dataclass(frozen=True)
class SessionConfig:
    """How sessions are created (one config for all graphs)."""

    provider: str | tuple = "auto"  # a PROVIDER_CHOICES entry, or a tuple of provider names in order
    threads: int = 0  # intra-op threads; 0 lets ONNX Runtime choose (one per physical core)
    low_memory: bool = False  # no CPU memory arena and no memory-pattern planning: slower, smaller


# ---------------------------------------------------------------------------------------------
# Models folder and manifest


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


@dataclass(frozen=True)
class ModelsFolder:
    """A checked models folder for one precision."""

    root: Path  # the folder the user named (holds the fp32 graphs)
    folder: Path  # the folder of this precision's graphs
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
    def alphas_cumprod(self) -> np.ndarray:
        return np.asarray(self.manifest[contract.MANIFEST_ALPHAS_CUMPROD], dtype=np.float32)

    def graph_path(self, spec: contract.GraphSpec) -> Path:
        return self.folder / self.manifest[contract.MANIFEST_GRAPHS][spec.key]["file"]

    def verify(self, keys=None) -> None:
        """Sizes and SHA-256 of the graph files against the manifest (reads every byte once)."""
        for spec in contract.GRAPHS:
            if keys is not None and spec.key not in keys:
                continue
            entry = self.manifest[contract.MANIFEST_GRAPHS][spec.key]
            path = self.graph_path(spec)
            t = time.perf_counter()
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise UserError(f"{path} does not match its manifest (SHA-256 {digest[:12]}… instead of "
                                f"{str(entry['sha256'])[:12]}…): the file is corrupt or was replaced; "
                                f"export the models again")
            log.debug("%s: SHA-256 ok (%.2f s)", path.name, time.perf_counter() - t)


def exported_precisions(root) -> list:
    root = Path(root)
    return [p for p in contract.PRECISIONS
            if (root / contract.precision_subdir(p) / contract.MANIFEST_FILE).is_file()]


def read_manifest(folder: Path) -> dict:
    path = folder / contract.MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} is not a moebius-edge manifest")
    return manifest


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
    alphas = manifest.get(contract.MANIFEST_ALPHAS_CUMPROD)
    if not isinstance(alphas, list) or len(alphas) != contract.NUM_TRAIN_TIMESTEPS:
        raise UserError(f"{where}: {contract.MANIFEST_ALPHAS_CUMPROD!r} must hold "
                        f"{contract.NUM_TRAIN_TIMESTEPS} values")
    for spec in contract.GRAPHS:
        entry = graphs.get(spec.key)
        if not isinstance(entry, dict) or not {"file", "sha256", "bytes"} <= set(entry):
            raise UserError(f"{where} has no complete entry for graph {spec.key!r}")
        path = m.graph_path(spec)
        if not path.is_file():
            raise UserError(f"graph file missing: {path}")
        size = path.stat().st_size
        if size != int(entry["bytes"]):
            raise UserError(f"{path} has {size} bytes, the manifest says {entry['bytes']}: the file is "
                            f"truncated or was replaced; export the models again")
    return m


# ---------------------------------------------------------------------------------------------
# Sessions


def _session_options(config: SessionConfig):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if config.threads:
        so.intra_op_num_threads = int(config.threads)
        so.inter_op_num_threads = 1
    if config.low_memory:
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
    so.log_severity_level = 3  # ORT's own warnings (e.g. unused initializers) are not the user's concern
    return so


def create_session(path: Path, config: SessionConfig, label: str = ""):
    """An InferenceSession on the best available provider, retried on CPU if that one fails."""
    import onnxruntime as ort

    chain = resolve_providers(config.provider)
    label = label or path.name
    try:
        sess = ort.InferenceSession(str(path), sess_options=_session_options(config), providers=chain)
    except Exception as e:  # noqa: BLE001 - any EP failure (missing CUDA libs, CoreML compile) -> CPU
        if chain == [PROVIDERS["cpu"]]:
            raise UserError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0]}") from None
        log.warning("%s: %s failed (%s); falling back to CPU", label, chain[0], str(e).splitlines()[0])
        try:
            sess = ort.InferenceSession(str(path), sess_options=_session_options(config),
                                        providers=[PROVIDERS["cpu"]])
        except Exception as e2:  # noqa: BLE001
            raise UserError(f"onnxruntime cannot load {path}: {str(e2).splitlines()[0]}") from None
    active = sess.get_providers()
    if active[0] != chain[0]:
        log.warning("%s: %s is not usable here; running on %s", label, chain[0], active[0])
    log.info("%s: running on %s", label, active[0])
    return sess


class GraphSession:
    """One graph of a models folder, its session created on first use and dropped by ``release()``.

    ``run(**inputs)`` feeds the inputs by contract name and returns the graph's single output as
    float32.
    """

    def __init__(self, models: ModelsFolder, spec: contract.GraphSpec, config: SessionConfig):
        self.models = models
        self.spec = spec
        self.config = config
        self.path = models.graph_path(spec)
        self._session = None
        self.provider = None  # what actually ran, once created
        self.load_seconds = 0.0

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def session(self):
        if self._session is None:
            t = time.perf_counter()
            sess = create_session(self.path, self.config, label=self.spec.key)
            self._check_metadata(sess)
            self._check_declared(sess)
            self._session = sess
            self.provider = sess.get_providers()[0]
            self.load_seconds += time.perf_counter() - t
        return self._session

    def release(self) -> None:
        """Drop the session (and with it ORT's arena for this graph)."""
        self._session = None

    # -- checks -------------------------------------------------------------------------------
    def _check_metadata(self, sess) -> None:
        meta = sess.get_modelmeta().custom_metadata_map
        where = f"{self.path}"
        if contract.META_CONTRACT_VERSION not in meta:
            raise UserError(f"{where} carries no moebius-edge metadata: it was not written by "
                            f"`moebius-edge export`")
        version = meta[contract.META_CONTRACT_VERSION]
        if version != str(contract.CONTRACT_VERSION):
            raise UserError(f"{where} was written under contract version {version}, this toolkit reads "
                            f"version {contract.CONTRACT_VERSION}: export the models again")
        graph = meta.get(contract.META_GRAPH)
        if graph is not None and graph != self.spec.key:
            raise UserError(f"{where} is the {graph!r} graph, expected {self.spec.key!r}")
        # Precision is not compared: a quantized variant may keep some graphs in fp32 (the VAE).
        for key in (contract.META_IMAGE_SIZE, contract.META_LATENT_SIZE):
            if key in meta and str(meta[key]) != str(self.models.get(key)):
                raise UserError(f"{where}: {contract.manifest_key(key)} is {meta[key]} in the graph but "
                                f"{self.models.get(key)} in the manifest; the folder mixes exports")

    def _expected_dims(self, tensor: contract.TensorSpec) -> list:
        n, lat = self.models.image_size, self.models.latent_size
        sizes = {contract.IMAGE_H: n, contract.IMAGE_W: n, contract.LATENT_H: lat, contract.LATENT_W: lat}
        return [sizes.get(d, d) if isinstance(d, str) else d for d in tensor.shape]

    def _check_declared(self, sess) -> None:
        declared = {i.name: i for i in sess.get_inputs()}
        want = self.spec.input_names
        if sorted(declared) != sorted(want):
            raise UserError(f"{self.path} has inputs {sorted(declared)}, the contract says {want}")
        for name in want:
            spec = self.spec.input(name)
            shape = declared[name].shape
            if len(shape) != len(spec.shape):
                raise UserError(f"{self.path}: input {name!r} has rank {len(shape)}, expected {len(spec.shape)}")
            for got, exp in zip(shape, self._expected_dims(spec)):
                # Latent/image sizes are fixed at export; they must agree with the manifest, and so
                # between the UNet and the VAE graphs.
                if isinstance(got, int) and isinstance(exp, int) and got != exp:
                    raise UserError(f"{self.path}: input {name!r} is {shape}, but the manifest's sizes "
                                    f"need {self._expected_dims(spec)}; the folder mixes exports")
        outs = [o.name for o in sess.get_outputs()]
        if outs[:1] != self.spec.output_names:
            raise UserError(f"{self.path} has outputs {outs}, the contract says {self.spec.output_names}")

    def _feed(self, sess, inputs: dict) -> dict:
        declared = {i.name: i for i in sess.get_inputs()}
        if sorted(inputs) != sorted(declared):
            raise ValueError(f"{self.spec.key}: fed {sorted(inputs)}, the graph takes {sorted(declared)}")
        feed = {}
        for name, value in inputs.items():
            d = declared[name]
            dtype = _ORT_TYPES.get(d.type)
            if dtype is None:
                raise UserError(f"{self.path}: input {name!r} has unsupported type {d.type}")
            arr = np.ascontiguousarray(value, dtype=dtype)
            if arr.ndim != len(d.shape) or any(isinstance(g, int) and g != a for g, a in zip(d.shape, arr.shape)):
                raise UserError(f"{self.spec.key}: input {name!r} has shape {list(arr.shape)}, the graph "
                                f"declares {d.shape}")
            feed[name] = arr
        return feed

    def run(self, **inputs) -> np.ndarray:
        sess = self.session()
        out = sess.run(self.spec.output_names, self._feed(sess, inputs))[0]
        return np.asarray(out, dtype=np.float32)
