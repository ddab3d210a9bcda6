# The README's commands. Every target sets up what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch and torchvision are pinned: these builds install from local disk here, and
# pinning stops pip from fetching a multi-GB CUDA wheel it was not asked for.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: setup test demo bench gpu-check lint clean docs figures

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test,vision,lightning,transformers,export,docs,onnx,ray,slurm,track]' $(TORCH)
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/causalprune demo

bench: setup
	$(BIN)/python -m pip install -q -e '.[bench]' $(TORCH)
	$(BIN)/python benchmarks/recorder.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/lasso.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/lasso_memory.py
	$(BIN)/python benchmarks/loader.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/threads.py
	$(BIN)/python benchmarks/structured_latency.py
	$(BIN)/python benchmarks/group_recording.py
	$(BIN)/python benchmarks/distributed.py

gpu-check: setup
	bash benchmarks/gpu_check.sh $(BIN)/python

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info

docs: setup
	$(BIN)/mkdocs build --strict

# the docs' study figures (docs/figures/<study>-*.png) from their stored tables (docs/data/*.csv)
figures: setup
	$(BIN)/python docs/data/make_figures.py
