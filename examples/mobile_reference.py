"""A device app's inference loop over a mobile bundle, in NumPy + onnxruntime (docs/mobile.md §3).

    python examples/mobile_reference.py BUNDLE photo.png mask.png -o result.png [--seed 0 | --noise-file F.npz]

Written the way a Kotlin or Swift app drives a bundle made by `moebius-edge bundle`: everything it
knows comes from BUNDLE/bundle.json (graph files, input names, shapes and dtypes, the schedule,
the mask and paste-back rules) and the .ort files. It imports nothing from moebius_edge and reads
no manifest. One ONNX Runtime session is alive at a time (encoder, then UNet, then decoder), as a
phone build should do it.

It takes a photo at the model's native size (bundle.json ``image_size``); other sizes go through
the crop, resize and paste rules of docs/mobile.md §5. With the same noise it reproduces
`moebius-edge run` on that photo to within 1 LSB (tests/test_bundle.py checks it).

Only ``inpaint`` is the app's loop; ``main`` reads and writes image files with Pillow, which is
what the platform's image decoder (BitmapFactory, UIImage) does in an app.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

BUNDLE_FILE = "bundle.json"  # the one name an app knows in advance; bundle.json names every other file


# ---------------------------------------------------------------------------------------------
# The bundle


def load_bundle(folder) -> dict:
    folder = Path(folder)
    bundle = json.loads((folder / BUNDLE_FILE).read_text())
    bundle["folder"] = str(folder)
    return bundle


def open_session(bundle: dict, key: str, *, phone: bool = False) -> ort.InferenceSession:
    """One graph's session with the options bundle.json lists for it (CPU here; an app adds the
    execution providers its ``session`` entry lists, XNNPACK or CoreML, before the CPU).

    ``phone``: without ONNX Runtime's CPU memory arena, as a phone build short of memory would run.
    A phone app also sets the bundle's ``recommended_config_entries`` (the session made from the
    bytes of the .ort file the app keeps alive, the weights pointing into them); they cannot be
    exercised from Python, whose binding hands ONNX Runtime a temporary copy of the bytes (the
    session then reads freed memory: a segmentation fault, measured)."""
    graph = bundle["graphs"][key]
    so = ort.SessionOptions()
    if phone:
        so.enable_cpu_mem_arena = False
    for k, v in graph["session"]["config_entries"].items():
        so.add_session_config_entry(k, v)
    so.log_severity_level = 3
    return ort.InferenceSession(str(Path(bundle["folder"]) / graph["file"]), so, providers=["CPUExecutionProvider"])


def run(session: ort.InferenceSession, graph: dict, **feeds) -> np.ndarray:
    """Feed by the names and dtypes bundle.json declares (as an app builds its OnnxTensors)."""
    inputs = {}
    for spec in graph["inputs"]:
        value = np.ascontiguousarray(feeds[spec["name"]], dtype=spec["dtype"])
        if list(value.shape) != spec["shape"]:
            raise ValueError(f"{spec['name']}: shape {list(value.shape)}, the bundle says {spec['shape']}")
        inputs[spec["name"]] = value
    return session.run([graph["outputs"][0]["name"]], inputs)[0]


# ---------------------------------------------------------------------------------------------
# Pillow's GaussianBlur, exactly (the paste-back weights depend on it; docs/mobile.md §4)


def _f32(x) -> np.float32:
    return np.float32(x)


def box_radius(radius: float, passes: int = 3) -> np.float32:
    """Pillow's ``_gaussian_blur_radius``: the extended-box radius of three passes with the
    variance of a Gaussian of ``radius`` (Gwosdek et al. 2011), in C float arithmetic."""
    r = _f32(radius)
    sigma2 = _f32(r * r / _f32(passes))
    length = _f32(math.sqrt(12.0 * float(sigma2) + 1.0))  # sqrt(double), stored as float
    whole = _f32(math.floor((float(length) - 1.0) / 2.0))
    a = _f32((_f32(2) * whole + _f32(1)) * (whole * (whole + _f32(1)) - _f32(3) * sigma2))
    a = _f32(a / (_f32(6) * (sigma2 - (whole + _f32(1)) * (whole + _f32(1)))))
    return _f32(whole + a)


def _line_blur(a: np.ndarray, radius: np.float32) -> np.ndarray:
    """One box pass along the last axis (Pillow's ImagingLineBoxBlur8): a window of 2r+1 pixels
    plus the two next ones weighted by the fractional part, edges repeated, in 8.24 fixed point,
    rounded to uint8."""
    r = int(radius)
    ww = int(np.float32(1 << 24) / _f32(radius * _f32(2) + _f32(1)))
    fw = ((1 << 24) - (r * 2 + 1) * ww) // 2
    p = r + 1
    padded = np.pad(a.astype(np.int64), [(0, 0)] * (a.ndim - 1) + [(p, p)], mode="edge")
    csum = np.concatenate([np.zeros(a.shape[:-1] + (1,), np.int64), np.cumsum(padded, axis=-1)], axis=-1)
    n = a.shape[-1]
    x = np.arange(n)
    acc = csum[..., x + 2 * r + 2] - csum[..., x + 1]  # padded[x+1 .. x+2r+1]: in[x-r .. x+r], clamped
    far = padded[..., x] + padded[..., x + 2 * r + 2]  # in[x-r-1] and in[x+r+1], clamped
    return ((acc * ww + far * fw + (1 << 23)) >> 24).astype(np.uint8)


def gaussian_blur(gray: np.ndarray, radius: float, passes: int = 3) -> np.ndarray:
    """``Image.fromarray(gray).filter(ImageFilter.GaussianBlur(radius))`` for a uint8 (H, W) array:
    three horizontal passes, then three vertical ones."""
    rad = box_radius(radius, passes)
    out = gray
    if rad != 0:
        for _ in range(passes):
            out = _line_blur(out, rad)
        out = out.T
        for _ in range(passes):
            out = _line_blur(out, rad)
        out = out.T
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------------------------------
# The loop


def draw_noise(bundle: dict, seed: int) -> dict:
    """The four standard-normal draws in the bundle's order (NumPy's generator, as the runtime)."""
    rng = np.random.default_rng(seed)
    lat = bundle["latent_size"]
    draws = bundle["preprocessing"]["random_draws"]
    out = {}
    for key in draws["order"]:
        shape = draws["shapes"][key]
        shape = [1, bundle["latent_channels"], lat, lat] if shape == "latent" else shape
        out[key] = rng.standard_normal(shape, dtype=np.float32)
    return out


def native_hole(bundle: dict, mask_u8: np.ndarray, fidelity: str) -> np.ndarray:
    """The hole the model sees, at the native size (bool): the threshold, then for "complete" the
    growth to whole latent cells (at the native size the resize of the rules is the identity)."""
    hole = mask_u8 >= bundle["preprocessing"]["mask_binarisation"]["threshold"]
    if fidelity == "complete":
        f = bundle["preprocessing"]["latent_mask"]["stride"]
        n = hole.shape[0]
        cells = hole.reshape(n // f, f, n // f, f).any(axis=(1, 3))
        hole = np.repeat(np.repeat(cells, f, axis=0), f, axis=1)
    return hole


def paste_weights(bundle: dict, user_hole: np.ndarray, fidelity: str) -> np.ndarray:
    """Paste-back weights, uint8, 255 = the model's pixel (bundle.json postprocessing.feather)."""
    blurred = gaussian_blur(user_hole.astype(np.uint8) * np.uint8(255),
                            bundle["postprocessing"]["feather"]["radius_native_px"])
    if fidelity == "official":
        return blurred
    weights = np.minimum(blurred.astype(np.uint16) * 2, 255).astype(np.uint8)
    weights[user_hole] = 255
    return weights


def inpaint(bundle: dict, image_u8: np.ndarray, mask_u8: np.ndarray, noise: dict, *,
            fidelity: str | None = None, guidance: float | None = None, phone: bool = False) -> np.ndarray:
    """Fill the hole of a native-size RGB uint8 photo where ``mask_u8`` >= 128; returns RGB uint8.
    ``phone``: sessions as a phone build creates them (``open_session``)."""
    n = bundle["image_size"]
    if image_u8.shape != (n, n, 3) or mask_u8.shape != (n, n):
        raise ValueError(f"this loop takes a {n}×{n} photo and mask (other sizes: docs/mobile.md §5)")
    fidelity = fidelity or bundle["preprocessing"]["fidelity"]["default"]
    sampling = bundle["sampling"]
    g = np.array([sampling["guidance"] if guidance is None else guidance], dtype=np.float32)
    graphs = bundle["graphs"]
    user_hole = mask_u8 >= bundle["preprocessing"]["mask_binarisation"]["threshold"]
    hole = native_hole(bundle, mask_u8, fidelity)

    # 1. Encode the photo and the hole-masked photo (posterior samples; the graph scales them).
    x = np.ascontiguousarray((image_u8.astype(np.float64) / 255.0 * 2.0 - 1.0).transpose(2, 0, 1)[None],
                             dtype=np.float32)
    masked = x * (np.float32(1.0) - hole.astype(np.float32)[None, None])
    enc = open_session(bundle, "vae_encoder", phone=phone)
    z_img = run(enc, graphs["vae_encoder"], image=x, noise=noise["eps_posterior_image"])
    z_msk = run(enc, graphs["vae_encoder"], image=masked, noise=noise["eps_posterior_masked"])
    del enc

    # 2. DDIM with the precomputed schedule (float32 throughout, in this operation order).
    stride = bundle["preprocessing"]["latent_mask"]["stride"]
    m_lat = np.ascontiguousarray(hole[::stride, ::stride].astype(np.float32)[None, None])
    sched = sampling["schedule"]
    one = np.float32(1.0)
    start = np.float32(sched["alpha_start"])
    eps_n = noise["noise_base"] + np.float32(sampling["noise_offset"]) * noise["noise_offset_draw"]
    lat = (np.sqrt(start) * z_img + np.sqrt(one - start) * eps_n).astype(np.float32)
    unet = open_session(bundle, "unet", phone=phone)
    for t, a_t, a_prev in zip(sched["timesteps"], sched["alpha_t"], sched["alpha_prev"]):
        eps = run(unet, graphs["unet"], latent=lat, mask=m_lat, masked_latent=z_msk,
                  timestep=np.array([t], dtype=np.int64), guidance_scale=g)
        a_t, a_prev = np.float32(a_t), np.float32(a_prev)
        x0 = (lat - np.sqrt(one - a_t) * eps) / np.sqrt(a_t)
        lat = (np.sqrt(a_prev) * x0 + np.sqrt(one - a_prev) * eps).astype(np.float32)
    del unet

    # 3. Decode, ×255 with truncation.
    dec = open_session(bundle, "vae_decoder", phone=phone)
    y = run(dec, graphs["vae_decoder"], latent=lat)
    del dec
    y = np.nan_to_num(y, nan=0.0, posinf=1.0, neginf=0.0)
    result = np.ascontiguousarray((y[0] * np.float32(255.0)).astype(np.uint8).transpose(1, 2, 0))

    # 4. Paste back through the feathered hole (float64, truncated).
    m = (paste_weights(bundle, user_hole, fidelity).astype(np.float64) / 255.0)[..., None]
    out = (result.astype(np.float64) / 255.0 * m + (1.0 - m) * image_u8.astype(np.float64) / 255.0) * 255.0
    return out.astype(np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path, help="bundle folder (moebius-edge bundle -o)")
    p.add_argument("image", type=Path, help="RGB photo at the bundle's native size")
    p.add_argument("mask", type=Path, help="mask of the same size, white (≥ 128) = fill")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0, help="seed of NumPy's default_rng for the four draws")
    p.add_argument("--noise-file", type=Path, help="the four draws as an .npz (moebius-edge run --noise-file)")
    p.add_argument("--fidelity", choices=("complete", "official"), default=None)
    args = p.parse_args(argv)
    from PIL import Image  # the platform's image decoder in an app

    bundle = load_bundle(args.bundle)
    image = np.asarray(Image.open(args.image).convert("RGB"))
    mask = np.asarray(Image.open(args.mask).convert("L"))
    if args.noise_file:
        with np.load(args.noise_file) as d:
            noise = {k: d[k] for k in bundle["preprocessing"]["random_draws"]["order"]}
    else:
        noise = draw_noise(bundle, args.seed)
    Image.fromarray(inpaint(bundle, image, mask, noise, fidelity=args.fidelity)).save(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
