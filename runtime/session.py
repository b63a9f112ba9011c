"""ONNX Runtime sessions for the graphs of a models folder: thin, lazy and checked.

This module only creates and feeds sessions; ``models.py`` reads and checks the folder. It

* picks execution providers (``--provider auto|cpu|cuda|coreml|nnapi|xnnpack``,
  ``contract.PROVIDERS``) with a CPU fallback and logs what actually runs;
* creates each graph's session only when it is first needed and drops it on ``release()``: the
  three fp32 graphs at 512×512 hold 4.3 GB between them when all stay alive (measured,
  benchmarks/results/runtime.json), 2.9 GB when each is released after its phase, and 1.9 GB
  once results are copied out of ORT and memory patterns are off (``GraphSession.run``,
  ``_session_options``; benchmarks/pipeline.py measures it);
* gives each graph the memory settings its tensors call for: its own ONNX Runtime arena or not
  (``NO_ARENA``), the process-wide arena the VAE decoder computes in (``uses_shared_arena``), the
  decoder's execution order (``PRIORITY_ORDER_GRAPHS``), and in low-memory mode glibc's mapping
  of large blocks (``map_large_blocks``);
* checks each graph's metadata (``session.get_modelmeta()``; the base install has no ``onnx``
  package) against the manifest, and feeds inputs by contract name after checking them against
  the contract's dtypes and the session's own declared shapes (docs/style.md §5).
Constructors never download anything.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moebius_edge import contract
from moebius_edge.errors import UserError
from moebius_edge.models import ModelsFolder

log = logging.getLogger(__name__)

PROVIDERS = contract.PROVIDERS

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(double)": np.float64}


def available_providers() -> list:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_providers(choice="auto") -> list:
    """The execution-provider chain for a ``--provider`` choice, always ending in CPU.

    ``choice`` is a ``contract.PROVIDER_CHOICES`` entry or an explicit list, in order of preference, of
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
    if choice not in contract.PROVIDER_CHOICES:
        raise UserError(f"unknown provider {choice!r}; choose one of {', '.join(contract.PROVIDER_CHOICES)}")
    available = available_providers()
    cpu = PROVIDERS["cpu"]
    if choice == "auto":
        chain = [PROVIDERS[c] for c in contract.AUTO_PROVIDERS if PROVIDERS[c] in available]
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

    provider: str | tuple = "auto"  # a contract.PROVIDER_CHOICES entry, or a tuple of provider names in order
    threads: int = 0  # intra-op threads; 0 lets ONNX Runtime choose (one per physical core)
    low_memory: bool = False  # the smallest peak: no arena for the VAE graphs, large buffers mapped (below)
    # Outside low-memory mode, whether a session computes in the process-wide arena also depends on
    # whether the sessions are kept, and on the ONNX Runtime build (``uses_shared_arena``).


# ---------------------------------------------------------------------------------------------
# Sessions


def release_memory() -> None:
    """Hand the heap freed by the last phase back to the system: glibc keeps freed blocks in its
    heap (a session's weights and arena are hundreds of MB in blocks below its dynamic mmap
    threshold), and the next phase's peak stacks on top of them. A no-op where ``malloc_trim``
    does not exist (macOS, musl, Windows)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ONNX Runtime's CPU arena grows by regions that double in size and keeps them until its session
# goes. The VAE at 512² computes on tensors of 64-256 MB, so its arena ends near twice what the
# graph holds at once; without it each tensor is its own mapping, paid for in page faults. The UNet
# at 64² computes on tensors of a few MB, which its arena reuses, and which without it stay in
# pieces in glibc's heap. Measured (512², benchmarks/pipeline.py, 2026-12-06; the README's tables):
# * the VAE decoder without its arena: the int8 run's peak (its decode) 1,361 -> 1,100 MB (median
#   of 3 rounds, 1,156 the highest), the decode 9.4 -> 10.8 s; so the decoder has none of its own
#   (it computes in the shared arena below, and with no arena at all in low-memory mode or where
#   ONNX Runtime refuses that arena);
# * the VAE encoder's phase is below the UNet's or the decoder's either way; it keeps its arena,
#   except in low-memory mode (fp32 encoder: encode peak 765 -> 709-718 MB without it, 621 MB
#   with the mapping below too);
# * the int8 UNet without its arena, in low-memory mode: denoise peak 659-801 MB against 551-589
#   with it (scratch runs), and slower; so the UNet always keeps it (fp32, before the mapping
#   below: 1,904 MB without, 1,974 with; with the mapping 1,672).
NO_ARENA = {False: (contract.VAE_DECODER.key,), True: (contract.VAE_DECODER.key, contract.VAE_ENCODER.key)}
# Not named, so with an arena of their own in either mode: the streamed decoder's passes
# (contract.STREAMED_DECODER_PASS, low-memory mode's decode) run once per strip on 16-32 MB
# tensors, whose pages the arena reuses from strip to strip instead of faulting in fresh mappings.
# Measured at 512² (fp32 decoder, scratch runs, 2026-12-06): the streamed decode 16.7-17.2 ->
# 14.2-14.9 s, its peak (the head's) the same, 570 MB.
# Outside low-memory mode the VAE decoder computes in one process-wide arena instead (ONNX
# Runtime's env allocator, registered by ``register_shared_arena``): its first region is sized
# for the decoder at the models' image size, so it never grows by doubling, and its tensors reuse
# pages instead of faulting in a fresh mapping each (virtual until touched: what RSS sees is what
# the decoder uses). All three compute in it when the sessions are kept across a batch. ONNX
# Runtime cannot unregister the arena from Python, but registering another replaces it, and the
# replaced one is freed with the last session that computes in it: so the last session computing
# in it renews it when released (``leave_shared_arena``), and a library caller's loop keeps nothing
# from one call to the next. Measured at 512²
# (benchmarks/pipeline.py, 3-step scratch runs, 2026-12-06; the README's tables are full runs):
# the int8 run's decode 10.97 -> 8.93 s and its peak (the decode) 1,100 -> 988 MB; the fp32 run's
# decode phase 1,251 -> 987 MB, its peak now the denoise's (1,138). With the encoder and the UNet
# in it from the first image, the fp32 denoise would hold the encoder's pages: 1,138 -> 1,525 MB.
# Never renewed, the arena (~0.7 GB) stayed with the process, and a second call without kept
# sessions created each session on top of it: fp32 peak 1,138 -> 1,766 MB, int8 988 -> 1,258-1,335;
# renewed, the second call peaks as the first: fp32 1,152 -> 1,153, int8 1,002 -> 1,002
# (benchmarks/pipeline.py --calls 2). Where ONNX Runtime refuses to register a second arena (older
# builds), the first one stays, holding its pages, and every later session computes in it rather
# than beside it.
SHARED_ARENA_GRAPHS = (contract.VAE_DECODER.key,)
USE_ENV_ALLOCATORS = "session.use_env_allocators"  # ONNX Runtime's session config key for it
# The first region's size per pixel of the models' image (1.4 GB at 512², where the decoder touches
# ~0.7 GB of it); ONNX Runtime takes an int, so at most 2 GiB - 1 (larger models grow the arena).
SHARED_ARENA_BYTES_PER_PIXEL = 5600
# "first_region": its size in bytes once registered; "failed": ORT refused it; "generation": how many
# times it was renewed; "users": the sessions computing in the current one; "held": ORT refused to
# renew it, so it keeps its pages for the process
_SHARED_ARENA: dict = {}
# Registration, renewal, and the creation and count of the sessions computing in the arena: a
# session joins the count of the arena it was created with, never one renewed in between.
_SHARED_ARENA_LOCK = threading.RLock()
# The VAE decoder's nodes run in ONNX Runtime's priority-based order: its default order keeps the
# 512² stage's block inputs alive longer (fp32 decoder at 512², benchmarks/graph_memory.py: 1,213 MB
# in the shared arena in the default order, 962 MB in this one, 8.5 and 8.3 s; 985 MB without an arena;
# the low-memory run's decode phase 1,068 -> 940 MB at the same 11.0 s, benchmarks/pipeline.py). The
# encoder's order changes nothing. Measured on the CPU; other providers get the same order (it
# changes no result, only when tensors are freed).
PRIORITY_ORDER_GRAPHS = (contract.VAE_DECODER.key,)
# Low-memory mode: glibc serves every block of at least this size with a mapping of its own,
# returned to the system when the block is freed (M_MMAP_THRESHOLD). Its default threshold rises
# to 32 MiB once large blocks are freed, and the blocks below it stay in the heap in pieces that
# malloc_trim cannot give back: with the int8 VAE, the low-memory run's peak falls from 852-859 to
# 738 MB (decode) and its denoise peak from 551-589 to 490 MB, for 2-3 s more per inpainting
# (scratch runs of benchmarks/pipeline.py; the README's table: 740 MB).
LOW_MEMORY_MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def map_large_blocks(threshold: int = LOW_MEMORY_MMAP_THRESHOLD) -> bool:
    """Have glibc map every block of ``threshold`` bytes or more on its own (see above). It is
    process-wide and stays set (glibc then stops moving the threshold), so only low-memory mode
    asks for it, and the Inpainter's docstring says so. False where there is no glibc ``mallopt``
    (macOS, musl, Windows)."""
    import ctypes

    try:
        done = bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        done = False
    if not done:
        log.debug("no glibc mallopt here: large blocks stay with the system allocator's defaults")
    return done


def uses_arena(config: SessionConfig, graph: str) -> bool:
    """Whether the session of ``graph`` (a contract graph key) gets ONNX Runtime's CPU arena; a
    graph not named gets none in low-memory mode."""
    if not graph:
        return not config.low_memory
    return graph not in NO_ARENA[bool(config.low_memory)]


def uses_shared_arena(config: SessionConfig, graph: str, *, kept: bool = False) -> bool:
    """Whether the session of ``graph`` computes in the process-wide arena (see
    ``SHARED_ARENA_GRAPHS``): never in low-memory mode (nor off the CPU: ``create_session``); the
    decoder always; any graph when the sessions are ``kept`` alive together, or once the arena holds
    pages it could not give back (``leave_shared_arena``)."""
    if config.low_memory:
        return False
    return graph in SHARED_ARENA_GRAPHS or kept or bool(_SHARED_ARENA.get("held"))


def register_shared_arena(image_size: int) -> bool:
    """Register the process-wide CPU arena once, its first region sized for ``image_size``²
    (``SHARED_ARENA_BYTES_PER_PIXEL``); False where ONNX Runtime refuses (the sessions then keep
    their own memory settings)."""
    with _SHARED_ARENA_LOCK:
        if "first_region" in _SHARED_ARENA or _SHARED_ARENA.get("failed"):
            return "first_region" in _SHARED_ARENA
        size = min(SHARED_ARENA_BYTES_PER_PIXEL * int(image_size) ** 2, 2**31 - 1)
        try:
            _register_arena(size)
        except Exception as e:  # noqa: BLE001 - a build without the API, or an allocator registered elsewhere
            log.info("no shared ONNX Runtime arena (%s): each graph keeps its own memory settings (the decode "
                     "takes about 2 s longer at 512²)", _first_line(e))
            _SHARED_ARENA["failed"] = True
            return False
        _SHARED_ARENA.update(first_region=size, generation=0, users=0)
        return True


def join_shared_arena(options) -> int | None:
    """Count a session created with ``options`` among those computing in the process-wide arena,
    if it is one (call it under ``_SHARED_ARENA_LOCK``, with the session's creation); the arena's
    generation, for ``leave_shared_arena``, or None."""
    if not computes_in_shared_arena(options):
        return None
    with _SHARED_ARENA_LOCK:
        _SHARED_ARENA["users"] += 1
        return _SHARED_ARENA["generation"]


def leave_shared_arena(generation: int) -> bool:
    """A session of that arena ``generation`` is gone. When it was the last one computing in the
    current arena, replace the arena by a fresh one of the same size: the old one, and the pages it
    touched, are freed (ONNX Runtime frees a replaced allocator with its last session), and the
    next session computes in the new one. True when it renewed the arena and gave the memory back.
    Where ONNX Runtime refuses to register a second one (older builds), the old one stays, holding
    its pages, and every later session computes in it (``uses_shared_arena``)."""
    with _SHARED_ARENA_LOCK:
        if generation != _SHARED_ARENA.get("generation"):
            return False  # an arena already replaced: freed with its last session
        _SHARED_ARENA["users"] -= 1
        if _SHARED_ARENA["users"] > 0 or _SHARED_ARENA.get("held"):
            return False
        try:
            _register_arena(_SHARED_ARENA["first_region"])
        except Exception as e:  # noqa: BLE001 - a build that registers an allocator once only
            log.info("ONNX Runtime keeps its first shared arena (%s): its pages stay with the process and later "
                     "sessions compute in it", _first_line(e))
            _SHARED_ARENA["held"] = True
            return False
        _SHARED_ARENA["generation"] += 1
    release_memory()
    return True


def _register_arena(first_region: int) -> None:
    """Register ONNX Runtime's env allocator for the CPU: an arena whose first region is
    ``first_region`` bytes. Registering again replaces the allocator (onnxruntime 1.32) or is
    refused (older builds)."""
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 0,  # kNextPowerOfTwo
                                                             "initial_chunk_size_bytes": int(first_region)}))


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _session_options(config: SessionConfig, graph: str = "", *, shared_arena: bool = False):
    """A graph's session options; ``shared_arena``: it computes in the registered process-wide
    arena instead of its own (``register_shared_arena`` first)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if config.threads:
        so.intra_op_num_threads = int(config.threads)
        so.inter_op_num_threads = 1
    # No memory patterns: from its second run a session with a pattern allocates the pattern's
    # block beside what its arena already holds (512², CPU, measured: the VAE decoder peaks at 2.4 GB
    # with them and 1.4 GB without, the encoder 1.35 and 0.97 GB, the UNet the same either way; no
    # time difference beyond the machine's noise).
    so.enable_mem_pattern = False
    so.enable_cpu_mem_arena = shared_arena or uses_arena(config, graph)
    if shared_arena:
        so.add_session_config_entry(USE_ENV_ALLOCATORS, "1")
    if graph in PRIORITY_ORDER_GRAPHS:
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    so.log_severity_level = 3  # ORT's own warnings (e.g. unused initializers) are not the user's concern
    return so


def computes_in_shared_arena(options) -> bool:
    """Whether a session with these SessionOptions computes in the process-wide arena."""
    try:
        return options.get_session_config_entry(USE_ENV_ALLOCATORS) == "1"
    except RuntimeError:  # ONNX Runtime raises for an entry never set
        return False


def create_session(path: Path, config: SessionConfig, label: str = "", graph: str = "", *,
                   shared_arena_for: int = 0):
    """An InferenceSession on the best available provider, retried on CPU if that one fails;
    ``graph`` (a contract graph key) picks its memory settings; ``shared_arena_for``: the models'
    image size, to compute in the process-wide arena (``register_shared_arena``) when the session
    runs on the CPU (0: its own settings)."""
    import onnxruntime as ort

    chain = resolve_providers(config.provider)
    label = label or path.name
    shared_arena = (bool(shared_arena_for) and chain[0] == PROVIDERS["cpu"]
                    and register_shared_arena(shared_arena_for))
    try:
        options = _session_options(config, graph, shared_arena=shared_arena)
        sess = ort.InferenceSession(str(path), sess_options=options, providers=chain)
    except Exception as e:  # noqa: BLE001 - any EP failure (missing CUDA libs, CoreML compile) -> CPU
        if chain == [PROVIDERS["cpu"]]:
            raise UserError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0]}") from None
        log.warning("%s: %s failed (%s); falling back to CPU", label, chain[0], str(e).splitlines()[0])
        shared_arena = bool(shared_arena_for) and register_shared_arena(shared_arena_for)  # now on the CPU
        try:
            options = _session_options(config, graph, shared_arena=shared_arena)
            sess = ort.InferenceSession(str(path), sess_options=options, providers=[PROVIDERS["cpu"]])
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
        self.kept = False  # alive together with the other graphs' sessions (Inpainter.keep_sessions)
        self._leave_arena = None  # leaves the process-wide arena's count, once, if the session computes in it

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def session(self):
        if self._session is None:
            t = time.perf_counter()
            if self.config.low_memory:
                map_large_blocks()
            shared = uses_shared_arena(self.config, self.spec.key, kept=self.kept)
            with _SHARED_ARENA_LOCK if shared else contextlib.nullcontext():
                sess = create_session(self.path, self.config, label=self.spec.key, graph=self.spec.key,
                                      shared_arena_for=self.models.image_size if shared else 0)
                self._check_metadata(sess)  # a graph refused here never joins the arena's count
                self._check_declared(sess)
                generation = join_shared_arena(sess.get_session_options())
            if generation is not None:
                # The session leaves the count when it goes, released or dropped with this object.
                self._leave_arena = weakref.finalize(sess, leave_shared_arena, generation)
                self._leave_arena.atexit = False
            self._session = sess
            self.provider = sess.get_providers()[0]
            # Optimising the graph at load leaves the weights' pre-layout copies freed but kept by
            # glibc, and the first call's arena grows beside them instead of in them (512² fp32 VAE
            # decoder, 3 processes each: RSS after load 446–590 → 262 MB, peak of the call
            # 1,344–1,488 → 1,321 MB; benchmarks/graph_memory.py). Costs milliseconds.
            release_memory()
            self.load_seconds += time.perf_counter() - t
        return self._session

    def release(self) -> None:
        """Drop the session (and with it its own ORT arena, if it has one, or the process-wide one
        once no session computes in it: ``leave_shared_arena``), and give the freed memory back to
        the system, so that the next phase's peak does not stack on it."""
        if self._session is not None:
            self._session = None
            leave, self._leave_arena = self._leave_arena, None
            if leave is not None and leave():  # the arena renewed: the memory is given back
                return
            release_memory()

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
            arr = np.asarray(value)
            # The contract's dtype, never a silent cast: a float timestep would be truncated.
            if arr.dtype != np.dtype(self.spec.input(name).dtype):
                raise TypeError(f"{self.spec.key}: input {name!r} is {arr.dtype}, the contract says "
                                f"{self.spec.input(name).dtype}")
            arr = np.ascontiguousarray(arr, dtype=dtype)  # a variant may declare float16 I/O
            if arr.ndim != len(d.shape) or any(isinstance(g, int) and g != a for g, a in zip(d.shape, arr.shape)):
                raise UserError(f"{self.spec.key}: input {name!r} has shape {list(arr.shape)}, the graph "
                                f"declares {d.shape}")
            feed[name] = arr
        return feed

    def run(self, **inputs) -> np.ndarray:
        sess = self.session()
        out = sess.run(self.spec.output_names, self._feed(sess, inputs))[0]
        # A copy, never ORT's own array: that one keeps the session's whole memory arena alive
        # after release() for as long as the result lives (the encoder's latents pinned ~1 GB of
        # arena through the denoising loop at 512², measured). Outputs are small; the copy is not.
        return np.array(out, dtype=np.float32, copy=True)
