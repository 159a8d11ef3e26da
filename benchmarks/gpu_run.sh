#!/usr/bin/env bash
# One prepared run on a GPU machine: benchmarks/gpu_check.py (the plain-torch DiT, every policy, host syncs,
# CUDA graphs, AOTInductor) and the side by side with diffusers' hooks on a Flux-shaped model, in bf16.
# The two run at once so that their compiles (CPU work) overlap; their timed regions take turns
# (GRAPHCACHE_TIMING_LOCK, benchmarks/timing_lock.py). Logs and JSON go to $OUT (default reports/gpu); each
# part has its own time limit, and what a part measured before it is stopped is already written.
#
#   OUT=reports/gpu LIMIT=540 bash benchmarks/gpu_run.sh       # SECTIONS=213 METHODS="pab fbcache" by default
#   SMOKE=1 PYTHON=.venv/bin/python bash benchmarks/gpu_run.sh     # the same on CPU with tiny models, 6 steps
set -u
OUT=${OUT:-reports/gpu}
LIMIT=${LIMIT:-540}
FLUX=${FLUX:-4,8,4096,12,128}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GRAPHCACHE_TIMING_LOCK=/tmp/graphcache-timing.lock
PY=${PYTHON:-python3}
[ -x "$PY" ] && PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # a relative path works from /tmp below
cd "$(dirname "$0")/.."
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; command -v g++ gcc cc; "$PY" -c \
  'import torch, triton, diffusers; print(torch.__version__, torch.version.cuda, triton.__version__, diffusers.__version__)'
  (cd /tmp && "$PY" -c 'from graphcache.passes.sink_state_writes import branch_writes_supported as b
print("branch writes in place:", b())')  # from /tmp: the checkout's graphcache/ is not the installed package
} > "$OUT/machine.txt" 2>&1
if [ -n "${SMOKE:-}" ]; then
  CHECK=(--device cpu --small --steps 6 --sections 1234) VS=(--device cpu --flux 1,2,64,4,32 --steps 6 --repeats 1)
else
  CHECK=(--steps 50 --sections ${SECTIONS:-213} --size 1152,8,16,4096,2) VS=(--device cuda --dtype bfloat16 --flux "$FLUX" --steps 50 --repeats 3)
fi
timeout "$LIMIT" "$PY" benchmarks/gpu_check.py --out "$OUT" "${CHECK[@]}" > "$OUT/gpu_check.log" 2>&1 &
CHECK_PID=$!
START=$SECONDS
# one process each (a failure of one leaves the other's figures); PAB first: it ran out of time behind FBCache
for method in ${METHODS:-pab fbcache}; do
  timeout $((LIMIT - SECONDS + START)) "$PY" benchmarks/vs_diffusers.py --models flux --methods "$method" "${VS[@]}" \
    > "$OUT/vs_diffusers_$method.log" 2>&1
  echo "vs_diffusers $method exit $?" >> "$OUT/machine.txt"
done
wait $CHECK_PID
echo "gpu_check exit $?" >> "$OUT/machine.txt"
cat "$OUT/machine.txt"
grep -E "^\[|^wrote" "$OUT/gpu_check.log" | cut -c1-400
for method in ${METHODS:-pab fbcache}; do grep -E "^\||^  (diffusers|graphcache)|not compared" "$OUT/vs_diffusers_$method.log"; done
