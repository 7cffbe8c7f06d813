#!/usr/bin/env bash
# One prepared pass over the CUDA paths on a lent GPU machine (see README § Benchmarks):
# open_clip comparison + ViT-B/16 CLIP MFU in bf16, trainer overhead, HF Trainer comparison, fp16 AMP,
# WebDataset shards: our stream vs open_clip_train's webdataset pipeline (pipeline and full train step).
# Wheels missing there travel in .whl/ (python 3.12); output goes to $OUT/gpu_checks.log.
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LOG=${OUT:-/tmp}/gpu_checks.log
run() { local t=$1; shift; echo "### $*" | tee -a "$LOG"; timeout "$t" "$@" 2>&1 | grep -vE "INFO|WARNING|Writing" | tee -a "$LOG" | tail -8; }
nvidia-smi -L | tee -a "$LOG"
run 110 python3 benchmarks/vs_open_clip.py --model ViT-B-16 --batch 128 --steps 10 --precision bf16 --workers 4
run 60 python3 benchmarks/trainer_overhead.py --steps 60 --repeats 2
run 75 python3 benchmarks/vs_hf_trainer.py --epochs 1 --hidden 512 --layers 6 --batch 64 --precision bf16
run 30 python3 -m mm_ptft.cli train recipes/text_classification/tiny.yaml output_dir=/tmp/fp16 train.precision=fp16 train.device=cuda
run 320 python3 benchmarks/wds_vs_open_clip.py --mode both --shards 16 --per-shard 800 --batch 256 --workers 8 --warmup 8 --window 20 --repeats 3 --precision bf16
