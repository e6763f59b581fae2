#!/usr/bin/env bash
# GPU checks for a lent machine in one short run (under 8 minutes on one H100; each part has its own limit, so
# one hang cannot eat the others' time):
#   0. what the machine has: GPU, modules, libnvcuvid and NVDEC's decoder caps against the codec table,
#   1. the GPU-marked tests (pytest -m gpu): graphed step == eager step (float and uint8 inputs), the step
#      without host syncs, the DALI GPU pipeline against the CPU pipeline on frame-index-coded videos,
#   2. a 30-step smoke of `python fastcvrl/train.py` on the built-in GPU default (H.264 synthetic set),
#   3. the loader benchmark on the GPU (benchmarks/loader_bench.py --device gpu),
#   4. the train-step benchmark for R3D-50 at 16 x 224^2 (benchmarks/train_bench.py; rows print as they finish).
# The machine's python3 (torch preinstalled) runs the package from the tree via PYTHONPATH=. . DALI and PyAV
# come from the environment, or from /tmp/site where they were installed there: if their wheels were carried
# to /tmp/dali_parts (split parts of a tar) and are not unpacked yet, this script unpacks them there (local
# files only). Everything lands in $OUT when set, else
# in results/device_check/: summary.txt, one .txt per part, one JSON line per benchmark.
#
#   bash benchmarks/device_check.sh            # on the lent machine, from the repository root
set -uo pipefail
cd "$(dirname "$0")/.."
RES="${OUT:-results/device_check}"
mkdir -p "$RES"
export RES
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=python3
status=0
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$RES/summary.txt"; }
has() { $PY -c "import $1" >/dev/null 2>&1; }

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

# 1. GPU-marked tests (100 s at most; modules needing what is absent here skip)
if has pytest; then
  say "pytest -m gpu"
  timeout 100 $PY -m pytest -q -rs -m gpu -p no:cacheprovider tests/ > "$RES/pytest_gpu.txt" 2>&1
  rc=$?; tail -n 3 "$RES/pytest_gpu.txt" | tee -a "$RES/summary.txt"
  [ $rc -eq 0 ] || { say "pytest -m gpu exit $rc (see pytest_gpu.txt)"; status=1; }
else
  say "pytest is not installed here: GPU tests skipped"
fi

# 2. the built-in GPU default, 30 steps (generates the H.264 synthetic set under /tmp first; 110 s at most)
if has nvidia.dali && has av && has yaml; then
  say "smoke: python fastcvrl/train.py, 30 steps on the GPU default"
  timeout 110 $PY fastcvrl/train.py --train.max_steps=30 --train.log_every=10 --train.out_dir=/tmp/fastcvrl_smoke \
    --data.synthetic_dir=/tmp/fastcvrl_synthetic-gpu > "$RES/smoke_train.txt" 2>&1
  rc=$?; grep -E "step|done|error|Error" "$RES/smoke_train.txt" | tail -n 6 | tee -a "$RES/summary.txt"
  [ $rc -eq 0 ] && grep -q "done at step 30" "$RES/smoke_train.txt" || { say "smoke exit $rc (see smoke_train.txt)"; status=1; }
else
  say "DALI, PyAV or PyYAML not importable here: training smoke skipped"
fi

# 3. loader benchmark on the GPU (the smoke's H.264 synthetic set at 128 x 128, reused; 70 s at most)
if has nvidia.dali && has av && has yaml; then
  say "loader_bench --device gpu"
  timeout 70 $PY benchmarks/loader_bench.py --device gpu --synthetic-dir /tmp/fastcvrl_synthetic --batch-size 16 \
    --iters 10 --repeats 2 --json "$RES/loader_bench_gpu.json" > "$RES/loader_bench_gpu.txt" 2>&1
  rc=$?; grep -v '^{' "$RES/loader_bench_gpu.txt" | tail -n 15
  [ $rc -eq 0 ] || { say "loader_bench exit $rc (see loader_bench_gpu.txt)"; status=1; }
else
  say "DALI, PyAV or PyYAML not importable here: loader benchmark skipped"
fi

# 4. train-step benchmark, R3D-50 at 16 x 224^2, batch 16 videos = 32 clips per step (2 min at most; each row
#    is printed and saved to the JSON as it finishes, so a timeout keeps the finished rows)
say "train_bench R3D-50 16x224^2"
timeout 120 $PY benchmarks/train_bench.py --device cuda --arch r3d50 --frames 16 --size 224 --batch-size 16 \
  --warmup 6 --iters 10 --repeats 2 --json "$RES/train_bench.json" 2>&1 | tee "$RES/train_bench.txt" | grep '^row '
rc=${PIPESTATUS[0]}
[ $rc -eq 0 ] || { say "train_bench exit $rc (see train_bench.txt)"; status=1; }
say "done, exit $status; results in $RES"
exit $status
