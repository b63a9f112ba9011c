# moebius-edge. `make setup` then `make export` (official weights) or `make demo` (random tiny model).
PY ?= .venv/bin/python
MODELS ?= models
VARIANT ?= pretrained
PYTEST_ARGS ?=
# Ray (run-dataset, its tests) reports usage statistics unless this is 0.
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup test test-slow export quantize bench bench-models demo clean

# torch's CPU wheels. From plain PyPI, torch is the CUDA build plus ~3 GB of nvidia packages, so
# `setup` first installs the export extra's torch pin with this extra index. Empty (`make setup
# TORCH_INDEX=`) skips that step: machines that cannot reach the index, or that already have the
# CPU wheel through their own pip configuration (find-links, a mirror), as our CI does.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# The pin, written once, in pyproject.toml's export extra (e.g. "torch==2.13.0", quotes included).
TORCH_REQUIREMENT = $(shell grep -o '"torch==[^"]*"' pyproject.toml)

# PYTHONWARNINGS: setuptools announces every editable install of a package-dir mapping (runtime/ ->
# moebius_edge) with a 9-line "Editable installation." notice (class InformationOnly) that no
# setting turns off. It warns of a folder named moebius_edge in the working tree, which this
# layout never has, so the install command drops that one notice, by its opening words.
setup:
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
ifneq ($(strip $(TORCH_INDEX)),)
	$(if $(TORCH_REQUIREMENT),,$(error pyproject.toml has no "torch==VERSION" pin for the TORCH_INDEX step))
	$(PY) -m pip install -q --timeout 10 --retries 1 --extra-index-url $(TORCH_INDEX) $(TORCH_REQUIREMENT)
endif
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e ".[export,quantize,mobile,dev,ray,bench]"

test:
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow:
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# `make export RANDOM_INIT=1`: a full-size random-init models folder (no Hub needed; ~6 min and
# ~7 GB RAM on 2 cores): right for sizes, speed and the quantize toolchain, meaningless for quality.
RANDOM_INIT ?=
SEED ?= 0
export:
ifneq ($(strip $(RANDOM_INIT)),)
	$(PY) -m moebius_edge.cli export --random-init --seed $(SEED) --out $(MODELS)
else
	$(PY) -m moebius_edge.cli export --variant $(VARIANT) --out $(MODELS)
endif

# FP16 and INT8 variants in $(MODELS)/fp16 and $(MODELS)/int8, each behind its quality gate
# (PRECISION=fp16 or int8 for one). RECIPE=FILE (with one PRECISION) overrides
# the shipped recipe; the calibration and held-out photos are tests/data/photos.
PRECISION ?= all
RECIPE ?=
quantize:
	$(PY) -m moebius_edge.cli quantize --models $(MODELS) --precision $(PRECISION) $(if $(strip $(RECIPE)),--recipe $(RECIPE))

BENCH_MODELS ?= out/bench-models
# Optional, with benchmarks/bench.py's defaults where unset (its --help):
#   BENCH_CONFIGS  configurations of benchmarks/pipeline.py, one process each, ratios against the first
#                  (torch,fp32,int8,int8-low-memory)
#   BENCH_ROUNDS   times the configurations run in turn: medians and per-round ratios (1; the README's table used 3)
#   BENCH_BATCH    photos of a folder run (images per minute, sessions kept) per ONNX Runtime configuration
#                  (0: none; each costs about two inpaintings, beyond the 15-minute budget at 2 photos)
BENCH_CONFIGS ?=
BENCH_ROUNDS ?=
BENCH_BATCH ?=

# The CPU benchmarks on an existing full-size random-init folder with its variants (bench-models
# makes one), timed against issue 12's 15 minutes (benchmarks/bench.py): each network alone,
# PyTorch eager against ONNX Runtime side by side; the whole inpainting per configuration; int8 on
# 1 and 24 MP photos and a larger hole; where a UNet step's time goes (FP32 and INT8 profiles); then
# the README's tables and figure, the targets' table (met or missed, the benchmark that profiles a
# miss and what a missed ratio asks of the UNet step), for a miss the step's profile, and last the
# run's time. Meant for a
# quiet machine: every JSON records its load.
bench:
	$(PY) benchmarks/bench.py --models $(BENCH_MODELS) $(if $(BENCH_CONFIGS),--configs $(BENCH_CONFIGS)) \
		$(if $(BENCH_ROUNDS),--rounds $(BENCH_ROUNDS)) $(if $(BENCH_BATCH),--batch $(BENCH_BATCH))

# Full-size (512x512) random-init export and its gated variants: ~7 min, then ~1 h on 2 cores.
bench-models:
	$(PY) benchmarks/export_full.py --out $(BENCH_MODELS)
	$(PY) -m moebius_edge.cli quantize --models $(BENCH_MODELS) --precision all

demo:
	$(PY) examples/demo.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
