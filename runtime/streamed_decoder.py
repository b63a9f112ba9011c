"""The VAE decoder's full-resolution stage in strips of rows: the low-memory mode's decode.

At 512² the decoder's last stage (after its last 2× upsampler) computes on 128-256-channel
tensors of 134-268 MB each, and a whole-graph run holds several at once (~640 MB). Tiling the
decode in the usual way (diffusers' ``enable_tiling``) moves the pixels far beyond the 40 dB bar
set for the low-memory mode (``benchmarks/vae_tiling.py``): every GroupNorm of a tile normalises
with the tile's own statistics. This decode gives the same pixels as the whole graph (rounding aside):

* a *head* graph, the decoder up to the input of its last upsampler (a quarter of the pixels),
  runs whole; its weights go before the stage starts;
* the stage is cut at its GroupNorms. A *pass* computes, strip by strip, everything that needs
  only the GroupNorms whose statistics are known; each GroupNorm of the stage became a
  ``x·scale + shift`` with ``scale`` and ``shift`` graph inputs, filled from the whole image's
  statistics of ``x`` (float64 sums over the strips of an earlier pass);
* a strip is fed with ``halo`` rows more on each side (the passes' 3×3 convolutions see their
  neighbours), and only its own rows are kept: rows next to the image's border are padded with
  zeros exactly as in the whole graph;
* what a later pass reads is stored whole (one tensor of the stage at a time mostly), and freed
  after its last pass; the upsampler's output (the stage's widest tensor) is recomputed from the
  head's output instead of stored.

``export/streamed_decoder.py`` derives the graphs and the plan from ``vae_decoder.onnx`` and
checks the result against the whole graph at export. The plan is a manifest field of the FP32
folder (``contract.MANIFEST_STREAMED_DECODER``) that records the SHA-256 of the decoder it was
derived from, so a variant whose decoder is that same file (the int8 variant with the FP32 VAE)
decodes the same way. NumPy + ONNX Runtime; the GroupNorm statistics follow ONNX's
InstanceNormalization (biased variance, ``eps`` inside the square root).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moebius_edge import contract
from moebius_edge.errors import UserError
from moebius_edge.models import ModelsFolder, check_file, read_manifest, resolve_in, verify_file
from moebius_edge import session
from moebius_edge.session import SessionConfig, release_memory

log = logging.getLogger(__name__)

# A strip holds this many pixels of a row-major plane (rows = STRIP_PIXELS // width, 64 at 512²):
# the stage's tensors of a 64-row strip are 16-32 MB, against 134-268 MB whole; smaller strips
# add halo rows (recomputed) and calls without lowering the decode's peak, which is the head's.
STRIP_PIXELS = 64 * 512


def _names(v) -> tuple:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{v!r} is not a list of tensor names")
    return tuple(v)


def _entry(v) -> dict:
    if not isinstance(v, dict) or not isinstance(v.get(contract.GRAPH_FILE), str):
        raise ValueError(f"{v!r} is not a graph entry")
    return dict(v)


def _count(v, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{v!r} is not an integer >= {low}")
    return v


def _name(v) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not a tensor name")
    return v


@dataclass(frozen=True)
class Norm:
    """A GroupNorm of the stage: its input tensor's statistics feed two inputs of later passes."""

    source: str  # the tensor normalised
    groups: int  # channel groups (32 in the SD VAE)
    eps: float  # added to the variance, as ONNX's InstanceNormalization does
    scale: str  # input name: rstd per channel, (batch, C, 1, 1)
    shift: str  # input name: -mean·rstd per channel

    @classmethod
    def from_json(cls, d: dict) -> "Norm":
        eps = d["eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps {eps!r} is not a positive number")
        return cls(source=_name(d["source"]), groups=_count(d["groups"], 1), eps=float(eps),
                   scale=_name(d["scale"]), shift=_name(d["shift"]))


@dataclass(frozen=True)
class Pass:
    """One graph of the stage, run strip by strip."""

    entry: dict  # its manifest graph entry (relative to the FP32 folder)
    inputs: tuple  # stored tensors and norm inputs it reads
    outputs: tuple  # what it computes: tensors to store and norm sources (statistics only if not stored)
    halo: int  # rows of context on each side of a strip, at the full resolution
    store: tuple  # outputs kept whole for later passes
    free: tuple  # stored tensors not read after this pass

    @classmethod
    def from_json(cls, d: dict) -> "Pass":
        return cls(entry=_entry(d["entry"]), inputs=_names(d["inputs"]), outputs=_names(d["outputs"]),
                   halo=_count(d["halo"], 0), store=_names(d["store"]), free=_names(d["free"]))


@dataclass(frozen=True)
class StreamPlan:
    """What the export derived (``export/streamed_decoder.py``), as the FP32 manifest records it."""

    source_sha256: str  # the vae_decoder.onnx it was derived from
    head: dict  # manifest graph entry: latent -> cut
    cut: str  # the head's output, at 1/``factor`` of the full resolution
    factor: int  # the last upsampler's scale
    norms: tuple  # Norm per GroupNorm of the stage, in the graph's order
    passes: tuple  # Pass per level: the level's outputs from what the lower levels stored
    output: str  # the decoder's image

    def to_json(self) -> dict:
        return {"source_sha256": self.source_sha256, "head": self.head, "cut": self.cut, "factor": self.factor,
                "norms": [vars(n) for n in self.norms], "passes": [vars(p) for p in self.passes],
                "output": self.output}

    @classmethod
    def from_json(cls, d: dict) -> "StreamPlan":
        """The plan a manifest record holds; ValueError (or KeyError, TypeError) for a record that is
        not one: wrong types, or a pass reading what no earlier pass stored."""
        if not isinstance(d.get("norms"), list) or not isinstance(d.get("passes"), list) or not d["passes"]:
            raise ValueError("norms and passes must be lists, passes not empty")
        plan = cls(source_sha256=_name(d["source_sha256"]), head=_entry(d["head"]), cut=_name(d["cut"]),
                   factor=_count(d["factor"], 1), norms=tuple(Norm.from_json(n) for n in d["norms"]),
                   passes=tuple(Pass.from_json(p) for p in d["passes"]), output=_name(d["output"]))
        sources = {n.source: n for n in plan.norms}
        if len(sources) != len(plan.norms):
            raise ValueError("two GroupNorms of one tensor")
        known, live = set(), {plan.cut}
        for i, p in enumerate(plan.passes, 1):
            if p.halo % plan.factor or not set(p.inputs) <= live | known or not set(p.store) <= set(p.outputs) \
                    or not set(p.free) <= live:
                raise ValueError(f"pass {i} reads, stores or frees what the passes before it do not provide")
            live = (live | set(p.store)) - set(p.free)
            known |= {x for name in p.outputs if name in sources for x in (sources[name].scale, sources[name].shift)}
        if plan.output not in plan.passes[-1].store:
            raise ValueError("the last pass does not store the image")
        return plan

    def entries(self) -> list:
        return [self.head, *(p.entry for p in self.passes)]


def find_plan(models: ModelsFolder) -> StreamPlan | None:
    """The streamed plan for ``models``' VAE decoder, from the FP32 folder's manifest: None when
    there is none, or when this precision's decoder is not the graph it was derived from (an int8
    or fp16 VAE decodes whole). Its files are checked as the graphs are (present, sizes)."""
    fp32 = models.manifest if models.folder == models.root else read_manifest(models.root)
    record = fp32.get(contract.MANIFEST_STREAMED_DECODER)
    if not isinstance(record, dict):
        return None
    where = models.root / contract.MANIFEST_FILE
    try:
        plan = StreamPlan.from_json(record)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{where}: unreadable {contract.MANIFEST_STREAMED_DECODER!r} record ({e!r}); export the "
                        f"models again") from None
    if plan.source_sha256 != models.entry(contract.VAE_DECODER).get(contract.GRAPH_SHA256):
        return None
    for entry in plan.entries():
        check_file(resolve_in(models.root, models.root, entry.get(contract.GRAPH_FILE)), entry, where,
                   "a streamed decoder graph")
    return plan


def verify_plan(models: ModelsFolder, plan: StreamPlan) -> None:
    """SHA-256 of the plan's graph files against the manifest (``ModelsFolder.verify``'s check)."""
    for entry in plan.entries():
        verify_file(resolve_in(models.root, models.root, entry[contract.GRAPH_FILE]), entry)


class _Moments:
    """Per-sample, per-channel count, mean and sum of squared deviations of x over strips, merged in
    float64 (Chan et al.'s pairwise update): no E[x²] − E[x]² cancellation when a channel's mean is
    large against its spread."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: np.ndarray) -> None:
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        k = flat.shape[2]
        mean = flat.sum(axis=2, dtype=np.float64) / k
        dev = flat - mean[:, :, None].astype(np.float32)
        m2 = np.einsum("bcp,bcp->bc", dev, dev).astype(np.float64)
        if self.mean is None:
            self.n, self.mean, self.m2 = k, mean, m2
            return
        delta, total = mean - self.mean, self.n + k
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * k / total)
        self.n = total

    def affine(self, norm: Norm) -> tuple:
        """(scale, shift), each (batch, C, 1, 1) float32: x·scale + shift is the GroupNorm of x."""
        b, c = self.mean.shape
        if c % norm.groups:
            raise UserError(f"a GroupNorm of {c} channels in {norm.groups} groups: the manifest's "
                            f"{contract.MANIFEST_STREAMED_DECODER!r} record was edited; export the models again")
        per = c // norm.groups
        means = self.mean.reshape(b, norm.groups, per)
        mean = means.mean(axis=2)  # the channels of a group have the same count
        m2 = self.m2.reshape(b, norm.groups, per).sum(axis=2) + self.n * ((means - mean[:, :, None]) ** 2).sum(axis=2)
        rstd = 1.0 / np.sqrt(m2 / (self.n * per) + norm.eps)
        scale = np.repeat(rstd, per, axis=1)
        shift = np.repeat(-mean * rstd, per, axis=1)
        return (scale.astype(np.float32).reshape(b, c, 1, 1), shift.astype(np.float32).reshape(b, c, 1, 1))


def strips(height: int, rows: int, step: int) -> list:
    """[(first row, end row)] covering ``height``, each start a multiple of ``step``."""
    rows = max(step, rows - rows % step)
    return [(a, min(a + rows, height)) for a in range(0, height, rows)]


class StreamedDecoder:
    """``run(latent) -> image`` with the plan's graphs (paths relative to the FP32 folder ``root``);
    each session is created for its part of the decode and dropped after it. The low-memory mode's
    process-wide allocator setting (``session.map_large_blocks``) is the caller's: the Inpainter
    sets it at its first session."""

    def __init__(self, root, plan: StreamPlan, config: SessionConfig, strip_pixels: int = STRIP_PIXELS):
        self.root, self.plan, self.config, self.strip_pixels = Path(root), plan, config, strip_pixels
        self.load_seconds = 0.0
        self.provider = None  # what ran the head, once it ran

    def _session(self, entry: dict, label: str, graph: str, inputs, outputs):
        """The graph's session, refused in one line unless it has the inputs and outputs the plan
        names (an edited record or a swapped file); trimmed after its creation as GraphSession's."""
        t = time.perf_counter()
        path = resolve_in(self.root, self.root, entry[contract.GRAPH_FILE])
        sess = session.create_session(Path(path), self.config, label=label, graph=graph)
        have_in, have_out = {i.name for i in sess.get_inputs()}, {o.name for o in sess.get_outputs()}
        if have_in != set(inputs) or not set(outputs) <= have_out:
            raise UserError(f"{path} does not have the inputs and outputs its manifest's "
                            f"{contract.MANIFEST_STREAMED_DECODER!r} record names; export the models again")
        release_memory()
        self.load_seconds += time.perf_counter() - t
        return sess

    def run(self, latent: np.ndarray) -> np.ndarray:
        plan = self.plan
        # The head is the decoder's bulk: the decoder's memory settings (session.NO_ARENA and the
        # execution order); the passes compute on strips: ``contract.STREAMED_DECODER_PASS``'s.
        head = self._session(plan.head, f"{contract.VAE_DECODER.key} head", contract.VAE_DECODER.key,
                             contract.VAE_DECODER.input_names, [plan.cut])
        self.provider = head.get_providers()[0]
        # a copy: an array of ONNX Runtime's would keep the released session's memory alive
        stored = {plan.cut: np.array(head.run(None, {contract.VAE_DECODER.inputs[0].name: latent})[0])}
        del head
        release_memory()
        height = stored[plan.cut].shape[2] * plan.factor
        rows = max(plan.factor, self.strip_pixels // (stored[plan.cut].shape[3] * plan.factor))
        norms = {n.source: n for n in plan.norms}
        affine = {}
        for i, p in enumerate(plan.passes):
            sess = self._session(p.entry, f"{contract.VAE_DECODER.key} pass {i + 1}/{len(plan.passes)}",
                                 contract.STREAMED_DECODER_PASS, p.inputs, p.outputs)
            for name, m in self._pass(sess, p, stored, affine, {n for n in p.outputs if n in norms}, height,
                                      rows).items():
                affine[norms[name].scale], affine[norms[name].shift] = m.affine(norms[name])
            for name in p.free:
                stored.pop(name, None)
            del sess
            release_memory()
        return stored[plan.output]

    def _pass(self, sess, p: Pass, stored: dict, affine: dict, sources: set, height: int, rows: int) -> dict:
        """Run one pass over the strips: its stored outputs written into ``stored``; returns the
        moments of its norm sources. Nothing of ONNX Runtime's outlives it (the session's arena)."""
        moments = {name: _Moments() for name in sources}
        for a, b in strips(height, rows, self.plan.factor):
            lo, hi = max(a - p.halo, 0), min(b + p.halo, height)
            feed = {}
            for name in p.inputs:
                if name in stored:
                    t = stored[name]
                    r = height // t.shape[2]
                    feed[name] = np.ascontiguousarray(t[:, :, lo // r:hi // r])
                else:
                    feed[name] = affine[name]
            for name, out in zip(p.outputs, sess.run(list(p.outputs), feed)):
                r = (hi - lo) // out.shape[2]
                part = out[:, :, (a - lo) // r:(b - lo) // r]
                if name in moments:
                    moments[name].add(part)
                if name in p.store:
                    if name not in stored:
                        stored[name] = np.empty((*out.shape[:2], height // r, out.shape[3]), out.dtype)
                    stored[name][:, :, a // r:b // r] = part
        return moments
