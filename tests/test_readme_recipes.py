"""The README's recipe for your own videos on a CPU runs as written, on generated clips.

The commands are read from the README block that follows ``<!-- recipe: cpu -->``, in a fresh folder holding
``my_videos/{train,test}/<class>/*.mp4``; ``python`` is this interpreter and ``fastcvrl/train.py`` the
checkout's. One change for the suite's budget: the training command gets ``--train.max_steps=2`` appended (the
recipe's 60 epochs take minutes).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("nvidia.dali")

REPO = Path(__file__).resolve().parents[1]


def recipe(name: str) -> list[list[str]]:
    """The commands of the README's ``<!-- recipe: NAME -->`` bash block, continuation lines joined and
    comments dropped."""
    text = (REPO / "README.md").read_text()
    m = re.search(rf"<!-- recipe: {name} -->\s*```bash\n(.*?)```", text, re.S)
    assert m, f"README has no recipe block {name!r}"
    joined = m.group(1).replace("\\\n", " ")
    return [
        shlex.split(line)
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _videos(root: Path, per_class: int, seed: int) -> None:
    from fastcvrl.datasets.video import write_video

    rng = np.random.default_rng(seed)
    for label, step in (("left", -3), ("right", 3)):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(per_class):
            base = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
            frames = np.stack([np.roll(base, step * t, axis=1) for t in range(24)])  # the class is the motion
            write_video(folder / f"{label}{i}.mp4", frames, codec="h264", gop=8)


@pytest.mark.slow
def test_the_cpu_recipe_for_your_own_videos_runs_as_written(tmp_path):
    commands = recipe("cpu")
    assert [c[:2] for c in commands][:2] == [["python", "-m"]] * 2  # two prepares, then train, then eval
    _videos(tmp_path / "my_videos" / "train", 8, 0)
    _videos(tmp_path / "my_videos" / "test", 2, 1)
    for cmd in commands:
        cmd = [sys.executable if c == "python" else c for c in cmd]
        cmd = [str(REPO / c) if c == "fastcvrl/train.py" else c for c in cmd]
        if str(REPO / "fastcvrl/train.py") in cmd:
            cmd.append("--train.max_steps=2")
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-2000:])
    manifest = (tmp_path / "data/mine/train/manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 16  # every generated training video prepared
    assert (tmp_path / "runs/cpu_small/backbone.pt").is_file()
    assert "top-1" in proc.stdout + proc.stderr  # the evaluation reported its result


def test_the_exported_backbone_loads_as_the_readme_says(tmp_path, monkeypatch):
    """The README's Python lines under "Using the exported backbone", on a backbone ``export_backbone``
    wrote: they run and give one feature vector per clip."""
    import torch

    from fastcvrl import checkpoint
    from fastcvrl.config import load_config
    from fastcvrl.model import build_model

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Using the exported backbone") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    cfg = load_config("synthetic_cpu")
    (tmp_path / "runs" / "synthetic_cpu").mkdir(parents=True)
    checkpoint.export_backbone(tmp_path / "runs" / "synthetic_cpu", build_model(cfg.model), cfg, step=3)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    features, saved = scope["features"], scope["saved"]
    assert features.shape == (2, saved["out_dim"]) and torch.isfinite(features).all()
