#!/usr/bin/env bash
# The GPU figures of the speed work in one run (~5 minutes on one H100/H200), most important first:
#   1. bench_pretrain, ViT-B/16 at 224 px, batch 256, compiled: synthetic data on the device and the real
#      GPU-resident pipeline (Fashion-MNIST upscaled, 3 channels), random and semantic masking;
#   2. the same, eager;
#   3. the no-host-sync tests of every masking strategy under torch.cuda.set_sync_debug_mode("error").
# Usage: OUT=dir DATA=<folder with the Fashion-MNIST IDX files> bash experiments/gpu_suite.sh
set -uo pipefail
OUT=${OUT:-outputs/gpu_suite}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then  # machines without hydra/omegaconf: wheels built by the caller
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=offline PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, timm, lightning; print('torch', torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"
python3 experiments/bench_pretrain.py --device cuda --backbone vit_base --batch 256 --variants compiled \
  --data synthetic,real --masking random,semantic --warmup 10 --steps 10 --windows 5 \
  --override "dataset.root=$DATA" dataset.train_subset=null --json "$OUT/bench_compiled.json"
python3 experiments/bench_pretrain.py --device cuda --backbone vit_base --batch 256 --variants eager \
  --data synthetic --masking random,semantic --warmup 10 --steps 10 --windows 5 --json "$OUT/bench_eager.json"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/tasks/test_step_sync.py 2>&1 | tail -4
