#!/usr/bin/env bash
# GPU checks for a lent machine in one short run (at most 8 minutes: every part's limit is also cut to what is
# left of a 470-second budget, so one slow part cannot push the run past it):
#   0. what the machine has: GPU, modules, libnvcuvid and NVDEC's decoder caps against the codec table,
#   a. NVDEC vs PyAV frame by frame (benchmarks/nvdec_check.py frames): real clips prepared by the H.264 rule
#      and frame-index-coded videos of several sizes, one pipeline,
#   b. decode-only clips/s at 16-aligned vs even sizes, 4/8/16/32 threads (nvdec_check.py speed),
#   1. the GPU-marked tests (pytest -m gpu): graphed step == eager step (float and uint8 inputs), the step
#      without host syncs, the DALI GPU pipeline against the CPU pipeline on frame-index-coded videos,
#   c. cuvidCreateDecoder calls in 50 training steps from an nsys trace (nvdec_check.py creations),
#   2. a 30-step smoke of `python fastcvrl/train.py` on the built-in GPU default (H.264 synthetic set),
#   3. the loader benchmark on the GPU (benchmarks/loader_bench.py --device gpu),
#   4. the train-step benchmark for R3D-50 at 16 x 224^2 (benchmarks/train_bench.py; rows print as they finish).
# Parts a-c each print one JSON line (nvdec_*.json) that says what ran and, where a part could not, why.
# Real clips for a-c: $FASTCVRL_SHARED_VIDEOS, else .device/videos (an ignored folder the caller fills and
# carries); without them a and b use generated clips and say so.
# The machine's python3 (torch preinstalled) runs the package from the tree via PYTHONPATH=. . DALI and PyAV
# come from the environment, or from /tmp/site where they were installed there: if their wheels were carried
# to /tmp/dali_parts (split parts of a tar) and are not unpacked yet, this script unpacks them there (local
# files only). Everything lands in $OUT when set, else
# in results/device_check/: summary.txt, one .txt per part, one JSON line per benchmark.
#
#   bash benchmarks/device_check.sh            # on the lent machine, from the repository root
#   bash benchmarks/device_check.sh --dry-run  # on a CPU machine: parts a-c in their CPU variant, the rest
#                                              # skipped; shows the script parses and starts
set -uo pipefail
cd "$(dirname "$0")/.."
RES="${OUT:-results/device_check}"
mkdir -p "$RES"
export RES
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
DRY=0; [ "${1:-}" = "--dry-run" ] && DRY=1
VIDEOS="${FASTCVRL_SHARED_VIDEOS:-$PWD/.device/videos}"
WORK=$(mktemp -d /tmp/nvdec_check.XXXXXX)  # clips shared by parts a-c, removed at exit
trap 'rm -rf "$WORK"' EXIT
status=0
t0=$(date +%s)
BUDGET=470
say() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$RES/summary.txt"; }
has() { $PY -c "import $1" >/dev/null 2>&1; }
# a part's time limit: its own, cut to what is left of the budget (at least 5 s, so it can say why it stopped)
lim() { local left=$(( BUDGET - ($(date +%s) - t0) )); [ "$left" -lt "$1" ] && echo $(( left > 5 ? left : 5 )) || echo "$1"; }
nvdec_part() {  # nvdec_part NAME LIMIT ARGS...: one JSON line into nvdec_NAME.json and the summary
  local name=$1 limit; limit=$(lim "$2"); shift 2
  say "nvdec_check $name (limit ${limit}s)"
  rm -f "$RES/nvdec_$name.json"
  timeout "$limit" $PY benchmarks/nvdec_check.py "$name" --videos "$VIDEOS" --work "$WORK" --json "$RES/nvdec_$name.json" \
    $([ $DRY -eq 1 ] && echo --dry-run) "$@" > "$RES/nvdec_$name.txt" 2>&1
  local rc=$?
  [ -s "$RES/nvdec_$name.json" ] || echo "{\"check\": \"nvdec_$name\", \"ran\": false, \"why_not\": \"exit $rc before its JSON line (timeout ${limit}s: 124); see nvdec_$name.txt\"}" > "$RES/nvdec_$name.json"
  cat "$RES/nvdec_$name.json" | tee -a "$RES/summary.txt"
  [ $rc -eq 0 ] || status=1
}

# DALI and PyAV: unpack the carried parts once, then use /tmp/site
if ! PYTHONPATH="/tmp/site:$PYTHONPATH" $PY -c "import nvidia.dali" >/dev/null 2>&1 && ls /tmp/dali_parts/part.* >/dev/null 2>&1; then
  say "unpacking DALI and PyAV from /tmp/dali_parts to /tmp/site"
  (cd /tmp && cat dali_parts/part.* | tar xf - \
    && timeout 120 $PY -m pip install -q --no-index --no-deps --target /tmp/site /tmp/wheels/*.whl) \
    > "$RES/install.txt" 2>&1 || say "unpacking failed (see install.txt)"
fi
[ -d /tmp/site ] && export PYTHONPATH="/tmp/site:$PYTHONPATH"

# 0. what this machine has (the project's pins do not apply here)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$RES/gpu.csv" 2>&1
{ ldconfig -p 2>/dev/null | grep -E "libnvcuvid|libcuda\.so" || echo "ldconfig: no libnvcuvid / libcuda listed"; } > "$RES/libs.txt"
timeout 60 $PY - <<'EOF' 2>&1 | tee "$RES/modules.txt"
import importlib, json, os, platform
print("python", platform.python_version())
for m in ("torch", "numpy", "av", "yaml", "scipy", "pytest", "nvidia.dali", "tensorboard"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:  # absent here: the parts needing it are skipped
        print(m, "MISSING", type(e).__name__)
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
from dali_pipelines import codecs
lib = codecs.find_nvcuvid()
print("libnvcuvid", lib or "NOT FOUND (NVDEC decoding will fail: the driver's video libraries are missing)")
caps = codecs.nvdec_caps() if lib else None
rows = {}
for c, table in codecs.NVDEC_MIN_SIZE.items():
    got = (caps or {}).get(c)
    rows[c] = {"table_min": table, **(got or {"driver": "no answer"})}
    print(f"nvdec {c}: table min {table[0]}x{table[1]}; driver "
          + (f"supported={got['supported']} min {got['min_size'][0]}x{got['min_size'][1]} "
             f"max {got['max_size'][0]}x{got['max_size'][1]}" if got else "no answer"))
with open(os.path.join(os.environ.get("RES", "."), "nvdec_caps.json"), "w") as f:
    json.dump(rows, f)
EOF

# a, b: NVDEC's frames against PyAV's, and decode speed at aligned vs even sizes
nvdec_part frames 75
nvdec_part speed 90 --seconds 3
if [ $DRY -eq 1 ]; then
  nvdec_part creations 90
  say "dry run: parts 1-4 need a GPU, skipped; exit $status"
  exit $status
fi

# 1. GPU-marked tests (80 s at most; modules needing what is absent here skip)
if has pytest; then
  say "pytest -m gpu"
  timeout "$(lim 80)" $PY -m pytest -q -rs -m gpu -p no:cacheprovider tests/ > "$RES/pytest_gpu.txt" 2>&1
  rc=$?; tail -n 3 "$RES/pytest_gpu.txt" | tee -a "$RES/summary.txt"
  [ $rc -eq 0 ] || { say "pytest -m gpu exit $rc (see pytest_gpu.txt)"; status=1; }
else
  say "pytest is not installed here: GPU tests skipped"
fi

# c. decoder creations in 50 training steps (nsys with NVDEC's trace)
nvdec_part creations 90

# 2. the built-in GPU default, 30 steps (generates the H.264 synthetic set under /tmp first; 70 s at most)
if has nvidia.dali && has av && has yaml; then
  say "smoke: python fastcvrl/train.py, 30 steps on the GPU default"
  timeout "$(lim 70)" $PY fastcvrl/train.py --train.max_steps=30 --train.log_every=10 --train.out_dir=/tmp/fastcvrl_smoke \
    --data.synthetic_dir=/tmp/fastcvrl_synthetic-gpu > "$RES/smoke_train.txt" 2>&1
  rc=$?; grep -E "step|done|error|Error" "$RES/smoke_train.txt" | tail -n 6 | tee -a "$RES/summary.txt"
  [ $rc -eq 0 ] && grep -q "done at step 30" "$RES/smoke_train.txt" || { say "smoke exit $rc (see smoke_train.txt)"; status=1; }
else
  say "DALI, PyAV or PyYAML not importable here: training smoke skipped"
fi

# 3. loader benchmark on the GPU (the smoke's H.264 synthetic set at 128 x 128, reused; 40 s at most)
if has nvidia.dali && has av && has yaml; then
  say "loader_bench --device gpu"
  timeout "$(lim 40)" $PY benchmarks/loader_bench.py --device gpu --synthetic-dir /tmp/fastcvrl_synthetic --batch-size 16 \
    --iters 10 --repeats 2 --json "$RES/loader_bench_gpu.json" > "$RES/loader_bench_gpu.txt" 2>&1
  rc=$?; grep -v '^{' "$RES/loader_bench_gpu.txt" | tail -n 15
  [ $rc -eq 0 ] || { say "loader_bench exit $rc (see loader_bench_gpu.txt)"; status=1; }
else
  say "DALI, PyAV or PyYAML not importable here: loader benchmark skipped"
fi

# 4. train-step benchmark, R3D-50 at 16 x 224^2, batch 16 videos = 32 clips per step (2 min at most; each row
#    is printed and saved to the JSON as it finishes, so a timeout keeps the finished rows)
say "train_bench R3D-50 16x224^2"
timeout "$(lim 120)" $PY benchmarks/train_bench.py --device cuda --arch r3d50 --frames 16 --size 224 --batch-size 16 \
  --warmup 6 --iters 10 --repeats 2 --json "$RES/train_bench.json" 2>&1 | tee "$RES/train_bench.txt" | grep '^row '
rc=${PIPESTATUS[0]}
[ $rc -eq 0 ] || { say "train_bench exit $rc (see train_bench.txt)"; status=1; }
say "done, exit $status; results in $RES"
exit $status
