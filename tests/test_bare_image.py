"""The device check's premise: on a bare GPU image (no PyAV, no DALI, no SciPy) every test module collects
(those needing them skip), so ``pytest -m gpu`` reports the GPU tests rather than collection errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BLOCKER = """
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("av", "scipy") or name == "nvidia.dali" or name.startswith("nvidia.dali."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _Absent())
"""


def test_every_module_collects_without_pyav_dali_or_scipy(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-m",
            "gpu",
            "-p",
            "no:cacheprovider",
            str(REPO / "tests"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "error" not in proc.stdout.splitlines()[-1], proc.stdout[-3000:]
