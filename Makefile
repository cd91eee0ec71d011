# Everything runs inside .venv, created on first use; every target is idempotent.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: install train lint test test-slow test-all test-matrix bench clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)                     ## create .venv and install lit_gen with its test tools

train: install                        ## the main job: DDPM on the embedded digits (~13 min on 2 CPU cores)
	$(BIN)/lit-gen fit --config experiments/ddpm/digits.yaml

lint: install                         ## ruff check: the rules of pyproject.toml (no formatter: see pyproject.toml)
	$(BIN)/ruff check .

test: install                         ## the default test suite (620 tests, ~9 min on 2 cores)
	$(BIN)/python -m pytest

test-slow: install                    ## the multi-process and long tests, which CI runs after `make test`
	$(BIN)/python -m pytest -m slow --durations=15

test-all: install                     ## make test and make test-slow in one run
	$(BIN)/python -m pytest -m 'not matrix'

test-matrix: install                  ## every method's config under every trainer preset (a release, a GPU machine)
	$(BIN)/python -m pytest -m matrix

bench: install                        ## speed tables (see benchmarks/)
	$(BIN)/python -m benchmarks.train_throughput
	$(BIN)/python -m benchmarks.sampling_overhead

clean:
	rm -rf $(VENV) runs
