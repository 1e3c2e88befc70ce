# Two commands do all set-up and work on a fresh clone:
#   make demo   creates .venv if missing, installs, runs the embedded offline default end to end
#   make test   creates .venv if missing, installs, runs the whole offline test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= outputs/demo
ABLATIONS_DIR ?= outputs/ablations
ABLATE_ARGS ?=
# Offline by default: no hub look-ups (a failing one retries for ~46 s), W&B writes local runs.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

.PHONY: help install demo test lint clean ablations-demo

help:
	@echo "make demo   - install and run the offline demo (data, features, vip5 fit/test, pmg fit/predict)"
	@echo "make test   - install and run the full offline test suite"
	@echo "make ablations-demo - reduced VIP5 + PMG ablation sweeps on the demo data; table and plots in $(ABLATIONS_DIR)"
	@echo "make lint   - ruff"
	@echo "make clean  - remove .venv and outputs/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt tools/install_torchvision_fix.py tools/torchvision_fix.py | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip -c constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python tools/install_torchvision_fix.py
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	bash tools/demo.sh $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# Reduced sweeps (configs/ablations/demo_*.yaml) as real runs: result files, W&B offline runs, report.md + PNGs.
# Resumable: a rerun skips finished settings (ABLATE_ARGS=--force reruns them).
ablations-demo: $(STAMP)
	$(BIN)/ablate run configs/ablations/demo_vip5.yaml configs/ablations/demo_pmg.yaml \
	  --output $(ABLATIONS_DIR) $(ABLATE_ARGS)
	@echo "upload the offline W&B runs with: $(BIN)/wandb sync $(ABLATIONS_DIR)/*/*/wandb/offline-run-*"

lint: $(STAMP)
	$(BIN)/ruff check common vip5 pmg tests bench tools

clean:
	rm -rf $(VENV) outputs
