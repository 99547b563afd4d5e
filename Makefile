# Two commands on a fresh clone (Python 3.10+ with venv; nothing else preinstalled):
#   make reproduce   install into .venv, then run the whole pipeline (snakemake --cores all)
#   make test        install into .venv, then run the test suite
# TORCH pins the CPU build by default. On a GPU machine install the CUDA build of torch into
# .venv first and run `make reproduce TORCH=` so pip keeps it.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# Every other package at the exact version in requirements.lock, so a fresh clone installs what
# the README's numbers were measured with.
LOCK ?= requirements.lock
BIN := $(VENV)/bin

.PHONY: install reproduce test lint pull lock clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH) -e ".[dev]" -c $(LOCK)
	touch $@

# After editing the dependencies in pyproject.toml: resolve them afresh in a scratch venv and
# write the versions pip chose (torch excepted: TORCH pins it) to requirements.lock.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet $(TORCH) -e ".[dev]"
	{ echo "# Exact versions \`make install\` uses (pip constraints; torch is pinned by the Makefile's TORCH)."; \
	  echo "# Regenerate after changing dependencies in pyproject.toml: make lock"; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v "^torch=="; } > $(LOCK)
	rm -rf .lock-venv

reproduce: install
	. $(BIN)/activate && snakemake --cores all

test: install
	. $(BIN)/activate && pytest

lint: install
	. $(BIN)/activate && snakemake --lint

# Restore versioned outputs instead of recomputing them, then put their timestamps back in
# pipeline order (DVC restores files in arbitrary order).
pull: install
	. $(BIN)/activate && dvc pull && amvl restamp

clean:
	rm -rf data runs models results reports logs .snakemake
