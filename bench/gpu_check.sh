#!/usr/bin/env bash
# GPU checks on one CUDA machine, sized for the lent H200's budget (15 minutes a session, its start included):
# at most GPU_CHECK_BUDGET seconds (420 = 7 minutes) by default, every step capped so that the rest still runs.
#
#   0. provenance (device, driver, torch, CUDA, commit, command, date) and modules the machine lacks (tensorly,
#      nbval, datasets are installed from carried wheels when GPU_WHEELS holds them);
#   1. the GPU tests: `pytest -m gpu tests -o addopts=` (bf16 autocast training, bit-exact resume on CUDA, SDPA
#      kernels vs the math path, KV-cache decoding on CUDA);                                       cap 120 s
#   2. the benchmark suite (bench/bench_attention.py: layer fwd and fwd+bwd vs GQA and MHA, Tucker's core vs a
#      bare SDPA MQA call, fused kernel vs SDPA, decode tokens/s at 512..8k context and batch 1, 8, peak
#      memory), bf16, interleaved;                                                                 cap 110 s
#   3. short `gpu`-preset sweeps of both tasks on offline data (stdlib bytes, scikit-learn digits), then their
#      tables;                                                                               cap 80 s each
#
# Everything is written as it goes into RESULTS (default: $OUT when the device tool sets it, else
# book/results/gpu): gpu_check.log (this script's whole output), gpu_check_provenance.json, gpu_pytest.log,
# bench/cuda_bfloat16.json (rewritten after every benchmark section; it belongs in book/results/bench/),
# gpu_sweep_<task>.jsonl (one record per finished run), gpu_sweep_tables.md — so a step that runs out of time
# still leaves what it finished.
#
# Usage (from anywhere):  bench/gpu_check.sh [--cpu-dry-run]
#   --cpu-dry-run   run every step on the CPU at tiny sizes (the GPU tests are then all skipped): checks the
#                   script, its caps and its outputs on a machine without CUDA.
# Environment knobs:  PYTHON (python3)  GPU_CHECK_BUDGET (420)  GPU_SWEEP_STEPS (200)  GPU_SWEEP_SEEDS (1)
#                     GPU_SWEEP_TASKS ("lm vit")  GPU_TEST_PATHS (tests)  GPU_WHEELS (shared/wheels)  RESULTS_DIR
# The package is used from this checkout (PYTHONPATH); nothing needs installing where torch, tqdm, numpy and
# scikit-learn are present.
# Exit status: non-zero if the GPU tests, the benchmark or a sweep failed or ran out of time (the other steps
# still run and save their results).
set -euo pipefail

DRY=0
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) DRY=1 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$arg' (use --cpu-dry-run or --help)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-420}"
STEPS="${GPU_SWEEP_STEPS:-200}"
SEEDS="${GPU_SWEEP_SEEDS:-1}"
TEST_PATHS="${GPU_TEST_PATHS:-tests}"
TASKS="${GPU_SWEEP_TASKS:-lm vit}"
WHEELS="${GPU_WHEELS:-$ROOT/shared/wheels}"
if [[ -n "${RESULTS_DIR:-}" ]]; then
  RESULTS="$RESULTS_DIR"
elif [[ -n "${OUT:-}" ]]; then
  RESULTS="$OUT"
else
  RESULTS="$ROOT/book/results/gpu"
fi
mkdir -p "$RESULTS"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"      # checkpoints stay here, not in RESULTS
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$RESULTS/gpu_check.log") 2>&1
status=0
START=$SECONDS
stamp() { echo "[gpu_check $(date +%H:%M:%S) +$((SECONDS - START))s] $*"; }

# run_capped NAME CAP CMD...: run CMD for at most min(CAP, what is left of the budget - 5) seconds
run_capped() {
  local name="$1" cap="$2"; shift 2
  local left=$((BUDGET - (SECONDS - START) - 5))
  if (( left < 15 )); then
    stamp "SKIPPED $name: only ${left}s of the ${BUDGET}s budget left"
    status=1
    return 0
  fi
  (( cap > left )) && cap=$left
  stamp "$name (at most ${cap}s)"
  local rc=0
  timeout --kill-after=10 "$cap" "$@" || rc=$?
  if (( rc == 124 || rc == 137 )); then
    stamp "TIMEOUT $name after ${cap}s (what it finished is saved)"
    status=1
  elif (( rc != 0 )); then
    stamp "FAILED $name (exit $rc)"
    status=1
  fi
  return 0
}

stamp "0. device and provenance (budget ${BUDGET}s, results in $RESULTS, dry run: $DRY)"
if (( ! DRY )) && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch.cuda.is_available() is False for $PYTHON; this script needs a CUDA GPU " \
       "(bench/gpu_check.sh --cpu-dry-run checks it without one)" >&2
  exit 1
fi
for module in tensorly nbval datasets sklearn tqdm; do
  if ! "$PYTHON" -c "import $module" 2>/dev/null; then
    if [[ -d "$WHEELS" ]] && "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" "$module" 2>/dev/null; then
      echo "gpu_check: installed '$module' from the carried wheels in $WHEELS"
    else
      echo "gpu_check: note: python module '$module' is missing here (no wheel for it in $WHEELS)"
    fi
  fi
done
COMMAND="$0 $*" DRY="$DRY" "$PYTHON" - "$RESULTS/gpu_check_provenance.json" <<'PY'
import json, os, platform, subprocess, sys, time
import torch
from tucker_attention.train.sweep import git_commit

commit, dirty = git_commit(".")
cuda = torch.cuda.is_available()
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                     capture_output=True, text=True) if cuda else None
info = {
    "device_name": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
    "device_count": torch.cuda.device_count(),
    "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
    "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None,
    "nvidia_smi": smi.stdout.strip() if smi is not None and smi.returncode == 0 else None,
    "torch_version": torch.__version__, "cuda_version": torch.version.cuda, "python_version": platform.python_version(),
    "git_commit": commit, "git_dirty": dirty, "command": os.environ.get("COMMAND"),
    "dry_run": os.environ.get("DRY") == "1", "budget_s": int(os.environ.get("GPU_CHECK_BUDGET", "420")),
    "steps": int(os.environ.get("GPU_SWEEP_STEPS", "200")), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
}
with open(sys.argv[1], "w") as f:
    json.dump(info, f, indent=2)
print(json.dumps(info, indent=2))
PY

# shellcheck disable=SC2086  # TEST_PATHS may name several paths
run_capped "1. GPU tests: pytest -m gpu $TEST_PATHS" 120 \
  bash -c 'set -o pipefail; "$0" -m pytest -m gpu "${@:2}" -o addopts= -q -rs -p no:cacheprovider \
           --continue-on-collection-errors 2>&1 | tee "$1/gpu_pytest.log"' "$PYTHON" "$RESULTS" $TEST_PATHS

if (( DRY )); then
  run_capped "2. benchmark suite (CPU, quick)" 110 \
    "$PYTHON" bench/bench_attention.py --device cpu --quick --threads 1 --out "$RESULTS/bench/cpu_dry_run.json"
else
  run_capped "2. benchmark suite (cuda, bf16, interleaved)" 110 \
    "$PYTHON" bench/bench_attention.py --device cuda --dtype bfloat16 --rounds 3 --min-run-time 0.1 \
    --out "$RESULTS/bench/cuda_bfloat16.json"
fi

for task in $TASKS; do
  case "$task" in
    lm) data=stdlib ;;
    vit) data=digits ;;
    *) echo "gpu_check: unknown task '$task' in GPU_SWEEP_TASKS" >&2; exit 2 ;;
  esac
  # records.jsonl gets one line per finished run (copied to RESULTS even after a timeout); checkpoints stay in WORK
  if (( DRY )); then
    run_capped "3. sweep $task (ci preset, 2 steps, CPU)" 80 \
      "$PYTHON" -m tucker_attention sweep "$task" --preset ci --data "$data" --steps 2 --seeds 1 --methods mha \
      --device cpu --out "$WORK/sweep_$task" --no-progress
  else
    run_capped "3. sweep $task (gpu preset, $STEPS steps, $SEEDS seed(s), offline data)" 80 \
      "$PYTHON" -m tucker_attention sweep "$task" --preset gpu --data "$data" --steps "$STEPS" --seeds "$SEEDS" \
      --out "$WORK/sweep_$task" --no-progress
  fi
  if [[ -f "$WORK/sweep_$task/records.jsonl" ]]; then
    cp "$WORK/sweep_$task/records.jsonl" "$RESULTS/gpu_sweep_$task.jsonl"
  fi
done

stamp "4. tables"
tables=()
for task in $TASKS; do
  if [[ -f "$RESULTS/gpu_sweep_$task.jsonl" ]]; then
    tables+=("$RESULTS/gpu_sweep_$task.jsonl")
  fi
done
if (( ${#tables[@]} )); then
  "$PYTHON" -m tucker_attention summarize "${tables[@]}" | tee "$RESULTS/gpu_sweep_tables.md" || status=1
fi
stamp "done in $((SECONDS - START))s of ${BUDGET}s (status $status); results in $RESULTS"
exit "$status"
