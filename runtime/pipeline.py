"""The Moebius inpainting pipeline on ONNX Runtime, in NumPy: any photo size, no torch.

At the model's native size this is the official pipeline (docs/pipeline.md) step for step:
binarise the mask at 127.5; x = u8/255·2 − 1; VAE posterior *samples* of the image and of the
hole-masked image (the encoder graph takes the noise); latent mask = top-left pixel of every 8×8
cell; start from the original image's latent noised to the first timestep (strength), with the
0.0357 noise offset; DDIM with classifier-free guidance inside the UNet graph; decode, ×255 and
truncate; paste back through the mask feathered by Pillow's GaussianBlur(3). Other sizes go through
a crop around the hole (``crop.py``) and are pasted back at full resolution.

Random numbers: ``numpy.random.default_rng(seed)``, float32 standard normals drawn per crop in the
official order (posterior ε of the image, of the masked image, diffusion noise, noise offset).
Official outputs come from torch's CUDA generator and cannot be reproduced from a seed; to compare
number for number, pass the four tensors as ``noise`` (the keys of ``NOISE_KEYS``).

Sessions are created lazily and released after each phase (encode, denoise, decode), so at most
one graph's weights are alive at a time; which graphs get an ONNX Runtime arena of their own is
``session.NO_ARENA``, and which compute in the process-wide one (renewed once no session computes
in it, so that nothing of it outlives a call without kept sessions) ``session.uses_shared_arena``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moebius_edge import contract, masks
from moebius_edge import crop as cropping
from moebius_edge.errors import UserError
from moebius_edge.models import ModelsFolder, open_models
from moebius_edge.scheduler import DDIMSchedule, add_noise, ddim_step
from moebius_edge.session import GraphSession, SessionConfig
from moebius_edge.streamed_decoder import StreamedDecoder, find_plan, verify_plan

log = logging.getLogger(__name__)

# The four noise tensors, in the order the official pipeline draws them (docs/pipeline.md §4.4).
NOISE_KEYS = ("eps_posterior_image", "eps_posterior_masked", "noise_base", "noise_offset_draw")


class Cancelled(Exception):
    """The progress callback returned False."""


@dataclass
class RunInfo:
    """What the last ``inpaint`` call did, for --json and benchmarks."""

    fidelity: str = contract.DEFAULT_FIDELITY  # mask and paste-back rules used (docs/pipeline.md §3)
    crops: list = field(default_factory=list)  # [{"box": [x0, y0, x1, y1], "squashed": bool, "coverage": {...}}]
    steps: int = 0  # model evaluations per crop
    seconds: dict = field(default_factory=dict)  # phase -> wall seconds
    providers: dict = field(default_factory=dict)  # graph key -> execution provider that ran
    decoder_fallback: bool = False


def _noise_shapes(latent: int) -> dict:
    c = contract.LATENT_CHANNELS
    return {"eps_posterior_image": (1, c, latent, latent), "eps_posterior_masked": (1, c, latent, latent),
            "noise_base": (1, c, latent, latent), "noise_offset_draw": (1, c, 1, 1)}


def draw_noise(rng: np.random.Generator, latent: int) -> dict:
    """The four draws for one crop, float32, in the official order."""
    return {k: rng.standard_normal(shape, dtype=np.float32) for k, shape in _noise_shapes(latent).items()}


def check_noise(noise, latent: int) -> dict:
    """Validate injected noise (a mapping such as an opened pipeline_case.npz)."""
    out = {}
    for k, shape in _noise_shapes(latent).items():
        if k not in noise:
            raise UserError(f"noise file lacks {k!r} (needs {', '.join(NOISE_KEYS)})")
        a = np.asarray(noise[k])
        if a.shape != shape:
            raise UserError(f"noise {k!r} has shape {list(a.shape)}, this model needs {list(shape)}")
        out[k] = a.astype(np.float32)
    return out


def to_model_input(image_u8: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [−1, 1], computed in float64 as the official code."""
    x = image_u8.astype(np.float64) / 255.0 * 2.0 - 1.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def to_uint8(decoded: np.ndarray) -> np.ndarray:
    """Decoder output (1, 3, H, W) in [0, 1] -> (H, W, 3) uint8 by ×255 and truncation (official)."""
    return np.ascontiguousarray((decoded[0] * np.float32(255.0)).astype(np.uint8).transpose(1, 2, 0))


@dataclass
class _Job:
    """One crop on its way through the phases."""

    crop: cropping.Crop
    image: np.ndarray  # (N, N, 3) uint8 model input
    hole: np.ndarray  # (N, N) bool, True = fill
    noise: dict
    z_img: np.ndarray = None
    z_msk: np.ndarray = None
    latent: np.ndarray = None
    result: np.ndarray = None  # (N, N, 3) uint8 decoded


class Inpainter:
    """Stateless inpainting on an exported models folder.

    >>> inp = Inpainter.from_models("models")
    >>> out = inp.inpaint(image_rgb_u8, mask_u8, seed=0)  # mask: 255 = fill
    """

    def __init__(self, models: ModelsFolder, config: SessionConfig = SessionConfig(), *,
                 keep_sessions: bool = False):
        self.models = models
        self.config = config
        self.graphs = {spec.key: GraphSession(models, spec, config) for spec in contract.GRAPHS}
        # Low-memory mode decodes the last stage in strips where the folder has the graphs for it
        # (streamed_decoder.py: the same pixels, a ~0.3 GB lower decode peak at 512², slower).
        self.streamed = find_plan(models) if config.low_memory else None
        self.keep_sessions = keep_sessions
        self.last_run = RunInfo()

    @property
    def keep_sessions(self) -> bool:
        """True keeps all three sessions alive between calls (on the CPU outside low-memory mode,
        computing in one arena, which stays allocated with them: ``session.uses_shared_arena``);
        set it before the first call."""
        return self._keep_sessions

    @keep_sessions.setter
    def keep_sessions(self, keep: bool) -> None:
        self._keep_sessions = bool(keep)
        for g in self.graphs.values():
            g.kept = self._keep_sessions

    @classmethod
    def from_models(cls, models_dir, precision: str = "fp32", providers="auto", *, threads: int = 0,
                    low_memory: bool = False, verify: bool = True, keep_sessions: bool = False) -> "Inpainter":
        """Open and check a models folder. ``providers``: a ``session.PROVIDER_CHOICES`` entry
        ("auto", "cpu", "cuda", ...) or a list of provider names in order of preference; CPU is
        always the last resort. ``verify`` checks every graph's SHA-256 against the manifest first
        (reads each file once). Outside ``low_memory`` the VAE decoder computes on the CPU in one
        ONNX Runtime arena for the process (``session.uses_shared_arena``), renewed when the last
        session computing in it goes, so that nothing stays allocated between calls unless the
        sessions are kept (~0.7 GB at 512²; ``session.leave_shared_arena``). ``low_memory`` trades
        time for the smallest peak: no arena for the VAE graphs and never that shared one, glibc
        maps large blocks on their own from then on, process-wide (``session.map_large_blocks``),
        and the decoder's last stage runs in strips where the folder has its graphs
        (``streamed_decoder``)."""
        models = open_models(models_dir, precision)
        if verify:
            models.verify()
        if isinstance(providers, list):
            providers = tuple(providers)  # SessionConfig is frozen and hashable
        config = SessionConfig(provider=providers, threads=threads, low_memory=low_memory)
        if models.gate_advisory:
            log.warning("the %s variant of %s was made from random-init weights: its quality gate was advisory, "
                        "not enforced (see %s)", precision, models.root, models.folder / contract.QUANTIZE_REPORT_MD)
        inpainter = cls(models, config, keep_sessions=keep_sessions)
        if verify and inpainter.streamed is not None:
            verify_plan(models, inpainter.streamed)
        return inpainter

    @property
    def image_size(self) -> int:
        return self.models.image_size

    @property
    def latent_size(self) -> int:
        return self.models.latent_size

    def plan(self, hole: np.ndarray, *, margin: float = contract.DEFAULT_MARGIN,
             min_margin: int = contract.DEFAULT_MIN_MARGIN, separate: bool = True) -> tuple:
        """(component labels, crops) for a bool hole at the image's resolution."""
        return cropping.plan_crops(hole, self.image_size, margin=margin, min_margin=min_margin,
                                   separate=separate)

    def release(self) -> None:
        for g in self.graphs.values():
            g.release()

    def _done_with(self, key: str) -> None:
        if not self.keep_sessions:
            self.graphs[key].release()

    # ------------------------------------------------------------------------------------------
    def inpaint(self, image: np.ndarray, mask: np.ndarray, *, seed: int = contract.DEFAULT_SEED,
                steps: int = contract.DEFAULT_STEPS, guidance: float = contract.DEFAULT_GUIDANCE,
                strength: float = contract.DEFAULT_STRENGTH, noise=None, progress=None, dilate: int = 0,
                margin: float = contract.DEFAULT_MARGIN, min_margin: int = contract.DEFAULT_MIN_MARGIN,
                separate: bool = True, fidelity: str = contract.DEFAULT_FIDELITY) -> np.ndarray:
        """Fill the hole of ``image`` (H, W, 3) uint8 RGB where ``mask`` (H, W) uint8 is ≥ 128
        (or where a bool ``mask`` is True: an already binarised hole).

        Returns a new (H, W, 3) uint8 image; outside the feathered hole it equals ``image``.
        ``fidelity``: "complete" (default) replaces every pixel of the hole, however thin;
        "official" keeps the reference pipeline's mask rules bit for bit (docs/pipeline.md §3).
        ``noise``: the four ``NOISE_KEYS`` tensors at the native latent size instead of drawing
        them from ``seed`` (single-crop runs only). ``progress(done, total)`` is called after every
        model step; returning False cancels with ``Cancelled``.
        """
        image = np.asarray(image)
        mask = np.asarray(mask)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
        if mask.dtype not in (np.uint8, np.bool_) or mask.shape != image.shape[:2]:
            raise ValueError(f"mask must be uint8 or bool (H, W) = {image.shape[:2]}, got {mask.dtype} {mask.shape}")
        if fidelity not in contract.FIDELITY_MODES:
            raise UserError(f"unknown fidelity {fidelity!r}; choose one of {', '.join(contract.FIDELITY_MODES)}")
        # NaN or ∞ would fail nowhere: they would quietly turn the hole black (issue 9).
        if not np.isfinite(guidance):
            raise ValueError(f"guidance must be a finite number, got {guidance}")
        if not (np.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a finite number ≥ 0, got {margin}")
        if not 0 <= dilate <= max(image.shape[:2]):  # the dilation disc grows as dilate²
            raise ValueError(f"dilate must be between 0 and the image's longer side ({max(image.shape[:2])} px), "
                             f"got {dilate}")
        if noise is None and not (isinstance(seed, (int, np.integer)) and seed >= 0):
            raise ValueError(f"seed must be an integer ≥ 0 (numpy's generator), got {seed!r}")
        try:
            schedule = DDIMSchedule.create(self.models.alphas_cumprod, steps, strength)
        except ValueError as e:
            raise UserError(str(e)) from None
        info = RunInfo(steps=len(schedule), fidelity=fidelity)
        self.last_run = info
        t0 = time.perf_counter()

        hole = masks.dilate(mask if mask.dtype == np.bool_ else masks.binarize(mask), dilate)
        labels, crops = self.plan(hole, margin=margin, min_margin=min_margin, separate=separate)
        if not crops:
            log.warning("the mask has no hole (no value ≥ 128): returning the image unchanged")
            return image.copy()
        if hole.all():
            log.warning("the mask covers the whole image: everything is generated, nothing is kept")
        if noise is not None and len(crops) > 1:
            raise UserError(f"injected noise covers one crop, but this mask needs {len(crops)} "
                            f"(far-apart holes); pass separate=False / a single hole")
        n, lat = self.image_size, self.latent_size
        rng = np.random.default_rng(seed) if noise is None else None
        jobs = []
        for c in crops:
            group = np.isin(labels, c.labels) if len(crops) > 1 else hole
            tile = cropping.extract(image, c.box)
            tile_mask = cropping.extract(group, c.box)
            native_img = cropping.resize_image(tile, (n, n))
            native_mask = masks.to_model(tile_mask, (n, n), fidelity)
            if not native_mask.any():
                log.warning("hole at %s is too thin to survive the resize to %d px; use --fidelity complete "
                            "or --dilate", [c.hole.x0, c.hole.y0, c.hole.x1, c.hole.y1], n)
            jobs.append(_Job(crop=c, image=native_img, hole=native_mask,
                             noise=check_noise(noise, lat) if noise is not None else draw_noise(rng, lat)))
            info.crops.append({"box": [c.box.x0, c.box.y0, c.box.x1, c.box.y1], "squashed": c.squashed})
        info.seconds["prepare"] = time.perf_counter() - t0

        self._encode(jobs, info)
        self._denoise(jobs, schedule, guidance, info, progress)
        self._decode(jobs, info)

        t = time.perf_counter()
        out = image.copy()
        h, w = image.shape[:2]
        for record, job in zip(info.crops, jobs):
            c = job.crop
            region = c.region(w, h)
            back = cropping.resize_back(job.result, (c.box.w, c.box.h))
            back = back[region.y0 - c.box.y0:region.y1 - c.box.y0, region.x0 - c.box.x0:region.x1 - c.box.x0]
            group = np.isin(labels[region.slices], c.labels) if len(jobs) > 1 else hole[region.slices]
            feathered = masks.feather(group, cropping.paste_radius(c.box, n), fidelity)
            out[region.slices] = cropping.blend(back, out[region.slices], feathered)
            report = masks.coverage_report(group, job.hole, feathered, (c.box.w, c.box.h),
                                           (region.x0 - c.box.x0, region.y0 - c.box.y0))
            record["coverage"] = report
            _log_coverage(report, fidelity, [c.hole.x0, c.hole.y0, c.hole.x1, c.hole.y1])
        info.seconds["paste"] = time.perf_counter() - t
        info.seconds["total"] = time.perf_counter() - t0
        info.providers.update({k: g.provider for k, g in self.graphs.items() if g.provider})
        return out

    # -- phases ---------------------------------------------------------------------------------
    def _encode(self, jobs, info: RunInfo) -> None:
        enc = self.graphs[contract.VAE_ENCODER.key]
        t = time.perf_counter()
        load0 = enc.load_seconds
        # Two calls, not one at batch 2: on the CPU the batched call is no faster and its peak is
        # larger (benchmarks/encode_batch.py).
        for job in jobs:
            x = to_model_input(job.image)
            masked = x * (np.float32(1.0) - masks.pixel_mask(job.hole))
            job.z_img = enc.run(image=x, noise=job.noise["eps_posterior_image"])
            job.z_msk = enc.run(image=masked, noise=job.noise["eps_posterior_masked"])
        self._done_with(enc.spec.key)
        info.seconds["encoder_load"] = enc.load_seconds - load0
        info.seconds["encode"] = time.perf_counter() - t - info.seconds["encoder_load"]

    def _denoise(self, jobs, schedule: DDIMSchedule, guidance: float, info: RunInfo, progress) -> None:
        unet = self.graphs[contract.UNET.key]
        t = time.perf_counter()
        load0 = unet.load_seconds
        total, done = len(jobs) * len(schedule), 0
        g = np.array([guidance], dtype=np.float32)
        for job in jobs:
            m_lat = masks.latent_mask(job.hole)
            nz = job.noise
            noise = nz["noise_base"] + np.float32(contract.NOISE_OFFSET) * nz["noise_offset_draw"]
            x = add_noise(job.z_img, noise, schedule.alpha_start)
            for i, ts in enumerate(schedule.timesteps):
                eps = unet.run(latent=x, mask=m_lat, masked_latent=job.z_msk,
                               timestep=np.array([ts], dtype=np.int64), guidance_scale=g)
                x = ddim_step(x, eps, schedule.alpha_t[i], schedule.alpha_prev[i])
                done += 1
                if progress is not None and progress(done, total) is False:
                    self.release()
                    raise Cancelled(f"cancelled after {done} of {total} steps")
            job.latent = x
        self._done_with(unet.spec.key)
        info.seconds["unet_load"] = unet.load_seconds - load0
        info.seconds["denoise"] = time.perf_counter() - t - info.seconds["unet_load"]

    def _decode(self, jobs, info: RunInfo) -> None:
        if self.streamed is not None:
            self._decode_streamed(jobs, info)
            return
        dec = self.graphs[contract.VAE_DECODER.key]
        t = time.perf_counter()
        load0 = dec.load_seconds
        fallback = None
        try:
            for job in jobs:
                y = dec.run(latent=job.latent)
                if not np.isfinite(y).all() and self.models.precision != "fp32":
                    log.warning("the %s VAE decoder produced non-finite values; decoding again with the fp32 "
                                "decoder", self.models.precision)
                    if fallback is None:
                        fallback = GraphSession(open_models(self.models.root, "fp32"), contract.VAE_DECODER,
                                                self.config)
                    y = fallback.run(latent=job.latent)
                    info.decoder_fallback = True
                job.result = to_uint8(np.nan_to_num(y, nan=0.0, posinf=1.0, neginf=0.0))
        finally:
            if fallback is not None:
                fallback.release()
        self._done_with(dec.spec.key)
        info.seconds["decoder_load"] = dec.load_seconds - load0
        info.seconds["decode"] = time.perf_counter() - t - info.seconds["decoder_load"]

    def _decode_streamed(self, jobs, info: RunInfo) -> None:
        """Low-memory mode's decode: the head graph, then the last stage in strips of rows
        (``streamed_decoder.StreamedDecoder``); its sessions live only through it."""
        dec = StreamedDecoder(self.models.root, self.streamed, self.config)
        t = time.perf_counter()
        for job in jobs:
            y = dec.run(job.latent)
            job.result = to_uint8(np.nan_to_num(y, nan=0.0, posinf=1.0, neginf=0.0))
        info.providers[contract.VAE_DECODER.key] = dec.provider
        info.seconds["decoder_load"] = dec.load_seconds
        info.seconds["decode"] = time.perf_counter() - t - dec.load_seconds


def _log_coverage(r: dict, fidelity: str, where: list) -> None:
    """Say how much the hole was grown for the model, and warn with numbers when part of the
    user's hole may come back unfilled."""
    if r["hole_native_px"] and r["model_native_px"] > 1.5 * r["hole_native_px"]:
        log.info("hole at %s grown for the model from %.0f to %d native px (thin strokes widened to whole "
                 "8×8 latent cells)", where, r["hole_native_px"], r["model_native_px"])
    if fidelity == "complete":
        if r["unseen_px"] or r["underweight_px"]:  # the rules above should make both 0
            log.warning("hole at %s: %d of %d px outside the model's latent mask, %d pasted at weight < 1",
                        where, r["unseen_px"], r["hole_px"], r["underweight_px"])
    elif r["unseen_px"] >= 0.25 * r["hole_px"]:
        log.warning("hole at %s: %d of %d px (%.0f%%) lie in latent cells the model is not told to fill, so "
                    "they may keep the original (official mask rules); use --fidelity complete", where,
                    r["unseen_px"], r["hole_px"], 100.0 * r["unseen_px"] / max(r["hole_px"], 1))


def load_noise_file(path) -> dict:
    """The four noise tensors from an .npz (pipeline_case.npz's keys)."""
    path = Path(path)
    try:
        with np.load(path) as d:
            return {k: d[k] for k in NOISE_KEYS if k in d.files}
    except FileNotFoundError:
        raise UserError(f"noise file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read noise file {path}: {e}") from None
