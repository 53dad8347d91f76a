#!/usr/bin/env bash
# The GPU measurement, in one call (steps 1-4 without 2b: 4 min 10 s on an H200, 2026-11-27;
# the per-step limits below add up to 535 s; pass T_*=... to shorten them):
#   1. naive vs project loop (eager and compiled) at batch 256 + eager batch-size sweep
#   2. Trainer.fit, 40 epochs x 25,236 synthetic images, compiled: the 60 s target, end to end
#   2b. the same with a checkpoint after the last epoch only (checkpoint_every = 40)
#   3. Trainer.fit, 2 epochs, eager: the loop without torch.compile
#   4. width 64: final val loss at batch 64 vs 256, lr 1e-4 and lr scaled with the batch
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
    QUALITY_IMAGES=64
fi
QUALITY_IMAGES=${QUALITY_IMAGES:-8192}
export PYTHONPATH=src
mkdir -p "$OUT"
stamp() { echo "=== $(date -u +%H:%M:%S) $*"; }

stamp "device"
nvidia-smi -L 2>&1 | tee "$OUT/nvidia-smi.txt" || true
"$PY" -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, \
'cuda', torch.cuda.is_available())" 2>&1 | tee "$OUT/versions.txt"

stamp "1. benchmark: naive vs project (eager, compiled) + batch-size sweep"
timeout "${T_BENCH:-180}" "$PY" benchmarks/bench_train.py --device "$DEVICE" --compile both \
    --batch-sizes "$SIZES" --out "$OUT/bench_train.json" "${EXTRA[@]}" 2>&1 \
    | tee "$OUT/bench_train.log"
echo "exit ${PIPESTATUS[0]}"

stamp "2. Trainer.fit, $FIT_EPOCHS epochs x $FIT_IMAGES images, compiled"
timeout "${T_FIT:-130}" "$PY" benchmarks/bench_train.py --device "$DEVICE" --compile on \
    --fit-epochs "$FIT_EPOCHS" --fit-images "$FIT_IMAGES" --out "$OUT/fit_compiled.json" \
    "${EXTRA[@]}" 2>&1 | tee "$OUT/fit_compiled.log"
echo "exit ${PIPESTATUS[0]}"

stamp "2b. the same, checkpoint after the last epoch only"
timeout "${T_FIT2:-100}" "$PY" benchmarks/bench_train.py --device "$DEVICE" --compile on \
    --fit-epochs "$FIT_EPOCHS" --fit-images "$FIT_IMAGES" --checkpoint-every "$FIT_EPOCHS" \
    --out "$OUT/fit_compiled_ckpt_last.json" "${EXTRA[@]}" 2>&1 \
    | grep -v "oct_vae.training: epoch" | tee "$OUT/fit_compiled_ckpt_last.log"
echo "exit ${PIPESTATUS[0]}"

stamp "3. Trainer.fit, 2 epochs x $FIT_IMAGES images, eager"
timeout "${T_EAGER:-45}" "$PY" benchmarks/bench_train.py --device "$DEVICE" --compile off \
    --fit-epochs 2 --fit-images "$FIT_IMAGES" --out "$OUT/fit_eager.json" \
    "${EXTRA[@]}" 2>&1 | tee "$OUT/fit_eager.log"
echo "exit ${PIPESTATUS[0]}"

stamp "4. batch size vs validation loss (synthetic scans, 10 epochs, bf16)"
for scaling in none linear; do
    timeout "${T_QUALITY:-40}" "$PY" benchmarks/bench_train.py --device "$DEVICE" --quality \
        --batch-sizes 64,256 --quality-amp bf16 --quality-images "$QUALITY_IMAGES" \
        --lr-scaling "$scaling" --out "$OUT/quality_lr_$scaling.json" "${EXTRA[@]}" 2>&1 \
        | grep -v "oct_vae.training: epoch" | tee "$OUT/quality_lr_$scaling.log"
    echo "exit ${PIPESTATUS[0]}"
done
stamp "done"
