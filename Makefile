# Two commands matter: `make run` and `make test`. Everything else is a step they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501

.PHONY: run test test-all test-fast lint weights bench clean

$(PY):
	# Debian's python3 may lack ensurepip (package python3-venv); then bootstrap pip from PyPI.
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV) && $(PYTHON) -m venv --without-pip $(VENV) && $(PY) tools/bootstrap_pip.py; }
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

weights: $(VENV)/.runtime
	$(PY) -m fracture weights

run: $(VENV)/.runtime weights
	$(PY) -m streamlit run app.py --server.port $(PORT)

# The default suite skips the slow tests (real training, the bench, the browser, real data);
# CI (CI=true) runs them too, in a second pytest process: TensorFlow does not give back what
# hundreds of models built in one process take, and both tiers in one process outgrew this
# machine's 24 GB. The export tests share the fast process: tf2onnx's conversion garbage is
# collected as it goes and handed back after (fracture.inference.export), so it no longer
# needs a process of its own.
RUN_SLOW := $(filter true 1,$(CI))

# Lint, formatting, types and the import layers (pyproject.toml configures all four).
LINT_PATHS := fracture app.py app_pages tests tools

lint: $(VENV)/.dev
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q -m "not slow"
	$(if $(RUN_SLOW),$(PY) -m pytest -q -m slow)

test-all: lint
	$(PY) -m pytest -q -m "not slow"
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.runtime
	$(PY) -m fracture bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache test-artifacts build
