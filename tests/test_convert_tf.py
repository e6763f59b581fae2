"""``fastcvrl.convert_tf`` without TensorFlow: the name/layout mapping on checkpoint-shaped dicts written from
our own modules (the inverse mapping stated plainly here), and the error paths. The comparison with the real
reference's checkpoints is in ``test_reference_model.py`` (marked ``reference``)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from fastcvrl import convert_tf
from fastcvrl.model import ProjectionHead, r3d_tiny

_BLOCK = {
    "shortcut.0": "_shortcut_conv",
    "shortcut.1": "_norm0",
    "body.0": "_temporal_conv",
    "body.1": "_norm1",
    "body.3": "_spatial_conv",
    "body.4": "_norm2",
    "body.6": "_expand_conv",
    "body.7": "_norm3",
}
_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def _tf_layout(name: str, t: torch.Tensor) -> np.ndarray:
    a = t.detach().numpy()
    if a.ndim == 5:
        return a.transpose(2, 3, 4, 1, 0)  # (out, in, T, H, W) -> (T, H, W, in, out)
    return a.T if a.ndim == 2 else a


def tf_variables(backbone: nn.Module, root: str, head: nn.Module | None = None) -> dict[str, np.ndarray]:
    """What ``tf.train.Checkpoint(backbone=...)`` / ``(model=...)`` of the same weights would hold."""
    out: dict[str, np.ndarray] = {}
    blocks = [f"{s}.{j}" for s in ("res2", "res3", "res4", "res5") for j in range(len(getattr(backbone, s)))]
    for key, t in backbone.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        module, param = key.rsplit(".", 1)
        if module in ("stem.0", "stem.1"):
            layer, attr = (0, "") if module == "stem.0" else (1, "")
        else:
            stage, j, sub = module.split(".", 2)
            layer, attr = 2 + blocks.index(f"{stage}.{j}"), _BLOCK[sub] + "/"
        var = "kernel" if param == "weight" and t.ndim == 5 else _BN[param]
        out[f"{root}layer_with_weights-{layer}/{attr}{var}"] = _tf_layout(key, t)
    if head is not None:
        layers = [m for m in head.mlp if isinstance(m, (nn.Linear, nn.BatchNorm1d))]
        for n, m in enumerate(layers, start=1):
            for param, t in m.state_dict().items():
                if param == "num_batches_tracked":
                    continue
                var = ("kernel" if param == "weight" else "bias") if isinstance(m, nn.Linear) else _BN[param]
                out[f"model/layer_with_weights-{n}/{var}"] = _tf_layout(param, t)
    return out


def _random_bn(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm3d)):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.normal_()
    return module


def test_backbone_form_round_trip():
    ours = _random_bn(r3d_tiny(width=2))
    conv = convert_tf.convert_variables(tf_variables(ours, "backbone/"))
    assert (conv.arch, conv.width, conv.out_dim, conv.head) == ("r3d_tiny", 2, ours.out_dim, None)
    want = ours.state_dict()
    assert list(conv.backbone) == list(want)
    for k, v in want.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(conv.backbone[k], v), k


def test_model_form_round_trip_with_head():
    backbone = _random_bn(r3d_tiny())
    head = _random_bn(ProjectionHead(backbone.out_dim, 32, 2, 16))
    variables = tf_variables(backbone, "model/layer_with_weights-0/", head)
    conv = convert_tf.convert_variables(variables)
    assert conv.head_dims == (32, 2, 16)
    for k, v in head.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(conv.head[k], v), k
    assert torch.equal(conv.backbone["res5.0.body.6.weight"], backbone.state_dict()["res5.0.body.6.weight"])
    file = convert_tf.backbone_file(conv)
    assert set(file) == {"arch", "width", "out_dim", "step", "state_dict", "config"}
    assert file["config"]["model"]["proj_hidden"] == 32 and file["config"]["model"]["arch"] == "r3d_tiny"


def test_missing_variable_is_named():
    variables = tf_variables(r3d_tiny(), "backbone/")
    del variables["backbone/layer_with_weights-3/_norm2/moving_variance"]
    with pytest.raises(
        convert_tf.ConvertError,
        match=r"1 variables missing .*layer_with_weights-3/_norm2/moving_variance .for res3.0.body.4",
    ):
        convert_tf.convert_variables(variables, where="ckpt-1")


def test_mismatched_shape_is_named_with_both_shapes():
    variables = tf_variables(r3d_tiny(), "backbone/")
    key = "backbone/layer_with_weights-4/_spatial_conv/kernel"
    variables[key] = np.zeros((1, 3, 3, 32, 33), np.float32)
    with pytest.raises(
        convert_tf.ConvertError,
        match=r"mismatched shapes.*_spatial_conv/kernel \(33, 32, 1, 3, 3\) "
        r"for res4.0.body.3.weight \(32, 32, 1, 3, 3\)",
    ):
        convert_tf.convert_variables(variables)


def test_unrelated_or_foreign_checkpoints():
    with pytest.raises(convert_tf.ConvertError, match="not a CVRL checkpoint.*dense/kernel"):
        convert_tf.convert_variables({"dense/kernel": np.zeros((2, 2))})
    # a 2D ResNet-50's stem is 4-D: no stem convolution of ours
    with pytest.raises(convert_tf.ConvertError, match="no stem convolution"):
        convert_tf.convert_variables({"backbone/layer_with_weights-0/kernel": np.zeros((7, 7, 3, 64))})
    # an R3D with a stage layout we do not build: (1, 1, 2, 1) blocks
    variables = tf_variables(r3d_tiny(), "backbone/")
    variables = {k.replace("layer_with_weights-5/", "layer_with_weights-9/"): v for k, v in variables.items()}
    extra = {
        k.replace("layer_with_weights-4/", "layer_with_weights-5/"): v
        for k, v in variables.items()
        if "layer_with_weights-4/" in k and "_shortcut" not in k and "_norm0" not in k
    }
    with pytest.raises(convert_tf.ConvertError, match="blocks per stage"):
        convert_tf.convert_variables({**variables, **extra})


def test_missing_tensorflow_gives_install_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` raise ImportError
    with pytest.raises(convert_tf.ConvertError, match=r"pip install fastcvrl\[tf\]"):
        convert_tf.convert_checkpoint(str(tmp_path / "ckpt-1"))
    out = tmp_path / "backbone.pt"
    assert convert_tf.main([str(tmp_path / "ckpt-1"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install fastcvrl[tf]" in err and not out.exists()
