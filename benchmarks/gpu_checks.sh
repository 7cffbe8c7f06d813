#!/usr/bin/env bash
# One prepared pass over the CUDA paths on a lent GPU machine (see README § Benchmarks):
# open_clip comparison + ViT-B/16 CLIP MFU in bf16 and trainer overhead through the benchmark harness
# (same rules as the CPU figures; RESULTS.md/results.json of the GPU sections go to $OUT), fp16 AMP, and
# WebDataset shards: our stream vs open_clip_train's webdataset pipeline (pipeline and full train step).
# The time limits add up to < 600 s (one device call).
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
run 300 python3 -m benchmarks.run_all --only vs_open_clip trainer_overhead --seeds 2 --threads 0 --device cuda --out "${OUT:-/tmp}"
run 30 python3 -m mm_ptft.cli train recipes/text_classification/tiny.yaml output_dir=/tmp/fp16 train.precision=fp16 train.device=cuda
run 240 python3 benchmarks/wds_vs_open_clip.py --mode both --shards 16 --per-shard 600 --batch 256 --workers 8 --warmup 6 --window 16 --repeats 2 --precision bf16
