"""The decodability check: codec and size rules per decoder, the message, and that training and evaluation
run it on every manifest before anything else (before the CUDA check, so it is testable without a GPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dali_pipelines import codecs
from dali_pipelines.manifest import VideoEntry
from fastcvrl import preflight, train
from fastcvrl.datasets.manifest import write_manifest

REPO = Path(__file__).resolve().parents[1]


def _entry(path: str, codec: str, w: int = 128, h: int = 128) -> VideoEntry:
    return VideoEntry(path, 0, 32, 25.0, w, h, codec)


def _manifest(folder: Path, codec: str, n: int = 8, size=(128, 128), ext: str = ".mp4") -> Path:
    """A manifest of ``n`` listed videos of ``codec``; the files exist (empty): the check reads the manifest
    only."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        p = folder / f"clip{i}{ext}"
        p.touch()
        entries.append(_entry(str(p), codec, *size))
    write_manifest(folder / "manifest.csv", entries)
    return folder / "manifest.csv"


@pytest.mark.parametrize(
    "codec,w,h,device,ok",
    [
        ("vp9", 112, 112, "cpu", True),
        ("mjpeg", 64, 64, "cpu", True),
        ("vp8", 32, 32, "cpu", True),
        ("h264", 320, 240, "cpu", False),
        ("hevc", 320, 240, "cpu", False),
        ("av1", 320, 240, "cpu", False),
        ("h264", 128, 128, "gpu", True),
        ("h264", 48, 16, "gpu", True),
        ("h264", 47, 16, "gpu", False),
        ("mjpeg", 320, 240, "gpu", False),
        ("mpeg2video", 320, 240, "gpu", False),
        ("vp9", 112, 112, "gpu", False),
        ("vp9", 128, 128, "gpu", True),
        ("hevc", 128, 128, "gpu", False),
        ("hevc", 144, 144, "gpu", True),
        ("libdav1d", 320, 240, "gpu", True),
        ("av1", 112, 200, "gpu", False),
        ("mpeg4", 320, 240, "gpu", True),
    ],
)
def test_each_decoder_accepts_its_codecs_and_sizes(codec, w, h, device, ok):
    why = codecs.refusal(codec, w, h, device)
    assert (why is None) == ok, why
    if not ok:
        assert codecs.codec_name(codec) in why


def test_message_names_a_few_then_counts_and_gives_the_transcode_command(tmp_path):
    entries = [_entry(f"/d/ok{i}.webm", "vp9") for i in range(3)] + [
        _entry(f"/d/bad{i}.avi", "mjpeg") for i in range(8)
    ]
    with pytest.raises(codecs.UndecodableError) as e:
        codecs.check_decodable(entries, "gpu", "/d/manifest.csv")
    msg = str(e.value)
    assert (
        "8 of 11 videos" in msg and "and 3 more" in msg and msg.count("mjpeg: DALI's GPU decoder takes") == 1
    )
    assert (
        all(f"bad{i}.avi" in msg for i in range(codecs.SHOWN)) and "bad7.avi" not in msg and "ok0" not in msg
    )
    assert "--transcode h264" in msg and "mjpeg" in msg
    with pytest.raises(codecs.UndecodableError, match=r"--transcode vp9"):
        codecs.check_decodable([_entry("/d/a.mp4", "h264")], "cpu", "/d/manifest.csv")
    assert codecs.check_decodable(entries[:3], "cpu", "m.csv") == []
    notes = codecs.check_decodable([_entry("/d/a.mkv", "av1")], "gpu", "m.csv")
    assert len(notes) == 1 and "Ampere" in notes[0]


def test_a_queried_minimum_replaces_the_table():
    assert codecs.refusal("h264", 64, 64, "gpu") is None
    assert "96x96" in codecs.refusal("h264", 64, 64, "gpu", {"h264": (96, 96)})


def test_data_device_does_not_need_cuda_for_the_check():
    from fastcvrl.config import ConfigError
    from fastcvrl.preflight import data_device

    assert data_device("gpu", require_cuda=False, cuda_available=False) == "gpu"
    assert (
        data_device("auto", cuda_available=False) == "cpu"
        and data_device("auto", cuda_available=True) == "gpu"
    )
    with pytest.raises(ConfigError, match="data.device: 'gpu' but CUDA is not available"):
        data_device("gpu", cuda_available=False)


def test_the_module_imports_without_dali_or_pyav():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, dali_pipelines.codecs; "
            "print('nvidia.dali' in sys.modules, 'av' in sys.modules, 'torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert out.stdout.split() == ["False", "False", "False"], out.stderr


def test_the_driver_query_is_none_without_a_gpu_else_agrees_on_what_matters():
    caps = codecs.nvdec_caps()
    if not torch.cuda.is_available():
        assert caps is None
        assert codecs.nvdec_min_size() == codecs.NVDEC_MIN_SIZE
    elif caps is not None:
        assert caps["h264"]["supported"]


# ------------------------------------------------------------------------------------- the entry points
TINY = ["--model.arch=r3d_tiny", "--train.batch_size=4", "--train.precision=fp32", "--train.cuda_graph=false"]


def _train(tmp_path: Path, manifest: Path, *extra: str) -> tuple[int, str]:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "fastcvrl" / "train.py"),
            *TINY,
            f"--train.out_dir={run_dir}",
            f"--data.train_manifest={manifest}",
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert not run_dir.exists()  # nothing written before the input is checked
    return proc.returncode, proc.stderr


def test_training_on_the_gpu_with_an_mjpeg_manifest_names_the_codec_before_the_cuda_check(tmp_path, capsys):
    m = _manifest(tmp_path / "mjpeg", "mjpeg", ext=".avi")
    run_dir = tmp_path / "run"
    code = train.cli([*TINY, f"--train.out_dir={run_dir}", f"--data.train_manifest={m}", "--data.device=gpu"])
    err = capsys.readouterr().err
    assert code == 2 and not run_dir.exists()
    assert "mjpeg: DALI's GPU decoder takes" in err and "clip0.avi, clip1.avi" in err, err
    assert "--transcode h264" in err
    assert len(err.strip().splitlines()) == 1
    if not torch.cuda.is_available():  # a decodable manifest gets as far as the CUDA check
        ok = _manifest(tmp_path / "h264", "h264")
        code = train.cli(
            [*TINY, f"--train.out_dir={run_dir}", f"--data.train_manifest={ok}", "--data.device=gpu"]
        )
        assert code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_training_on_the_gpu_refuses_videos_below_nvdec_minimum(tmp_path, capsys):
    m = _manifest(tmp_path / "small", "vp9", size=(112, 112), ext=".webm")
    code = train.cli(
        [*TINY, f"--train.out_dir={tmp_path / 'run'}", f"--data.train_manifest={m}", "--data.device=gpu"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "vp9 below NVDEC's 128x128 minimum: clip0.webm (112x112)" in err, err


def test_training_on_the_cpu_refuses_an_h264_manifest_up_front(tmp_path):
    m = _manifest(tmp_path / "h264", "h264")
    code, err = _train(tmp_path, m, "--data.device=cpu")
    assert code == 2, err
    assert "cannot be decoded on the CPU" in err and "--transcode vp9" in err and "Traceback" not in err, err


def test_the_knn_split_is_checked_too(tmp_path, capsys):
    good = _manifest(tmp_path / "train", "vp9", size=(112, 112), ext=".webm")
    bad = _manifest(tmp_path / "val", "hevc", ext=".mkv")
    code = train.cli(
        [
            *TINY,
            f"--train.out_dir={tmp_path / 'run'}",
            f"--data.train_manifest={good}",
            f"--data.val_manifest={bad}",
            "--train.knn_every=1",
            "--data.device=cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "hevc" in err, err


def test_evaluation_checks_both_manifests_before_any_model_work(tmp_path):
    good = _manifest(tmp_path / "train", "vp9", size=(128, 128), ext=".webm")
    bad = _manifest(tmp_path / "test", "mjpeg", ext=".avi")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastcvrl.eval",
            "--random-init",
            "--train-manifest",
            str(good),
            "--test-manifest",
            str(bad),
            "--model.arch=r3d_tiny",
            "--data.device=gpu",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "mjpeg" in proc.stderr and "--transcode h264" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- the built-in sets
def test_the_gpu_default_decodes_on_nvdec_and_the_cpu_default_is_unchanged():
    from fastcvrl.config import load_config

    gpu = load_config(REPO / "fastcvrl" / "configs" / "synthetic_gpu.yaml").data
    cpu = load_config(REPO / "fastcvrl" / "configs" / "synthetic_cpu.yaml").data
    assert codecs.refusal(gpu.synthetic_codec, gpu.synthetic_size, gpu.synthetic_size, "gpu") is None
    assert gpu.synthetic_size >= gpu.crop_size and gpu.synthetic_dir != cpu.synthetic_dir
    assert (cpu.synthetic_codec, cpu.synthetic_size) == ("vp9", 112)  # the CPU figures' dataset
    assert codecs.refusal(cpu.synthetic_codec, cpu.synthetic_size, cpu.synthetic_size, "cpu") is None
    assert codecs.refusal("vp9", 112, 112, "gpu") is not None  # why the GPU default changed


def test_synthetic_codec_and_size_reach_the_files_and_the_cache_identity(tmp_path):
    import av

    from dali_pipelines.manifest import read_manifest
    from fastcvrl.datasets.synthetic import ensure_synthetic

    kw = dict(num_classes=2, videos_per_class=1, test_videos_per_class=0, num_frames=8, workers=1)
    train_m, _ = ensure_synthetic(tmp_path / "s", codec="h264", size=128, **kw)
    (e,) = read_manifest(train_m)[:1]
    assert (e.codec, e.width, e.height) == ("h264", 128, 128) and e.path.endswith(".mp4")
    with av.open(e.path) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.width, s.codec_context.height) == ("h264", 128, 128)
    assert codecs.undecodable(read_manifest(train_m), "gpu") == []
    train_m, _ = ensure_synthetic(
        tmp_path / "s", codec="vp9", size=112, **kw
    )  # another identity: regenerated
    assert {(x.codec, x.width) for x in read_manifest(train_m)} == {("vp9", 112)}


def test_a_bad_synthetic_codec_names_the_key(tmp_path, capsys):
    code = train.cli([*TINY, f"--train.out_dir={tmp_path / 'run'}", "--data.synthetic_codec=hevc"])
    assert code == 2 and "data.synthetic_codec" in capsys.readouterr().err


def test_on_a_gpu_the_drivers_minimum_sizes_are_used(tmp_path, capsys, monkeypatch):
    """Where CUDA is up, training asks the driver (``nvdec_min_size``) instead of trusting the table."""
    m = _manifest(tmp_path / "h264", "h264")  # 128 x 128: fine by the table
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(preflight, "nvdec_min_size", lambda dev: asked.append(dev) or {"h264": (256, 256)})
    code = train.cli(
        [*TINY, f"--train.out_dir={tmp_path / 'run'}", f"--data.train_manifest={m}", "--data.device=gpu"]
    )
    err = capsys.readouterr().err
    assert asked == [0] and code == 2 and "h264 below NVDEC's 256x256 minimum" in err, err
