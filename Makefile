# moebius-edge. `make setup` then `make export` (official weights) or `make demo` (random tiny model).
PY ?= .venv/bin/python
MODELS ?= models
VARIANT ?= pretrained
PYTEST_ARGS ?=

.PHONY: setup test test-slow export quantize bench demo clean

setup:
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[export,quantize,dev]"

test:
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow:
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

export:
	$(PY) -m moebius_edge.cli export --variant $(VARIANT) --out $(MODELS)

quantize:
	$(PY) -m moebius_edge.cli quantize --models $(MODELS)

BENCH_MODELS ?= out/bench-models

# Full-size (512x512) random-init export, then the runtime and the UNet step on it. ~15 min on 2 cores.
bench:
	$(PY) benchmarks/export_full.py --out $(BENCH_MODELS)
	$(PY) benchmarks/unet_step.py --models $(BENCH_MODELS)
	$(PY) benchmarks/runtime.py --models $(BENCH_MODELS)

demo:
	$(PY) benchmarks/demo.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
