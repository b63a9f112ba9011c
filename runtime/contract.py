"""The contract between export, quantize, runtime, bundle and tests.

Pure Python, no imports beyond the standard library. Every graph file name, ONNX input/output
name and dtype, metadata key, manifest field, pipeline constant and command-line default that
more than one stage needs is defined here once (docs/style.md §2); a test fails when one of them
is typed as a literal anywhere else. docs/contract.md explains each group; §-references below
are to docs/model.md and docs/pipeline.md.

What lives in the graphs and what stays in NumPy (docs/style.md §4: fixed arithmetic every
caller would repeat belongs in the graph):

* UNet graph (``unet.onnx``): the 9-channel concatenation ``[latent | mask | masked_latent]``,
  the classifier-free-guidance batch doubling, the fixed category ids (uncond 10..19, cond 0..9)
  and everything that depends only on them (embedding, ``encoder_hid_proj``, cross-λ keys,
  values and content lambdas, folded to constants at export), the time embedding, and the
  guidance arithmetic ``ε_u + g·(ε_c − ε_u)``.
* VAE encoder graph: posterior sampling from an explicit ``noise`` input (zero noise gives the
  mean) and the latent scaling factor.
* VAE decoder graph: the inverse scaling, ``(x + 1) / 2`` and the clamp to [0, 1].
* NumPy runtime: the DDIM loop (docs/pipeline.md §5), the [-1, 1] input scaling, the mask rules
  (docs/pipeline.md §3), crops, resizes and paste-back.
"""
from __future__ import annotations

from dataclasses import dataclass

# Bumped whenever a graph's I/O, a metadata key or a manifest field changes meaning. The runtime
# refuses a models folder written under another contract version.
CONTRACT_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Model facts (docs/model.md §1, docs/pipeline.md §4)
LATENT_CHANNELS = 4
VAE_FACTOR = 8  # pixels per latent cell
# CFG layout of the official pipeline: the "uncond" half uses ids 10..19 (the foreground
# category), the "cond" half ids 0..9 (background). Guidance pushes towards background completion.
UNCOND_IDS = tuple(range(10, 20))
COND_IDS = tuple(range(0, 10))
# Channel order of the official 9-channel UNet input: name -> (first channel, end channel).
UNET_INPUT_CHANNELS = (("latent", 0, 4), ("mask", 4, 5), ("masked_latent", 5, 9))

# ---------------------------------------------------------------------------------------------
# Scheduler and pipeline constants (docs/pipeline.md)
NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
BETA_SCHEDULE = "scaled_linear"
TIMESTEP_SPACING = "leading"
STEPS_OFFSET = 0
DEFAULT_STEPS = 20
DEFAULT_STRENGTH = 0.99
DEFAULT_GUIDANCE = 2.5
NOISE_OFFSET = 0.0357
MASK_THRESHOLD = 127.5  # mask values >= this are hole (so 128 is hole, 127 is not)
PASTE_BLUR_RADIUS = 3.0  # Pillow GaussianBlur radius at native size

# Mask and paste-back rules (docs/pipeline.md §3). "official": the reference pipeline bit for
# bit; "complete": every pixel of the user's hole is replaced, whatever its width.
FIDELITY_MODES = ("official", "complete")
DEFAULT_FIDELITY = "complete"

# ---------------------------------------------------------------------------------------------
# Command-line and API defaults shared by `run`, the Python API, benchmarks and the bundle
DEFAULT_MODELS_DIR = "models"
DEFAULT_SEED = 0
DEFAULT_MARGIN = 0.25  # context around the hole, of the hole box's longer side, on each side
DEFAULT_MIN_MARGIN = 32  # pixels
DEFAULT_MAX_PIXELS = 50_000_000  # larger images are refused (decompression bombs)
DEFAULT_QUALITY = 95  # JPEG/WebP quality
MASK_CHANNELS = ("auto", "alpha", "luminance")  # auto: alpha if the mask has transparency
# --provider choices -> ONNX Runtime execution provider names; "auto" tries AUTO_PROVIDERS in
# order, and CPU is always the last resort.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
}
AUTO_PROVIDERS = ("cuda", "coreml", "nnapi", "xnnpack")
PROVIDER_CHOICES = ("auto", *PROVIDERS)

# ---------------------------------------------------------------------------------------------
# Mobile bundles (`moebius-edge bundle`, docs/mobile.md): ORT-format graphs plus bundle.json, the
# one file a device app reads first (it names every other file of the bundle).
BUNDLE_TARGETS = ("android", "ios")
# Default precision per target, from what the execution providers take: the CoreML EP has no QDQ
# kernels (INT8 would run on its CPU fallback), so iOS gets FP16; Android gets INT8 QDQ for the
# CPU and XNNPACK EPs (FP16 is the alternative).
BUNDLE_DEFAULT_PRECISION = {"android": "int8", "ios": "fp16"}
BUNDLE_FILE = "bundle.json"
BUNDLE_VERSION = 1  # bumped whenever a bundle.json field changes meaning
ORT_MODEL_SUFFIX = ".ort"  # <graph key>.ort: ONNX Runtime's flatbuffer format for mobile builds


# ---------------------------------------------------------------------------------------------
# Graphs
@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name; the runtime refuses a feed of another dtype
    shape: tuple  # ints or symbolic axis names (str)


@dataclass(frozen=True)
class GraphSpec:
    key: str  # short name used in the manifest and on the command line
    file: str
    inputs: tuple
    outputs: tuple
    # Weights in a ``<file>.data`` sidecar (EXTERNAL_DATA_SUFFIX) whatever the graph's size: ONNX
    # Runtime then maps them from the file instead of copying them out of the parsed graph. Set for
    # the UNet: the fp32 session's creation peaked at 2,133 MB with its weights in its file and
    # 1,061 MB mapped, at the same step time (benchmarks/graph_memory.py); the VAE graphs stay one
    # file (the decoder's creation peaks below its call, and mapped its call peaked higher).
    # docs/contract.md §5, README §Numbers.
    mapped_weights: bool = False

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    @property
    def input_names(self) -> list:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list:
        return [t.name for t in self.outputs]


BATCH_AXIS = "batch"
# Symbolic names for the spatial sizes; they are fixed at export (the λ tables fix the latent size)
# and recorded in the manifest, so the graphs carry concrete numbers there.
LATENT_H, LATENT_W = "latent_height", "latent_width"
IMAGE_H, IMAGE_W = "image_height", "image_width"

UNET = GraphSpec(
    key="unet",
    file="unet.onnx",
    mapped_weights=True,
    inputs=(
        TensorSpec("latent", "float32", (BATCH_AXIS, LATENT_CHANNELS, LATENT_H, LATENT_W)),
        TensorSpec("mask", "float32", (BATCH_AXIS, 1, LATENT_H, LATENT_W)),
        TensorSpec("masked_latent", "float32", (BATCH_AXIS, LATENT_CHANNELS, LATENT_H, LATENT_W)),
        TensorSpec("timestep", "int64", (BATCH_AXIS,)),
        TensorSpec("guidance_scale", "float32", (1,)),
    ),
    outputs=(TensorSpec("noise_pred", "float32", (BATCH_AXIS, LATENT_CHANNELS, LATENT_H, LATENT_W)),),
)

VAE_ENCODER = GraphSpec(
    key="vae_encoder",
    file="vae_encoder.onnx",
    inputs=(
        TensorSpec("image", "float32", (BATCH_AXIS, 3, IMAGE_H, IMAGE_W)),  # in [-1, 1]
        TensorSpec("noise", "float32", (BATCH_AXIS, LATENT_CHANNELS, LATENT_H, LATENT_W)),
    ),
    outputs=(TensorSpec("latent", "float32", (BATCH_AXIS, LATENT_CHANNELS, LATENT_H, LATENT_W)),),
)

VAE_DECODER = GraphSpec(
    key="vae_decoder",
    file="vae_decoder.onnx",
    inputs=(TensorSpec("latent", "float32", (BATCH_AXIS, LATENT_CHANNELS, LATENT_H, LATENT_W)),),
    outputs=(TensorSpec("image", "float32", (BATCH_AXIS, 3, IMAGE_H, IMAGE_W)),),  # in [0, 1]
)

GRAPHS = (UNET, VAE_ENCODER, VAE_DECODER)

# ---------------------------------------------------------------------------------------------
# Models folder layout (docs/contract.md §5): fp32 graphs and manifest at the top; quantized
# variants in sub-folders with their own manifest.
MANIFEST_FILE = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
EXTERNAL_DATA_SUFFIX = ".data"  # <graph>.onnx.data: weights of a mapped_weights graph, or of one over 2 GB


def precision_subdir(precision: str) -> str:
    """Folder, relative to the models folder, holding a precision's graphs ("" for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return "" if precision == "fp32" else precision


# ---------------------------------------------------------------------------------------------
# Metadata. ONNX metadata_props keys (all values are strings; JSON where structured). The
# manifest repeats them under the same names without the prefix.
META_PREFIX = "moebius_edge."
META_CONTRACT_VERSION = META_PREFIX + "contract_version"
META_TOOLKIT_VERSION = META_PREFIX + "toolkit_version"
META_GRAPH = META_PREFIX + "graph"  # GraphSpec.key
META_PRECISION = META_PREFIX + "precision"
META_PROVENANCE = META_PREFIX + "provenance"  # "official:<variant>" or "random-init:<seed>"
META_WEIGHTS_SHA256 = META_PREFIX + "weights_sha256"
META_MODEL_CONFIG = META_PREFIX + "model_config"  # JSON
META_IMAGE_SIZE = META_PREFIX + "image_size"  # native image side (pixels)
META_LATENT_SIZE = META_PREFIX + "latent_size"  # native latent side
META_SCALING_FACTOR = META_PREFIX + "vae_scaling_factor"
META_SCHEDULER = META_PREFIX + "scheduler"  # JSON, see scheduler_metadata()
META_PARITY = META_PREFIX + "parity"  # JSON
META_LICENSES = META_PREFIX + "licenses"  # JSON
META_ALPHAS_CUMPROD = META_PREFIX + "alphas_cumprod"  # JSON (the UNet carries the ᾱ table too)


def manifest_key(meta_key: str) -> str:
    """The manifest.json field holding the same value as an ONNX metadata key."""
    return meta_key[len(META_PREFIX):] if meta_key.startswith(META_PREFIX) else meta_key


# Manifest-only fields (manifest.json beside the graphs).
MANIFEST_GRAPHS = "graphs"  # {graph key: graph entry}
MANIFEST_ALPHAS_CUMPROD = "alphas_cumprod"  # 1000 float32 values exactly as torch computes them
MANIFEST_STATIC_BATCH = "static_batch"  # true: batch fixed to 1 (mobile execution providers)
MANIFEST_SOURCE_GRAPHS = "source_graphs"  # variants: {graph key: SHA-256 of the FP32 graph used}
# Variants whose operators need a newer ONNX Runtime than FP32 (int8 QDQ): "MAJOR.MINOR", checked
# when the folder is opened.
MANIFEST_MIN_ONNXRUNTIME = "min_onnxruntime"
# A graph entry. GRAPH_FILE is relative to the manifest's folder ("../x.onnx": a variant that
# keeps the FP32 graph references it); GRAPH_EXTERNAL_DATA is an entry of the same form.
GRAPH_FILE = "file"
GRAPH_SHA256 = "sha256"
GRAPH_BYTES = "bytes"
GRAPH_EXTERNAL_DATA = "external_data"

# The low-memory mode's decode (runtime/streamed_decoder.py): the VAE decoder's last stage in strips
# of rows, with the whole image's GroupNorm statistics, so the same pixels as the whole graph. Its
# graphs (a head and one graph per pass, derived from vae_decoder.onnx at export) are in this folder
# of the FP32 models folder, its plan in this field of the FP32 manifest; a variant whose decoder is
# the FP32 file uses them too.
STREAMED_DECODER_DIR = "vae_decoder_stream"
MANIFEST_STREAMED_DECODER = "streamed_decoder"
# META_GRAPH of its pass graphs (its head's is VAE_DECODER's key), and the key their sessions'
# memory settings are chosen by (session.py)
STREAMED_DECODER_PASS = VAE_DECODER.key + ".pass"

# Quantized variants (docs/contract.md §5): written by `quantize` beside a variant's manifest, read
# by `info`, the runtime and benchmarks. The manifest records the quality gate's verdict, so that
# `run` can warn about a variant whose gate was only advisory (random-init weights).
QUANTIZE_RECIPE_FILE = "recipe.json"  # the recipe that reproduces the variant (`quantize --recipe`)
QUANTIZE_REPORT_FILE = "report.json"  # every figure measured against the FP32 graphs
QUANTIZE_REPORT_MD = "report.md"  # the same for people
MANIFEST_QUANTIZE_GATE = "quantize_gate"  # variants: {GATE_STATUS: ..., thresholds, checks, ...}
GATE_STATUS = "status"
GATE_PASSED = "passed"  # every check passed and the gate was enforced
GATE_ADVISORY = "advisory"  # random-init weights: figures printed, not enforced, variant kept

LICENSES = {
    "moebius_code": "Apache-2.0 (hustvl/Moebius)",
    "moebius_weights": "Apache-2.0 (hustvl/Moebius on the Hugging Face Hub)",
    "vae": "as stated by the hustvl/PixelHacker model card on the Hugging Face Hub (the kl-f8 "
    "VAE is redistributed there; check that card before shipping the weights)",
}


def scheduler_metadata() -> dict:
    """The scheduler constants recorded in every graph and in the manifest."""
    return {
        "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
        "beta_start": BETA_START,
        "beta_end": BETA_END,
        "beta_schedule": BETA_SCHEDULE,
        "timestep_spacing": TIMESTEP_SPACING,
        "steps_offset": STEPS_OFFSET,
        "prediction_type": "epsilon",
        "eta": 0.0,
        "set_alpha_to_one": True,
        "default_steps": DEFAULT_STEPS,
        "default_strength": DEFAULT_STRENGTH,
        "default_guidance": DEFAULT_GUIDANCE,
        "noise_offset": NOISE_OFFSET,
    }


PROVENANCE_RANDOM_INIT = "random-init:"  # prefix of the provenance of random weights

# Official weight variants on the Hub (hustvl/Moebius/<variant>/diffusion_pytorch_model.bin).
HUB_REPO = "hustvl/Moebius"
HUB_WEIGHTS_FILE = "diffusion_pytorch_model.bin"
HUB_VARIANTS = ("pretrained", "ft_places2", "ft_celebahq", "ft_ffhq")
HUB_VAE_REPO = "hustvl/PixelHacker"
HUB_VAE_SUBFOLDER = "vae"
