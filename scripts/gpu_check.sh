#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, in under 8 minutes,
#   1. a synthetic Cholec80-layout set at 224 px (synth + prepare, 250 x 250 JPEGs);
#   2. scripts/bench_throughput.py --gpu: ResNet-50 student and teacher, 224 px, batch 128, bf16, plain and
#      distilled MoCo v2+ side by side (loader per worker, step alone, end to end, ratios), with the
#      runs' default deterministic kernels; then, while under 4 minutes, with --device-augment (JPEG
#      decode and views on the GPU) and with --fast (autotuned cuDNN);
#   3. one short epoch of the teacher stage (a random-init torchvision ResNet-50 stands in for the
#      public checkpoint: the machine may have no network) and of distill_mocov2plus, lightly host,
#      through the real CLI (accelerator/precision/workers all `auto`);
#   4. the same two stages with the solo-learn host, when `import solo` works and SOLO_LEARN_DIR
#      points at a solo-learn checkout (its main_pretrain.py); skipped with a line otherwise;
# and prints the figures. Without a CUDA device it stops at once with one line (exit 1).
#
#   bash scripts/gpu_check.sh                       # WORK=/tmp/x to keep the files; PYTHON=... to choose python
#   GPU_CHECK_CPU_SMOKE=1 bash scripts/gpu_check.sh # checks this script's commands on CPU, tiny sizes (no figures)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
SMOKE=${GPU_CHECK_CPU_SMOKE:-0}

if [ "$SMOKE" != 1 ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device is visible to $PY (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU" >&2
    exit 1
fi

WORK=${WORK:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$WORK"
CORES=$("$PY" -c "import os; print(len(os.sched_getaffinity(0)))" 2>/dev/null || echo 4)
JOBS=$(( CORES < 8 ? CORES : 8 ))
CLI=("$PY" -m solo_surgical.cli)
if [ "$SMOKE" = 1 ]; then
    ARCH=tiny; SIZE=32; BATCH=16; STEPS=3; VIDEOS=4; SECONDS_=20; FPS=2; FRAME=384x216
    BENCH=(--arch tiny --image-size 32 --batch 16 --rounds 2 --warmup 1 --loader-batches 2 --memory 64)
    TRAINER=(trainer.accelerator=cpu data.num_workers=0 method.kwargs.queue_size=64 distill.memory_size=64)
else
    ARCH=resnet50; SIZE=224; BATCH=128; STEPS=20; VIDEOS=8; SECONDS_=60; FPS=5; FRAME=854x480
    BENCH=(--gpu)
    TRAINER=()
fi
FAILED=()
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
ms() { echo $(( $(date +%s%N) / 1000000 )); }
# run NAME CMD...: runs, logs to WORK/NAME.log, records a failure instead of stopping the check
run() {
    local name=$1; shift
    local start; start=$(ms)
    if "$@" >"$WORK/$name.log" 2>&1; then
        LAST_MS=$(( $(ms) - start ))
        stamp "$name: ok in $(( LAST_MS / 1000 )).$(( LAST_MS % 1000 / 100 )) s"
    else
        stamp "$name: FAILED (exit $?); last lines of $WORK/$name.log:"; tail -n 5 "$WORK/$name.log" | sed 's/^/    /'
        FAILED+=("$name")
        return 1
    fi
}
# rate LABEL: images/s of the last run from its wall time (start-up included, so a lower bound)
rate() {
    "$PY" -c "s = $LAST_MS / 1000; print(f'    $1: $STEPS steps x $BATCH images in {s:.1f} s wall (start-up included) -> >= {$STEPS * $BATCH / s:.0f} images/s')"
}

stamp "gpu_check in $WORK ($CORES cores)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, torchvision, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, 'lightning', lightning.__version__)"

# 1. frames at 250 x 250 (5 fps from 8 videos of ~60 s: ~1,200 training frames)
run synth "${CLI[@]}" synth --out "$WORK/raw" --videos "$VIDEOS" --seconds "$SECONDS_" --size "$FRAME" --workers "$JOBS"
run prepare "${CLI[@]}" prepare --dataset cholec80 --root "$WORK/raw" --out "$WORK/data" --fps "$FPS" --size 250 --workers "$JOBS"

# 2. the throughput benchmark
run bench_throughput "$PY" scripts/bench_throughput.py "${BENCH[@]}" --data "$WORK/data" --json "$WORK/bench_throughput.json"
grep -E '^\(a\)|^plain|^distill|^setup' "$WORK/bench_throughput.log" | sed 's/^/    /'
# optional figures, skipped past 4 minutes so the check stays under 8: the device-side data path
# (data.device_augment: nvJPEG decode + views on the GPU), and autotuned cuDNN without deterministic kernels
for variant in device_augment fast; do
    if [ "$SMOKE" != 1 ] && [ $(( $(date +%s) - t0 )) -lt 240 ]; then
        run "bench_throughput_$variant" "$PY" scripts/bench_throughput.py --gpu "--${variant//_/-}" --loader-batches 1 \
            --rounds 12 --data "$WORK/data" --json "$WORK/bench_throughput_$variant.json" \
            && grep -E '^plain|^distill' "$WORK/bench_throughput_$variant.log" | sed "s/^/    --${variant//_/-}: /"
    elif [ "$SMOKE" != 1 ]; then
        stamp "bench_throughput --${variant//_/-}: skipped (past 4 minutes)"
    fi
done

# 3. lightly host: teacher stage, then distill_mocov2plus, one short epoch each
PUBLIC_ARCH=$([ "$ARCH" = tiny ] && echo resnet18 || echo "$ARCH")
run public_backbone "$PY" -c "import torch, torchvision; torch.manual_seed(0); torch.save(torchvision.models.$PUBLIC_ARCH().state_dict(), '$WORK/public.pth')"
COMMON=(data.root="$WORK/data" data.image_size="$SIZE" data.batch_size="$BATCH" trainer.max_epochs=1
        trainer.limit_train_batches="$STEPS" trainer.enable_progress_bar=false "${TRAINER[@]}")
run lightly_teacher "${CLI[@]}" teacher method=mocov2plus teacher.source="$WORK/public.pth" run.dir="$WORK/lightly_teacher" \
    "${COMMON[@]}" && rate "lightly teacher stage"
run lightly_distill "${CLI[@]}" pretrain method=distill_mocov2plus distill.teacher="$WORK/lightly_teacher/teacher.pth" \
    backbone.name="$ARCH" run.dir="$WORK/lightly_distill" "${COMMON[@]}" && rate "lightly distill_mocov2plus"
grep -hE "^ *(accelerator|precision|num_workers):" "$WORK/lightly_distill/config.yaml" 2>/dev/null | sed 's/^ */    resolved /'
if [ $(( $(date +%s) - t0 )) -lt 330 ]; then  # the same through Lightning with data.device_augment=true
    run lightly_distill_device_augment "${CLI[@]}" pretrain method=distill_mocov2plus \
        distill.teacher="$WORK/lightly_teacher/teacher.pth" backbone.name="$ARCH" run.dir="$WORK/lightly_distill_da" \
        data.device_augment=true "${COMMON[@]}" && rate "lightly distill_mocov2plus, data.device_augment=true"
else
    stamp "lightly distill_mocov2plus with data.device_augment=true: skipped (past 5.5 minutes)"
fi

# 4. solo-learn host (unmodified main_pretrain.py), when installed
if "$PY" -c "import solo" 2>/dev/null && [ -f "${SOLO_LEARN_DIR:-/nonexistent}/main_pretrain.py" ]; then
    run export "${CLI[@]}" export-solo-learn --data "$WORK/data" --out "$WORK/export"
    SOLO=(--config-name surgical_cholec80 data.train_path="$WORK/export/pretrain/train" optimizer.batch_size="$BATCH"
          max_epochs=1 +limit_train_batches="$STEPS" devices=[0] strategy=auto precision=bf16-mixed
          checkpoint.dir="$WORK/solo_ckpt" data.num_workers=$(( CORES - 1 )))
    [ "$SMOKE" = 1 ] && SOLO=(--config-name surgical_smoke_cpu data.train_path="$WORK/export/pretrain/train"
                              checkpoint.dir="$WORK/solo_ckpt" +limit_train_batches="$STEPS")
    run solo_teacher bash -c 'cd "$0" && exec "$1" main_pretrain.py "${@:2}"' "$SOLO_LEARN_DIR" "$(realpath "$PY")" \
        "${SOLO[@]}" method=teacher_mocov2plus teacher.source="$WORK/public.pth" teacher.out="$WORK/solo_teacher.pth" \
        && rate "solo-learn teacher_mocov2plus"
    run solo_distill bash -c 'cd "$0" && exec "$1" main_pretrain.py "${@:2}"' "$SOLO_LEARN_DIR" "$(realpath "$PY")" \
        "${SOLO[@]}" method=distill_mocov2plus distill.teacher="$WORK/solo_teacher.pth" \
        && rate "solo-learn distill_mocov2plus"
else
    stamp "solo-learn host: skipped (needs 'import solo' to work and SOLO_LEARN_DIR=<solo-learn checkout>)"
fi

stamp "done; logs and bench_throughput.json in $WORK"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "gpu_check: failed steps: ${FAILED[*]}" >&2
    exit 1
fi
