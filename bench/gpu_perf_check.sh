#!/bin/bash
# Issue 8 device check (repo root, on the GPU machine): bench_gpu.py (fast path, memory, tiling, trained-model
# accuracy) then bench_batching.py (daemon batching, sim_r50 random weights, bf16). The device image lacks
# pyzmq/pymatting: carry wheels in .whl/ (pip download --python-version 3.12 --only-binary=:all: pyzmq msgpack
# pymatting -d .whl) and they are installed first. ≈ 4 min; BENCH_S / BATCH_S bound the two parts (session 8:
# bench_gpu with 7 repeats and one calibration size took 124 s on an H200).
# Three files come back (the device returns at most 8 in all, so the training script's files fit beside them):
# $OUT/perf.md (card + both tables), $OUT/perf.log (progress and errors), $OUT/bench_gpu.json.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && [[ ":${PYTHONPATH:-}:" != *":/tmp/site:"* ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 3
fi
{ echo '```'; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 -c "import torch, zmq, msgpack; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  echo '```'; } > "$OUT/perf.md" || exit 3
cat "$OUT/perf.md"
BENCH_S=${BENCH_S:-200}
timeout "$BENCH_S" python3 bench/bench_gpu.py --repeats 7 --profile 25 --budget-s $(( BENCH_S - 40 )) --json "$OUT/bench_gpu.json" \
  > /tmp/bench_gpu.md 2>> "$OUT/perf.log"
echo "bench_gpu rc=$?" | tee -a "$OUT/perf.log"
timeout "${BATCH_S:-100}" python3 bench/bench_batching.py --device cuda --precision bf16 --size 512 --n 64 \
  --batches 1,4,8 --model sim_r50 --classifier classifier_r50 > /tmp/bench_batching.md 2>> "$OUT/perf.log"
echo "bench_batching rc=$?" | tee -a "$OUT/perf.log"
{ cat /tmp/bench_gpu.md; echo; grep -v listening /tmp/bench_batching.md; } >> "$OUT/perf.md"
cat /tmp/bench_gpu.md; grep -v listening /tmp/bench_batching.md
