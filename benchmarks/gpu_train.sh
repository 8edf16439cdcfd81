#!/usr/bin/env bash
# The GPU half of BENCHMARKS.md's training figures, on a machine with torch but without Ray or open_clip:
#   run from the repo root with DATA (a small built dataset) and WHEELS (open_clip_torch, ftfy, wcwidth,
#   regex wheels) beside it; results go to $OUT (default ./out).
set -uo pipefail
DATA=${DATA:-.gpu/data}
WHEELS=${WHEELS:-.gpu/wheels}
OUT=${OUT:-out}
mkdir -p "$OUT" /tmp/pylib
python3 -m pip install --quiet --no-deps --no-index --find-links "$WHEELS" --target /tmp/pylib \
    open_clip_torch ftfy wcwidth regex 2>&1 | tail -2
export PYTHONPATH=/tmp/pylib:$PWD HF_HUB_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
python3 -c "import sys, torch, open_clip; print(sys.version.split()[0], torch.__version__, open_clip.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
B="python3 -m benchmarks.train_throughput --data $DATA --preset imagebind --device cuda --repeat 60"
# 1. encoders only (cached frozen-tower embeddings); all four ImageBind-size encoders at once fit 256 per GPU
$B --cached --batch-size 256 --steps 40 --warmup 8 --loader-workers 14 --out "$OUT/gpu_cached_b256.json"
# 2. the frozen ViT-H-14 image tower in the loop (augmented frames, as without the cache)
$B --batch-size 256 --steps 30 --warmup 6 --loader-workers 14 --out "$OUT/gpu_online_b256.json"
# 3. the same encoders-only run with too few loader workers, to show what data starvation looks like
$B --cached --batch-size 256 --steps 30 --warmup 6 --loader-workers 2 --out "$OUT/gpu_cached_b256_2workers.json"
