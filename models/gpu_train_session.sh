#!/bin/bash
# One device session of default-model training (issue 6), from the repo root on the GPU machine:
#   carry .whl (pymatting wheel: pip download --python-version 3.12 --only-binary=:all: pymatting -d .whl)
#   and .devdata (a copy of ../shared/data: alphamatting, alphamatting_test, backgrounds).
# Continues the shipped matting network with the shipped classifier (models/train_default.py --phase
# gpu-continue: phase 7/8 recipe, batch 32, GT01/GT10/GT19 held out to select on) for LIMIT_S seconds;
# `timeout`'s SIGTERM makes the trainer save the step it is on. Then, still on the GPU, the candidates of the
# selection rule (models/README.md) as fp16 weights: the last snapshot, the average of all snapshots and of
# the later half, both with BatchNorm re-estimated on 50 training batches. Five files come back: train.log,
# matting_train.csv and the three candidates (the device returns at most 8 files of 16 MiB).
# Then, here on the CPU:
#   python3 bench/bench_quality.py --validation backend/weights/semantic-matte-matting.pt out/matting_*.pt
set -u
OUT=${OUT:-/tmp/out}
RUNS=/tmp/runs
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && [[ ":${PYTHONPATH:-}:" != *":/tmp/site:"* ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 3
fi
export SEMANTIC_MATTE_DATA=${SEMANTIC_MATTE_DATA:-$PWD/.devdata}
LOG="$OUT/train.log"
t0=$(date +%s)
timeout "${LIMIT_S:-300}" python3 models/train_default.py --phase gpu-continue --hold-validation \
  --device "${DEVICE:-cuda}" --workers "${WORKERS:-15}" --classifier-steps 0 --steps "${STEPS_M:-6000}" \
  --lr "${LR:-3e-4}" --ckpt-every "${CKPT_EVERY:-250}" --out "$RUNS" > "$LOG" 2>&1
echo "train rc=$? wall=$(( $(date +%s) - t0 )) s" | tee -a "$LOG"
tail -3 "$LOG" | cut -c1-300
snaps=($(ls "$RUNS"/matting/checkpoints/step_*.pt 2>/dev/null))
n=${#snaps[@]}
echo "snapshots: $n" | tee -a "$LOG"
[ "$n" -gt 0 ] || exit 4
[ -f "$RUNS/matting/train.csv" ] && cp "$RUNS/matting/train.csv" "$OUT/matting_train.csv"
CAND=/tmp/candidates  # export puts the classifier beside each file: keep it out of $OUT (it is the shipped one)
mkdir -p "$CAND"
python3 -m trainer.cli train export "${snaps[n-1]}" --half -o "$CAND/matting_last.pt" >> "$LOG" 2>&1
if [ "$n" -ge 2 ]; then
  for part in all late; do
    sel=("${snaps[@]}"); [ $part = late ] && sel=("${snaps[@]:n/2}")
    python3 -m trainer.cli train average "${sel[@]}" -o "$CAND/matting_avg_${part}_bn50.pt" --half \
      --bn-batches "${BN_BATCHES:-50}" >> "$LOG" 2>&1
  done
fi
cp "$CAND"/matting_*.pt "$OUT/"
echo "done wall=$(( $(date +%s) - t0 )) s" | tee -a "$LOG"
ls -la "$OUT"
