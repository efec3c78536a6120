"""Decode heads as in the papers' mmsegmentation configs: UPerNet (UPerHead + an FCN auxiliary
head) and Semantic FPN (FPN neck + FPNHead).

Facts from mmsegmentation (``mmseg/models/decode_heads/uper_head.py``, ``psp_head.py``,
``fcn_head.py``, ``fpn_head.py``; ``configs/_base_/models/upernet_swin.py`` / ``fpn_r50.py``),
which the NAT/DiNAT, CSWin, BiFormer, DaViT and Agent-Attention segmentation configs extend:

- ``ConvModule`` = conv without bias + BatchNorm (SyncBN in the papers' multi-GPU runs) + ReLU.
- :class:`UPerHead` (Xiao et al., "Unified Perceptual Parsing", ECCV 2018): a pyramid pooling
  module on the last level (adaptive average pools 1, 2, 3, 6, each a 1x1 ConvModule, upsampled
  bilinearly and concatenated with the level, then a 3x3 ConvModule "bottleneck"), 1x1 lateral
  ConvModules on the other levels, a top-down pathway adding bilinearly upsampled coarser
  laterals, 3x3 ConvModules on the fused laterals, all levels upsampled to stride 4,
  concatenated and fused by a 3x3 ConvModule; dropout 0.1 and a 1x1 classifier conv (with bias).
  512 channels in every paper's config.
- :class:`FCNHead` (auxiliary, on stage 3 = stride 16, loss weight 0.4): one 3x3 ConvModule to
  256 channels, no concatenation with the input, dropout 0.1, 1x1 classifier.
- :class:`SemanticFPN` (Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019, as the
  PVT / Agent-PVT / CSWin / BiFormer "Semantic FPN" configs use it): mmseg's FPN neck (1x1
  laterals and 3x3 output convs, both with bias and no norm, nearest-neighbour top-down
  upsampling, 256 channels, 4 outputs), here torchvision's ``FeaturePyramidNetwork`` which has
  exactly that structure and parameter count (its convs start from kaiming-uniform, mmseg's from
  xavier-uniform); then mmseg's ``FPNHead``: per level
  ``max(1, log2(stride / 4))`` 3x3 ConvModules to 128 channels each followed by a 2x bilinear
  upsample (none for stride 4), the levels summed at stride 4, dropout 0.1, 1x1 classifier.

Why not ``segmentation_models_pytorch`` (0.6) for these: ``smp.UPerNet``'s decoder has the same
PPM/FPN/fusion structure but adds its own LayerNorm per level (which would duplicate the
backbone's per-level norm), has no dropout before the classifier and no FCN auxiliary head
(``aux_params`` is an image-level classification head), and its encoder contract needs stride 1
and 2 feature maps that the plain (stride-16) models do not have. ``smp.FPN``'s decoder uses
GroupNorm(32) in its segmentation blocks and ``align_corners=True`` upsampling where mmseg's
FPNHead uses BatchNorm and ``align_corners=False``. Either would change the parameter count and
the function the papers trained, so both heads are written here (small, with mmseg's
initialisation: normal(0, 0.01) classifier convs, kaiming for the ConvModules as mmcv does).
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

__all__ = ["ConvModule", "UPerHead", "FCNHead", "SemanticFPN", "norm_layer"]


def norm_layer(norm: str):
    """``'bn'`` -> ``nn.BatchNorm2d``; ``'syncbn'`` -> ``nn.SyncBatchNorm`` (the papers' choice:
    batch statistics over all GPUs). SyncBN synchronises only in training with more than one
    process, and then needs CUDA tensors (torch raises ``ValueError`` for CPU tensors under gloo);
    in a single process it behaves as BatchNorm. Raises ``ValueError`` for any other name."""
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "syncbn":
        return nn.SyncBatchNorm
    raise ValueError(f"norm must be 'bn' or 'syncbn', got {norm!r}")


class ConvModule(nn.Sequential):
    """mmcv's ``ConvModule`` with a norm: ``Conv2d(bias=False)`` + norm + ReLU (NCHW in/out)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, norm: str = "bn"):
        super().__init__(
            nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=False),
            norm_layer(norm)(out_chs),
            nn.ReLU(inplace=True),
        )
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _ClassifierMixin:
    def _init_classifier(self, channels: int, num_classes: int, dropout: float):
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UPerHead(nn.Module, _ClassifierMixin):
    """mmseg's ``UPerHead`` (module doc).

    Args:
        in_channels: channels of the input levels, finest first (strides 4, 8, 16, 32).
        num_classes: ``K``.
        channels: head width (512 in the papers).
        pool_scales: PPM output sizes on the last level.
        dropout: before the classifier (0.1).
        norm: ``'bn'`` or ``'syncbn'``.

    ``forward(levels)``: list of ``(B, C_i, H_i, W_i)`` -> logits ``(B, K, H_0, W_0)`` at the
    finest level's resolution (stride 4).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, norm: str = "bn"):
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        self.pool_scales = tuple(pool_scales)
        self.psp_modules = nn.ModuleList(
            [nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels[-1], channels, 1, norm)) for s in pool_scales])
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3, norm)
        self.lateral_convs = nn.ModuleList([ConvModule(c, channels, 1, norm) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([ConvModule(channels, channels, 3, norm) for _ in in_channels[:-1]])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, norm)
        self._init_classifier(channels, num_classes, dropout)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x] + [_resize(m(x), x.shape[-2:]) for m in self.psp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, levels: List[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(levels[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(levels[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [_resize(o, size) for o in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(nn.Module, _ClassifierMixin):
    """mmseg's ``FCNHead`` as the papers' auxiliary head (``num_convs=1``, ``concat_input=False``).

    ``forward(x)``: ``(B, C, H, W)`` -> logits ``(B, K, H, W)``.
    """

    def __init__(self, in_chs: int, num_classes: int, channels: int = 256, num_convs: int = 1,
                 dropout: float = 0.1, norm: str = "bn"):
        super().__init__()
        self.convs = nn.Sequential(*[ConvModule(in_chs if i == 0 else channels, channels, 3, norm)
                                     for i in range(num_convs)])
        self._init_classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_seg(self.convs(x))


class SemanticFPN(nn.Module, _ClassifierMixin):
    """Semantic FPN: an FPN neck (torchvision's, = mmseg's ``FPN`` without extra levels) and
    mmseg's ``FPNHead`` (module doc).

    Args:
        in_channels: channels of the input levels, finest first.
        num_classes: ``K``.
        reductions: the levels' strides (4, 8, 16, 32).
        neck_channels: FPN width (256).
        channels: head width (128).
        dropout, norm: as :class:`UPerHead`.

    ``forward(levels)`` -> logits ``(B, K, H_0, W_0)`` at the finest level's resolution.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, reductions: Sequence[int] = (4, 8, 16, 32),
                 neck_channels: int = 256, channels: int = 128, dropout: float = 0.1, norm: str = "bn"):
        super().__init__()
        self.neck = FeaturePyramidNetwork([int(c) for c in in_channels], neck_channels)
        base = int(reductions[0])
        self.scale_heads = nn.ModuleList()
        for r in reductions:
            n = max(1, int(math.log2(int(r)) - math.log2(base)))
            layers: List[nn.Module] = []
            for k in range(n):
                layers.append(ConvModule(neck_channels if k == 0 else channels, channels, 3, norm))
                if int(r) != base:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self._init_classifier(channels, num_classes, dropout)

    def forward(self, levels: List[torch.Tensor]) -> torch.Tensor:
        feats = list(self.neck({str(i): f for i, f in enumerate(levels)}).values())
        out = self.scale_heads[0](feats[0])
        for head, f in zip(self.scale_heads[1:], feats[1:]):
            out = out + _resize(head(f), out.shape[-2:])
        return self.cls_seg(out)
