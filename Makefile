# pyro_meta developer commands. `make test` and `make demo` build .venv from nothing when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast lint fuzz docs demo bench bench-smoke clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the local CPU wheel (any other spelling pulls a multi-GB CUDA build)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: $(STAMP)
	# the API reference from the docstrings: offline (no intersphinx), warnings are errors
	$(BIN)/python -m sphinx -b html -W -q docs/api build/docs

# one pytest worker per CPU (pytest-xdist; an idle worker takes queued tests from a busy one), one torch thread each
test: $(STAMP) lint docs
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -q -ra --durations=15 -n auto --dist worksteal

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# the Hypothesis fuzz suite with its long profile (1,000 examples per test, random seeds; CI runs the
# seeded 30-example "ci" profile as part of `make test`), then 50 random SIGINTs during fit (10 in CI)
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -m fuzz tests/fuzz
	PYRO_META_SIGINT_ROUNDS=50 $(BIN)/python -m pytest -q tests/test_fault_injection.py -k sigints

demo: $(STAMP)
	$(BIN)/pyro-meta demo

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --out docs

bench-smoke: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --smoke --out build/bench-smoke

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
