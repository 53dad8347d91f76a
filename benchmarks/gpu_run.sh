#!/usr/bin/env bash
# The GPU measurement, in one call (steps in the order of STEPS, default 0 1 2 5 3 4) (each step has its own time
# limit, so a slow step cannot take the others' results with it; pass T_*=... to change them):
#   0. tests/test_cuda_graph.py on the GPU (the graphed step trains like the ungraphed one)
#   1. bench, batch 256: naive vs project loop, eager / compiled / eager with the
#      whole-step CUDA graph (train.cuda_graph), + a batch-size sweep of the graphed loop
#   2. bench, batch 64 (the kermany configuration's batch): the same rows
#   3. profile: top kernels, convolutions by input shape, TFLOP/s and MFU (compiled, no
#      graph: a replayed graph hides its kernels), at batch 256 and 64
#   4. the kermany environment end to end through `kedro run` on a phantom of the paper's
#      size (25,236-ish training normals), paper configuration (width 64, 40 epochs, batch
#      64): the training stage's time from its log. Needs kedro and kedro-mlflow: wheels in
#      .whl/ are installed to /tmp/site first (see benchmarks/RESULTS.md for how to fetch
#      them). Without kedro: a Trainer.fit of the same size instead.
#   5. quality: the same training with and without the CUDA graph (final validation loss)
# JSON and logs go to $OUT (default benchmarks/out, git-ignored), and all of them, packed, to
# $OUT/gpu_run.tar.gz when the script ends (the device tool returns at most 8 files).
#
# Dry run on a CPU (must pass before the GPU is used; the CUDA-graph rows then run without
# a graph, since there is none on a CPU):
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_run.sh
set -u
OUT=${OUT:-benchmarks/out}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
SIZES=${SIZES:-128,512,1024}
FULL_NORMAL_PATIENTS=${FULL_NORMAL_PATIENTS:-5300}   # x 5 scans on average: ~26,500 normals
FULL_DISEASE_PATIENTS=${FULL_DISEASE_PATIENTS:-150}
KEDRO_PARAMS=${KEDRO_PARAMS:-}
QUALITY_IMAGES=${QUALITY_IMAGES:-8192}
GRAPH=both
EXTRA=()
if [[ -n "${QUICK:-}" ]]; then  # CPU dry run: tiny sizes, same code paths
    EXTRA=(--quick)
    SIZES=16
    QUALITY_IMAGES=64
    FULL_NORMAL_PATIENTS=12
    FULL_DISEASE_PATIENTS=4
    KEDRO_PARAMS=",train.width=4,train.epochs=1,train.batch_size=8,evaluate.n_bootstrap=20"
    KEDRO_PARAMS+=",ingest.test_normals=6,ingest.test_per_disease=3,evaluate.n_samples=2"
    [[ "$DEVICE" == cpu ]] && GRAPH=off
fi
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "$OUT"
# Which steps to run (in this order), and a deadline for all of them: no step may run past
# it, so that what finished comes back whole within the device tool's 600 s per command.
STEPS=${STEPS:-0 1 2 5 3 4}
DEADLINE=$(( $(date +%s) + ${TOTAL_S:-580} ))
stamp() { echo "=== $(date -u +%H:%M:%S) $*"; }
pack() { tar -czf /tmp/gpu_run.tar.gz -C "$OUT" --exclude gpu_run.tar.gz . 2>/dev/null \
    && mv /tmp/gpu_run.tar.gz "$OUT/"; }
trap pack EXIT
left() {  # left <limit s>: the limit, or the seconds to the deadline if fewer
    local rest=$(( DEADLINE - $(date +%s) ))
    (( rest < 1 )) && rest=1
    echo $(( $1 < rest ? $1 : rest ))
}
want() { [[ " $STEPS " == *" $1 "* ]]; }
bench() {  # bench <limit s> <name> <args...>: bench_train.py with its log and JSON in $OUT
    local limit=$1 name=$2; shift 2
    timeout "$(left "$limit")" "$PY" benchmarks/bench_train.py --device "$DEVICE" --out "$OUT/$name.json" \
        "$@" "${EXTRA[@]}" 2>&1 | grep -v "oct_vae.training.trainer: epoch" | tee "$OUT/$name.log"
    echo "exit ${PIPESTATUS[0]}"
}

stamp "device"
nvidia-smi -L 2>&1 | tee "$OUT/nvidia-smi.txt" || true
"$PY" -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, \
'cuda', torch.cuda.is_available())" 2>&1 | tee "$OUT/versions.txt"

if want 0; then
stamp "0. the CUDA-graph tests on this device"
timeout "$(left "${T_TESTS:-90}")" "$PY" -m pytest -q -p no:cacheprovider -rA \
    tests/test_cuda_graph.py > "$OUT/tests.log" 2>&1
echo "exit $?"; grep -E "passed|failed|PASSED|FAILED|Error" "$OUT/tests.log" | tail -n 20
fi

if want 1; then
stamp "1. batch 256: naive, eager / compiled x graph off / on; sweep $SIZES"
bench "${T_BENCH:-150}" bench_b256 --compile both --cuda-graph "$GRAPH" --batch-sizes "$SIZES"
fi

if want 2; then
stamp "2. batch 64: the same rows"
bench "${T_BENCH64:-90}" bench_b64 --compile both --cuda-graph "$GRAPH" --batch-size 64 \
    --steps 80
fi

if want 5; then
stamp "5. quality: batch 64, eager, graph off vs on (synthetic scans, 10 epochs)"
bench "${T_QUALITY:-50}" quality_graph --quality --batch-sizes 64 --quality-amp bf16 \
    --quality-graph "$([[ $GRAPH == off ]] && echo off || echo off,on)" \
    --quality-images "$QUALITY_IMAGES"
fi

if want 3; then
stamp "3. profiles (compiled, no graph)"
for b in 256 64; do
    mkdir -p "$OUT/profile_b$b"
    timeout "$(left "${T_PROFILE:-45}")" "$PY" benchmarks/bench_train.py --device "$DEVICE" --profile \
        --compile on --batch-size "$b" --profile-top 25 --out "$OUT/profile_b$b/p.json" \
        "${EXTRA[@]}" > "$OUT/profile_b$b.log" 2>&1
    echo "exit $?"; tail -n 45 "$OUT/profile_b$b.log"
done
fi

want 4 || { stamp "done"; exit 0; }
stamp "4. kermany environment end to end on a paper-sized phantom"
if [[ -d .whl ]] && ! "$PY" -c "import kedro" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src
fi
if "$PY" -c "import kedro, kedro_mlflow" 2>/dev/null; then
    TREE=${TREE:-/tmp/oct-vae-paper-phantom}
    t0=$(date +%s)
    timeout "$(left "${T_TREE:-60}")" "$PY" -c "
import sys
from oct_vae.data.phantom import PhantomConfig, generate_phantom
s = generate_phantom(sys.argv[1], PhantomConfig(n_normal_patients=int(sys.argv[2]),
    n_patients_per_disease=int(sys.argv[3]), seed=2024), workers=0 or __import__('os').cpu_count())
print({k: s[k] for k in ('n_files', 'seconds', 'reused')}, s.get('counts'))
" "$TREE" "$FULL_NORMAL_PATIENTS" "$FULL_DISEASE_PATIENTS" 2>&1 | tee "$OUT/phantom_tree.log"
    echo "tree: $(( $(date +%s) - t0 )) s"
    t0=$(date +%s)
    timeout "$(left "${T_KEDRO:-280}")" "$PY" -m kedro run --env kermany \
        --params "raw_dir=$TREE$KEDRO_PARAMS" > "$OUT/kedro_kermany.log" 2>&1
    echo "exit $?; kedro run: $(( $(date +%s) - t0 )) s"
    grep -E "trained|Completed|Running node|ERROR|Error|fast path|CUDA graph|Reconstruction" \
        "$OUT/kedro_kermany.log" | cut -c1-220 | tail -n 60
    grep -E "oct_vae.training.trainer: epoch" "$OUT/kedro_kermany.log" | cut -c1-200 | tail -n 3
else
    stamp "4b. no kedro here: Trainer.fit, 40 epochs x 25,236 images, batch 64, compiled + graph"
    bench "${T_FIT:-120}" fit_b64 --batch-size 64 \
        --fit-epochs 40 --checkpoint-every 5
fi
stamp "done"
