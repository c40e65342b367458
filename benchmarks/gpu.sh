#!/usr/bin/env bash
# The ViT-B/16 training cost on one GPU, bf16 (autocast), in under 5 minutes: images/s and peak GPU memory of a plain
# transformers.Trainer, NullspaceTrainer in modes none, random and nullspace (library defaults), and the authors' loop
# (bare PyTorch, same work). Random init, 224 px, patch 16, batch 64, 1000 classes, random images; one refresh period
# (40 steps, one synthesis) per run, 2 repeats stepped in turn (a process per variant), medians; the seconds of one
# synthesis update (forced updates, batch and quarter batch); peak CUDA memory of each variant in its own process. A
# random-init model is insensitive to the noise, so its syntheses take 0 updates: read the synthesis cost from the
# profile.
#
#   bash benchmarks/gpu.sh                      # on a GPU machine: writes benchmarks/results/training_cost_gpu.json
#   bash benchmarks/gpu.sh --device cpu --tiny  # smoke test of the same path on CPU (a 2-layer ViT, a few steps)
#
# Environment: PYTHON (default .venv/bin/python, else python3), OUTPUT (the JSON path).
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
tiny=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --tiny) tiny=1; shift ;;
        *) echo "usage: $0 [--device cuda|cpu] [--tiny]" >&2; exit 2 ;;
    esac
done

python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi

if [ "$device" = cuda ]; then
    "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

if [ "$tiny" = 1 ]; then
    shape=(--shape tiny --steps 4 --repeats 1 --batch-size 8 --samples 32)
    output="${OUTPUT:-/tmp/hf_nullspace_training_cost_gpu_smoke.json}"
else
    shape=(--shape vit-b16 --steps 40 --repeats 2 --batch-size 64 --samples 256)
    output="${OUTPUT:-benchmarks/results/training_cost_gpu.json}"
fi

start=$(date +%s)
# 285 s in all: the timings are written first, the memory pass (one process per variant) adds to the file after
timeout 285 "$python" benchmarks/training_cost.py "${shape[@]}" --device "$device" --bf16 --warmup 2 \
    --synthesis-profile --no-whole-train --variants plain_trainer,none,random,nullspace,authors_loop --output "$output"
echo "gpu.sh: $(( $(date +%s) - start )) s; results in $output"
