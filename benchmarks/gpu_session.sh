#!/usr/bin/env bash
# Every GPU measurement of issue 13 in one run of about 8 minutes, each table written to
# $OUT/<name>.txt (at most 8 files). Run from the repository root on a machine with one
# CUDA GPU, with the CIFAR-10 JPEG zip and make_pickles.py in .carry/ (git-ignored):
#
#   mkdir -p .carry && cp ../shared/data/cifar10/{cifar10-train-jpeg.zip,make_pickles.py} .carry/
#   echo /.carry/ >> .git/info/exclude
#   OUT=/tmp/out bash benchmarks/gpu_session.sh       # (the device tool sets OUT itself)
#
# Needs torch/torchvision (2.11/0.26 or later), numpy, opencv, scipy, scikit-learn, PyYAML,
# tqdm, Pillow; not wandb or albumentations. Steps run in order of importance, each under
# its own time limit and within the whole budget (BUDGET seconds, default 540), so a slow
# step costs its own table only. A step that fails leaves its output and exit code in its
# file and the next step still runs.
#
# DEVICE=cpu QUICK=1 runs the same steps at tiny sizes on a CPU: a dry run of this script.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
PYTHON=${PYTHON:-python3}
BUDGET=${BUDGET:-540}
CARRY=${CARRY:-.carry}
DEVICE=${DEVICE:-cuda}
# QUICK=1: tiny sizes, for a dry run (each step's extra flags; empty for the real session).
if [[ -n ${QUICK:-} ]]; then
  TINY_STEP=(--image_size 32 --num_classes 10 --steps 1 --warmup 1)
  THROUGHPUT=("${TINY_STEP[@]}" --batch_size 2 --no_compile)
  GPU_DATA=("${TINY_STEP[@]}" --shape 60 80 --images 4 --unique 4 --batch_size 2 --repeats 1)
  MEMORY=(--model_version A --image_size 32)
  CIFAR=(--model_version A --fc_width 16 --epochs 1 --batch_size 16)
else
  THROUGHPUT=() GPU_DATA=(--images 5120 --unique 256) MEMORY=() CIFAR=(--epochs 30)
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled NO_ALBUMENTATIONS_UPDATE=1

# step NAME SECONDS COMMAND...: COMMAND's output to $OUT/NAME.txt, stopped after SECONDS or
# when the budget runs out, whichever is first.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  ((left < limit)) && limit=$left
  if ((limit < 10)); then
    echo "skipped: the session's budget of ${BUDGET}s is spent" >"$OUT/$name.txt"
    return
  fi
  echo "== $name (at ${SECONDS}s, limit ${limit}s): $*"
  { echo "\$ $*"; timeout "$limit" "$@"; echo "exit code $? after $((SECONDS))s of the session"; } \
    2>&1 | tee -a "$OUT/$name.txt"
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PYTHON" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  echo "CPU cores: $(nproc)"
} >"$OUT/environment.txt" 2>&1

# The CIFAR-10 pickles for train.py's NCCL run, written on the CPUs while the GPU works.
if [[ -f $CARRY/make_pickles.py && -f $CARRY/cifar10-train-jpeg.zip ]]; then
  "$PYTHON" "$CARRY/make_pickles.py" "$CARRY/data" >"$OUT/pickles.log" 2>&1 &
  PICKLES=$!
else
  echo "no $CARRY/cifar10-train-jpeg.zip and make_pickles.py: CIFAR-10 steps skipped" \
    | tee -a "$OUT/environment.txt"
  PICKLES=
fi

step throughput 200 "$PYTHON" -m benchmarks.train_throughput --device "$DEVICE" --profile \
  "${THROUGHPUT[@]}"
step gpu_data 100 "$PYTHON" -m benchmarks.gpu_data --device "$DEVICE" "${GPU_DATA[@]}"
step memory 120 "$PYTHON" -m benchmarks.train_memory --device "$DEVICE" "${MEMORY[@]}"
if [[ -n $PICKLES ]]; then
  step cifar 110 "$PYTHON" -m benchmarks.cifar_speed --device "$DEVICE" \
    --zip "$CARRY/cifar10-train-jpeg.zip" "${CIFAR[@]}"
  wait "$PICKLES"
  cat "$OUT/pickles.log" >>"$OUT/environment.txt"
fi
step distributed 60 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 \
  -m benchmarks.distributed_smoke --device "$DEVICE"
if [[ -n $PICKLES ]]; then
  RUNS=$(mktemp -d)
  step distributed 90 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 \
    train.py --config configs/cifar10.yaml --data_root "$CARRY/data" --device "$DEVICE" \
    --model_version A --epochs 1 --train_subset 4096 --val_subset 1000 --workers 4 \
    --wandb disabled --out_dir "$RUNS" --run_name nccl
  step distributed 60 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 \
    evaluate.py --checkpoint "$RUNS/nccl/best.pt" --data_root "$CARRY/data" --split val \
    --limit 1000 --device "$DEVICE"
fi
rm -f "$OUT/pickles.log"
echo "== done in ${SECONDS}s; tables in $OUT:"
ls "$OUT"
