#!/bin/bash
# Device check for the trainer (run from the repo root; results under $OUT/runs): bf16 on CUDA, data throughput of the default config, resume, torchrun DDP+SyncBN.
set -u
# Data root: $SEMANTIC_MATTE_DATA (on a device machine, copy /work/shared/data to runs/gpu_data and carry it).
export SEMANTIC_MATTE_DATA=${SEMANTIC_MATTE_DATA:-$PWD/runs/gpu_data}
R=$OUT/runs
STEPS_C=${STEPS_C:-200}; STEPS_M=${STEPS_M:-300}; WORKERS=${WORKERS:-14}; DEV=${DEV:-cuda}
COMMON="run.out_dir=\"$R\" run.progress=false run.tensorboard=false data.num_workers=$WORKERS run.device=\"$DEV\""
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
python3 -c "import torch,cv2,scipy,pymatting,tqdm;print('torch',torch.__version__,'cuda',torch.cuda.is_available())" || exit 3
t0=$(date +%s)
python3 -m trainer.cli train classifier --config trainer/configs/default_classifier_lite.toml $COMMON schedule.steps=$STEPS_C schedule.warmup_steps=20 run.log_every=50 run.eval_every=0 data.val_limit=100 ${EXTRA_C:-} || exit 4
python3 -m trainer.cli train discriminator --config trainer/configs/default_discriminator_lite.toml $COMMON schedule.steps=$STEPS_C schedule.warmup_steps=20 run.log_every=50 run.eval_every=0 data.val_limit=100 ${EXTRA_C:-} || exit 5
t1=$(date +%s)
M="model.classifier=\"$R/default-classifier-lite/classifier.pt\" model.discriminator=\"$R/default-discriminator-lite/discriminator.pt\""
HALF=$((STEPS_M/2))
python3 -m trainer.cli train matting --config trainer/configs/default_sim_lite.toml $COMMON $M schedule.steps=$STEPS_M schedule.warmup_steps=20 run.log_every=25 run.eval_every=0 run.ckpt_every=$HALF data.val_limit=49 ${EXTRA_M:-} || exit 6
t2=$(date +%s)
# resume: extend the same run by 50 steps from its last snapshot
python3 -m trainer.cli train matting --resume --config trainer/configs/default_sim_lite.toml $COMMON $M schedule.steps=$((STEPS_M+50)) schedule.warmup_steps=20 run.log_every=25 run.eval_every=0 run.ckpt_every=$HALF data.val_limit=9 ${EXTRA_M:-} || exit 7
t3=$(date +%s)
# torchrun (1 process): DDP + SyncBatchNorm path
python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m trainer.cli train matting --config trainer/configs/default_sim_lite.toml $COMMON $M run.name=\"ddp1\" schedule.steps=40 run.log_every=20 data.val=[] ${EXTRA_M:-} || exit 8
t4=$(date +%s)
echo "TIMES classifier+disc=$((t1-t0))s matting=$((t2-t1))s resume=$((t3-t2))s torchrun=$((t4-t3))s"
for f in $R/*/train.csv $R/*/eval.csv; do echo "== $f"; cat "$f" | cut -c1-400; done
python3 - <<PY
import torch
s = torch.load("$R/ddp1/checkpoints/" + open("$R/ddp1/checkpoints/last").read().strip(), map_location="cpu", weights_only=True)
print("ddp1 snapshot step", s["step"], "world", s["data"]["world"])
PY
