#!/usr/bin/env bash
# Every CUDA figure and CUDA-only test in one prepared device call (README § Benchmarks), in priority order under
# one deadline (DEADLINE seconds, default 560: one call may run 600 s): each step gets its own limit or what is
# left, whichever is less, and a step with under 20 s left is skipped and says so. Output: $OUT/gpu_checks.log,
# RESULTS.md/results.json of the harness's GPU sections and the JSON of the single scripts, all under $OUT.
#  1. the targets: trainer vs a hand loop at realistic step sizes, CLIP ViT-B/16 bf16 MFU and samples/s/memory vs
#     open_clip's train_one_epoch (benchmarks.run_all, the CPU figures' rules)
#  2. the CUDA-only tests: sync-free step/EMA/FSDP-free skip paths, CUDA graphs with accumulation and evaluation
#  3. what decides defaults: torch.compile modes (eager vs default vs reduce-overhead), image decoding on the
#     device vs in workers (nvjpeg parity too), loader workers sized by rate, rollback skip vs host sync
#  4. an fp16 AMP smoke run; WebDataset shards: our stream vs open_clip_train's webdataset pipeline (what is left)
# Wheels missing there travel in .whl/ (python 3.12).
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu_checks}; mkdir -p "$OUT/compile"; LOG=$OUT/gpu_checks.log; DEADLINE=${DEADLINE:-560}
run() {  # run LIMIT_S CMD...: at most LIMIT_S, never past the deadline
  local t=$1; shift; local left=$((DEADLINE - SECONDS)); [ "$t" -gt "$left" ] && t=$left
  if [ "$left" -lt 20 ]; then echo "### SKIPPED (deadline): $*" | tee -a "$LOG"; return; fi
  echo "### [${t}s, at ${SECONDS}s] $*" | tee -a "$LOG"
  timeout "$t" "$@" 2>&1 | grep -vE "INFO|WARNING|Writing" | tee -a "$LOG" | tail -8
  echo "### exit ${PIPESTATUS[0]} after ${SECONDS}s" | tee -a "$LOG"
}
nvidia-smi -L | tee -a "$LOG"
run 200 python3 -m benchmarks.run_all --only vs_open_clip trainer_overhead --seeds 2 --threads 0 --device cuda --out "$OUT"
run 60 python3 -m pytest -q -p no:cacheprovider tests/train/test_step.py tests/heads/test_image_classification.py \
  tests/train/test_compiling.py -k "cuda"
run 150 python3 -m benchmarks.run_all --only compile_speed --quick --seeds 2 --threads 0 --device cuda --out "$OUT/compile"
run 50 python3 benchmarks/decode_on_device.py --device cuda --workers 1 4 8 --n 1024 --batch 256 --repeats 2 \
  --dtype bf16 --threads 0 --out "$OUT/decode_on_device.json"
run 40 python3 benchmarks/loader_workers.py --device cuda --model vit_b16 --arms 0 auto --seeds 1 --steps 16 \
  --batch 64 --size 256 --threads 0
run 25 python3 benchmarks/step_skip.py --seeds 2 --device cuda --threads 0
run 20 python3 -m mm_ptft.cli train recipes/text_classification/tiny.yaml output_dir=/tmp/fp16 \
  train.precision=fp16 train.device=cuda
run 90 python3 benchmarks/wds_vs_open_clip.py --mode both --shards 16 --per-shard 400 --batch 256 --workers 8 \
  --warmup 4 --window 12 --repeats 1 --precision bf16
echo "### done in ${SECONDS}s" | tee -a "$LOG"
