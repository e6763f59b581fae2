"""The example SLURM scripts under a fake scheduler: ``srun``, ``scontrol`` and ``sbatch`` on PATH stand in
for SLURM's, the "nodes" are processes on this machine. train.sbatch starts two nodes of one CPU process each
that meet through torchrun's c10d rendezvous (gloo), finish the run, and a second submission resumes an
interrupted run from its checkpoint; prepare.sbatch runs its shards and the merge."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from processes import free_port
from tiny_runs import tiny_run

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "examples" / "slurm"

# srun: one copy of the command per node, in parallel, each with its node's ids; as --kill-on-bad-exit, the
# first task to fail ends the others; the exit status is the first failure's. Every fake node is this machine,
# so each torchrun takes itself for the rendezvous host (on a cluster only the first node does): the others
# start a moment after the first, which then hosts the store, rather than racing it for the port.
FAKE_SRUN = r"""#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
echo "srun $SLURM_JOB_NUM_NODES $*" >> "$FAKE_LOG"
pids=()
for ((n = 0; n < SLURM_JOB_NUM_NODES; n++)); do
    ((n == 1)) && sleep 2
    SLURM_NODEID=$n SLURM_PROCID=$n SLURM_LOCALID=0 "$@" > "$FAKE_DIR/node$n.log" 2>&1 &
    pids+=($!)
done
rc=0
for ((left = ${#pids[@]}; left > 0; left--)); do
    wait -n; s=$?
    if ((s != 0 && rc == 0)); then rc=$s; kill "${pids[@]}" 2> /dev/null; fi
done
exit $rc
"""
# scontrol: every node of the list is this machine; a requeue is recorded
FAKE_SCONTROL = r"""#!/bin/bash
if [[ "$1 $2" == "show hostnames" ]]; then
    for ((n = 0; n < SLURM_JOB_NUM_NODES; n++)); do echo 127.0.0.1; done
else
    echo "scontrol $*" >> "$FAKE_LOG"
fi
"""
# sbatch: an array job's tasks run at once, one after another; a dependent job runs when submitted
FAKE_SBATCH = r"""#!/bin/bash
array= ; exports=ALL
while [[ "$1" == --* ]]; do
    case "$1" in
        --array=*) array=${1#--array=} ;;
        --export=*) exports=${1#--export=} ;;
    esac
    shift
done
script=$1; shift
echo "sbatch array=$array export=$exports $script" >> "$FAKE_LOG"
extra=()
IFS=, read -ra kv <<< "$exports"
for e in "${kv[@]}"; do [[ "$e" == *=* ]] && extra+=("$e"); done
if [[ -n "$array" ]]; then
    for ((i = ${array%-*}; i <= ${array#*-}; i++)); do
        env "${extra[@]}" SLURM_ARRAY_TASK_ID=$i bash "$script" "$@" >> "$FAKE_DIR/sbatch.log" 2>&1 || exit 1
    done
else
    env "${extra[@]}" bash "$script" "$@" >> "$FAKE_DIR/sbatch.log" 2>&1 || exit 1
fi
echo "$RANDOM"
"""


def _scheduler(tmp_path: Path) -> dict[str, str]:
    """A bin folder with the fake commands, and the environment of a 2-node allocation."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("sbatch", FAKE_SBATCH)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755 | stat.S_IXUSR)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),
        PYTHON=sys.executable,
        FAKE_LOG=str(tmp_path / "calls.log"),
        FAKE_DIR=str(tmp_path),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NNODES="2",
        SLURM_JOB_NODELIST="node[01-02]",
        GPUS_PER_NODE="1",
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
    )
    return env


# the tiny run (tests/tiny_runs.py) from the synthetic_cpu config: 4 steps an epoch, 2 epochs, no kNN monitor
TINY = ["--config", "synthetic_cpu", *tiny_run(videos=16, epochs=2, extra={"train.knn_every": 0})]


def _run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` in its own process group; past ``timeout`` the whole group (the fake nodes, torchrun and its
    workers) is killed, so nothing is left running, and the result says so (returncode None)."""
    p = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, p.returncode, out, err)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)  # torchrun ends its workers (their own sessions) on SIGTERM
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        _kill_leftovers(env["FAKE_DIR"])
        return subprocess.CompletedProcess(cmd, None, out, err + f"\n(killed after {timeout} s)")


def _kill_leftovers(marker: str) -> None:
    """SIGKILL every process of ours whose command line names ``marker`` (this test's folder)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass  # gone meanwhile, or not ours


def _submit(env: dict, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**env, "RDZV_PORT": str(free_port())}
    return _run(["bash", str(SLURM / "train.sbatch"), *args], env, timeout)


def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(tmp_path.glob("node*.log")))


@pytest.mark.slow
def test_train_script_runs_two_nodes_and_resumes_after_an_interruption(tmp_path):
    from fastcvrl import checkpoint as ckpt

    env = _scheduler(tmp_path)
    run = tmp_path / "shared" / "run"
    # the first job ends early, as a preempted one would (its last checkpoint at step 4 of 8)
    r = _submit(env, *TINY, f"--train.out_dir={run}", "--train.max_steps=4")
    assert r.returncode == 0, r.stdout + r.stderr + _logs(tmp_path)
    calls = (tmp_path / "calls.log").read_text()
    assert "srun 2 " in calls and "--rdzv_backend=c10d" in calls and "--rdzv_endpoint=127.0.0.1:" in calls
    state = ckpt.load_latest(run)[0]
    assert state["step"] == 4 and state["world_size"] == 2  # both nodes joined one process group
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    # the requeued job: the same script and run folder continue the run to its end
    r = _submit(env, *TINY, f"--train.out_dir={run}")
    assert r.returncode == 0, r.stdout + r.stderr + _logs(tmp_path)
    assert "resumed from " in _logs(tmp_path) and "(step 4," in _logs(tmp_path)
    state = ckpt.load_latest(run)[0]
    assert state["step"] == 8 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert (run / "backbone.pt").is_file()


def test_train_script_refuses_to_run_outside_an_allocation(tmp_path):
    env = {k: v for k, v in _scheduler(tmp_path).items() if not k.startswith("SLURM_")}
    r = _submit(env, *TINY)
    assert r.returncode != 0 and "not inside a SLURM allocation" in r.stderr
    assert not (tmp_path / "calls.log").exists()  # nothing launched


@pytest.mark.slow
def test_prepare_script_runs_the_shards_then_the_merge(tmp_path):
    pytest.importorskip("av")
    from videos import index_frames

    from dali_pipelines.manifest import read_manifest
    from fastcvrl.datasets.prepare import prepare
    from fastcvrl.datasets.video import write_video

    src = tmp_path / "src"
    for c in ("jump", "run"):
        (src / c).mkdir(parents=True)
        for v in range(3):
            write_video(src / c / f"{v}.webm", index_frames(12 + v, 16, 16, v), codec="vp9", gop=4)
    (src / "run" / "bad.mp4").write_bytes(b"not a video")
    env = {**_scheduler(tmp_path), "SRC": str(src), "OUT": str(tmp_path / "data"), "SHARDS": "3"}
    r = _run(["bash", str(SLURM / "prepare.sbatch"), "--workers", "1"], env, 300)
    log = tmp_path / "sbatch.log"
    assert r.returncode == 0, r.stdout + r.stderr + (log.read_text() if log.exists() else "")
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls[0].startswith("sbatch array=0-2 ") and "PREPARE_STAGE=merge" in calls[1]
    assert sorted(p.name for p in (tmp_path / "data.parts").iterdir() if p.is_dir()) == ["0", "1", "2"]
    ref = prepare(src, tmp_path / "ref", workers=1, quiet=True, log=lambda *_: None)
    assert ref.usable == 6
    assert read_manifest(tmp_path / "data" / "manifest.csv") == read_manifest(
        tmp_path / "ref" / "manifest.csv"
    )
