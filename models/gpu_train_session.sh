#!/bin/bash
# One device session of default-model training (issue 6), from the repo root on the GPU machine:
#   carry .whl (pymatting wheel: pip download --python-version 3.12 --only-binary=:all: pymatting -d .whl)
#   and .devdata (a copy of ../shared/data: alphamatting, alphamatting_test, backgrounds); optionally
#   runs/cpu-classifier/classifier.pt (the CPU-continued classifier, 5 MB) as the classifier's start.
# Continues the classifier and the shipped matting network (models/train_default.py --phase gpu-continue),
# keeping GT01, GT10, GT19 out of training to select on. What comes back from the device is at most 8 files of
# 16 MiB, two folders deep, so the full snapshots (52 MB with the optimiser) stay there: $OUT receives fp16
# weights of the last 4 matting snapshots (250 steps apart) with the classifier beside them, the curve and
# the log. When LIMIT_S runs out, timeout's SIGTERM makes the trainer save a snapshot of the step it is on first.
# Then, here on the CPU:
#   python3 bench/bench_quality.py --validation backend/weights/semantic-matte-matting.pt out/matting_step_*.pt
# and ship the best snapshot only if it beats the shipped model there (models/train_default.py --phase ship).
set -u
OUT=${OUT:-/tmp/out}
RUNS=/tmp/runs
mkdir -p "$OUT" "$RUNS"
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null | tee "$OUT/gpu.txt"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 3
fi
export SEMANTIC_MATTE_DATA=${SEMANTIC_MATTE_DATA:-$PWD/.devdata}
# The classifier continued on CPU (model card, phase 5: accuracy 0.69 -> 0.87) when it was carried along.
CLS_INIT=${CLS_INIT:-backend/weights/semantic-matte-classifier.pt}
[ -f runs/cpu-classifier/classifier.pt ] && CLS_INIT=runs/cpu-classifier/classifier.pt
echo "classifier init: $CLS_INIT"
t0=$(date +%s)
timeout ${LIMIT_S:-480} python3 models/train_default.py --phase gpu-continue --hold-validation --device ${DEVICE:-cuda} \
  --workers ${WORKERS:-15} --classifier "$CLS_INIT" --classifier-steps ${STEPS_C:-400} --steps ${STEPS_M:-3000} --out "$RUNS" \
  > "$OUT/train.log" 2>&1
echo "rc=$? wall=$(( $(date +%s) - t0 )) s"
tail -3 "$OUT/train.log"
for snap in $(ls "$RUNS"/matting/checkpoints/step_*.pt 2>/dev/null | tail -4); do
  python3 -m trainer.cli train export "$snap" --half -o "$OUT/matting_$(basename "$snap")" 2>&1 | tail -1
done
[ -f "$RUNS/matting/train.csv" ] && cp "$RUNS/matting/train.csv" "$OUT/matting_train.csv" && tail -2 "$OUT/matting_train.csv" | cut -c1-200
ls -la "$OUT"
