#!/bin/bash
# Issue 8 device check (repo root, on the GPU machine; tables under $OUT): bench_gpu.py (fast path, memory,
# tiling, trained-model accuracy) then bench_batching.py (daemon batching, sim_r50 random weights, bf16).
# The device image lacks pyzmq/msgpack/pymatting: carry wheels in .whl/ (pip download --python-version 3.12
# --only-binary=:all: pyzmq msgpack pymatting -d .whl) and they are installed first. ~4 min in total.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null | tee "$OUT/gpu.txt"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 3
fi
python3 -c "import torch, zmq, msgpack; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 3
timeout 240 python3 bench/bench_gpu.py --json "$OUT/bench_gpu.json" > "$OUT/bench_gpu.md" 2> "$OUT/bench_gpu.log"
echo "bench_gpu rc=$?"; cat "$OUT/bench_gpu.md"
timeout 200 python3 bench/bench_batching.py --device cuda --precision bf16 --size 512 --n 64 --batches 1,4,8 \
  --model sim_r50 --classifier classifier_r50 > "$OUT/bench_batching.md" 2> "$OUT/bench_batching.log"
echo "bench_batching rc=$?"; grep -v listening "$OUT/bench_batching.md"
