# Set-up and entry points. On a fresh machine with Python 3.11, git and make:
#   make repro   # creates .venv, installs pinned dependencies, runs `dvc repro` (default experiment)
#   make test    # same set-up, then the test suite
# Both are idempotent: the install runs again only when requirements change.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test bench gpu-check ui server dashboard tune

setup: $(STAMP) .dvc/config

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, exactly pinned, with pip (a loose pin or another installer downloads gigabytes).
$(STAMP): $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The DVC repo is committed; this only repairs a checkout without it.
.dvc/config:
	$(BIN)/dvc init --quiet
	$(BIN)/dvc config core.analytics false
	$(BIN)/dvc config core.check_update false

repro: setup
	$(BIN)/dvc repro

# One pytest worker per core (pytest-xdist), each test file on one worker (its module fixtures built
# once); the slowest tests are listed at the end. A single file: .venv/bin/python -m pytest tests/<file>.
test: setup
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=10

bench: setup
	$(BIN)/python -m pipeline.bench

# On a machine with CUDA: device tests, the ResNet-32 step benchmark and one lt_paper epoch on the
# GPU, one JSON line (pipeline/bench/gpu_check.py; runs without make too). DEVICE=cuda:1 picks a GPU.
gpu-check: DEVICE ?= cuda
gpu-check: setup
	$(BIN)/python -m pipeline.bench.gpu_check --device $(DEVICE)

# make tune: the studies of tune.run; make tune STUDY=lt_smoke: one study; WORKERS=2 for two
# processes, STORAGE=journal:optuna.journal (one machine) or postgresql://... (several),
# N_TRIALS=... for another budget. STORAGE reaches the stage as META_IADA_STORAGE in its environment,
# not on a command line that make echoes and other users can read (it may hold a password).
tune: export META_IADA_STORAGE = $(value STORAGE)
tune: setup
	$(BIN)/python -m pipeline.stages.tune $(if $(STUDY),--study $(STUDY)) $(if $(WORKERS),--workers $(WORKERS)) \
		$(if $(N_TRIALS),--n-trials $(N_TRIALS))

# MLflow UI / optuna-dashboard on 127.0.0.1; PORT=... picks another port. A port in use or a
# missing study store stops with one line and a non-zero exit (pipeline/serve.py).
ui: PORT ?= 5000
ui: setup
	$(BIN)/python -m pipeline.serve ui --port $(PORT)

# MLflow tracking server on 127.0.0.1:5050: runs and registry in BACKEND (default SQLite
# mlflow-server/mlflow.db; e.g. BACKEND=postgresql://user:pw@host/db), artifacts proxied into
# ARTIFACTS (default mlflow-server/artifacts). Log to it with MLFLOW_TRACKING_URI=http://127.0.0.1:5050.
# BACKEND travels in the environment (MLFLOW_BACKEND_STORE_URI), never on a command line.
server: PORT ?= 5050
server: export MLFLOW_BACKEND_STORE_URI = $(value BACKEND)
server: setup
	$(BIN)/python -m pipeline.serve server --port $(PORT) $(if $(ARTIFACTS),--artifacts '$(ARTIFACTS)')

dashboard: PORT ?= 8080
dashboard: setup
	$(BIN)/python -m pipeline.serve dashboard --port $(PORT)
