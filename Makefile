# clinvert: every target creates or reuses .venv; nothing is installed by hand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev

.PHONY: install run test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install clinvert with dev extras (idempotent)

run: $(STAMP) ## quick reproduction of the headline rows (embedded defaults), then the report
	$(VENV)/bin/clinvert headline --out runs/headline

test: $(STAMP) ## run the test suite
	$(PY) -m pytest -q

bench: $(STAMP) ## run the benchmarks (prints ratios measured side by side)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
