"""Reading photos and masks the way the user sees them, and writing results atomically.

The public image API is RGB uint8 H×W×3 and masks H×W uint8 with 255 = fill (STYLE.md). This
module turns whatever a user has (JPEG/PNG/WebP/TIFF; EXIF-rotated; RGBA, grayscale, palette or
16-bit) into that, and writes the result back in the displayed orientation with the EXIF
metadata kept (except the orientation tag, which no longer applies). Every problem a user can
fix becomes a one-line ``UserError``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from moebius_edge import contract
from moebius_edge.errors import UserError

log = logging.getLogger(__name__)

# Extension -> Pillow format. The output format is chosen by the output file's extension.
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_QUALITY = 95
MASK_ASPECT_TOLERANCE = 0.01
MASK_CHANNELS = ("auto", "alpha", "luminance")

_ORIENTATION_TAG = 0x0112
# TIFF layout tags that describe the *source* file's pixel layout; copying them into another
# file's EXIF would describe the wrong image (width, strips, compression ...).
_LAYOUT_TAGS = {256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 320, 322, 323, 324, 325, 338, 339}


@dataclass
class Photo:
    """A decoded image in its displayed orientation."""

    rgb: np.ndarray  # (H, W, 3) uint8
    alpha: np.ndarray | None  # (H, W) uint8 or None; put back on save where the format allows
    exif: bytes | None  # EXIF without the orientation tag, or None
    icc_profile: bytes | None
    format: str | None  # Pillow format name of the source file


def supported_extension(path) -> bool:
    return Path(path).suffix.lower() in FORMATS


def output_format(path) -> str:
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise UserError(f"cannot write {path}: unknown image extension {ext or '(none)'!r}; "
                        f"use one of {', '.join(sorted(FORMATS))}")
    return FORMATS[ext]


@contextlib.contextmanager
def _opened(path, what: str, max_pixels: int):
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if path.is_dir():
        raise UserError(f"{what} is a folder, not an image: {path}")
    try:
        # Our own --max-pixels limit replaces Pillow's warning; Pillow's hard limit (twice its
        # warning threshold) still applies and is reported below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise UserError(f"{what} {path} is too large for Pillow ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read {what} {path}: {e}") from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise UserError(f"{what} {path} has {w}×{h} = {w * h / 1e6:.1f} MP, more than the limit of "
                            f"{max_pixels / 1e6:g} MP (--max-pixels)")
        try:
            im.load()
        except (OSError, ValueError, SyntaxError) as e:
            raise UserError(f"cannot decode {what} {path}: {e}") from None
        yield im


def _to_8bit_gray(im: Image.Image) -> np.ndarray:
    a = np.asarray(im)
    if im.mode == "F":
        a = a * 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else a
        return np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)
    a = a.astype(np.int64)
    if im.mode.startswith("I;16") or a.max(initial=0) > 255:
        return np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)  # 16-bit: 65535 -> 255
    return np.clip(a, 0, 255).astype(np.uint8)


def to_rgb_alpha(im: Image.Image) -> tuple:
    """Any Pillow image -> ((H, W, 3) uint8 RGB, (H, W) uint8 alpha or None)."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        g = _to_8bit_gray(im)
        return np.repeat(g[..., None], 3, axis=2), None
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
    if mode != "RGB":
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8), None


def _exif_without_orientation(im: Image.Image):
    if not im.getexif():
        return None
    exif = Image.Exif()  # a copy: the image's own Exif object drives exif_transpose
    exif.load(im.getexif().tobytes())
    for tag in [_ORIENTATION_TAG, *_LAYOUT_TAGS]:
        exif.pop(tag, None)
    return exif.tobytes() if len(exif) else None


def read_image(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
    """Decode an image file into its displayed (EXIF-upright) RGB pixels."""
    with _opened(path, "image", max_pixels) as im:
        fmt = im.format
        upright = ImageOps.exif_transpose(im)
        exif = _exif_without_orientation(im)
        icc = im.info.get("icc_profile")
        rgb, alpha = to_rgb_alpha(upright)
    if alpha is not None and alpha.min() == 255:
        alpha = None  # fully opaque: nothing to carry over
    return Photo(rgb=rgb, alpha=alpha, exif=exif, icc_profile=icc, format=fmt)


def mask_from_pil(im: Image.Image, channel: str = "auto") -> np.ndarray:
    """A painted mask -> (H, W) uint8 values (not yet binarised)."""
    if channel not in MASK_CHANNELS:
        raise ValueError(f"mask channel must be one of {MASK_CHANNELS}, got {channel!r}")
    rgb, alpha = to_rgb_alpha(im)
    if channel == "alpha":
        if alpha is None:
            raise UserError("--mask-channel alpha: the mask has no alpha channel")
        return alpha
    if channel == "auto" and alpha is not None and alpha.min() < 255:
        return alpha  # strokes painted on a transparent layer
    if im.mode in ("L", "1") or im.mode.startswith("I") or im.mode == "F":
        return np.ascontiguousarray(rgb[..., 0])
    return np.asarray(Image.fromarray(rgb).convert("L"))


def read_mask(path, size: tuple, *, channel: str = "auto", invert: bool = False,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read the mask the user painted over the *displayed* image and bring it to ``size`` (W, H).

    A mask of another resolution is accepted when its aspect ratio is within 1 % of the image's
    and is resized with nearest neighbour (values stay values). Returns uint8 (H, W), not binarised.
    """
    with _opened(path, "mask", max_pixels) as im:
        upright = ImageOps.exif_transpose(im)
        m = mask_from_pil(upright, channel)
    w, h = size
    mh, mw = m.shape
    if (mw, mh) != (w, h):
        if abs((mw / mh) / (w / h) - 1.0) > MASK_ASPECT_TOLERANCE:
            raise UserError(f"mask {path} is {mw}×{mh} but the image is {w}×{h} (as displayed): "
                            f"the aspect ratios differ by more than {MASK_ASPECT_TOLERANCE:.0%}")
        m = np.asarray(Image.fromarray(m).resize((w, h), Image.Resampling.NEAREST))
    if invert:
        m = 255 - m
    return np.ascontiguousarray(m, dtype=np.uint8)


def binarize(mask: np.ndarray) -> np.ndarray:
    """The official rule (ARCHITECTURE §10.1): 0 below 127.5, else 255 (so 128 is hole)."""
    return np.where(mask >= contract.MASK_THRESHOLD, 255, 0).astype(np.uint8)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a binary mask by ``pixels`` with a disc, so thin strokes cover an object's edge."""
    if pixels <= 0:
        return mask
    import cv2

    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask, k)


def _atomic_target(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_image(path, rgb: np.ndarray, *, alpha: np.ndarray | None = None, exif: bytes | None = None,
                icc_profile: bytes | None = None, quality: int = DEFAULT_QUALITY) -> Path:
    """Write RGB (and alpha where the format has it) atomically; format from the extension."""
    path = Path(path)
    fmt = output_format(path)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    im = Image.fromarray(rgb, "RGB")
    if alpha is not None:
        if fmt in ALPHA_FORMATS:
            im.putalpha(Image.fromarray(alpha, "L"))
        else:
            log.info("%s has no alpha channel: transparency of the input is dropped", fmt)
    kwargs = {}
    if exif:
        kwargs["exif"] = exif
    if icc_profile:
        kwargs["icc_profile"] = icc_profile
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = int(quality)
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")
    try:
        with atomic_path(path) as tmp:
            im.save(tmp, format=fmt, **kwargs)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e}") from None
    return path


def copy_file(src, dst) -> Path:
    """Copy bytes atomically (used when an empty mask leaves nothing to do)."""
    dst = Path(dst)
    try:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    except OSError as e:
        raise UserError(f"cannot write {dst}: {e}") from None
    return dst
