"""R3D backbone, projection head, memory formats, autocast and the FLOP counter."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastcvrl.config import ModelConfig
from fastcvrl.model import (
    Bottleneck3D,
    CVRLModel,
    ProjectionHead,
    SameConv3d,
    SameMaxPool3d,
    build_backbone,
    build_model,
    count_params,
    flops_per_clip,
    r3d,
    r3d_tiny,
    tf_same_pad,
)


def _meta(fn, *args):
    with torch.device("meta"):
        return fn(*args)


def test_r3d50_parameter_count_matches_reference():
    # 31.7M: the CVRL reference README's figure for R3D-50 (backbone only).
    n = count_params(_meta(r3d, 50))
    assert abs(n - 31.7e6) / 31.7e6 < 0.01, n


def test_r3d50_structure_follows_video_ssl_definition():
    m = _meta(r3d, 50)
    stem_conv = m.stem[0]
    assert (
        stem_conv.out_channels == 64 and stem_conv.kernel_size == (5, 7, 7) and stem_conv.stride == (2, 2, 2)
    )
    pool = m.stem[3]
    assert isinstance(pool, nn.MaxPool3d) and pool.kernel_size == (1, 3, 3) and pool.stride == (1, 2, 2)
    stages = [m.res2, m.res3, m.res4, m.res5]
    assert [len(s) for s in stages] == [3, 4, 6, 3]
    for i, stage in enumerate(stages):
        for j, block in enumerate(stage):
            temporal, spatial, expand = [c for c in block.body if isinstance(c, nn.Conv3d)]
            assert temporal.kernel_size == ((1, 1, 1) if i < 2 else (3, 1, 1))
            assert spatial.kernel_size == (1, 3, 3) and expand.kernel_size == (1, 1, 1)
            s = 2 if (i > 0 and j == 0) else 1
            assert spatial.stride == (1, s, s)
            assert temporal.stride == (1, 1, 1)  # no temporal downsampling after the stem
            assert expand.out_channels == 4 * 64 * 2**i
    convs = [c for c in m.modules() if isinstance(c, nn.Conv3d)]
    assert all(c.stride[0] == 1 for c in convs if c is not stem_conv)


def test_r3d50_feature_map_shapes_on_meta():
    m = _meta(r3d, 50)
    shapes = {}
    for name in ("stem", "res2", "res3", "res4", "res5"):
        getattr(m, name).register_forward_hook(
            lambda mod, i, o, name=name: shapes.__setitem__(name, tuple(o.shape))
        )
    out = m(torch.empty(2, 3, 16, 224, 224, device="meta"))
    assert tuple(out.shape) == (2, 2048) and m.out_dim == 2048
    assert shapes["stem"] == (2, 64, 8, 56, 56)
    assert shapes["res2"] == (2, 256, 8, 56, 56)
    assert shapes["res3"] == (2, 512, 8, 28, 28)
    assert shapes["res4"] == (2, 1024, 8, 14, 14)
    assert shapes["res5"] == (2, 2048, 8, 7, 7)


def test_depths_and_widths():
    assert [len(s) for s in (lambda m: [m.res2, m.res3, m.res4, m.res5])(_meta(r3d, 101))] == [3, 4, 23, 3]
    assert [len(s) for s in (lambda m: [m.res2, m.res3, m.res4, m.res5])(_meta(r3d, 152))] == [3, 8, 36, 3]
    m2 = _meta(build_backbone, "r3d50", 2)
    assert m2.out_dim == 4096 and m2.stem[0].out_channels == 128
    # width w multiplies every conv's channels: parameters grow ~w^2 (BN adds a little linear part)
    ratio = count_params(m2) / count_params(_meta(r3d, 50))
    assert 3.9 < ratio < 4.01
    assert count_params(_meta(build_backbone, "r3d101")) > count_params(_meta(r3d, 50))


def test_unknown_arch_names_the_key():
    with pytest.raises(ValueError, match="model.arch"):
        build_backbone("r3d34")
    with pytest.raises(ValueError):
        r3d(18)


def test_batchnorm_follows_reference():
    m = CVRLModel(r3d_tiny(), ProjectionHead(256, 64, 3, 32))
    bns = [b for b in m.backbone.modules() if isinstance(b, nn.BatchNorm3d)]
    # video_classification.py norm_activation: TF momentum 0.9 (torch 0.1), eps 1e-5
    assert bns and all(b.momentum == pytest.approx(0.1) and b.eps == pytest.approx(1e-5) for b in bns)
    # the reference does not zero-init the last BN gamma of a residual block
    assert all(torch.equal(b.weight, torch.ones_like(b.weight)) for b in bns)
    hbns = [b for b in m.head.modules() if isinstance(b, nn.BatchNorm1d)]
    assert len(hbns) == 3 and all(
        b.momentum == pytest.approx(0.003) and b.eps == pytest.approx(1e-5) for b in hbns
    )


def test_tf_same_pad_puts_the_odd_pixel_after():
    # F.pad order (W, H, T), each (before, after)
    assert tf_same_pad((16, 64, 64), (5, 7, 7), (2, 2, 2)) == [2, 3, 2, 3, 1, 2]  # stem conv
    assert tf_same_pad((8, 32, 32), (1, 3, 3), (1, 2, 2)) == [0, 1, 0, 1, 0, 0]  # stem max-pool
    assert tf_same_pad((8, 7, 7), (1, 3, 3), (1, 2, 2)) == [1, 1, 1, 1, 0, 0]  # odd size: symmetric
    assert tf_same_pad((8, 16, 16), (3, 1, 1), (1, 1, 1)) == [0, 0, 0, 0, 1, 1]  # stride 1: symmetric


def test_same_conv_and_pool_windows_follow_tf():
    # 4 x 4 input, 3 x 3 window, stride 2: TF 'same' gives 2 x 2 outputs over rows/cols [0:3] and [2:4]
    # (one pad row/col after); a symmetric padding would centre them on rows/cols 0 and 2 instead.
    x = -torch.arange(1.0, 17.0).reshape(1, 1, 1, 4, 4)  # all negative: a zero padding would win the max
    conv = SameConv3d(1, 1, (1, 3, 3), (1, 2, 2), bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        out = conv(x)[0, 0, 0]
    plane = x[0, 0, 0]
    want = torch.tensor(
        [[plane[0:3, 0:3].sum(), plane[0:3, 2:4].sum()], [plane[2:4, 0:3].sum(), plane[2:4, 2:4].sum()]]
    )
    torch.testing.assert_close(out, want)
    pooled = SameMaxPool3d((1, 3, 3), (1, 2, 2))(x)[0, 0, 0]
    want = torch.stack(
        [
            torch.stack([plane[r, c].max() for c in (slice(0, 3), slice(2, 4))])
            for r in (slice(0, 3), slice(2, 4))
        ]
    )
    torch.testing.assert_close(pooled, want)


@pytest.mark.parametrize(
    "kernel, stride",
    [((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)), ((2, 3, 1), (2, 3, 1)), ((3, 2, 5), (1, 2, 3))],
)
def test_same_max_pool_equals_explicit_padding(kernel, stride):
    # the copy-free path (ceil_mode) against the obvious one: F.pad with -inf, then pool without padding
    torch.manual_seed(0)
    pool = SameMaxPool3d(kernel, stride)
    for size in [(4, 4, 4), (5, 7, 6), (3, 9, 8), (6, 5, 11)]:
        x = torch.randn(2, 3, *size)
        ref = nn.functional.max_pool3d(
            nn.functional.pad(x, tf_same_pad(size, kernel, stride), value=-math.inf), kernel, stride
        )
        out = pool(x)
        assert out.shape[2:] == tuple(-(-n // s) for n, s in zip(size, stride))
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_same_conv_symmetric_case_equals_plain_conv():
    torch.manual_seed(0)
    conv = SameConv3d(3, 4, (3, 3, 3), (1, 2, 2), bias=True)
    plain = nn.Conv3d(3, 4, (3, 3, 3), (1, 2, 2), padding=1, bias=True)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 5, 9, 9)  # odd sizes: TF 'same' pads (1, 1) everywhere
    torch.testing.assert_close(conv(x), plain(x))


def test_symmetric_padding_option_same_shapes_and_keys_other_grid():
    torch.manual_seed(0)
    tf_pad, sym = r3d_tiny(), r3d_tiny(padding="symmetric")
    assert list(tf_pad.state_dict()) == list(sym.state_dict())
    sym.load_state_dict(tf_pad.state_dict())
    x = torch.randn(2, 3, 8, 32, 32)
    a, b = tf_pad.eval()(x), sym.eval()(x)
    assert a.shape == b.shape
    assert not torch.allclose(a, b, rtol=1e-3, atol=1e-5)  # the grid differs at every strided layer
    with pytest.raises(ValueError, match="padding"):
        r3d_tiny(padding="same")


def test_projection_head_structure():
    h = ProjectionHead(4096)
    kinds = [type(m) for m in h.mlp]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 3 + [nn.Linear]
    assert h.mlp[0].in_features == 4096 and h.mlp[0].out_features == 2048 and h.mlp[-1].out_features == 128


def test_tiny_forward_backward_and_build_model():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="r3d_tiny", proj_hidden=64, proj_dim=16))
    assert any(isinstance(b, Bottleneck3D) for b in model.backbone.modules())
    x = torch.randn(4, 3, 8, 64, 64)  # (B, 3, T, H, W)
    z = model(x)
    assert z.shape == (4, 16)
    z.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert sum(p.grad.abs().sum() for p in model.backbone.stem.parameters()) > 0


@pytest.mark.parametrize("train", [True, False])
def test_channels_last_equals_contiguous_fp32(train):
    torch.manual_seed(0)
    model = CVRLModel(r3d_tiny(), ProjectionHead(256, 64, 2, 32)).train(train)
    x = torch.randn(4, 3, 8, 32, 32)
    ref = model(x)
    model_cl = model.to(memory_format=torch.channels_last_3d)
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    assert x_cl.is_contiguous(memory_format=torch.channels_last_3d)
    out = model_cl(x_cl)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu_close_to_fp32(dtype):
    torch.manual_seed(0)
    model = CVRLModel(r3d_tiny(), ProjectionHead(256, 64, 2, 32))
    x = torch.randn(4, 3, 8, 32, 32).contiguous(memory_format=torch.channels_last_3d)
    model = model.to(memory_format=torch.channels_last_3d)
    ref = model(x)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
    assert out.dtype == dtype
    out.float().sum().backward()
    cos = nn.functional.cosine_similarity(out.float(), ref, dim=1)
    assert cos.min() > 0.95, cos  # bf16 keeps ~3 significant digits


def _analytic_flops(model: nn.Module, x: torch.Tensor) -> float:
    """2 * multiply-adds of every conv and linear layer, from hooks on a real forward."""
    total = []

    def conv_hook(m, i, o):
        total.append(
            2 * o.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] * m.kernel_size[2]
        )

    def linear_hook(m, i, o):
        total.append(2 * o.numel() * m.in_features)

    hs = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv3d) else linear_hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv3d, nn.Linear))
    ]
    model.eval()(x)
    for h in hs:
        h.remove()
    return float(sum(total))


def test_flops_per_clip_equals_three_forward_passes():
    model = CVRLModel(r3d_tiny(), ProjectionHead(256, 64, 3, 32))
    fwd = _analytic_flops(model, torch.randn(1, 3, 8, 64, 64))
    assert flops_per_clip(model, 8, 64) == pytest.approx(3 * fwd, rel=1e-9)


def test_r3d50_flops_match_issue_figure():
    # Issue 2 quotes 273 GFLOP per training clip (16 x 224^2, forward x 3).
    m = _meta(lambda: CVRLModel(r3d(50), ProjectionHead(2048)))
    assert flops_per_clip(m, 16, 224) == pytest.approx(273e9, rel=0.01)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_channels_last_autocast(dtype):
    torch.manual_seed(0)
    model = (
        CVRLModel(r3d_tiny(), ProjectionHead(256, 64, 2, 32)).cuda().to(memory_format=torch.channels_last_3d)
    )
    x = torch.randn(8, 3, 8, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    ref = model(x)
    with torch.autocast("cuda", dtype=dtype):
        out = model(x)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert nn.functional.cosine_similarity(out.float(), ref, dim=1).min() > 0.98
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
