#!/usr/bin/env bash
# Every GPU measurement of issue 13 in one run of about 8 minutes, each table written to
# $OUT/<name>.txt (8 files: the device tool brings back no more). Run from the repository
# root on a machine with one CUDA GPU, with the CIFAR-10 JPEG zip and make_pickles.py in
# .carry/ (git-ignored):
#
#   mkdir -p .carry && cp ../shared/data/cifar10/{cifar10-train-jpeg.zip,make_pickles.py} .carry/
#   echo /.carry/ >> .git/info/exclude
#   OUT=/tmp/out bash benchmarks/gpu_session.sh       # (the device tool sets OUT itself)
#
# Needs torch/torchvision (2.11/0.26 or later), numpy, opencv, scipy, scikit-learn, PyYAML,
# tqdm, Pillow; not wandb or albumentations. Steps run in order of importance, each under
# its own time limit and within the whole budget (BUDGET seconds, default 540). A step may
# spend the budget only down to what the steps after it need at least, so a step that
# hangs or fails costs its own table only. A step's output and exit code go to its file as
# it runs; the script ends by listing every step's exit code, and exits 1 if any failed.
#
# DEVICE=cpu QUICK=1 runs the same steps at tiny sizes on a CPU: a dry run of this script
# (`make test-device-stack` runs it under the GPU machines' Python stack).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
PYTHON=${PYTHON:-python3}
# TIME_PERCENT scales every time limit and the budget: 300 for a dry run on a shared CPU.
TIME_PERCENT=${TIME_PERCENT:-100}
BUDGET=${BUDGET:-$((540 * TIME_PERCENT / 100))}
CARRY=${CARRY:-.carry}
DEVICE=${DEVICE:-cuda}
# QUICK=1: tiny sizes, for a dry run (each step's extra flags; empty for the real session).
if [[ -n ${QUICK:-} ]]; then
  TINY_STEP=(--image_size 32 --num_classes 10 --steps 1 --warmup 1)
  THROUGHPUT=("${TINY_STEP[@]}" --batch_size 2 --no_compile)
  GPU_DATA=("${TINY_STEP[@]}" --shape 60 80 --images 4 --unique 4 --batch_size 2 --repeats 1)
  MEMORY=(--model_version A --image_size 32)
  CIFAR=(--model_version A --fc_width 16 --epochs 1 --batch_size 16 --train_subset 256
         --val_subset 256)
  NCCL_RUN=(--width 0.25 --fc_width 16 --batch_size 32 --train_subset 256 --val_subset 64
            --workers 2)
  NCCL_EVAL=(--limit 64)
else
  # 5 variants x 3 rounds x 25 steps of D at 224 (the monitor sampled every 25 steps, twice
  # the trainer's default rate: its overhead's upper bound) fit the step's 200 s with
  # torch.compile's minute; the default 5 rounds x 50 steps would not.
  THROUGHPUT=(--repeats 3 --monitor_interval 25) GPU_DATA=(--images 5120 --unique 256)
  MEMORY=() CIFAR=(--epochs 30)
  NCCL_RUN=(--train_subset 4096 --val_subset 1000 --workers 4) NCCL_EVAL=(--limit 1000)
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled NO_ALBUMENTATIONS_UPDATE=1

# The seconds each step below needs at least, in the order they run (its NEED).
RESERVED=0
for need in 90 45 45 60 20 45 20; do RESERVED=$((RESERVED + need * TIME_PERCENT / 100)); done
RESULTS=()

# step NAME LIMIT NEED COMMAND...: COMMAND's output to $OUT/NAME.txt, stopped after LIMIT
# seconds or when only what the later steps need is left, whichever is first.
step() {
  local name=$1 limit=$(($2 * TIME_PERCENT / 100)) need=$(($3 * TIME_PERCENT / 100))
  shift 3
  RESERVED=$((RESERVED - need))
  local left=$((BUDGET - SECONDS - RESERVED))
  ((left < limit)) && limit=$left
  if ((limit < 1 || limit * 100 < 10 * TIME_PERCENT)); then
    echo "skipped: the session's budget of ${BUDGET}s is spent" | tee -a "$OUT/$name.txt"
    RESULTS+=("$name: skipped")
    return
  fi
  echo "== $name (at ${SECONDS}s, limit ${limit}s): $*"
  echo "\$ $*" >>"$OUT/$name.txt"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$name.txt"
  local code=${PIPESTATUS[0]}
  echo "exit code $code after ${SECONDS}s of the session" | tee -a "$OUT/$name.txt"
  RESULTS+=("$name: exit code $code$( ((code == 124)) && echo " (stopped at ${limit}s)")")
}

# skip NAME NEED WHY: a step that cannot run; its time goes to the steps after it.
skip() {
  RESERVED=$((RESERVED - $2 * TIME_PERCENT / 100))
  echo "skipped: $3" | tee -a "$OUT/$1.txt"
  RESULTS+=("$1: skipped ($3)")
}

{
  date -u
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  fi
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

step throughput 200 90 "$PYTHON" -m benchmarks.train_throughput --device "$DEVICE" --profile \
  "${THROUGHPUT[@]}"
step gpu_data 100 45 "$PYTHON" -m benchmarks.gpu_data --device "$DEVICE" "${GPU_DATA[@]}"
step memory 120 45 "$PYTHON" -m benchmarks.train_memory --device "$DEVICE" "${MEMORY[@]}"
if [[ -n $PICKLES ]]; then
  step cifar 110 60 "$PYTHON" -m benchmarks.cifar_speed --device "$DEVICE" \
    --zip "$CARRY/cifar10-train-jpeg.zip" "${CIFAR[@]}"
  wait "$PICKLES"
  cat "$OUT/pickles.log" >>"$OUT/environment.txt"
else
  skip cifar 60 "no CIFAR-10 zip in $CARRY"
fi
step distributed 60 20 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 \
  -m benchmarks.distributed_smoke --device "$DEVICE"
if [[ -n $PICKLES ]]; then
  RUNS=$(mktemp -d)
  step nccl_train 90 45 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 \
    train.py --config configs/cifar10.yaml --data_root "$CARRY/data" --device "$DEVICE" \
    --model_version A --epochs 1 "${NCCL_RUN[@]}" \
    --wandb disabled --out_dir "$RUNS" --run_name nccl
  step nccl_evaluate 60 20 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 \
    evaluate.py --checkpoint "$RUNS/nccl/best.pt" --data_root "$CARRY/data" --split val \
    "${NCCL_EVAL[@]}" --device "$DEVICE"
else
  skip nccl_train 45 "no CIFAR-10 zip in $CARRY"
  skip nccl_evaluate 20 "no CIFAR-10 zip in $CARRY"
fi
rm -f "$OUT/pickles.log"
# The summary goes to environment.txt too: the device tool brings back at most 8 files.
{
  echo "== done in ${SECONDS}s of a ${BUDGET}s budget:"
  printf '%s\n' "${RESULTS[@]}"
} | tee -a "$OUT/environment.txt"
# A failed, stopped or starved step fails the run; one without its input (no zip) does not.
! printf '%s\n' "${RESULTS[@]}" | grep -E -q ': (exit code [1-9].*|skipped)$'
