"""The CVRL 3D ResNet backbone (R3D), its projection head, and a FLOP counter for MFU.

The backbone follows the TF Model Garden ``video_ssl`` definition CVRL was trained with
(``official/vision/modeling/backbones/resnet_3d.py`` with ``cvrl_pretrain_k600_200ep.yaml``):

- stem: Conv3d 64, kernel (5, 7, 7), stride (2, 2, 2), BN, ReLU; max-pool (1, 3, 3) stride (1, 2, 2);
- bottleneck stages res2..res5 of [3, 4, 6, 3] blocks (R3D-50), filters 64/128/256/512, expansion 4;
- each block: Conv (k_t, 1, 1) -> BN -> ReLU -> Conv (1, 3, 3) stride (1, s, s) -> BN -> ReLU -> Conv 1x1x1 ->
BN,
  plus a shortcut (Conv 1x1x1 stride (1, s, s) + BN where the channel count changes), then ReLU;
  k_t = 1 in res2/res3 and 3 in res4/res5; s = 2 in the first block of res3, res4, res5; no temporal stride;
- BN: TF momentum 0.9 / eps 1e-5 in the backbone (torch momentum 0.1; the ``norm_activation`` of
  ``video_classification.py`` the video_ssl experiments inherit), 0.997 / 1e-5 in the head (torch 0.003;
  ``hidden_norm_activation`` of ``video_ssl.py``); gamma initialised to 1 everywhere (the reference does not
  zero-init the last BN of a block);
- conv kernels: Keras ``VarianceScaling`` (fan-in, scale 1, truncated normal); head: Glorot-uniform, zero
bias.

Padding is TF's ``same`` by default (``padding="tf"``): where a layer needs an odd total padding (a strided
conv or the stem max-pool on an even-sized input) the extra pixel goes on the far side (later frame, bottom,
right). Symmetric padding gives the same output shapes on a grid shifted by one input pixel at every strided
layer, so weights trained by the reference (``fastcvrl.convert_tf``) reproduce its features only with ``tf``.
``padding="symmetric"`` (torch's usual ``k // 2``) remains for comparison; it skips one ``F.pad`` copy per
strided conv (the max-pool gets its extra far-side cell from ``ceil_mode``, no copy). Layers whose padding is
symmetric anyway (every stride-1 conv) never copy.

    backbone = r3d(50)                      # (B, 3, T, H, W) -> (B, 2048); 31.7M parameters
    model = CVRLModel(backbone, ProjectionHead(backbone.out_dim))   # -> (B, 128), not normalised

Activation checkpointing (``model.activation_checkpointing``: ``none`` | ``stage`` | ``block``) keeps only the
input of each residual stage (or block) for the backward pass and recomputes the rest there: less memory for
about one more forward pass. The recomputation leaves BN's running statistics alone (updated once per step,
as without it), so a checkpointed step equals a plain one.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

# Stage depths of the bottleneck ResNets (He et al. 2016), as RESNET_SPECS in the TF reference.
DEPTHS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
TEMPORAL_KERNELS = (1, 1, 3, 3)  # first conv of every block of res2..res5 (CVRL R3D)

# TF BatchNormalization momentum m is torch momentum 1 - m.
BACKBONE_BN = dict(momentum=0.1, eps=1e-5)  # video_classification.py norm_activation (0.9, 1e-5)
HEAD_BN = dict(momentum=0.003, eps=1e-5)  # video_ssl hidden_norm_activation (0.997, 1e-5)
CHECKPOINTING = (
    "none",
    "stage",
    "block",
)  # model.activation_checkpointing: the unit whose input alone is kept
PADDINGS = ("tf", "symmetric")


def tf_same_pad(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> list[int]:
    """TF ``padding='same'`` for an input of spatial ``size`` (T, H, W): output ``ceil(n / s)``, total padding
    ``max((out - 1) * s + k - n, 0)``, the odd pixel after. Returned in ``F.pad`` order (W, H, T),
    before/after."""
    pad: list[int] = []
    for n, k, s in reversed(list(zip(size, kernel, stride))):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pad += [total // 2, total - total // 2]
    return pad


class SameConv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters and state-dict keys) padded as TF ``'same'``: symmetric padding goes to
    the convolution itself (no copy); only an odd total padding costs an ``F.pad`` copy of the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = tf_same_pad(x.shape[2:], self.kernel_size, self.stride)
        if pad[0::2] == pad[1::2]:
            return F.conv3d(
                x, self.weight, self.bias, self.stride, tuple(pad[4::-2]), self.dilation, self.groups
            )
        return F.conv3d(F.pad(x, pad), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SameMaxPool3d(nn.MaxPool3d):
    """``nn.MaxPool3d`` padded as TF ``'same'`` (padding never wins the max, as in TF). Where the far side
    needs one cell more than the near side, ``ceil_mode`` adds exactly that cell, so no input copy is made."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = _triple(self.kernel_size), _triple(self.stride)
        pad = tf_same_pad(x.shape[2:], k, s)
        before, extra = pad[4::-2], [a - b for a, b in zip(pad[5::-2], pad[4::-2])]  # (T, H, W)
        if all(e == 0 or (e == 1 and si > 1) for e, si in zip(extra, s)) and all(
            b <= ki // 2 for b, ki in zip(before, k)
        ):
            return F.max_pool3d(x, k, s, tuple(before), ceil_mode=any(extra))
        return F.max_pool3d(F.pad(x, pad, value=-math.inf), k, s)  # the general case (a copy)


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _init_conv(conv: nn.Conv3d) -> None:
    """Keras VarianceScaling(scale=1, mode='fan_in', distribution='truncated_normal')."""
    fan_in = conv.in_channels // conv.groups * math.prod(conv.kernel_size)
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of a unit normal truncated at +-2
    nn.init.trunc_normal_(conv.weight, std=std, a=-2 * std, b=2 * std)


def _check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def _conv_bn(
    cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int], padding: str = "tf"
) -> list[nn.Module]:
    _check_padding(padding)
    if padding == "tf":
        conv = SameConv3d(cin, cout, tuple(kernel), tuple(stride), bias=False)
    else:
        conv = nn.Conv3d(
            cin, cout, tuple(kernel), tuple(stride), padding=tuple(k // 2 for k in kernel), bias=False
        )
    _init_conv(conv)
    return [conv, nn.BatchNorm3d(cout, **BACKBONE_BN)]


class Bottleneck3D(nn.Module):
    """TF ``BottleneckBlock3D``: temporal (k_t,1,1) conv, spatial (1,3,3) conv with stride, 1x1x1 expand
    x4."""

    def __init__(
        self, cin: int, filters: int, temporal_kernel: int, spatial_stride: int, padding: str = "tf"
    ) -> None:
        super().__init__()
        cout = 4 * filters
        s = spatial_stride
        self.body = nn.Sequential(
            *_conv_bn(cin, filters, (temporal_kernel, 1, 1), (1, 1, 1), padding),
            nn.ReLU(inplace=True),
            *_conv_bn(filters, filters, (1, 3, 3), (1, s, s), padding),
            nn.ReLU(inplace=True),
            *_conv_bn(filters, cout, (1, 1, 1), (1, 1, 1), padding),
        )
        if cin != cout:  # the reference's 1x1 conv is 'valid' (never padded): plain nn.Conv3d
            self.shortcut: nn.Module = nn.Sequential(*_conv_bn(cin, cout, (1, 1, 1), (1, s, s), "symmetric"))
        elif s != 1:  # the reference's 1x1 max-pool with stride: plain subsampling
            self.shortcut = nn.MaxPool3d(1, (1, s, s))
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class R3D(nn.Module):
    """3D ResNet backbone: (B, 3, T, H, W) -> globally average-pooled features (B, out_dim).

    ``padding``: ``"tf"`` (TF ``'same'``, the reference's; default) or ``"symmetric"`` (see the module
    doc)."""

    def __init__(
        self,
        blocks: Sequence[int],
        base_width: int = 64,
        temporal_kernels: Sequence[int] = TEMPORAL_KERNELS,
        padding: str = "tf",
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or len(temporal_kernels) != 4:
            raise ValueError(
                f"R3D needs 4 stages, got blocks={list(blocks)} temporal_kernels={list(temporal_kernels)}"
            )
        _check_padding(padding)
        pool = (
            SameMaxPool3d((1, 3, 3), (1, 2, 2))
            if padding == "tf"
            else nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        )
        self.stem = nn.Sequential(
            *_conv_bn(3, base_width, (5, 7, 7), (2, 2, 2), padding),
            nn.ReLU(inplace=True),
            pool,
        )
        stages = []
        cin = base_width
        for i, (n, kt) in enumerate(zip(blocks, temporal_kernels)):
            filters = base_width * 2**i
            stage = [
                Bottleneck3D(
                    cin if j == 0 else 4 * filters, filters, kt, 2 if (i > 0 and j == 0) else 1, padding
                )
                for j in range(n)
            ]
            stages.append(nn.Sequential(*stage))
            cin = 4 * filters
        self.res2, self.res3, self.res4, self.res5 = stages
        self.out_dim = cin
        self.activation_checkpointing = "none"  # one of CHECKPOINTING; build_model sets it from the config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C, T/2, H/4, W/4)
        for stage in (self.res2, self.res3, self.res4, self.res5):
            x = _run_stage(stage, x, self.activation_checkpointing)  # res5: (B, 32C, T/2, H/32, W/32)
        return x.mean(dim=(2, 3, 4))  # (B, 32C)


def _run_stage(stage: nn.Sequential, x: torch.Tensor, mode: str) -> torch.Tensor:
    """``stage(x)``, checkpointed per stage or per block when ``mode`` asks and gradients are being
    recorded."""
    if mode == "none" or not torch.is_grad_enabled():
        return stage(x)
    if mode == "stage":
        return _checkpoint(stage, x)
    if mode == "block":
        for block in stage:
            x = _checkpoint(block, x)
        return x
    raise ValueError(
        f"model.activation_checkpointing: expected one of {', '.join(CHECKPOINTING)}, got {mode!r}"
    )


def _checkpoint(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` keeping only ``x`` for the backward pass, which runs ``module`` again.

    Non-reentrant (``use_reentrant=False``: no host sync, meant to be captured in a CUDA graph with the rest
    of the step); no RNG state is stashed and restored (the backbone draws no random numbers, so that would
    only add work to every step); during the recomputation BN normalises with the batch statistics as before
    but does not update its running statistics a second time."""
    return torch.utils.checkpoint.checkpoint(
        module,
        x,
        use_reentrant=False,
        preserve_rng_state=False,
        context_fn=lambda: (contextlib.nullcontext(), _bn_stats_frozen(module)),
    )


@contextlib.contextmanager
def _bn_stats_frozen(module: nn.Module) -> Iterator[None]:
    """BN layers of ``module`` (SyncBatchNorm too) normalise with batch statistics as usual but leave their
    running statistics and batch count as they are: momentum 0 (running = 1 * running + 0 * batch), and the
    batch count incremented in a scratch copy. (Not ``track_running_stats=False``: BN would then save other
    tensors for its backward than the forward did, which the checkpoint refuses.)"""
    bns = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    saved = [(m.momentum, m.num_batches_tracked) for m in bns]
    for m in bns:
        if m.momentum is None:  # a cumulative average would use the batch count
            raise ValueError("activation checkpointing needs BatchNorm with a momentum (not None)")
        m.momentum = 0.0
        if m.num_batches_tracked is not None:
            m.num_batches_tracked = (
                m.num_batches_tracked.clone()
            )  # () int64: the recomputation's +1 lands here
    try:
        yield
    finally:
        for m, (momentum, count) in zip(bns, saved):
            m.momentum, m.num_batches_tracked = momentum, count


def r3d(depth: int = 50, width: int = 1, padding: str = "tf") -> R3D:
    """CVRL R3D-``depth`` with all channels times ``width`` (the paper's 2x/4x models); out_dim 2048*width."""
    if depth not in DEPTHS:
        raise ValueError(f"r3d depth must be one of {sorted(DEPTHS)}, got {depth}")
    if width < 1:
        raise ValueError(f"r3d width must be >= 1, got {width}")
    return R3D(DEPTHS[depth], 64 * width, padding=padding)


def r3d_tiny(width: int = 1, padding: str = "tf") -> R3D:
    """Same structure (stem, 4 stages, temporal kernels) with one block per stage and base width 8: CPU
    runs."""
    return R3D((1, 1, 1, 1), 8 * width, padding=padding)


def build_backbone(arch: str, width: int = 1, padding: str = "tf") -> R3D:
    """``arch`` in r3d_tiny | r3d50 | r3d101 | r3d152 (the ``model.arch`` config key)."""
    if arch == "r3d_tiny":
        return r3d_tiny(width, padding)
    if arch.startswith("r3d") and arch[3:].isdigit() and int(arch[3:]) in DEPTHS:
        return r3d(int(arch[3:]), width, padding)
    raise ValueError(f"model.arch: unknown architecture {arch!r} (choose r3d_tiny, r3d50, r3d101 or r3d152)")


class ProjectionHead(nn.Module):
    """SimCLR/CVRL MLP: ``layers`` x (Linear -> BN -> ReLU), then Linear -> out_dim (video_ssl_model.py)."""

    def __init__(self, in_dim: int, hidden: int = 2048, layers: int = 3, out_dim: int = 128) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.BatchNorm1d(hidden, **HEAD_BN), nn.ReLU(inplace=True)]
            d = hidden
        mods.append(nn.Linear(d, out_dim))
        for m in mods:
            if isinstance(m, nn.Linear):  # Keras Dense defaults
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.mlp = nn.Sequential(*mods)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class CVRLModel(nn.Module):
    """Backbone + projection head: (B, 3, T, H, W) -> un-normalised embeddings (B, out_dim)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_model(cfg) -> CVRLModel:
    """Model from ``cfg.model`` (a ``ModelConfig``). BN becomes SyncBatchNorm when ``sync_bn`` is set and a
    multi-process group is running (SyncBatchNorm needs one)."""
    backbone = build_backbone(cfg.arch, cfg.width)
    mode = getattr(cfg, "activation_checkpointing", "none")
    if mode not in CHECKPOINTING:
        raise ValueError(
            f"model.activation_checkpointing: expected one of {', '.join(CHECKPOINTING)}, got {mode!r}"
        )
    backbone.activation_checkpointing = mode
    model = CVRLModel(
        backbone, ProjectionHead(backbone.out_dim, cfg.proj_hidden, cfg.proj_layers, cfg.proj_dim)
    )
    if cfg.sync_bn and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_clip(model: nn.Module, num_frames: int, size: int) -> float:
    """Training FLOPs for one clip: 3 x forward FLOPs (backward ~ 2 x forward), counted by
    ``FlopCounterMode`` on a meta-device copy (no memory, no compute). A multiply-add counts as 2 FLOPs;
    only matmuls/convolutions are counted (BN, ReLU, pooling are not)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta")
    meta.eval()  # no running-stat updates; FLOPs are the same
    x = torch.empty(1, 3, num_frames, size, size, device="meta")  # (1, 3, T, H, W)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x)
    return 3.0 * counter.get_total_flops()
