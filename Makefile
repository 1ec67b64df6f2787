# clinvert: every target creates or reuses .venv; nothing is installed by hand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
PYTHON311 ?= python3.11
RENDER_STAMP := .venv-render/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: install run test bench lint docs clean render-env

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install clinvert with dev extras (idempotent)

run: $(STAMP) ## quick reproduction of the headline rows (embedded defaults), then the report
	$(VENV)/bin/clinvert headline --out runs/headline

test: $(STAMP) $(RENDER_STAMP) ## run the test suite (the Cycles tests too: .venv-render comes with it)
	$(PY) -m pytest -q

bench: $(STAMP) ## run the benchmarks (prints ratios measured side by side)
	$(PY) benchmarks/run_all.py

# Blender's bpy (Python 3.11, numpy<2) in its own environment; the Cycles backend of
# `clinvert threedident render --backend cycles` runs its worker with .venv-render/bin/python.
# `make test` builds it too, so the Cycles tests run; without a python3.11 they are skipped (said so).
$(RENDER_STAMP):
	@if command -v $(PYTHON311) >/dev/null 2>&1; then \
		set -e; \
		test -x .venv-render/bin/python || $(PYTHON311) -m venv .venv-render; \
		.venv-render/bin/python -m pip install --quiet 'bpy==5.0.1' 'numpy<2'; \
		touch $@; \
	else \
		echo "make: $(PYTHON311) not found: no .venv-render, the Cycles tests will be skipped"; \
	fi

render-env: $(RENDER_STAMP) ## create .venv-render with bpy==5.0.1 (Blender Cycles for 3DIdent)

# mkdocs-material + mkdocstrings (the `docs` extra) into .venv, on top of the dev install (which
# pyproject.toml and constraints.txt already trigger again when they change).
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP) ## build the documentation site into build/site (mkdocs --strict: any warning fails)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .venv-render runs build *.egg-info src/*.egg-info
