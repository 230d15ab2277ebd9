# sloburn: two entry points for a fresh machine, `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: run test test-nojit lint bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/sloburn demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not perf" tests
	NUMBA_DISABLE_JIT=1 $(PY) -m pytest -q -m "not perf and not integration and not slow" tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check engine bench tests
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m pytest -q -m perf --benchmark-enable tests/perf

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
