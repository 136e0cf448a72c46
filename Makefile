# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs lightx2v, runs a generation with a tiny random model
#   make test   creates .venv, installs lightx2v with its test extras, runs the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch is pinned here (not in pyproject) so that CPU machines take the local CPU wheel
TORCH  ?= torch==2.13.0

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/lightx2v demo --output outputs/demo.mp4

test: $(VENV)/.installed-test
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) outputs
