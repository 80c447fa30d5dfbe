#!/bin/bash
# One device session of default-model training (issue 6), from the repo root on the GPU machine:
#   carry .whl (pymatting wheel: pip download --python-version 3.12 --only-binary=:all: pymatting -d .whl)
#   and .devdata (a copy of ../shared/data: alphamatting, alphamatting_test, backgrounds), with the photos'
#   foreground estimates made here first (14 MB; a fresh machine would compile pymatting for ≈ 30 s instead):
#   python3 -c "from trainer.data.datasets import AlphamattingDataset as D
#   D('../shared/data/alphamatting', cache_dir='.devdata/fg_cache').prepare()"
# Continues the shipped matting network with the shipped classifier (models/train_default.py --phase
# gpu-continue: phase 7/8 recipe, batch 32, GT01/GT10/GT19 held out to select on) for LIMIT_S seconds;
# `timeout`'s SIGTERM makes the trainer save the step it is on. Then the last KEEP (3) snapshots come back
# as fp16 weights (an export takes seconds; averaging with BatchNorm re-estimation on the device outlasted
# session 8's call, so it runs here afterwards). Per run, these come back: $TAG_train.log (the run's config.json
# at its end), $TAG_train.csv and the snapshots $TAG_step_N.pt. Then, here on the CPU (models/README.md):
#   semantic-matte train average out/matting_step_*.pt --config run-config.json -o avg.pt --bn-batches 50
#   python3 bench/bench_quality.py --validation backend/weights/semantic-matte-matting.pt out/matting_*.pt avg.pt
# DISC=path/to/discriminator.pt turns the L_c / L_f terms on (carry the file; default: off). INIT=none trains the
# matting network from scratch (with LR=1e-3); HOLD=GT01,GT03,GT10,GT19 keeps a wider selection set out of the
# data (default GT01,GT10,GT19); score it here with bench/bench_quality.py --validation … --photos "$HOLD".
# Two runs can share the GPU (one run's step is overhead-bound): give each its own TAG (file prefix), SEED,
# PHOTO_SHARE and WORKERS (the 16 cores split; with 6 each the steps wait for data ~58 % of the time, phase
# 15), source install/device_wheels.sh first and start both with `&`; CSV=log appends the curve to the log
# instead of its own file, so two runs with KEEP=3 return 8 files (the device returns at most 8).
set -u
OUT=${OUT:-/tmp/out}
TAG=${TAG:-matting}
RUNS=/tmp/runs/$TAG
mkdir -p "$OUT" "$RUNS"
source install/device_wheels.sh || exit 3
export SEMANTIC_MATTE_DATA=${SEMANTIC_MATTE_DATA:-$PWD/.devdata}
LOG="$OUT/${TAG}_train.log"
t0=$(date +%s)
timeout "${LIMIT_S:-300}" python3 models/train_default.py --phase gpu-continue --hold "${HOLD:-GT01,GT10,GT19}" \
  --device "${DEVICE:-cuda}" --workers "${WORKERS:-15}" --classifier-steps 0 --steps "${STEPS_M:-6000}" \
  --lr "${LR:-3e-4}" --batch-size "${BATCH:-32}" --fg-cache "${FG_CACHE:-.devdata/fg_cache}" \
  --seed "${SEED:-10}" --photo-share "${PHOTO_SHARE:-0.5}" --init "${INIT:-backend/weights/semantic-matte-matting.pt}" \
  --ckpt-every "${CKPT_EVERY:-250}" ${DISC:+--discriminator "$DISC"} --out "$RUNS" > "$LOG" 2>&1
echo "$TAG train rc=$? wall=$(( $(date +%s) - t0 )) s" | tee -a "$LOG"
tail -3 "$LOG" | cut -c1-300
snaps=($(ls "$RUNS"/matting/checkpoints/step_*.pt 2>/dev/null))
n=${#snaps[@]}
echo "$TAG snapshots: $n" | tee -a "$LOG"
[ "$n" -gt 0 ] || exit 4
if [ -f "$RUNS/matting/train.csv" ]; then
  if [ "${CSV:-file}" = log ]; then { echo "--- train.csv"; cat "$RUNS/matting/train.csv"; } >> "$LOG"
  else cp "$RUNS/matting/train.csv" "$OUT/${TAG}_train.csv"; fi
fi
cat "$RUNS/matting/config.json" >> "$LOG"
CAND=/tmp/candidates/$TAG  # export puts the classifier beside each file: keep it out of $OUT (it is the shipped one)
mkdir -p "$CAND"
KEEP=${KEEP:-3}
for snap in "${snaps[@]:$(( n > KEEP ? n - KEEP : 0 ))}"; do
  python3 -m trainer.cli train export "$snap" --half -o "$CAND/${TAG}_$(basename "$snap")" >> "$LOG" 2>&1
done
cp "$CAND"/"${TAG}"_*.pt "$OUT/"
echo "$TAG done wall=$(( $(date +%s) - t0 )) s" | tee -a "$LOG"
