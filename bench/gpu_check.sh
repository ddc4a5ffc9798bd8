#!/usr/bin/env bash
# GPU checks on one CUDA machine (written for the lent H200; about 10 minutes with the defaults):
#
#   1. the GPU tests: `pytest -m gpu tests` (bf16 autocast training and bit-exact resume on CUDA, SDPA
#      flash/efficient kernels vs the math path for Tucker/MQA in fp32/bf16, KV-cache decoding on CUDA);
#   2. a short `gpu`-preset sweep of both tasks, offline data (stdlib byte corpus, scikit-learn digits),
#      and the kernel benchmark (bench/bench_attention.py, GPT-2-small-sized layers, bf16, N = 512..4096);
#   3. the results, with provenance (device, torch, CUDA, commit, command, date), into book/results/:
#        gpu_check_provenance.json  gpu_pytest.log  gpu_sweep_lm.jsonl  gpu_sweep_vit.jsonl  gpu_sweep_tables.md
#      and, when $OUT is set (the device tool's output folder), a copy of them there.
#
# Usage (from anywhere):  bench/gpu_check.sh
# Environment knobs:      PYTHON (python3)  GPU_SWEEP_STEPS (400)  GPU_SWEEP_SEEDS (1)  RESULTS_DIR (book/results)
#                         GPU_TEST_PATHS (tests)  GPU_SWEEP_TASKS ("lm vit")
# The package is used from this checkout (PYTHONPATH), so nothing needs installing where torch, tqdm, numpy and
# scikit-learn are present; modules the GPU machine lacks (e.g. tensorly) can be carried as wheels.
# Exit status: non-zero if the GPU tests or a sweep failed (the other steps still run and save their results).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
STEPS="${GPU_SWEEP_STEPS:-400}"
SEEDS="${GPU_SWEEP_SEEDS:-1}"
RESULTS="${RESULTS_DIR:-$ROOT/book/results}"
TEST_PATHS="${GPU_TEST_PATHS:-tests}"
TASKS="${GPU_SWEEP_TASKS:-lm vit}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
status=0
stamp() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }

stamp "0. device and provenance"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch.cuda.is_available() is False for $PYTHON; this script needs a CUDA GPU" >&2
  exit 1
fi
COMMAND="$0 $*" "$PYTHON" - "$RESULTS/gpu_check_provenance.json" <<'PY'
import json, os, platform, subprocess, sys, time
import torch
from tucker_attention.train.sweep import git_commit

commit, dirty = git_commit(".")
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                     capture_output=True, text=True)
info = {
    "device_name": torch.cuda.get_device_name(0), "device_count": torch.cuda.device_count(),
    "capability": list(torch.cuda.get_device_capability(0)), "bf16_supported": torch.cuda.is_bf16_supported(),
    "nvidia_smi": smi.stdout.strip() if smi.returncode == 0 else None,
    "torch_version": torch.__version__, "cuda_version": torch.version.cuda, "python_version": platform.python_version(),
    "git_commit": commit, "git_dirty": dirty, "command": os.environ.get("COMMAND"),
    "steps": int(os.environ.get("GPU_SWEEP_STEPS", "400")), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
}
with open(sys.argv[1], "w") as f:
    json.dump(info, f, indent=2)
print(json.dumps(info, indent=2))
PY
for module in tensorly sklearn tqdm; do
  "$PYTHON" -c "import $module" 2>/dev/null || echo "gpu_check: note: python module '$module' is missing here" >&2
done

stamp "1. GPU tests: pytest -m gpu $TEST_PATHS"
# shellcheck disable=SC2086  # TEST_PATHS may name several paths
if ! "$PYTHON" -m pytest -m gpu $TEST_PATHS -q -rs -p no:cacheprovider --continue-on-collection-errors \
    2>&1 | tee "$RESULTS/gpu_pytest.log"; then
  echo "gpu_check: GPU tests FAILED (see $RESULTS/gpu_pytest.log)" >&2
  status=1
fi

stamp "2. gpu-preset sweeps: $STEPS steps, $SEEDS seed(s), offline data"
for task in $TASKS; do
  case "$task" in
    lm) data=stdlib ;;
    vit) data=digits ;;
    *) echo "gpu_check: unknown task '$task' in GPU_SWEEP_TASKS" >&2; exit 2 ;;
  esac
  if "$PYTHON" -m tucker_attention sweep "$task" --preset gpu --data "$data" --steps "$STEPS" --seeds "$SEEDS" \
      --out "$WORK/sweep_$task" --no-progress; then
    cp "$WORK/sweep_$task/records.jsonl" "$RESULTS/gpu_sweep_$task.jsonl"
  else
    echo "gpu_check: the $task sweep FAILED" >&2
    status=1
  fi
done

stamp "2b. kernel benchmarks: GPT-2-small-sized layers, bf16, side by side (bench/bench_attention.py)"
for n in ${GPU_BENCH_SEQ_LENS:-512 1024 2048 4096}; do
  if ! "$PYTHON" bench/bench_attention.py --preset gpt2 --device cuda --dtype bfloat16 --seq-len "$n" \
      --min-run-time 0.3 --out "$RESULTS/gpu_kernels_gpt2_bf16_N$n.json"; then
    echo "gpu_check: the kernel benchmark at N=$n FAILED" >&2
    status=1
  fi
done

stamp "3. tables"
tables=()
for task in $TASKS; do
  if [[ -f "$RESULTS/gpu_sweep_$task.jsonl" ]]; then
    tables+=("$RESULTS/gpu_sweep_$task.jsonl")
  fi
done
if (( ${#tables[@]} )); then
  "$PYTHON" -m tucker_attention summarize "${tables[@]}" | tee "$RESULTS/gpu_sweep_tables.md"
fi

if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then
  for f in "$RESULTS"/gpu_*; do
    if [[ -f "$f" ]]; then
      cp "$f" "$OUT/"
    fi
  done
  stamp "copied the results to \$OUT=$OUT"
fi
stamp "done (status $status); results in $RESULTS"
exit "$status"
