#!/bin/bash
# Issue 8 device check (repo root, on the GPU machine): bench_gpu.py (fast path vs FP32 eager, memory, the
# kernel profile, tiling, trained-model accuracy) then bench_batching.py (daemon batching with the shipped
# model: throughput and Δα against one-at-a-time). The device image lacks pyzmq/pymatting: carry wheels in
# .whl/ (pip download --python-version 3.12 --only-binary=:all: pyzmq msgpack pymatting -d .whl); they are
# installed first. ≈ 4 min; BENCH_S / BATCH_S bound the two parts, BENCH_CONFIGS picks bench_gpu's rows.
# Everything is written to $OUT as it is produced (a part cut short by its timeout keeps what it logged):
# perf.md (card), bench_gpu.md (tables), bench_gpu.json, perf.log (progress, profile, errors), batching.md.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
source install/device_wheels.sh || exit 3
{ echo '```'; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 -c "import torch, zmq, msgpack; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  echo '```'; } > "$OUT/perf.md" || exit 3
cat "$OUT/perf.md"
BENCH_S=${BENCH_S:-190}
timeout "$BENCH_S" python3 bench/bench_gpu.py --repeats 7 --profile 15 --cal-sizes 1024 --budget-s $(( BENCH_S - 50 )) \
  ${BENCH_CONFIGS:+--configs $BENCH_CONFIGS} --json "$OUT/bench_gpu.json" > "$OUT/bench_gpu.md" 2>> "$OUT/perf.log"
echo "bench_gpu rc=$?" | tee -a "$OUT/perf.log"
timeout "${BATCH_S:-70}" python3 bench/bench_batching.py --device cuda --precision fp16 --size 512 --n 64 \
  --batches 1,4,8 2>> "$OUT/perf.log" | grep -v listening > "$OUT/batching.md"
echo "bench_batching rc=${PIPESTATUS[0]}" | tee -a "$OUT/perf.log"
cat "$OUT/bench_gpu.md" "$OUT/batching.md"
