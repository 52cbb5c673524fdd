# hybridtwin: the two commands a fresh clone needs are `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
OUT ?= quickstart_output

.PHONY: install quickstart test test-all bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip >/dev/null
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev]"
	touch $(VENV)/.installed

install: $(VENV)/.installed

quickstart: install
	$(VENV)/bin/hybridtwin quickstart --out $(OUT)

test: install
	$(PY) -m pytest -q -n auto --dist worksteal

test-all: install
	$(PIP) install -q -e ".[dev,ray,bench]"   # the Ray sweep test and the solve benchmark need the extras
	$(PY) -m pytest -q -n auto --dist worksteal -m "not gpu"

bench: install
	$(PIP) install -q -e ".[bench]"   # torchode, a baseline
	$(PY) experiments/bench_solve.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache build *.egg-info
