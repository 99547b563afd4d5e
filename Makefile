# Two commands on a fresh clone (Python 3.10+ with venv; nothing else preinstalled):
#   make reproduce   install into .venv, then run the whole pipeline (snakemake --cores all)
#   make test        install into .venv, then run the test suite
# TORCH pins the CPU build by default. On a GPU machine install the CUDA build of torch into
# .venv first and run `make reproduce TORCH=` so pip keeps it.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install reproduce test lint pull clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH) -e ".[dev]"
	touch $@

reproduce: install
	. $(BIN)/activate && snakemake --cores all

test: install
	. $(BIN)/activate && pytest

lint: install
	. $(BIN)/activate && snakemake --lint

# Restore versioned outputs instead of recomputing them, then put their timestamps back in
# pipeline order (DVC restores files in arbitrary order).
pull: install
	. $(BIN)/activate && dvc pull && snakemake --touch --cores 1

clean:
	rm -rf data runs models results reports logs .snakemake
