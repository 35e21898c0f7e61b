# Wuma: `make demo` and `make test` work on a fresh machine with only Python 3.11+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA ?= demo-data

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DATA) $(DEMO_DATA)-files
	$(PY) -m cli.demo --data $(DEMO_DATA)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	WUMA_BENCH=full $(PY) -m pytest -q benchmarks -s --benchmark-columns=median,min,max,rounds

clean:
	rm -rf $(VENV) $(DEMO_DATA) $(DEMO_DATA)-files .pytest_cache .benchmarks
