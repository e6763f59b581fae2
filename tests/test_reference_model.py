"""fastcvrl's R3D-50 and head against the CVRL reference itself (TF Model Garden ``video_ssl``), through
``fastcvrl.convert_tf`` on both checkpoint forms the reference writes.

Runs only where TensorFlow and ``official.projects.video_ssl`` are installed (``python -m pytest -m
reference``; see the README); skipped elsewhere. The reference model is built as its pretraining task builds
it: the experiment ``video_ssl_pretrain_kinetics600`` overridden with the model part of
``cvrl_pretrain_k600_200ep.yaml`` (the yaml itself where the installed package carries it), random weights and
random BN statistics, inference mode."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("official.projects.video_ssl.modeling.video_ssl_model")

from fastcvrl import convert_tf  # noqa: E402
from fastcvrl.config import Config  # noqa: E402
from fastcvrl.eval.weights import load_backbone  # noqa: E402
from fastcvrl.model import CVRLModel, ProjectionHead, build_backbone  # noqa: E402

pytestmark = pytest.mark.reference

INPUT = (2, 16, 64, 64, 3)  # (B, T, H, W, C) as TF takes it; small so the test stays fast on CPU
TOL = 1e-4  # max |ours - reference| / max |reference|

# The model part of official/projects/video_ssl/configs/experiments/cvrl_pretrain_k600_200ep.yaml (used when
# the installed package does not ship the yaml): R3D-50 with temporal kernels 1/1/3/3 by stage, no temporal
# stride after the stem, a (5, 7, 7) stem conv with temporal stride 2, no temporal stride in the stem pool,
# SyncBN.
K600_200EP_MODEL = {
    "dropout_rate": 1.0,
    "norm_activation": {"use_sync_bn": True},
    "hidden_norm_activation": {"use_sync_bn": True},
    "backbone": {
        "resnet_3d": {
            "model_id": 50,
            "block_specs": [
                {"temporal_kernel_sizes": [k] * n, "temporal_strides": 1, "use_self_gating": False}
                for k, n in ((1, 3), (1, 4), (3, 6), (3, 3))
            ],
            "stem_conv_temporal_kernel_size": 5,
            "stem_conv_temporal_stride": 2,
            "stem_pool_temporal_stride": 1,
        }
    },
}


def _experiment():
    from official.core import exp_factory
    from official.modeling import hyperparams
    from official.projects.video_ssl.configs import video_ssl  # noqa: F401  (registers the experiments)

    exp = exp_factory.get_exp_config("video_ssl_pretrain_kinetics600")
    import official.projects.video_ssl as pkg

    yaml = Path(pkg.__file__).parent / "configs" / "experiments" / "cvrl_pretrain_k600_200ep.yaml"
    override = str(yaml) if yaml.is_file() else {"task": {"model": K600_200EP_MODEL}}
    return hyperparams.override_params_dict(exp, override, is_strict=True)


def _randomise(model, seed: int = 0) -> None:
    """Random kernels (kept from the initialisers), biases, BN scale/offset and BN moving statistics."""
    rng = np.random.default_rng(seed)
    for v in model.variables:
        shape, name = v.shape.as_list(), v.name
        if "moving_variance" in name or "gamma" in name:
            v.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif "moving_mean" in name or "beta" in name or "bias" in name:
            v.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The reference model, its outputs on one input, and both checkpoint forms written to disk."""
    import tf_keras
    from official.projects.video_ssl.modeling import video_ssl_model

    tf_keras.utils.set_random_seed(0)  # the kernels keep their (seeded) initialiser values
    exp = _experiment()
    spec = tf_keras.layers.InputSpec(shape=[None, *INPUT[1:]])
    model = video_ssl_model.build_video_ssl_pretrain_model(spec, exp.task.model, num_classes=600)
    _randomise(model)
    x = np.random.default_rng(1).uniform(0, 1, INPUT).astype(np.float32)  # (B, T, H, W, C)
    feats = model.backbone(x, training=False)
    pooled = tf.reduce_mean(feats[max(feats.keys())], axis=(1, 2, 3)).numpy()  # (B, 2048)
    head = model({"image": x}, training=False).numpy()  # (B, 128)
    folder = tmp_path_factory.mktemp("tfckpt")
    whole = tf.train.Checkpoint(model=model).write(str(folder / "model"))
    backbone_only = tf.train.Checkpoint(backbone=model.backbone).write(str(folder / "backbone"))
    n_backbone = sum(int(np.prod(v.shape)) for v in model.backbone.trainable_variables)
    n_model = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return dict(
        x=torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous(),  # (B, C, T, H, W)
        pooled=torch.from_numpy(pooled),
        head=torch.from_numpy(head),
        model_ckpt=whole,
        backbone_ckpt=backbone_only,
        n_backbone=n_backbone,
        n_model=n_model,
        folder=folder,
    )


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def test_reference_builds_the_documented_model(reference):
    assert reference["n_backbone"] == 31_672_128
    assert reference["n_model"] == 44_535_744


@pytest.mark.parametrize("form", ["backbone_ckpt", "model_ckpt"])
def test_converted_backbone_reproduces_reference_features(reference, form):
    conv = convert_tf.convert_checkpoint(reference[form])
    assert (conv.arch, conv.width, conv.out_dim) == ("r3d50", 1, 2048)
    backbone = build_backbone(conv.arch, conv.width)  # the documented way: build, then load_state_dict
    backbone.load_state_dict(conv.backbone)
    with torch.no_grad():
        ours = backbone.eval()(reference["x"])
    rel = _rel(ours, reference["pooled"])
    print(f"{form}: backbone features max relative difference {rel:.2e}")
    assert rel < TOL
    assert sum(v.numel() for v in backbone.parameters()) == reference["n_backbone"]


def test_converted_head_reproduces_reference_embeddings(reference):
    conv = convert_tf.convert_checkpoint(reference["model_ckpt"])
    assert conv.head_dims == (2048, 3, 128)
    backbone = build_backbone(conv.arch, conv.width)
    backbone.load_state_dict(conv.backbone)
    head = ProjectionHead(conv.out_dim, *conv.head_dims)
    head.load_state_dict(conv.head)
    model = CVRLModel(backbone, head).eval()
    assert sum(p.numel() for p in model.parameters()) == reference["n_model"]
    with torch.no_grad():
        ours = model(reference["x"])
    rel = _rel(ours, reference["head"])
    print(f"head output max relative difference {rel:.2e}")
    assert rel < TOL


def test_symmetric_padding_does_not_reproduce_reference(reference):
    # the check above can fail: the same weights on a symmetric grid give clearly different features
    conv = convert_tf.convert_checkpoint(reference["backbone_ckpt"])
    backbone = build_backbone(conv.arch, conv.width, padding="symmetric")
    backbone.load_state_dict(conv.backbone)
    with torch.no_grad():
        rel = _rel(backbone.eval()(reference["x"]), reference["pooled"])
    print(f"symmetric padding: max relative difference {rel:.2e}")
    assert rel > 100 * TOL


def test_command_writes_what_eval_loads(reference, tmp_path, capsys):
    out = tmp_path / "backbone.pt"
    assert convert_tf.main([reference["backbone_ckpt"], "--out", str(out)]) == 0
    assert "r3d50" in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {
        "arch",
        "width",
        "out_dim",
        "step",
        "state_dict",
        "config",
    }  # export_backbone's keys
    backbone, cfg = load_backbone(out, Config())  # what python -m fastcvrl.eval --checkpoint does
    assert (cfg.model.arch, cfg.model.width) == ("r3d50", 1)
    with torch.no_grad():
        assert _rel(backbone(reference["x"]), reference["pooled"]) < TOL


def test_unrelated_and_missing_checkpoints_are_named(reference, tmp_path, capsys):
    other = tf.train.Checkpoint(net=tf.Variable(np.zeros((3, 4), np.float32))).write(str(tmp_path / "other"))
    with pytest.raises(convert_tf.ConvertError, match="not a CVRL checkpoint.*net"):
        convert_tf.convert_checkpoint(other)
    missing = str(tmp_path / "nothing-1")
    with pytest.raises(convert_tf.ConvertError, match="cannot read"):
        convert_tf.convert_checkpoint(missing)
    out = tmp_path / "x.pt"
    assert convert_tf.main([other, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and not out.exists()
