# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean bench-gpu

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# torch first, at the pinned CPU-capable version, so no resolver pulls several GB of CUDA wheels.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/unlearnops demo

test: $(STAMP)
	$(BIN)/python -m pytest

# The GPU rows (bench/gpu.py): on a CUDA machine, inside 10 minutes.
bench-gpu: $(STAMP)
	$(BIN)/python -m unlearnops.bench.gpu --device cuda --out bench/results/gpu.json

clean:
	rm -rf $(VENV) workspace
