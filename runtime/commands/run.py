"""`moebius-edge run`: inpaint a photo (or a folder of photos) with an exported models folder.

    moebius-edge run photo.jpg mask.png [-o out.jpg]
    moebius-edge run photos/ --masks masks/ -o results/

Needs only the base install (numpy, onnxruntime, Pillow/OpenCV). Output: the photo as displayed,
same size; the hole is replaced and, with the default ``--fidelity complete``, a feather of a few
pixels just outside it blends into the photo; default name ``<stem>.inpainted.<ext>`` beside the input.
Existing files are never overwritten without --force, the input never; files are written
atomically, and nothing is written when something fails.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from moebius_edge import contract
from moebius_edge.commands import check_writable_folder
from moebius_edge.errors import UserError

log = logging.getLogger(__name__)


def register(sub):
    p = sub.add_parser(
        "run", help="inpaint a photo (or a folder of photos) where a mask is painted",
        description="Fill the masked part of a photo with the Moebius model on ONNX Runtime. The photo "
        "keeps its size, orientation and metadata; every pixel of the hole is replaced and a few pixels around "
        "it are blended (--fidelity complete); the rest is the input, byte for byte.")
    p.add_argument("image", metavar="IMAGE", help="photo (JPEG/PNG/WebP/TIFF), or a folder of photos")
    p.add_argument("mask", metavar="MASK", nargs="?",
                   help="mask painted over the photo as displayed: white (≥ 128) = fill")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output file (format from its extension); a folder in batch mode "
                        "[default: <stem>.inpainted.<ext> beside the input]")
    p.add_argument("--masks", metavar="DIR_OR_MASK",
                   help="batch mode: folder of masks paired with the photos by file stem, or one mask for all")
    p.add_argument("--models", default=contract.DEFAULT_MODELS_DIR, metavar="DIR|REPO",
                   help="models folder from `moebius-edge export`, or a Hugging Face repo holding one: "
                        "owner/name[@revision] or hf://owner/name[@revision] (an existing local folder wins; "
                        "needs the hub extra)")
    g = p.add_argument_group("sampling")
    m = p.add_argument_group("mask")
    r = p.add_argument_group("runtime")
    o = p.add_argument_group("output")
    add_pair_options(g, m, o)
    g.add_argument("--noise-file", metavar="F.npz",
                   help="inject the four noise tensors (eps_posterior_image, eps_posterior_masked, "
                        "noise_base, noise_offset_draw at the native latent size) instead of drawing them; "
                        "single-crop runs only")
    r.add_argument("--precision", choices=contract.PRECISIONS, default=contract.PRECISIONS[0], help="graph variant")
    r.add_argument("--provider", choices=contract.PROVIDER_CHOICES, default=contract.PROVIDER_CHOICES[0],
                   help="execution provider (falls back to CPU)")
    r.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's choice)")
    r.add_argument("--low-memory", action="store_true",
                   help="the smallest peak: no ORT memory arena for the VAE, large blocks mapped on their own, the "
                        "decoder's last stage in strips (slower)")
    r.add_argument("--max-pixels", type=float, default=contract.DEFAULT_MAX_PIXELS,
                   help="refuse larger images (protects against decompression bombs)")
    o.add_argument("-f", "--force", action="store_true",
                   help="overwrite an existing output file (never an input: photo, mask or noise file)")
    o.add_argument("--json", action="store_true", help="print machine-readable results and timings on stdout")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def add_pair_options(sampling, mask, output) -> None:
    """The options of one photo/mask pair, added to three argument groups: sampling, mask rules and
    the output image. `run` applies them to all its pairs; `run-dataset` takes them as defaults that
    a jobs table may set per row, in a column named after each option's ``dest``
    (``moebius_edge.scale.schema.ROW_OPTIONS``). Model, runtime and file-safety options are not here."""
    g, m, o = sampling, mask, output
    g.add_argument("--steps", type=int, default=contract.DEFAULT_STEPS, help="DDIM steps (before strength)")
    g.add_argument("--guidance", type=float, default=contract.DEFAULT_GUIDANCE, help="classifier-free guidance scale")
    g.add_argument("--strength", type=float, default=contract.DEFAULT_STRENGTH,
                   help="fraction of the schedule to run (0.99: 19 of 20 steps, from t = 900)")
    g.add_argument("--seed", type=int, default=contract.DEFAULT_SEED, help="seed of numpy's default_rng for the noise")
    m.add_argument("--mask-channel", choices=contract.MASK_CHANNELS, default=contract.MASK_CHANNELS[0],
                   help="which channel is the mask; auto: alpha if the mask has transparency, else luminance")
    m.add_argument("--invert-mask", action="store_true", help="black = fill instead of white = fill")
    m.add_argument("--dilate", type=int, default=0, metavar="N", help="grow the hole by N pixels")
    m.add_argument("--margin", type=float, default=contract.DEFAULT_MARGIN,
                   help="context around the hole, as a fraction of the hole's longer side (at least "
                        f"{contract.DEFAULT_MIN_MARGIN} px)")
    m.add_argument("--fidelity", choices=contract.FIDELITY_MODES, default=contract.DEFAULT_FIDELITY,
                   help="complete: every pixel of the hole is replaced, however thin the stroke (the feather "
                        "lies outside it); official: the reference pipeline's mask rules bit for bit "
                        "(thin strokes may be lost); see docs/pipeline.md §3")
    m.add_argument("--allow-empty-mask", action="store_true",
                   help="a mask without a hole copies the input instead of failing")
    o.add_argument("--quality", type=int, default=contract.DEFAULT_QUALITY, help="JPEG/WebP quality")
    o.add_argument("--strip-metadata", action="store_true",
                   help="write no EXIF and no colour profile (colours are converted to sRGB first)")


# ---------------------------------------------------------------------------------------------


def check_args(args) -> None:
    """Everything the arguments alone tell, before an image is read or a model opened."""
    from moebius_edge.scheduler import timesteps

    # NaN passes every comparison test unnoticed and ∞ fails only deep inside (int(inf)); a NaN
    # guidance would even run to the end and write a black hole.
    for flag, value in (("--guidance", args.guidance), ("--strength", args.strength),
                        ("--margin", args.margin), ("--max-pixels", args.max_pixels)):
        if not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")
    if not 1 <= args.steps <= contract.NUM_TRAIN_TIMESTEPS:
        raise UserError(f"--steps must be between 1 and {contract.NUM_TRAIN_TIMESTEPS} (the training schedule)")
    if not 0.0 < args.strength <= 1.0:
        raise UserError("--strength must be in (0, 1]")
    try:
        timesteps(args.steps, args.strength)  # e.g. a strength that leaves no step
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.seed < 0:
        raise UserError("--seed must be ≥ 0 (numpy's random generator takes no negative seed)")
    if args.dilate < 0:
        raise UserError("--dilate must be ≥ 0")
    if args.max_pixels < 1:
        raise UserError("--max-pixels must be at least 1")
    if not 1 <= args.quality <= 100:
        raise UserError("--quality must be between 1 and 100")
    if args.margin < 0:
        raise UserError("--margin must be ≥ 0")
    if args.threads < 0:
        raise UserError("--threads must be ≥ 0 (0: onnxruntime's choice)")
    cpus = os.cpu_count()
    if cpus and args.threads > cpus:  # thousands of threads stall ONNX Runtime for minutes
        log.warning("--threads %d is more than the %d CPUs of this machine: using %d", args.threads, cpus, cpus)
        args.threads = cpus


def _file_id(path):
    """(device, inode) of the file ``path`` names, symbolic links followed; None if none."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _same_file(a: Path, b: Path) -> bool:
    ida = _file_id(a)
    return ida is not None and ida == _file_id(b)


class Inputs:
    """The files a run reads (photos, masks, the noise file). No output may be one of them, under
    any spelling: the same path, ``..``, a symbolic or a hard link all name the same inode."""

    def __init__(self, paths):
        self.ids = {}
        for p in paths:
            fid = _file_id(p)
            if fid is not None:
                self.ids.setdefault(fid, Path(p))

    def which(self, path):
        """The input that ``path`` names, or None."""
        fid = _file_id(path)
        return None if fid is None else self.ids.get(fid)


def _check_output(out: Path, inputs: Inputs, force: bool, *, check_folder: bool = True) -> None:
    """Refuse, before any work, an output that could not be written or would replace an input."""
    from moebius_edge.imageio import output_format

    output_format(out)
    victim = inputs.which(out)
    if victim is not None:
        raise UserError(f"refusing to overwrite the input {victim} (as {out}), even with --force; "
                        f"choose another output with -o")
    if out.is_dir():
        raise UserError(f"{out} is a folder")
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    if check_folder:
        folder = out.parent
        if not folder.is_dir():
            why = "is not a folder" if folder.exists() else "does not exist"
            raise UserError(f"cannot write {out}: {folder} {why}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"cannot write {out}: folder {folder} is not writable")


def _read_noise(path) -> dict:
    """The --noise-file tensors, refused in one line before any model opens when one is missing or
    not finite (NaN noise runs to the end and writes a black hole). Shapes need the model: the
    pipeline checks them."""
    import numpy as np

    from moebius_edge.pipeline import NOISE_KEYS, load_noise_file

    noise = load_noise_file(path)
    missing = [k for k in NOISE_KEYS if k not in noise]
    if missing:
        raise UserError(f"noise file {path} lacks {', '.join(missing)} (needs {', '.join(NOISE_KEYS)})")
    for key, value in noise.items():
        try:
            finite = bool(np.isfinite(np.asarray(value, dtype=np.float32)).all())
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise UserError(f"noise file {path}: {key} holds values that are not finite numbers")
    return noise


def default_output(image: Path) -> Path:
    return image.with_name(f"{image.stem}.inpainted{image.suffix}")


class _Progress:
    """tqdm step bar on a terminal; nothing otherwise."""

    def __init__(self, enabled: bool, desc: str):
        self.bar = None
        self.enabled = enabled
        self.desc = desc

    def __call__(self, done: int, total: int):
        if not self.enabled:
            return True
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="step", leave=False, file=sys.stderr)
        self.bar.update(done - self.bar.n)
        return True

    def close(self):
        if self.bar is not None:
            self.bar.close()


class Runner:
    """Shared state of one `run` invocation: the arguments and the (lazily opened) models. Also
    what each `run-dataset` actor runs its rows through (``moebius_edge.scale.dataset``)."""

    def __init__(self, args, inputs: Inputs, inpainter=None):
        self.args = args
        self.inputs = inputs
        self._inpainter = inpainter  # run-dataset's actors pass theirs: one Inpainter for all their rows
        self.noise = None
        self.verify_seconds = 0.0
        if args.noise_file:
            self.noise = _read_noise(args.noise_file)

    @property
    def inpainter(self):
        if self._inpainter is None:
            from moebius_edge.hub import resolve_models
            from moebius_edge.pipeline import Inpainter

            t = time.perf_counter()
            a = self.args
            self._inpainter = Inpainter.from_models(resolve_models(a.models), a.precision, a.provider,
                                                    threads=a.threads, low_memory=a.low_memory)
            self.verify_seconds = time.perf_counter() - t
            provenance = self._inpainter.models.provenance
            if provenance.startswith(contract.PROVENANCE_RANDOM_INIT):
                log.warning("%s: provenance %s, random weights: the output is noise, not inpainting",
                            a.models, provenance)
        return self._inpainter

    def one(self, image_path: Path, mask_path: Path, out: Path, *, step_bar: bool, args=None,
            inputs: Inputs | None = None) -> dict:
        """Inpaint one pair and write the result; returns the --json record. ``args`` and ``inputs``:
        this pair's options and input files where they are not the run's (a row of run-dataset)."""
        from moebius_edge import imageio, masks

        a = self.args if args is None else args
        t0 = time.perf_counter()
        _check_output(out, self.inputs if inputs is None else inputs, a.force)
        max_pixels = int(a.max_pixels)
        photo = imageio.read_image(image_path, max_pixels, strip_metadata=a.strip_metadata)
        h, w = photo.rgb.shape[:2]
        if a.dilate > max(h, w):  # the dilation disc grows as dilate²: 100000 px would ask for 40 GB
            raise UserError(f"--dilate {a.dilate} is more than the longer side of {image_path} ({max(h, w)} px)")
        raw = imageio.read_mask(mask_path, (w, h), channel=a.mask_channel, invert=a.invert_mask,
                                max_pixels=max_pixels)
        hole = masks.dilate(masks.binarize(raw), a.dilate)
        record = {"input": str(image_path), "mask": str(mask_path), "output": str(out), "size": [w, h]}
        if not hole.any():
            if not a.allow_empty_mask:
                raise UserError(f"mask {mask_path} has no hole (no pixel ≥ 128 after --invert-mask/--dilate): "
                                f"nothing to inpaint; pass --allow-empty-mask to copy the input instead")
            log.warning("mask %s has no hole: copying the input to %s", mask_path, out)
            if imageio.output_format(out) == photo.format and not a.strip_metadata:
                imageio.copy_file(image_path, out)  # same format: the very bytes, EXIF rotation included
            else:
                imageio.write_image(out, photo.rgb, alpha=photo.alpha, exif=photo.exif,
                                    icc_profile=photo.icc_profile, quality=a.quality)
            record.update(copied=True, seconds={"total": time.perf_counter() - t0})
            return record
        read_s = time.perf_counter() - t0
        inp = self.inpainter
        bar = _Progress(step_bar and not a.no_progress and sys.stderr.isatty(), image_path.name)
        try:
            result = inp.inpaint(photo.rgb, hole, seed=a.seed, steps=a.steps, guidance=a.guidance, fidelity=a.fidelity,
                                 strength=a.strength, noise=self.noise, progress=bar, margin=a.margin)
        finally:
            bar.close()
        t = time.perf_counter()
        imageio.write_image(out, result, alpha=photo.alpha, exif=photo.exif, icc_profile=photo.icc_profile,
                            quality=a.quality)
        info = inp.last_run
        seconds = {"read": read_s, **info.seconds, "write": time.perf_counter() - t}
        if self.verify_seconds:
            seconds["open_models"], self.verify_seconds = self.verify_seconds, 0.0
        seconds["total"] = time.perf_counter() - t0 + seconds.get("open_models", 0.0)
        record.update(copied=False, fidelity=info.fidelity, crops=info.crops, steps=info.steps, providers=info.providers,
                      precision=a.precision, decoder_fallback=info.decoder_fallback,
                      seconds={k: round(v, 4) for k, v in seconds.items()})
        # Enough to reproduce the run: the weights it used and where its noise came from.
        record.update(provenance=inp.models.provenance, seed=None if self.noise is not None else a.seed)
        if self.noise is not None:
            record.update(noise_file=str(a.noise_file))
        log.info("wrote %s (%d×%d, %d crop%s, %.1f s)", out, w, h, len(info.crops),
                 "" if len(info.crops) == 1 else "s", seconds["total"])
        return record


def _run(args) -> int:
    check_args(args)
    image = Path(args.image)
    if image.is_dir():
        return _run_batch(args, image)
    if args.masks and not args.mask:
        args.mask = args.masks
    if not args.mask:
        raise UserError("give a MASK after the image (or a folder of images with --masks)")
    if not image.exists():
        raise UserError(f"image not found: {image}")
    out = Path(args.output) if args.output else default_output(image)
    if out.is_dir():
        out = out / image.name
    inputs = Inputs([image, args.mask, *([args.noise_file] if args.noise_file else [])])
    record = Runner(args, inputs).one(image, Path(args.mask), out, step_bar=True)
    if args.json:
        print(json.dumps(record, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------
# Batch mode


def _find_mask(masks: Path, stem: str):
    from moebius_edge.imageio import supported_extension

    if masks.is_file():
        return masks
    found = sorted(p for p in masks.iterdir() if p.stem == stem and supported_extension(p))
    if not found:
        raise UserError(f"no mask named {stem}.* in {masks}")
    if len(found) > 1:
        raise UserError(f"several masks for {stem}: {', '.join(p.name for p in found)}")
    return found[0]


def batch_pairs(folder: Path, masks: Path, outdir: Path) -> list:
    """The photos of ``folder`` paired with their masks as batch mode pairs them (by file stem, or
    one mask file for all): ``[(photo, mask, None) or (photo, None, UserError)]``, sorted by name.
    Folders that cannot work (the output folder is an input folder, no photos) are refused in one
    line. Also what `run-dataset PHOTOS --masks MASKS` runs."""
    from moebius_edge.imageio import supported_extension

    if not masks.exists():
        raise UserError(f"masks not found: {masks}")
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"{outdir} exists and is not a folder")
    if _same_file(folder, outdir):
        raise UserError(f"the output folder is the input folder {folder}: outputs would replace the inputs")
    if masks.is_dir() and _same_file(masks, outdir):
        raise UserError(f"the output folder is the masks folder {masks}: results would replace masks, or be "
                        f"taken for masks by the next run")
    images = sorted(p for p in folder.iterdir()
                    if p.is_file() and not p.name.startswith(".") and supported_extension(p))
    if masks.is_dir() and _same_file(masks, folder):
        raise UserError("the masks folder is the images folder: masks are paired by file stem, so they "
                        "need their own folder")
    if not images:
        raise UserError(f"no JPEG/PNG/WebP/TIFF images in {folder}")
    pairs = []
    for image in images:
        try:
            pairs.append((image, _find_mask(masks, image.stem), None))
        except UserError as e:
            pairs.append((image, None, e))
    return pairs


def _run_batch(args, folder: Path) -> int:
    if args.mask:
        raise UserError("batch mode takes the masks with --masks DIR_OR_MASK, not as a second argument")
    if not args.masks:
        raise UserError(f"{folder} is a folder: give the masks with --masks DIR_OR_MASK")
    if not args.output:
        raise UserError("batch mode needs an output folder: -o OUTDIR")
    masks, outdir = Path(args.masks), Path(args.output)
    pairs = batch_pairs(folder, masks, outdir)
    images = [image for image, _, _ in pairs]
    if args.noise_file:
        log.warning("--noise-file: the same noise is used for every photo")
    check_writable_folder(outdir, "the results")
    mask_files = sorted(p for p in masks.iterdir() if p.is_file()) if masks.is_dir() else [masks]
    inputs = Inputs([*images, *mask_files, *([args.noise_file] if args.noise_file else [])])
    runner = Runner(args, inputs)
    from tqdm import tqdm

    records, failures, todo = [], [], []

    def skip(image: Path, e: UserError) -> None:
        failures.append({"input": str(image), "error": str(e)})
        tqdm.write(f"moebius-edge run: skipped {image.name}: {e}", file=sys.stderr)

    # Every pair's mask and output are checked before the first (long) inference, so a pair that
    # cannot succeed is reported at once rather than after the others have run.
    for image, mask, error in pairs:
        try:
            if error is not None:
                raise error
            out = outdir / image.name
            _check_output(out, inputs, args.force, check_folder=False)  # the folder is made below
            todo.append((image, mask, out))
        except UserError as e:
            skip(image, e)
    if todo:
        # A bad models folder fails every pair: open it before starting. With two photos or more
        # the three sessions stay alive from one photo to the next (each costs seconds to create:
        # benchmarks/pipeline.py's load column) unless --low-memory asks for the smaller peak.
        runner.inpainter.keep_sessions = len(todo) > 1 and not args.low_memory
        try:
            outdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the output folder {outdir}: {e}") from None
    bar = tqdm(todo, unit="image", file=sys.stderr,
               disable=args.no_progress or not sys.stderr.isatty() or len(todo) < 2)
    for image, mask, out in bar:
        bar.set_postfix_str(image.name, refresh=False)
        try:
            records.append(runner.one(image, mask, out, step_bar=False))
        except UserError as e:
            skip(image, e)
    bar.close()
    if todo:
        runner.inpainter.release()
    done = len(records)
    log.info("%d of %d images done%s", done, len(images), f", {len(failures)} skipped" if failures else "")
    if args.json:
        print(json.dumps({"results": records, "skipped": failures}, indent=1))
    if failures:
        print(f"moebius-edge run: {len(failures)} of {len(images)} images skipped", file=sys.stderr)
        return 2
    return 0

