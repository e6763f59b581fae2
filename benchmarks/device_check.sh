#!/usr/bin/env bash
# GPU checks for a lent machine, sized to finish within 5 minutes on one H100:
#   1. the CUDA-marked tests (pytest -m gpu),
#   2. the train-step benchmark for R3D-50 at 16 x 224^2 (benchmarks/train_bench.py),
#   3. the loader benchmark on the GPU (benchmarks/loader_bench.py --device gpu) where DALI imports.
# Installs nothing. The machine's python3 (3.12, torch preinstalled) runs the package from the tree via
# PYTHONPATH=. ; DALI, where wanted, is staged and unpacked to /tmp/site as ../shared/gpu/README.md describes
# and is picked up from there. Results (text and one JSON line per benchmark) go to $OUT when set, else to
# results/device_check/. Each part has its own time limit, so one hang cannot eat the others' time.
#
#   bash benchmarks/device_check.sh            # on the lent machine, from the repository root
set -uo pipefail
cd "$(dirname "$0")/.."
RES="${OUT:-results/device_check}"
mkdir -p "$RES"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d /tmp/site ] && export PYTHONPATH="/tmp/site:$PYTHONPATH"
PY=python3
status=0
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a "$RES/summary.txt"; }

# what this machine has (the project's pins do not apply here)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$RES/gpu.csv" 2>&1
$PY - <<'EOF' 2>&1 | tee "$RES/modules.txt"
import importlib, platform
print("python", platform.python_version())
for m in ("torch", "numpy", "av", "yaml", "scipy", "pytest", "nvidia.dali"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:  # absent here: the parts needing it are skipped
        print(m, "MISSING", type(e).__name__)
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
has() { $PY -c "import $1" >/dev/null 2>&1; }

# 1. CUDA-marked tests (1 min at most; modules that cannot import here, e.g. without scipy, are reported and
#    the GPU tests of the others still run)
if has pytest; then
  say "pytest -m gpu"
  timeout 60 $PY -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests/ > "$RES/pytest_gpu.txt" 2>&1
  rc=$?; tail -n 3 "$RES/pytest_gpu.txt" | tee -a "$RES/summary.txt"
  [ $rc -eq 0 ] || { say "pytest -m gpu exit $rc"; status=1; }
else
  say "pytest is not installed here: GPU tests skipped"
fi

# 2. train-step benchmark, R3D-50 at 16 x 224^2, batch 16 videos = 32 clips per step (2.5 min at most)
say "train_bench R3D-50 16x224^2"
timeout 150 $PY benchmarks/train_bench.py --device cuda --arch r3d50 --frames 16 --size 224 --batch-size 16 \
  --warmup 6 --iters 10 --repeats 3 --json "$RES/train_bench.json" > "$RES/train_bench.txt" 2>&1
rc=$?; grep -v '^{' "$RES/train_bench.txt" | tail -n 20
[ $rc -eq 0 ] || { say "train_bench exit $rc (see train_bench.txt)"; status=1; }

# 3. loader benchmark on the GPU, only where DALI (and PyAV, for the baseline and the ceiling) import
#    (85 s at most, generating the synthetic set first)
if has nvidia.dali && has av && has yaml; then
  say "loader_bench --device gpu"
  timeout 85 $PY benchmarks/loader_bench.py --device gpu --synthetic-dir /tmp/fastcvrl_synthetic --batch-size 16 \
    --iters 10 --repeats 2 --json "$RES/loader_bench_gpu.json" > "$RES/loader_bench_gpu.txt" 2>&1
  rc=$?; grep -v '^{' "$RES/loader_bench_gpu.txt" | tail -n 15
  [ $rc -eq 0 ] || { say "loader_bench exit $rc (see loader_bench_gpu.txt)"; status=1; }
else
  say "DALI, PyAV or PyYAML not importable here: loader benchmark skipped (see ../shared/gpu/README.md)"
fi
say "done, exit $status; results in $RES"
exit $status
