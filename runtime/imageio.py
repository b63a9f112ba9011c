"""Reading photos and masks the way the user sees them, and writing results atomically.

The public image API is RGB uint8 H×W×3 and masks H×W uint8 with 255 = fill (docs/style.md §5). This
module turns whatever a user has (JPEG/PNG/WebP/TIFF; EXIF-rotated; RGBA, grayscale, palette,
CMYK or 16-bit) into that, and writes the result back in the displayed orientation. Every
problem a user can fix becomes a one-line ``UserError``; a lossy conversion is one log line.

Metadata, for a tool that removes things from photos (issue 9):

- EXIF (Exif 2.32, CIPA DC-008-2019): the basic tags (camera, dates, exposure, GPS ...) are
  kept. Dropped are the Orientation (the pixels are written upright), the source file's TIFF
  layout tags, and everything that can hold a picture of the *original*, in which the removed
  object would survive: the MakerNote (0x927C; some cameras store a preview there), the 1st IFD
  (the thumbnail, with its JPEGInterchangeFormat pointers), TIFF SubIFDs, Photoshop image
  resources (thumbnail resource 0x040C) and XMP. ExifImageWidth/Height are set to the written
  size. EXIF that cannot be parsed is dropped with a warning, never a traceback.
- A JPEG holds EXIF in one APP1 segment, whose length field is 16 bits (ITU T.81 B.1.1.4):
  EXIF over 64 KB loses its largest tags until it fits, with a warning.
- ICC (ICC.1:2010 §7.2.6, the header's data colour space): a profile is carried only when it
  describes RGB pixels. Grey and CMYK pixels are converted to sRGB with their profile through
  LittleCMS (Pillow's ImageCms) where it can, otherwise the profile is dropped, with a warning.
- ``read_image(..., strip_metadata=True)`` (the CLI's ``--strip-metadata``) returns neither EXIF
  nor ICC; RGB pixels with a non-sRGB profile are converted to sRGB first, so their colours
  survive losing it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from moebius_edge import contract, masks
from moebius_edge.errors import UserError

log = logging.getLogger(__name__)

# Extension -> Pillow format. The output format is chosen by the output file's extension.
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}
MASK_ASPECT_TOLERANCE = 0.01

_ORIENTATION_TAG = 0x0112
_MAKERNOTE_TAG = 0x927C
_EXIF_IMAGE_WIDTH, _EXIF_IMAGE_HEIGHT = 0xA002, 0xA003
# TIFF layout tags that describe the *source* file's pixel layout; copying them into another
# file's EXIF would describe the wrong image (width, strips, compression ...).
_LAYOUT_TAGS = {256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 320, 322, 323, 324, 325, 338, 339}
# Tags that hold or point at another picture of the source: SubIFDs (reduced-resolution copies),
# the thumbnail's JPEGInterchangeFormat/Length, XMP (can embed thumbnails and the edit history),
# Photoshop image resources (thumbnail resource 0x040C). Also the ICC profile of a TIFF source,
# which is decided apart from the EXIF (see _colours) and must not ride along in it.
_SOURCE_COPY_TAGS = {330, 513, 514, 700, 34377, 34675}
# Offsets of sub-IFDs: Pillow rewrites them, they are never "large tags" to drop.
_POINTER_TAGS = {ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo, ExifTags.IFD.Interop}
# Pillow's limit for EXIF in a JPEG, the b"Exif\0\0" header included: one APP1 segment of 64 KB
# less its 2-byte length field.
_JPEG_EXIF_LIMIT = 65533
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_RGB_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "P", "PA"}
_GREY_MODES = {"1", "L", "LA", "La", "I", "F"}
_ICC_SPACES = {b"RGB ": "RGB", b"GRAY": "grey", b"CMYK": "CMYK"}


@dataclass
class Photo:
    """A decoded image in its displayed orientation."""

    rgb: np.ndarray  # (H, W, 3) uint8
    alpha: np.ndarray | None  # (H, W) uint8 or None; put back on save where the format allows
    exif: bytes | None  # EXIF to write with the result (module docstring: what is dropped), or None
    icc_profile: bytes | None  # an RGB profile describing ``rgb``, or None (sRGB)
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
        bits = _sample_bits(im)
        try:
            im.load()
        except (OSError, ValueError, SyntaxError) as e:
            raise UserError(f"cannot decode {what} {path}: {e}") from None
        yield im, bits


def _sample_bits(im: Image.Image) -> int:
    """Bits per sample in the file. Call before ``load()``: Pillow decodes 16-bit RGB straight to
    8-bit "RGB", and only the decoder's raw mode, gone after decoding, still tells."""
    for tile in im.tile:
        args = tile[3] if isinstance(tile[3], tuple) else (tile[3],)
        if args and isinstance(args[0], str) and ";16" in args[0]:
            return 16
    if im.mode.startswith("I;16"):
        return 16
    return 32 if im.mode in ("I", "F") else 8


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


def _upright(im: Image.Image, path, what: str) -> Image.Image:
    """``im`` as displayed. Only the Orientation tag is read: ImageOps.exif_transpose re-serialises
    the whole EXIF, so a corrupt tag anywhere in it would stop the image from loading."""
    where = path if what == "image" else f"{what} {path}"
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception as e:  # untrusted metadata: any parser failure means "unreadable"
        log.warning("%s: unreadable EXIF orientation (%s: %s): used as stored", where, type(e).__name__, e)
        return im
    if orientation == 1:
        return im
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    if method is None:
        log.warning("%s: EXIF orientation %r is not one of 1-8: used as stored", where, orientation)
        return im
    return im.transpose(method)


def _cleaned_exif(exif: Image.Exif, size: tuple) -> bytes | None:
    """Serialise ``exif`` for pixels of ``size`` (W, H) without what the module docstring lists."""
    # ``del``, not pop(): a tag on its way out is not decoded, so a malformed one cannot fail here.
    for tag in (_ORIENTATION_TAG, _MAKERNOTE_TAG, *_LAYOUT_TAGS, *_SOURCE_COPY_TAGS):
        if tag in exif:
            del exif[tag]
    if ExifTags.IFD.Exif in exif:
        sub = exif.get_ifd(ExifTags.IFD.Exif)  # the cached dict that tobytes() writes
        sub.pop(_MAKERNOTE_TAG, None)
        for tag, value in ((_EXIF_IMAGE_WIDTH, size[0]), (_EXIF_IMAGE_HEIGHT, size[1])):
            if tag in sub:
                sub[tag] = value
    # The thumbnail needs no code: Exif.tobytes() writes IFD0 and its Exif/GPS/Interop sub-IFDs,
    # never the 1st IFD (tests/test_privacy.py holds Pillow to that).
    return exif.tobytes() if len(exif) else None


def _parsed_exif(data: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.load(data)
    return exif


def _source_exif(im: Image.Image, size: tuple, path) -> bytes | None:
    try:
        data = im.info.get("exif")
        if not isinstance(data, bytes):  # a TIFF's own first directory, or a PNG text chunk
            src = im.getexif()
            data = src.tobytes() if len(src) else None
        # A private copy: cleaning must not touch the Exif object of ``im``.
        return _cleaned_exif(_parsed_exif(data), size) if data else None
    except Exception as e:  # untrusted metadata: any parser failure means "unreadable"
        log.warning("%s: unreadable EXIF metadata dropped (%s: %s)", path, type(e).__name__, e)
        return None


def _icc_space(icc: bytes) -> str:
    sig = icc[16:20] if len(icc) >= 128 else b""
    return _ICC_SPACES.get(sig) or sig.decode("latin-1").strip() or "unreadable"


def _icc_is_srgb(icc: bytes) -> bool:
    try:
        from PIL import ImageCms
    except ImportError:  # a Pillow built without LittleCMS
        return False
    try:
        return "sRGB" in ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return False


def _to_srgb(im: Image.Image, icc: bytes) -> np.ndarray | None:
    """Pixels of ``im`` described by ``icc`` -> sRGB (H, W, 3) uint8; None where LittleCMS cannot."""
    try:
        from PIL import ImageCms
    except ImportError:  # a Pillow built without LittleCMS
        return None
    try:
        out = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                        ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as e:
        log.debug("cannot apply the ICC profile: %s", e)
        return None
    return np.array(out, dtype=np.uint8)


def _colours(im: Image.Image, icc: bytes | None, strip: bool, notes: list) -> tuple:
    """Upright image -> (rgb, alpha, ICC profile describing rgb or None); ``notes`` gets
    (level, text) for each conversion the user should hear of."""
    mode = im.mode
    grey = mode in _GREY_MODES or mode.startswith("I;16")
    kind = "RGB" if mode in _RGB_MODES else "grey" if grey else mode
    rgb, alpha = to_rgb_alpha(im)
    if kind == "grey":
        notes.append((logging.INFO, "grey expanded to RGB"))
    if not icc:
        if kind == "CMYK":
            notes.append((logging.WARNING, "CMYK converted to RGB without a colour profile (approximate)"))
        return rgb, alpha, None
    space = _icc_space(icc)
    if space == kind == "RGB" and not strip:
        return rgb, alpha, icc
    if space == kind == "RGB" and _icc_is_srgb(icc):
        return rgb, alpha, None  # untagged pixels are read as sRGB anyway
    if space == kind:
        src = im if kind == "CMYK" else Image.fromarray(rgb[..., 0] if kind == "grey" else rgb)
        converted = _to_srgb(src, icc)
        if converted is not None:
            notes.append((logging.INFO, f"converted from its embedded {space} ICC profile to sRGB"))
            return converted, alpha, None
    why = "metadata stripped" if space == kind == "RGB" else "it does not describe the RGB output"
    text = f"embedded {space} ICC profile dropped ({why}), pixels not converted to sRGB: colours may shift"
    notes.append((logging.WARNING, text))
    return rgb, alpha, None


def read_image(path, max_pixels: int = contract.DEFAULT_MAX_PIXELS, *, strip_metadata: bool = False) -> Photo:
    """Decode an image file into its displayed (EXIF-upright) RGB pixels.

    ``strip_metadata``: return no EXIF and no ICC profile (pixels with a non-sRGB RGB profile are
    converted to sRGB so their colours survive). Otherwise ``Photo.exif`` and ``Photo.icc_profile``
    are what may be written with the result, as the module docstring describes.
    """
    notes = []
    with _opened(path, "image", max_pixels) as (im, bits):
        fmt = im.format
        upright = _upright(im, path, "image")
        exif = None if strip_metadata else _source_exif(im, upright.size, path)
        rgb, alpha, icc = _colours(upright, im.info.get("icc_profile"), strip_metadata, notes)
    if bits > 8:
        notes.insert(0, (logging.WARNING, f"{bits}-bit samples reduced to 8 bits"))
    if notes:
        log.log(max(level for level, _ in notes), "%s: %s", path, "; ".join(text for _, text in notes))
    if alpha is not None and alpha.min() == 255:
        alpha = None  # fully opaque: nothing to carry over
    return Photo(rgb=rgb, alpha=alpha, exif=exif, icc_profile=icc, format=fmt)


def mask_from_pil(im: Image.Image, channel: str = "auto") -> np.ndarray:
    """A painted mask -> (H, W) uint8 values (not yet binarised)."""
    if channel not in contract.MASK_CHANNELS:
        raise ValueError(f"mask channel must be one of {contract.MASK_CHANNELS}, got {channel!r}")
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
              max_pixels: int = contract.DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read the mask the user painted over the *displayed* image and bring it to ``size`` (W, H).

    A mask of another resolution is accepted when its aspect ratio is within 1 % of the image's
    and is resized with nearest neighbour (values stay values). Returns uint8 (H, W), not binarised.
    """
    with _opened(path, "mask", max_pixels) as (im, _bits):
        upright = _upright(im, path, "mask")
        m = mask_from_pil(upright, channel)
    w, h = size
    mh, mw = m.shape
    if (mw, mh) != (w, h):
        if abs((mw / mh) / (w / h) - 1.0) > MASK_ASPECT_TOLERANCE:
            raise UserError(f"mask {path} is {mw}×{mh} but the image is {w}×{h} (as displayed): "
                            f"the aspect ratios differ by more than {MASK_ASPECT_TOLERANCE:.0%}")
        m = np.asarray(Image.fromarray(m).resize((w, h), Image.Resampling.NEAREST))
    if invert:
        m = masks.invert(m)
    return np.ascontiguousarray(m, dtype=np.uint8)


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


def _value_size(value) -> int:
    if isinstance(value, (bytes, str)):
        return len(value)
    if isinstance(value, (tuple, list)):
        return sum(_value_size(v) for v in value)
    return 8


def _fitted_exif(exif: Image.Exif, data: bytes, limit: int, path) -> bytes | None:
    """Drop the largest tags of ``exif`` (serialised as ``data``) until it fits ``limit`` bytes."""
    ifds = [(exif, ExifTags.TAGS)]
    ifds += [(exif.get_ifd(tag), names) for tag, names in ((ExifTags.IFD.Exif, ExifTags.TAGS),
                                                           (ExifTags.IFD.GPSInfo, ExifTags.GPSTAGS))
             if tag in exif]
    size, dropped = len(data), []
    while data and len(data) > limit:
        sizes = [(_value_size(d[tag]), i, tag) for i, (d, _) in enumerate(ifds) for tag in list(d)
                 if tag not in _POINTER_TAGS]
        if not sizes:
            data = None
            break
        _, i, tag = max(sizes)
        del ifds[i][0][tag]
        dropped.append(ifds[i][1].get(tag, hex(tag)))
        data = exif.tobytes() if len(exif) else None
    if data:
        log.warning("%s: EXIF of %d bytes is more than a JPEG segment holds (64 KB): dropped %s",
                    path, size, ", ".join(dropped))
    else:
        log.warning("%s: EXIF of %d bytes is more than a JPEG segment holds (64 KB): not written", path, size)
    return data


def _exif_to_write(data: bytes, size: tuple, fmt: str, path) -> bytes | None:
    try:
        exif = _parsed_exif(data)
        cleaned = _cleaned_exif(exif, size)
        if cleaned and fmt == "JPEG" and len(cleaned) > _JPEG_EXIF_LIMIT:
            cleaned = _fitted_exif(exif, cleaned, _JPEG_EXIF_LIMIT, path)
        return cleaned
    except Exception as e:  # untrusted metadata: any parser failure means "unreadable"
        log.warning("%s: unreadable EXIF metadata not written (%s: %s)", path, type(e).__name__, e)
        return None


def write_image(path, rgb: np.ndarray, *, alpha: np.ndarray | None = None, exif: bytes | None = None,
                icc_profile: bytes | None = None, quality: int = contract.DEFAULT_QUALITY) -> Path:
    """Write RGB (and alpha where the format has it) atomically; format from the extension.

    ``exif`` (any EXIF block, e.g. ``Photo.exif``) is cleaned as the module docstring describes,
    whoever built it; ``exif=None, icc_profile=None`` writes no metadata at all.
    """
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
    exif = _exif_to_write(exif, im.size, fmt, path) if exif else None
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
