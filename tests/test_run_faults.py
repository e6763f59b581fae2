"""The rest in one line: a run-folder path of the wrong kind (``RUN/tb`` a file) refused at start with the
other checks, and running out of memory told with the settings to lower (exit 5), never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastcvrl import train
from fastcvrl.faults import OOM_EXIT, out_of_memory_message
from fastcvrl.runfolder import RunFolder, RunFolderError

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--config",
    str(REPO / "fastcvrl" / "configs" / "synthetic_cpu.yaml"),
    "--data.source=random",
    "--data.random_videos=8",
    "--data.num_frames=4",
    "--data.crop_size=32",
    "--model.arch=r3d_tiny",
    "--model.proj_hidden=32",
    "--model.proj_layers=2",
    "--model.proj_dim=16",
    "--optim.base_batch_size=4",
    "--optim.warmup_epochs=1",
    "--train.max_steps=1",
    "--train.batch_size=4",
    "--train.epochs=1",
    "--train.precision=fp32",
    "--train.cuda_graph=false",
]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("name, kind", [("tb", "file"), ("checkpoints", "file"), ("config.yaml", "folder")])
def test_a_run_folder_path_of_the_wrong_kind_is_refused_before_anything_is_written(tmp_path, name, kind):
    folder = RunFolder.open(tmp_path / "run")
    try:
        p = folder.path / name
        p.mkdir() if kind == "folder" else p.write_text("in the way\n")
        with pytest.raises(RunFolderError, match=f"{p}") as e:
            folder.start(train.load_config(None, []), 1, "cpu", {}, 0)
        assert "\n" not in str(e.value) and "train.out_dir" in str(e.value)
        assert sorted(q.name for q in folder.path.iterdir()) == sorted(
            ["train.lock", name]
        )  # nothing written
    finally:
        folder.release()


def test_tb_as_a_file_is_one_line_exit_2(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tb").write_text("not a folder\n")
    assert train.cli([*TINY, f"--train.out_dir={run}"]) == 2
    line = _one_line_error(capsys)
    assert str(run / "tb") in line and "not a folder" in line


@pytest.mark.parametrize(
    "error, where",
    [
        (
            RuntimeError(
                "[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"
            ),
            "host",
        ),
        (MemoryError(), "host"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "GPU"),
    ],
)
def test_out_of_memory_in_the_first_step_is_one_line_naming_the_settings(
    tmp_path, capsys, monkeypatch, error, where
):
    def first_step_fails(run, pos):
        raise error

    monkeypatch.setattr(train, "train", first_step_fails)
    assert train.cli([*TINY, f"--train.out_dir={tmp_path / 'run'}"]) == OOM_EXIT
    line = _one_line_error(capsys)
    assert f"out of {where} memory" in line and "train.batch_size" in line


def test_other_runtime_errors_are_not_taken_for_memory():
    assert out_of_memory_message(RuntimeError("shape mismatch")) is None
    assert out_of_memory_message(ValueError("can't allocate memory")) is None  # only the allocator's types


def test_the_skipped_videos_are_named_again_at_the_end():
    from types import SimpleNamespace

    from fastcvrl.faults import skipped_summary

    entries = [SimpleNamespace(path=f"/data/v{i}.mp4") for i in range(15)]
    loader = SimpleNamespace(source=SimpleNamespace(bad={7, 2}, entries=entries))
    line = skipped_summary(loader)
    assert line.startswith("note: 2 video(s)") and "/data/v2.mp4, /data/v7.mp4" in line and "\n" not in line
    loader.source.bad = set(range(12))
    assert "and 2 more" in skipped_summary(loader)
    loader.source.bad = set()
    assert skipped_summary(loader) is None
    assert skipped_summary(SimpleNamespace()) is None  # random clips: no source, nothing to say
