#!/usr/bin/env bash
# The GPU measurement, in one call (about 7 minutes at most on one H100):
#   1. naive vs project loop (eager and compiled) at batch 256 + eager batch-size sweep
#   2. Trainer.fit, 40 epochs x 25,236 synthetic images, compiled: the 60 s target, end to end
#   3. Trainer.fit, 2 epochs, eager: the loop without torch.compile
# Each step has its own time limit, so a slow step cannot take the others' results with it.
# JSON and logs go to $OUT (default benchmarks/out, git-ignored).
#
# Dry run on a CPU (must pass before the GPU is used):
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_run.sh
set -u
OUT=${OUT:-benchmarks/out}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
SIZES=${SIZES:-64,128,256,512,1024}
FIT_EPOCHS=${FIT_EPOCHS:-40}
FIT_IMAGES=${FIT_IMAGES:-25236}
EXTRA=()
if [[ -n "${QUICK:-}" ]]; then  # CPU dry run: tiny sizes, same code paths
    EXTRA=(--quick)
    SIZES=16,32
    FIT_EPOCHS=2
    FIT_IMAGES=48
fi
export PYTHONPATH=src
mkdir -p "$OUT"
stamp() { echo "=== $(date -u +%H:%M:%S) $*"; }

stamp "device"
nvidia-smi -L 2>&1 | tee "$OUT/nvidia-smi.txt" || true
"$PY" -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, \
'cuda', torch.cuda.is_available())" 2>&1 | tee "$OUT/versions.txt"

stamp "1. benchmark: naive vs project (eager, compiled) + batch-size sweep"
timeout "${T_BENCH:-200}" "$PY" -m oct_vae.bench --device "$DEVICE" --compile both \
    --batch-sizes "$SIZES" --out "$OUT/bench_train.json" "${EXTRA[@]}" 2>&1 \
    | tee "$OUT/bench_train.log"
echo "exit ${PIPESTATUS[0]}"

stamp "2. Trainer.fit, $FIT_EPOCHS epochs x $FIT_IMAGES images, compiled"
timeout "${T_FIT:-140}" "$PY" -m oct_vae.bench --device "$DEVICE" --compile on \
    --fit-epochs "$FIT_EPOCHS" --fit-images "$FIT_IMAGES" --out "$OUT/fit_compiled.json" \
    "${EXTRA[@]}" 2>&1 | tee "$OUT/fit_compiled.log"
echo "exit ${PIPESTATUS[0]}"

stamp "3. Trainer.fit, 2 epochs x $FIT_IMAGES images, eager"
timeout "${T_EAGER:-60}" "$PY" -m oct_vae.bench --device "$DEVICE" --compile off \
    --fit-epochs 2 --fit-images "$FIT_IMAGES" --out "$OUT/fit_eager.json" \
    "${EXTRA[@]}" 2>&1 | tee "$OUT/fit_eager.log"
echo "exit ${PIPESTATUS[0]}"
stamp "done"
