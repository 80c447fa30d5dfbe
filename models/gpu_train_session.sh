#!/bin/bash
# One device session of default-model training (issue 6), from the repo root on the GPU machine:
#   carry .whl (pymatting wheel: pip download --python-version 3.12 --only-binary=:all: pymatting -d .whl)
#   and .devdata (a copy of ../shared/data: alphamatting, alphamatting_test, backgrounds); optionally
#   runs/cpu-classifier/classifier.pt (the CPU-continued classifier, 5 MB) as the classifier's start.
# Continues the shipped classifier and matting network (models/train_default.py --phase gpu-continue);
# snapshots every 250 steps land in $OUT/runs, so a run cut short still comes back, and a later session
# can carry $OUT/runs back as runs/ and resume it. Then, on CPU: select on the procedural set, ship, report.
set -u
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null | tee "$OUT/gpu.txt"
[ -d .whl ] && pip install -q --no-deps .whl/*.whl 2>&1 | tail -1
export SEMANTIC_MATTE_DATA=${SEMANTIC_MATTE_DATA:-$PWD/.devdata}
[ -d runs ] && cp -r runs "$OUT/" 2>/dev/null  # resume what an earlier session brought back
# The classifier continued on CPU (model card, phase 5: accuracy 0.69 -> 0.87) when it was carried along.
CLS_INIT=${CLS_INIT:-backend/weights/semantic-matte-classifier.pt}
[ -f runs/cpu-classifier/classifier.pt ] && CLS_INIT=runs/cpu-classifier/classifier.pt
echo "classifier init: $CLS_INIT"
t0=$(date +%s)
timeout ${LIMIT_S:-480} python3 models/train_default.py --phase gpu-continue --device cuda --workers 15 \
  --classifier "$CLS_INIT" --classifier-steps ${STEPS_C:-400} --steps ${STEPS_M:-3000} --out "$OUT/runs" > "$OUT/train.log" 2>&1
echo "rc=$? wall=$(( $(date +%s) - t0 )) s"
tail -3 "$OUT/train.log"; tail -2 "$OUT"/runs/*/train.csv | cut -c1-200
