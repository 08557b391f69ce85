#!/usr/bin/env bash
# One GPU session's checks, in order of importance, each writing into $OUT (default
# benchmarks/results/gpu_check). It runs from the repository root (it changes there first, so a
# relative OUT or RUNS is taken from there):
#   1. tests/test_speed_options.py: bf16 autocast, channels_last and torch.compile give the plain results;
#   2. samples for the sampler-steps table and the time-to-quality curve (from slim copies of
#      the CPU-trained runs under $RUNS: see benchmarks/README.md);
#   3. torchrun with the NCCL backend (one process: the machine has one GPU);
#   4. the DDPM paper's 35.7M CIFAR-10 UNet against diffusers' UNet2DModel of the same
#      configuration: bf16 eager, then bf16 + channels_last + torch.compile (ddpmlab).
# Needs torch with CUDA; the peers (diffusers, denoising-diffusion-pytorch) on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."   # the repository root: python -m benchmarks.X runs from here
OUT=${OUT:-benchmarks/results/gpu_check}
RUNS=${RUNS:-runs}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
LOG="$OUT/log.txt"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  echo "== tests/test_speed_options.py"
  timeout 300 python3 -m pytest -q -rA --tb=line -p no:cacheprovider -p no:logging \
    tests/test_speed_options.py 2>&1 | grep -v DEBUG | tail -25
} 2>&1 | tee "$LOG"

echo "== samples" | tee -a "$LOG"
python3 -m benchmarks.sampler_steps sample "$RUNS/ttq-ddpmlab" \
  --peer diffusers="$RUNS/ttq-diffusers" --peer lucidrains="$RUNS/ttq-lucidrains" \
  --out "$OUT/steps.npz" 2>&1 | grep -v "it/s" | tee -a "$LOG"
python3 -m benchmarks.sampler_nfe sample "$RUNS/ttq-ddpmlab" --budgets 5,10,20,50 \
  --reference ddpm:1000 --out "$OUT/nfe.npz" 2>&1 | grep -v "it/s" | tee -a "$LOG"
python3 -m benchmarks.time_to_quality sample "$RUNS/ttq-ddpmlab" "$RUNS/ttq-diffusers" \
  "$RUNS/ttq-lucidrains" --out "$OUT/ttq.npz" 2>&1 | grep -v "it/s" | tee -a "$LOG"

echo "== torchrun with NCCL (1 process on 1 GPU): the distributed training path" | tee -a "$LOG"
timeout 150 torchrun --standalone --nproc_per_node=1 -m ddpmlab train --dataset digits \
  --out /tmp/ddp_run --max-steps 40 --no-progress --device cuda train.ckpt_every=20 \
  model.attention_resolutions=4 2>&1 \
  | tail -8 | tee -a "$LOG"

echo "== CIFAR-10 35.7M, bf16 eager" | tee -a "$LOG"
python3 -m benchmarks.train_sample --device cuda --bf16 --settings cifar \
  --only ddpmlab,diffusers --out-json "$OUT/cifar_bf16.json" --out-md "$OUT/cifar_bf16.md" 2>&1 \
  | tail -30 | tee -a "$LOG"
echo "== CIFAR-10 35.7M, bf16 + channels_last + torch.compile (ddpmlab)" | tee -a "$LOG"
python3 -m benchmarks.train_sample --device cuda --bf16 --channels-last --compile \
  --settings cifar --only ddpmlab,diffusers --out-json "$OUT/cifar_fast.json" \
  --out-md "$OUT/cifar_fast.md" 2>&1 \
  | tail -30 | tee -a "$LOG"
