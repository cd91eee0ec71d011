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

test: install                         ## the default suite: 2 workers of one thread each (~4.5 min on 2 cores)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2

test-slow: install                    ## the multi-process and long tests, two at a time (CI runs them after make test)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m slow -n 2 --dist worksteal --durations=15

test-all: test test-slow              ## both, as CI runs them

test-matrix: install                  ## every method's config under every trainer preset (a release, a GPU machine)
	$(BIN)/python -m pytest -m matrix

bench: install                        ## speed tables (see benchmarks/)
	$(BIN)/python -m benchmarks.train_throughput
	$(BIN)/python -m benchmarks.sampling_overhead

clean:
	rm -rf $(VENV) runs
