"""The trainer end to end on CPU: run folder contents, exact resume, SIGKILL/SIGTERM, NaN stop, config and
manifest errors before any work, two gloo ranks in sync, and the default command's path on a small budget."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from processes import kill_and_wait
from tiny_runs import tiny_run

from fastcvrl import checkpoint as ckpt
from fastcvrl import train
from fastcvrl.config import load_config

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "fastcvrl" / "train.py")

# Tiny: 16 random clips per epoch in batches of 4 (4 steps per epoch), 3 epochs
TINY = tiny_run(videos=16, epochs=3, extra={"train.keep_ckpts": 2})


def _args(run_dir: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(REPO / "fastcvrl" / "configs" / "synthetic_cpu.yaml"),
        *TINY,
        f"--train.out_dir={run_dir}",
        *extra,
    ]


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(
        torch.as_tensor(a["optimizer"]["lr_tensor"]), torch.as_tensor(b["optimizer"]["lr_tensor"])
    )


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> dict:
    """The uninterrupted run (12 steps = 3 epochs), in process; its final checkpoint."""
    run_dir = tmp_path_factory.mktemp("reference")
    result = train.main(_args(run_dir))
    assert result.exit_code == 0 and result.step == 12
    return {"dir": run_dir, "final": ckpt.load_latest(run_dir)[0]}


def test_run_folder_holds_config_env_tensorboard_checkpoints_and_backbone(reference_run):
    run_dir = reference_run["dir"]
    cfg = load_config(run_dir / "config.yaml")  # the resolved config reloads
    assert cfg.data.source == "random" and cfg.train.precision == "fp32" and cfg.model.arch == "r3d_tiny"
    import json

    env = json.loads((run_dir / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["world_size"] == 1 and env["cores"] >= 1
    assert env["git_commit"] is None or len(env["git_commit"]) == 40  # a git checkout is not required
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert [s for s, _ in ckpt.list_checkpoints(run_dir)] == [10, 12]  # every 2 steps, last 2 kept
    exported = torch.load(run_dir / "backbone.pt", weights_only=True)
    from fastcvrl.model import build_backbone

    bb = build_backbone(exported["arch"], exported["width"])
    bb.load_state_dict(exported["state_dict"])  # strict: the backbone alone, no head
    final = reference_run["final"]["model"]  # the exported weights are the final checkpoint's backbone
    assert all(torch.equal(v, final["backbone." + k]) for k, v in exported["state_dict"].items())


def test_resume_mid_epoch_equals_uninterrupted_run(tmp_path, reference_run):
    first = train.main(_args(tmp_path, "--train.max_steps=5"))  # stops mid-epoch 2 (5 = 4 + 1)
    assert first.exit_code == 0 and first.step == 5
    second = train.main(_args(tmp_path))  # same folder: resumes by itself
    assert second.step == 12
    _assert_same_state(ckpt.load_latest(tmp_path)[0], reference_run["final"])


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from fastcvrl.random_clips import RandomClipLoader

    real_iter = RandomClipLoader.iter_from  # iter() goes through it too
    seen = {"n": 0}

    def poisoned(self, start):
        for v1, v2, y in real_iter(self, start):
            seen["n"] += 1
            if seen["n"] >= 6:  # from step 6 on the input is NaN
                v1 = torch.full_like(v1, float("nan"))
            yield v1, v2, y

    monkeypatch.setattr(RandomClipLoader, "iter_from", poisoned)
    with pytest.raises(train.NonFiniteLoss, match="between step 5 and step 6"):
        train.main(_args(tmp_path, "--train.log_every=3"))
    state, path = ckpt.load_latest(tmp_path)
    assert state["step"] == 4  # the checkpoint due at step 6 was not written
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, TRAIN, *args],
        capture_output=True,
        text=True,
        timeout=600,  # only stops a hang: a trainer's start takes a minute on a loaded 2-core machine
        env={**os.environ, **(env or {})},
        **kw,
    )


def _warning_lines(stderr: str) -> list[str]:
    """Lines of a run's stderr that are warnings: Python's (``...Warning:``, torch's C++ ones included) and
    glog-style ``W1203 12:00:00`` lines of torch's launcher."""
    return [ln for ln in stderr.splitlines() if re.search(r"\w*Warning\b|^W\d{4} \d\d:", ln)]


def test_config_and_manifest_errors_come_before_any_work(tmp_path):
    run_dir = tmp_path / "run"
    r = _cli(*_args(run_dir, "--train.bogus=1"))
    assert r.returncode == 2 and "train.bogus" in r.stderr and "Traceback" not in r.stderr
    r = _cli(*_args(run_dir, "--train.precision=fp8"))
    assert r.returncode == 2 and "train.precision" in r.stderr
    missing = tmp_path / "nope" / "manifest.csv"
    r = _cli(*_args(run_dir, "--data.source=video", f"--data.train_manifest={missing}"))
    assert r.returncode == 2 and str(missing) in r.stderr
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,num_frames,fps,width,height,codec\ngone.webm,0,64,25,112,112,vp9\n")
    r = _cli(*_args(run_dir, "--data.source=video", f"--data.train_manifest={manifest}"))
    assert r.returncode == 2 and "gone.webm" in r.stderr
    assert not run_dir.exists()  # nothing was started


def test_more_config_errors_name_their_key(tmp_path, monkeypatch):
    from fastcvrl.config import ConfigError

    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="train.profile_steps"):
        train.main(_args(run_dir, "--train.profile_steps=9:3"))
    with pytest.raises(ConfigError, match="model.arch"):
        train.main(_args(run_dir, "--model.arch=r3d18"))
    with pytest.raises(ConfigError, match="data.synthetic_scene: expected dots or objects"):
        train.main(_args(run_dir, "--data.synthetic_scene=spheres"))
    with pytest.raises(
        ConfigError, match=r"optim.warmup_epochs: expected optim.warmup_epochs <= train.epochs"
    ):
        train.main(_args(run_dir, "--optim.warmup_epochs=5"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="data.device"):
            train.main(_args(run_dir, "--data.source=video", "--data.device=gpu"))
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="train.batch_size: 4 is not divisible by the 3") as e:
        train.main(_args(run_dir))
    assert "the largest train.batch_size that works with 3 processes is 3 (--train.batch_size=3)" in str(
        e.value
    )
    assert not run_dir.exists()


def test_a_batch_larger_than_the_data_names_the_largest_that_works(tmp_path, monkeypatch):
    """The Kinetics-400 config on 4 clips: train.batch_size=1024 is refused with the value to lower it to,
    for this manifest and this number of processes; so is a built-in dataset smaller than one batch."""
    from dali_pipelines.manifest import ManifestError
    from fastcvrl.config import ConfigError

    rows = []
    for i in range(4):
        (tmp_path / f"clip{i}.mp4").write_bytes(b"")
        rows.append(f"clip{i}.mp4,0,64,25,320,240,h264")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,num_frames,fps,width,height,codec\n" + "\n".join(rows) + "\n")
    k400 = str(REPO / "fastcvrl" / "configs" / "cvrl_r3d50_k400.yaml")
    args = [
        "--config",
        k400,
        f"--data.train_manifest={manifest}",
        "--data.val_manifest=",
        "--data.device=cpu",
    ]
    run_dir = tmp_path / "run"
    with pytest.raises(
        ManifestError, match=r"4 videos, fewer than one global batch \(train.batch_size=1024\)"
    ) as e:
        train.main([*args, f"--train.out_dir={run_dir}"])
    assert "the largest train.batch_size that works with 1 process is 4 (--train.batch_size=4)" in str(
        e.value
    )
    synthetic = ["--data.source=video", "--data.synthetic_classes=2", "--data.synthetic_videos_per_class=3"]
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="more than the 6 training videos") as e:
        train.main(_args(run_dir, *synthetic, "--train.batch_size=8"))
    assert "works with 4 processes is 4 (--train.batch_size=4)" in str(e.value)
    assert not run_dir.exists()


# A child that trains normally but hangs inside its 2nd checkpoint write (after the data is written and
# fsync'ed, before the rename), so that the parent's SIGKILL lands mid-write.
_HANG_IN_WRITE = textwrap.dedent("""
    import os, sys, time
    real_fsync = os.fsync
    writes = [0]
    def fsync(fd):
        real_fsync(fd)
        target = os.readlink(f"/proc/self/fd/{fd}")
        if ".tmp." in target and "checkpoints" in target:
            writes[0] += 1
            if writes[0] == 2:
                print("in-write", flush=True)
                time.sleep(120)
    os.fsync = fsync
    from fastcvrl.train import cli
    sys.exit(cli(sys.argv[1:]))
""")


def test_sigkill_during_checkpoint_write_then_resume_matches_uninterrupted(tmp_path, reference_run):
    proc = subprocess.Popen(
        [sys.executable, "-c", _HANG_IN_WRITE, *_args(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.strip() == "in-write":
                break
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        kill_and_wait(proc)
    folder = tmp_path / ckpt.CKPT_DIR
    assert [p.name for p in folder.iterdir() if ".tmp." in p.name]  # killed mid-write: a partial file
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2]  # the write of step 4 never finished
    r = _cli(*_args(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "step 2" in r.stdout
    assert not [p for p in folder.iterdir() if ".tmp." in p.name]
    _assert_same_state(ckpt.load_latest(tmp_path)[0], reference_run["final"])


def test_sigkill_at_a_random_moment_then_resume_continues_the_step_count(tmp_path):
    # epochs far beyond what runs before the kill: the trainer must still be running when the kill lands,
    # however long this process is kept off the CPU between two polls
    args = _args(tmp_path, "--train.ckpt_every=1", "--train.log_every=1", "--train.epochs=5000")
    proc = subprocess.Popen(
        [sys.executable, TRAIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300  # a deadline only bounds a failure: generous under load
        while not ckpt.list_checkpoints(tmp_path) or ckpt.list_checkpoints(tmp_path)[-1][0] < 3:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.13)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        kill_and_wait(proc)
    killed_at = ckpt.load_latest(tmp_path)[0]["step"]
    r = _cli(*args, "--train.max_steps=" + str(killed_at + 3))
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    assert ckpt.load_latest(tmp_path)[0]["step"] == killed_at + 3


def test_sigterm_checkpoints_and_exits_then_resumes(tmp_path):
    args = _args(tmp_path, "--train.ckpt_every=1000", "--train.log_every=1", "--train.epochs=200")
    proc = subprocess.Popen(
        [sys.executable, TRAIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stderr:  # the first progress line (not a terminal: the first report is printed)
            if " step 1/" in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        kill_and_wait(proc)
    assert proc.returncode == 143, err
    assert "SIGTERM" in err
    ((step, _),) = ckpt.list_checkpoints(tmp_path)  # ckpt_every=1000: only the SIGTERM checkpoint exists
    assert step >= 1
    r = _cli(*args, f"--train.max_steps={step + 2}")
    assert r.returncode == 0 and "resumed from" in r.stdout
    assert ckpt.load_latest(tmp_path)[0]["step"] == step + 2


_RANK_WORKER = textwrap.dedent("""
    import os, sys, torch
    from fastcvrl.train import main
    out = sys.argv[1]
    result = main(sys.argv[2:])
    torch.save({k: v.detach() for k, v in result.model.state_dict().items()},
               os.path.join(out, f"rank{os.environ['RANK']}.pt"))
""")


def test_two_gloo_processes_stay_in_sync(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_RANK_WORKER)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",  # the rendezvous store binds a port the OS picks, and holds it: no port race
        str(script),
        str(tmp_path),
        *_args(tmp_path / "run", "--train.epochs=2", "--model.sync_bn=true"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "always"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _warning_lines(r.stderr) == [], r.stderr  # DDP's gradient-stride warning among others
    steps = re.findall(r"^ep \d+/\d+ step (\d+)/8 ", r.stderr, re.M)  # the progress of rank 0 only
    assert steps.count("8") == 1 and len(steps) == len(set(steps)), r.stderr
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert a.keys() == b.keys()
    params = [k for k in a if "running" not in k and "num_batches" not in k]
    for k in params:  # DDP keeps parameters identical (gradients all-reduced)
        assert torch.equal(a[k], b[k]), k
    from fastcvrl.model import build_model

    torch.manual_seed(0)  # rank 0's initialisation (rank 1 draws another; DDP broadcasts rank 0's)
    init = build_model(load_config(tmp_path / "run" / "config.yaml").model).state_dict()
    assert not torch.equal(init["head.mlp.0.weight"], a["head.mlp.0.weight"])  # they trained
    state = ckpt.load_latest(tmp_path / "run")[0]
    assert state["step"] == 8 and state["world_size"] == 2  # global batch 4 = 2 x 2: 4 steps per epoch
    assert len(state["rng"]) == 2  # both ranks' generators saved


@pytest.mark.slow
def test_default_command_path_on_a_small_budget(tmp_path):
    """`python fastcvrl/train.py` with no --config: synthetic dataset generated, trained, backbone
    exported."""
    synth = tmp_path / "synthetic"
    r = _cli(
        f"--data.synthetic_dir={synth}",
        "--data.synthetic_classes=2",
        "--data.synthetic_videos_per_class=4",
        "--data.crop_size=32",
        "--data.num_frames=4",
        "--train.batch_size=4",
        "--train.max_steps=2",
        "--train.log_every=1",
        f"--train.out_dir={tmp_path / 'run'}",
        "--train.knn_every=1",
        "--eval.num_frames=4",
        "--eval.crop_size=32",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "synthetic_cpu.yaml" in r.stdout and (synth / "train" / "manifest.csv").is_file()
    # one epoch is 2 steps: the kNN monitor ran once, on the synthetic test split (1 video per class here)
    knn = re.findall(r"epoch 1: kNN top-1 ([0-9.]+) top-5 ([0-9.]+) \((\d+) videos\)", r.stderr)
    assert len(knn) == 1, r.stderr  # the progress stream
    top1, top5, n = float(knn[0][0]), float(knn[0][1]), int(knn[0][2])
    assert n == 2 and 0.0 <= top1 <= top5 == 1.0  # 2 classes: the true class is always in the top 5
    assert "done at step 2" in r.stdout and str(tmp_path / "run") in r.stdout
    assert (tmp_path / "run" / "backbone.pt").is_file()
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.data.train_manifest == str(synth / "train" / "manifest.csv")


def test_progress_line_shows_every_field_on_a_terminal_and_in_a_log():
    import io

    from fastcvrl.logger import Progress, Report, format_eta

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    r = Report(
        epoch=2,
        epochs=10,
        step=30,
        total_steps=100,
        loss=5.4321,
        acc=0.25,
        lr=0.125,
        clips_per_s=88.8,
        data_wait=0.125,
        eta_s=3725,
    )
    for stream in (io.StringIO(), Tty()):
        p = Progress(100, 20, stream=stream)
        p.update(r)
        p.close()
        text = stream.getvalue()
        for part in (
            "ep 3/10",
            "step 30/100",
            "loss 5.4321",
            "acc 0.250",
            "lr 0.125",
            "89 clips/s",
            "wait 12%",
            "eta 1:02:05",
        ):
            assert part in text, (part, text)
    assert format_eta(59) == "00:59" and format_eta(61) == "01:01"


def _report(step: int, total: int = 10, eta: float = 100.0):
    from fastcvrl.logger import Report

    return Report(0, 1, step, total, 5.0, 0.5, 0.1, 10.0, 0.0, eta)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_bar_moves_every_step_with_an_eta_on_a_terminal():
    """One bar for the run: every step moves it; its ETA comes from the steps' rate before the first
    report, then counts down from the last report's."""
    import io

    from fastcvrl.logger import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock = _Clock()
    p = Progress(10, 0, stream=Tty(), clock=clock)
    for step in (1, 2):
        clock.t += 3.0
        p.tick(step)
    assert p.bar.n == 2 and p.bar.desc == "step 2/10 eta 00:24"  # 3 s a step, 8 steps to go
    clock.t += 3.0
    p.tick(3)
    p.update(_report(3, eta=70.0))
    clock.t += 10.0
    p.tick(4)
    assert p.bar.n == 4 and "step 4/10" in p.bar.desc and p.bar.desc.endswith("eta 01:00")
    p.close()


def test_progress_without_a_terminal_prints_a_line_with_the_eta_every_period():
    """A log file gets the first report, then one line per ``every_s`` seconds, and the last step."""
    import io

    from fastcvrl.logger import Progress

    clock, stream = _Clock(), io.StringIO()
    p = Progress(10, 0, stream=stream, every_s=30.0, clock=clock)
    for t, step in ((0, 2), (10, 4), (31, 6), (40, 8), (45, 10)):
        clock.t = t
        p.tick(step)  # no bar: nothing printed
        p.update(_report(step, eta=10.0 * (10 - step)))
    lines = stream.getvalue().splitlines()
    assert [re.search(r"step (\d+)/10", ln)[1] for ln in lines] == ["2", "6", "10"]
    assert all(" eta " in ln for ln in lines)
    assert (p.first_loss, p.last_loss) == (5.0, 5.0)
    quiet = io.StringIO()
    other_rank = Progress(10, 0, stream=quiet, enabled=False, clock=clock)
    other_rank.update(_report(10))
    assert quiet.getvalue() == ""


def test_a_tiny_run_is_quiet_and_ends_saying_where_its_results_are(tmp_path):
    """`python fastcvrl/train.py` with no terminal: no warning at all on stderr (PYTHONWARNINGS=always),
    progress lines with an ETA, and last lines naming the backbone, the newest checkpoint and the
    TensorBoard command, each pointing at what is there."""
    run_dir = tmp_path / "run"
    r = _cli(*_args(run_dir), env={"PYTHONWARNINGS": "always", "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _warning_lines(r.stderr) == [], r.stderr
    progress = [ln for ln in r.stderr.splitlines() if ln.startswith("ep ")]
    assert progress and all(re.search(r" eta \d\d:\d\d$", ln) for ln in progress), r.stderr
    assert "step 12/12" in progress[-1]
    tail = r.stdout[r.stdout.index("done at step 12") :]
    assert str(run_dir) in tail.splitlines()[0]
    backbone = re.search(r"^ +trained backbone +(\S+)", tail, re.M)[1]
    checkpoint = re.search(r"^ +checkpoint +(\S+)", tail, re.M)[1]
    logdir = re.search(r"tensorboard --logdir (\S+)", tail)[1]
    assert Path(backbone) == run_dir / "backbone.pt" and Path(backbone).is_file()
    assert Path(checkpoint) == ckpt.list_checkpoints(run_dir)[-1][1]
    assert list(Path(logdir).glob("events.out.tfevents.*"))
    assert f"--checkpoint {backbone}" in tail  # the evaluation command to run next
