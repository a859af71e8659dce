#!/usr/bin/env bash
# tools/gpu_check.sh [OUT_DIR]: every check of this project that needs a GPU, in one unattended go.
#
# On a CUDA machine, in order, each step's output in OUT_DIR/<step>.log and its numbers in
# OUT_DIR/summary.txt. How long it takes is our estimate, never measured (the script has not run on a
# GPU yet): a few minutes on one H100-class GPU.
#   1. the GPU-marked tests                     python -m pytest -m gpu
#   2. the depth network, R50 640x192, fp32 and bf16 (batch 16), NHWC and NCHW
#                                               python -m helpers.benchmark --amp [--no-channels_last]
#   3. a synthetic world at KITTI's size (1242x375), rendered once (python -m helpers.synthetic_world)
#   4. 20 profiled training steps of kitti-r50-640x192 on it: fp32, bf16 (--amp), and fp32 in NCHW
#      (--no-channels_last; NHWC, --channels_last, is 06_train.py's default)
#   5. 20 training steps under torchrun --nproc_per_node=1 (the NCCL process group)
#   6. one step of kitti-r50-640x192-ms started from step 5's weights (--init_from + --pose_init)
# Any failing step (a CUDA error included) stops the script with exit 1 and the end of its log.
# On a machine without CUDA it says so and exits 0: CI runs that path (tests/test_faults.py), and
# tests/test_commands.py runs every step dry (PYTHON set to a recorder) and checks that each command
# answers --help and knows its flags. Steps run from the repository root, modules as python -m NAME.
# Environment: PYTHON (default python), GPU_CHECK_STEP_LIMIT (seconds per step, default 600).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-runs/gpu_check}
LIMIT=${GPU_CHECK_STEP_LIMIT:-600}

if ! "$PY" -c "import torch" 2> /dev/null; then
    echo "gpu_check: $PY cannot import torch: install the requirements first (README, \"Two commands\")" >&2
    exit 1
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device on this machine: nothing to check (exit 0)"
    exit 0
fi
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

run_step() {   # run_step NAME COMMAND...: the command's output in OUT/NAME.log; stop loudly on failure
    local name=$1; shift
    echo "== $name: $*"
    local start=$SECONDS
    if ! timeout "$LIMIT" "$@" > "$OUT/$name.log" 2>&1; then
        note "FAILED: $name ($*), see $OUT/$name.log"
        tail -n 30 "$OUT/$name.log"
        exit 1
    fi
    if grep -qiE "CUDA error|cudaError|illegal memory access|NCCL error" "$OUT/$name.log"; then
        note "FAILED: $name logged a CUDA/NCCL error, see $OUT/$name.log"
        exit 1
    fi
    note "ok: $name ($((SECONDS - start)) s)"
}

note "gpu_check $(date -u +%Y-%m-%dT%H:%MZ) at commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
note "$("$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} device(s), torch {torch.__version__}, CUDA {torch.version.cuda}')")"

run_step gpu_tests "$PY" -m pytest -q -m gpu
note "$(tail -n 1 "$OUT/gpu_tests.log")"

BENCH=("$PY" -m helpers.benchmark --preset kitti-r50-640x192 --amp --batch_size 16 --iters 10)
run_step bench_r50 "${BENCH[@]}"
note "$(grep -E '^(preset|kitti)' "$OUT/bench_r50.log")"
run_step bench_r50_nchw "${BENCH[@]}" --no-channels_last
note "NCHW: $(grep -E '^kitti' "$OUT/bench_r50_nchw.log")"

WORLD="$OUT/world_1242x375"
run_step world "$PY" -m helpers.synthetic_world --make "$WORLD" --height 375 --width 1242 --num_drives 10 \
    --frames_per_drive 24 --workers 8
TRAIN=("$PY" 06_train.py --preset kitti-r50-640x192 --data synthetic --data_path "$WORLD" --pretrained none
       --num_workers 8)
run_step profile_fp32 "${TRAIN[@]}" --profile 20
note "fp32: $(grep 'throughput' "$OUT/profile_fp32.log")"
run_step profile_bf16 "${TRAIN[@]}" --profile 20 --amp
note "bf16: $(grep 'throughput' "$OUT/profile_bf16.log")"
run_step profile_fp32_nchw "${TRAIN[@]}" --profile 20 --no-channels_last
note "fp32, NCHW: $(grep 'throughput' "$OUT/profile_fp32_nchw.log")"

rm -rf "$OUT/torchrun"
run_step torchrun_nccl "$PY" -m torch.distributed.run --nproc_per_node=1 --standalone \
    06_train.py --preset kitti-r50-640x192 --data synthetic --data_path "$WORLD" --pretrained none \
    --num_workers 8 --max_steps 20 --log_every 5 --no_eval --run_dir "$OUT/torchrun"
note "torchrun: $(grep '^step' "$OUT/torchrun_nccl.log" | tail -n 1)"

rm -rf "$OUT/init_from"
run_step init_from "${TRAIN[@]}" --preset kitti-r50-640x192-ms --max_steps 1 --log_every 1 --no_eval \
    --init_from "$OUT/torchrun/ckpt.pt" --pose_init "$OUT/torchrun/ckpt.pt" --run_dir "$OUT/init_from"
note "init_from: $(grep '^init:' "$OUT/init_from.log" | tr '\n' ' ')"
note "all GPU checks passed; logs in $OUT"
