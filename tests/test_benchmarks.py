"""The benchmarks' code paths in tiny mode (--quick): their JSON results and the properties their figures must
have.

Nothing here times anything against a target. The checks are ones a wrong benchmark would fail (timed windows
that fit inside the run's wall time, FLOP counts that scale as a convolution's must, fake-tensor memory counts
equal to real ones), not the benchmark's own arithmetic done again.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("av")  # absent on a bare GPU image: skip, not a collection error
import torch  # noqa: E402
from processes import kill_and_wait  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import loader_bench  # noqa: E402
import memory_bench  # noqa: E402
import train_bench  # noqa: E402


def _check_stats(s: dict, n: int, positive: bool = True) -> None:
    assert s["n"] == n and 0 <= s["min"] <= s["median"] <= s["max"] and s["spread"] >= 0
    assert all(math.isfinite(s[k]) for k in ("min", "median", "max", "spread"))
    assert s["min"] > 0 or not positive


def test_summarize_and_table():
    s = common.summarize([4.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["spread"]) == (2.0, 1.0, 4.0, 1.5)
    table = common.format_table(["a", "bb"], [["x", 1.23456], ["yy", None]]).splitlines()
    assert len(table) == 4 and "1.23" in table[2] and table[3].rstrip().endswith("-")


def test_tree_cpu_seconds_counts_child_processes():
    code = (
        "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
        "print('ok', flush=True)\ntime.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ok"
        # no "before" baseline: other children of this process (an earlier test's workers) may exit in between
        child_s = common.tree_cpu_seconds(child.pid)  # the child's busy loop (it sleeps now: it stays put)
        own = time.process_time()
        total = common.tree_cpu_seconds()
        assert child_s >= 0.25 and total - own >= child_s  # the tree's total holds the child's time
    finally:
        kill_and_wait(child)


_SHORT_WORK = """
import sys
sys.path.insert(0, sys.argv[1])
import common
before = common.tree_cpu_seconds()
x = 0
for i in range(20000):  # about a millisecond: below the 10 ms /proc tick
    x += i * i
print(common.tree_cpu_seconds() > before)
"""


def test_tree_cpu_seconds_counts_children_that_exit_inside_the_window():
    """A DataLoader's workers end with each epoch: their CPU time still counts once they are waited for."""
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    before = common.tree_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", code])
    assert child.wait(timeout=60) == 0
    assert common.tree_cpu_seconds() - before >= 0.25


def test_tree_cpu_seconds_resolves_short_work_in_this_process():
    """In a fresh interpreter without children: here, an earlier test's child exiting in between would
    lower the tree's total by its own time."""
    r = subprocess.run(
        [sys.executable, "-c", _SHORT_WORK, str(BENCH)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True"


def test_ratio_guards_zero_and_missing():
    assert common.ratio(3.0, 2.0) == 1.5
    assert common.ratio(3.0, 0.0) is None
    assert common.ratio(None, 2.0) is None
    assert common.ratio(3.0, None) is None


def test_tree_memory_counts_child_processes():
    code = (
        "import time; b = bytearray(80 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
        "print('ok', flush=True); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ok"
        # no "before" baseline: other children of this process (an earlier test's workers) may exit in between
        child_rss, child_pss = common.tree_memory_mb(child.pid)
        total_rss, total_pss = common.tree_memory_mb()
        own_rss, own_pss = (kb / 1024.0 for kb in common._rss_pss_kb(os.getpid()))
        assert child_rss > 70 and child_pss > 70  # the child's 80 MB
        # in the tree's total beside this process's own (5 MB: what this process may free in between)
        assert total_rss > own_rss + child_rss - 5 and total_pss > own_pss + child_pss - 5
    finally:
        kill_and_wait(child)


@pytest.fixture(scope="module")
def loader_result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loader")
    out = tmp / "loader.json"
    result = loader_bench.main(["--quick", "--synthetic-dir", str(tmp / "synthetic"), "--json", str(out)])
    return result, out


def test_loader_bench_json_structure(loader_result):
    result, out = loader_result
    lines = out.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == json.loads(json.dumps(result, default=float))
    s = result["settings"]
    T, stride = s["frames"], s["stride"]
    span = (T - 1) * stride + 1
    c = result["ceiling"]
    assert c["frames_per_clip"] == span
    _check_stats(c["frames_per_s"], s["repeats"])
    assert 0 < c["clips_per_s"] < c["frames_per_s"]["max"]  # a clip is several frames
    assert c["rgb_frames_per_s"]["median"] > 0 and c["cpu_ms_per_frame"] >= 0  # 10 ms ticks: may read 0 here
    assert result["env"]["torch"] and result["env"]["cores"] >= 1 and result["env"]["cpu"]


def test_loader_bench_baseline_figures(loader_result):
    result, _ = loader_result
    s = result["settings"]
    T, stride, crop, B = s["frames"], s["stride"], s["crop"], s["batch_size"]
    span = (T - 1) * stride + 1
    base = result["loaders"]["baseline"]
    _check_stats(base["clips_per_s"], s["repeats"])
    _check_stats(base["cpu_ms_per_clip"], s["repeats"], positive=False)  # 10 ms ticks over a tiny window
    assert base["fraction_of_ceiling"] > 0
    # each view is decoded from the keyframe before it (synthetic gop 16) to its last frame
    assert span <= base["frames_per_clip"] <= span + 15
    assert base["shapes"] == [[B, 3, T, crop, crop], [B, 3, T, crop, crop], [B]]
    assert base["channels_last_3d"] is True
    mem = base["memory_mb"]  # measured alone in a fresh process, workers included
    assert mem["peak_pss_mb"] > mem["idle_pss_mb"] > 0
    assert mem["peak_rss_mb"] >= mem["peak_pss_mb"]


def test_loader_bench_dali_figures(loader_result):
    result, _ = loader_result
    s = result["settings"]
    dali = result["loaders"]["dali"]
    assert "error" not in dali, dali.get("error")
    _check_stats(dali["clips_per_s"], s["repeats"])
    assert dali["shapes"] == result["loaders"]["baseline"]["shapes"]
    assert result["dali_over_baseline"] > 0
    if dali["cpu_ms_per_clip"]["median"] == 0:  # a --quick run can finish inside one clock tick
        assert result["baseline_over_dali_cpu"] is None  # no ratio rather than a division by zero
    if dali["frames_per_clip"] is not None:
        assert dali["frames_per_clip"] >= s["frames"]


def test_loader_bench_host_only_quick(tmp_path):
    out = tmp_path / "host.json"
    result = loader_bench.main(["--host-only", "--quick", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=float))
    assert set(result["host_clips_per_s"]) == {"h264", "vp9", "mjpeg"}
    assert all(v > 0 for v in result["host_clips_per_s"].values())
    assert set(result["host_scaling"]) == {"1", "2"} and all(v > 0 for v in result["host_scaling"].values())
    for k in ("1", "2"):  # the workers' memory counted with this process's
        assert result["codecs"]["h264"]["workers"][k]["peak_pss_mb"] > 0
    assert all(f > 0 for f in result["codecs"]["vp9"]["frames_per_video"])  # transcoded files were indexed


def test_benchmarks_use_the_given_videos_else_their_own_and_say_which(tmp_path, capsys):
    """No benchmark reaches for a folder outside the repository: the host-only benchmark and gop_bench take
    --videos DIR, else generate synthetic videos, and print which they use."""
    import argparse

    import gop_bench
    import host_feed

    from fastcvrl.datasets.video import write_video

    mine = tmp_path / "mine"
    mine.mkdir()
    write_video(mine / "a.mp4", torch.zeros(8, 32, 32, 3, dtype=torch.uint8).numpy(), codec="h264", gop=None)
    for work in (tmp_path / "w1", tmp_path / "w2"):
        work.mkdir()
    assert host_feed._sources(argparse.Namespace(videos=str(mine), quick=False), tmp_path / "w1") == [
        str(mine / "a.mp4")
    ]
    assert f"1 videos from {mine}" in capsys.readouterr().out
    own = host_feed._sources(argparse.Namespace(videos="", quick=False), tmp_path / "w2")
    assert own and all(Path(p).parent == tmp_path / "w2" for p in own)
    assert "no --videos DIR; measuring on small synthetic clips" in capsys.readouterr().out
    assert gop_bench._sources(mine, tmp_path) == [mine / "a.mp4"]
    assert f"videos: 1 from {mine}" in capsys.readouterr().out


def test_decode_ceiling_counts_frames(loader_result):
    result, _ = loader_result
    from dali_pipelines.manifest import read_manifest

    entries = read_manifest(result["manifest"])
    t0 = time.perf_counter()
    fps, cpu_ms = loader_bench.decode_ceiling(
        [e.path for e in entries[:2]], [e.num_frames for e in entries[:2]], 1, 5000, rgb=False
    )
    elapsed = time.perf_counter() - t0
    # at least 5000 frames were decoded inside the elapsed time (~0.1 s of CPU: several 10 ms ticks)
    assert fps > 0 and fps * elapsed >= 5000 and cpu_ms > 0


def test_train_bench_quick(tmp_path):
    out = tmp_path / "train.json"
    t0 = time.perf_counter()
    result = train_bench.main(["--quick", "--device", "cpu", "--json", str(out)])
    elapsed = time.perf_counter() - t0
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=float))
    s = result["settings"]
    assert result["small_model_on_cpu"] and result["gpu"] is None and result["peak_flops"] is None
    assert set(result["rows"]) == {name for name, _ in train_bench.rows_for("cpu")}
    timed = 0.0
    for name, row in result["rows"].items():
        assert "error" not in row, (name, row.get("error"))
        _check_stats(row["step_s"], s["repeats"])
        assert row["loss_finite"] and row["mfu"] is None and not row["flags"]["graph"]
        assert row["clips_per_s"] > 0 and row["tflops"] > 0
        timed += s["repeats"] * s["iters"] * row["step_s"]["min"]
    opt = result["optimizer"]
    for key in ("fused", "reference"):
        _check_stats(opt[key]["step_s"], s["repeats"])
        timed += s["repeats"] * s["opt_iters"] * opt[key]["step_s"]["min"]
    assert (
        opt["fused"]["params"]
        == opt["reference"]["params"]
        == train_bench.count_params(train_bench.make_model(s["opt_arch"], s["proj_hidden"]))
    )
    assert opt["speedup"] > 0
    # the timed windows (seconds, not milliseconds; not double-counted) fit in the run's wall time
    assert 0 < timed < elapsed


def test_train_bench_rows_and_peaks():
    gpu_rows = dict(train_bench.rows_for("cuda"))
    assert gpu_rows["fast"] == {"graph": True, "bf16": True, "channels_last": True, "fused": True}
    assert gpu_rows["baseline"] == {"graph": False, "bf16": False, "channels_last": False, "fused": False}
    # every other row switches exactly one optimisation off (the reference LARS cannot be graphed)
    for name in ("eager", "fp32", "contiguous"):
        assert sum(gpu_rows[name][k] != gpu_rows["fast"][k] for k in train_bench.ROW_FLAGS) == 1
    assert gpu_rows["LARS reference"]["fused"] is False and gpu_rows["LARS reference"]["graph"] is False
    assert train_bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert train_bench.peak_flops("NVIDIA H200") == 989e12
    assert train_bench.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert train_bench.peak_flops("Some CPU") is None


def test_learning_proof_verdict():
    import learning_proof

    assert learning_proof.clearly_ahead([0.9, 0.95, 0.92], [0.3, 0.25, 0.28])
    assert not learning_proof.clearly_ahead(
        [0.9, 0.2, 0.92], [0.3, 0.25, 0.28]
    )  # one seed below a random one
    # every seed ahead, but the mean gap (0.06) is not more than twice the larger spread (sd 0.05)
    assert not learning_proof.clearly_ahead([0.40, 0.45, 0.50], [0.38, 0.39, 0.40])
    assert learning_proof.clearly_ahead([0.6], [0.2])  # one seed: no spread to beat


def test_learning_proof_tiny_end_to_end(tmp_path):
    """Two seeds of a few pretraining steps on a tiny set: the table's inputs are the probes' own numbers, the
    verdict follows from them, and every backbone was probed on the same test clips."""
    import learning_proof

    synth = tmp_path / "synthetic"
    result = learning_proof.main(
        [
            "--seeds",
            "0",
            "1",
            "--out",
            str(tmp_path / "proof"),
            "--probe-videos",
            "0",
            "0",
            f"--data.synthetic_dir={synth}",
            "--data.synthetic_classes=2",
            "--data.synthetic_videos_per_class=6",
            "--data.num_frames=4",
            "--data.crop_size=32",
            "--train.batch_size=4",
            "--train.epochs=2",
            "--optim.warmup_epochs=1",
            "--train.knn_every=0",
            "--train.log_every=1",
            "--eval.epochs=2",
            "--eval.warmup_epochs=1",
            "--eval.batch_size=4",
            "--eval.test_clips=2",
            "--eval.feature_passes=1",
        ]
    )
    assert json.loads((tmp_path / "proof" / "learning_proof.json").read_text())["seeds"] == [0, 1]
    assert result["num_classes"] == 2 and result["probe_test_videos"] == 2 * 2  # a third of 6 per class
    assert result["views_per_video"] == 2
    for key in ("pretrained_top1", "random_top1", "pretrained_knn_top1", "random_knn_top1"):
        assert len(result[key]) == 2 and all(0 <= a <= 1 for a in result[key])
    # accuracies over 4 test videos are multiples of 1/4
    assert all(abs(a * 4 - round(a * 4)) < 1e-6 for a in result["pretrained_top1"] + result["random_top1"])
    assert result["clearly_ahead"] == learning_proof.clearly_ahead(
        result["pretrained_top1"], result["random_top1"]
    )
    assert (tmp_path / "proof" / "seed0" / "backbone.pt").is_file() and (
        tmp_path / "proof" / "seed1" / "backbone.pt"
    ).is_file()


def test_flops_per_clip_scale_as_convolutions_do():
    """Against a hand count for one convolution, and the backbone's count doubling with the frames and
    quadrupling with the crop area (every stage's output grows exactly so at these sizes)."""
    from fastcvrl.model import build_backbone, flops_per_clip

    conv = torch.nn.Conv3d(3, 8, (3, 1, 1), padding=(1, 0, 0), bias=False)
    assert flops_per_clip(conv, 4, 16) == 3 * 2 * (3 * 3) * 8 * (
        4 * 16 * 16
    )  # 3 x (2 x MACs) per output voxel
    backbone = build_backbone("r3d_tiny")
    base = flops_per_clip(backbone, 4, 32)
    assert base > 0
    assert flops_per_clip(backbone, 8, 32) == pytest.approx(2 * base, rel=1e-9)
    assert flops_per_clip(backbone, 4, 64) == pytest.approx(4 * base, rel=1e-9)


def test_memory_bench_quick(tmp_path):
    out = tmp_path / "memory.json"
    result = memory_bench.main(["--quick", "--json", str(out)])
    line = json.loads(out.read_text())
    saved = line["saved_activation_gb_per_clip"]
    assert saved == result["saved_activation_gb_per_clip"]
    assert 0 < saved["checkpointed"] < saved["plain"]  # checkpointing keeps less
    assert 0 < saved["stage"] < saved["plain"] and 0 < saved["block"] < saved["plain"]
    rec = result["recompute_gb_per_clip"]
    assert 0 < rec["stage"] < saved["plain"] and 0 < rec["block"] < saved["plain"]
    at = result["activation_gb_at_clips_per_gpu"]
    assert at[result["checkpointing"]] < at["plain"]


def test_saved_bytes_on_fake_tensors_equal_real_ones():
    """The fast count (fake tensors: no data) against the slow obvious one (real CPU tensors, bf16 autocast):
    the same bytes per clip in every checkpointing mode and per unit (the totals may differ by a constant of
    a few kB: per-batch tensors such as BN's per-channel statistics, which the per-clip difference cancels);
    and the per-clip count grows with the crop area."""
    model = train_bench.make_model("r3d_tiny", 32)
    b = model.backbone
    units = {"res2": b.res2, "res5": b.res5}

    def per_clip(mode: str, fake: bool, size: int = 32) -> tuple[int, dict[str, int]]:
        u = units if mode == "none" else None
        (t2, u2), (t4, u4) = (
            memory_bench.saved_bytes(model, (n, 3, 4, size, size), mode, fake, u) for n in (2, 4)
        )
        return (t4 - t2) // 2, {k: (u4[k] - u2[k]) // 2 for k in u2}

    for mode in ("none", "stage", "block"):
        fake, real = per_clip(mode, True), per_clip(mode, False)
        assert fake == real and fake[0] > 0, mode
    assert b.activation_checkpointing == "none"  # restored
    ratio = per_clip("none", True, 64)[0] / per_clip("none", True, 32)[0]
    assert 3.5 < ratio <= 4.0  # activations grow 4x with the area; only the head's do not


def test_train_bench_prints_each_row_as_it_finishes(tmp_path):
    """Rows appear on stdout (flushed) before the run ends, and the JSON on disk grows row by row: a run
    killed by a time limit keeps what it finished."""
    out = tmp_path / "t.json"
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "train_bench.py"), "--quick", "--device", "cpu", "--json", str(out)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=BENCH.parent,
        env={"PYTHONPATH": str(BENCH.parent), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    first = proc.stdout.readline()  # blocks until the first row is printed
    partial = json.loads(out.read_text())  # written before the line: holds that row (and any finished since)
    rest = proc.stdout.read()
    assert proc.wait(timeout=600) == 0
    assert first.startswith("row fast: step "), first
    assert "fast" in partial["rows"] and "step_s" in partial["rows"]["fast"]
    final = json.loads(out.read_text())
    assert "partial" not in final and set(final["rows"]) == {name for name, _ in train_bench.rows_for("cpu")}
    rows = [ln for ln in (first + rest).splitlines() if re.match(r"row [\w ]+: (step|error)", ln)]
    assert len(rows) == len(train_bench.rows_for("cpu")) + 2  # each step row and both optimizer rows
