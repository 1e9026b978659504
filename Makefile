# semmae — `make help` lists the targets. Every target that runs code depends on `setup` (idempotent).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
ARGS   ?=
FMNIST_DIR := /usr/share/datasets/fashion-mnist

export WANDB_MODE ?= offline
# make bench: also times the foundation's data path and probe (DataLoader workers, fp32 probe on the whole batch)
BENCH_ARGS ?= --probe --json outputs/bench/pretrain.json \
	--baseline dataset.resident=false model.probe.bf16=false model.probe.batch_fraction=1.0

.PHONY: help setup data pretrain analyze lint test test-slow test-all clean
.PHONY: masks bench bench-masking bench-analyze gpu-suite bench-probes
.PHONY: segment
.PHONY: sweep test-slurm
.PHONY: replicate

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  Pass options to a run with ARGS, e.g.  make pretrain ARGS='masking=random trainer.max_epochs=5'"

setup: $(STAMP) ## Create .venv, install semmae with dev extras and the Fashion-MNIST data (once; then instant)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@$(MAKE) --no-print-directory data
	@touch $@

data: ## Install Fashion-MNIST from Debian's dataset-fashion-mnist package (root + apt-get), or say how to get it
	@if ls $(FMNIST_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1; then \
		echo "Fashion-MNIST: found in $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; } ; \
		ls $(FMNIST_DIR)/train-images-idx3-ubyte* >/dev/null && echo "Fashion-MNIST: installed in $(FMNIST_DIR)"; \
	else \
		echo "Fashion-MNIST: not installed. As root: apt-get install dataset-fashion-mnist;"; \
		echo "  or pass dataset.root=DIR (the four IDX files); or let the first run download it (dataset.download=true)."; \
	fi

pretrain: setup ## MAE pretraining with the defaults (vit_micro, Fashion-MNIST, random masking, on the CPU), ending with k-NN vs random init
	$(BIN)/python -m semmae.pretrain $(ARGS)

analyze: setup ## Attention maps + artifact metrics of the newest outputs/pretrain/*/checkpoints/last.ckpt (ARGS='ckpt=[PATH,random]')
	$(BIN)/python -m semmae.analyze $(ARGS)

masks: setup ## Masking strategies side by side on Fashion-MNIST: figures/masks.png + mask statistics (results.json)
	$(BIN)/python -m semmae.masks $(ARGS)

bench: setup ## Pretraining throughput: img/s, MFU, semantic/random step ratio, before/after on CPU (ARGS='--device cuda'); the attention callback's share of an epoch
	$(BIN)/python experiments/bench_pretrain.py $(BENCH_ARGS) $(ARGS)
	$(BIN)/python experiments/bench_diagnostics.py callback --json outputs/bench/callback.json

bench-analyze: setup ## semmae-analyze with every diagnostic on 1,000 images of vit_micro: time of each part (ARGS='--ckpt PATH')
	$(BIN)/python experiments/bench_diagnostics.py analyze --json outputs/bench/analyze.json $(ARGS)

bench-masking: setup ## Milliseconds per batch of every masking strategy, as a share of one pretraining step (ARGS='--device cuda')
	$(BIN)/python experiments/bench_masking.py $(ARGS)

gpu-suite: setup ## The GPU suite (~9.5 min on one H200): throughput vs targets, ImageFolder data path, no host sync, readings, probes into outputs/gpu_suite (ARGS='--scale tiny' on a CPU)
	$(BIN)/python experiments/gpu_suite.py $(ARGS)

bench-probes: setup ## Probe speed: EP head on cached vit_micro tokens of all Fashion-MNIST, k-NN 60,000 x 10,000
	$(BIN)/python experiments/bench_probes.py $(ARGS)

.PHONY: linprobe finetune export

linprobe: setup ## Linear probe, EP and k-NN of the newest `make pretrain` checkpoint and of a random init, one table (ARGS='ckpt=PATH')
	$(BIN)/python -m semmae.linprobe 'model.head=[linear,ep,knn]' random_baseline=true $(ARGS)

finetune: setup ## Fine-tune the newest `make pretrain` checkpoint on Fashion-MNIST (ARGS='ckpt=PATH' or ckpt=null)
	$(BIN)/python -m semmae.finetune $(ARGS)

export: setup ## Export an encoder as a timm state dict: make export ARGS='ckpt=PATH out=encoder.pth'
	$(BIN)/python -m semmae.export $(ARGS)

segment: setup ## Segmentation (UperNet) on fashion_mnist_seg from the newest pretraining checkpoint (ARGS='ckpt=null': random init)
	$(BIN)/python -m semmae.segment $(ARGS)

sweep: setup ## Masking sweep (masking x mask_ratio, 6 short CPU runs, ~12 min), then semmae-report: table + plot
	@dir=multirun/pretrain/$$(date +%Y-%m-%d_%H-%M-%S); echo "sweep into $$dir"; \
	$(BIN)/python -m semmae.pretrain -m experiment=mask_sweep_cpu hydra.sweep.dir=$$dir $(ARGS); status=$$?; \
	$(BIN)/python -m semmae.report $$dir || status=$$?; exit $$status

replicate: setup ## Replication study, semantic vs random vs block x 3 seeds, --preset cpu (ARGS='--preset cpu-long', '--preset gpu', '--ablation', '--dry-run')
	$(BIN)/python experiments/semantic_vs_random/run.py $(ARGS)

lint: setup ## ruff: lint and format check of semmae/, tests/, experiments/
	$(BIN)/ruff check semmae tests experiments
	$(BIN)/ruff format --check semmae tests experiments

test: setup ## Run the test suite (without tests marked slow)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

test-slow: setup ## Run only the tests marked slow (exit code 5, "no tests collected", counts as success)
	$(BIN)/python -m pytest -q -m slow $(ARGS) || [ $$? -eq 5 ]

test-all: test test-slow ## Both

test-slurm: setup ## As root: a real one-node SLURM (Debian slurm-wlm + munge), a 2-job sweep and a requeue (~3 min)
	@$(BIN)/python -c 'import hydra_plugins.hydra_submitit_launcher' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[slurm]'
	PYTHON=$(BIN)/python tests/slurm/run.sh

clean: ## Remove run outputs (outputs/, multirun/); keeps .venv
	rm -rf outputs multirun lightning_logs
