# fmforge: `make demo` runs the main job on the built-in default; `make test` runs the suite.
# Both create .venv and install torch (first, the CPU wheel) and the project with its test extras.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fmforge demo

# two workers (the suite's machines have 2 cores); a test file runs whole in one worker, so its
# module fixtures are built once; the Verilator build cache is shared under a file lock
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf build .pytest_cache
