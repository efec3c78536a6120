"""Large-kernel attention (LKA) and the convolutional parts of VAN's block.

Paper: Guo, Lu, Liu, Cheng, Hu. "Visual Attention Network". Computational Visual Media 2023,
arXiv:2202.09741 (Sec. 3.1-3.2, Fig. 2-3). Official code: github Visual-Attention-Network/
VAN-Classification ``models/van.py`` (``LKA``, ``Attention``, ``Mlp``/``DWConv``, ``Block``).

LKA decomposes a ``K x K`` convolution with dilation ``d`` into a ``(2d-1) x (2d-1)`` depthwise
convolution (local), a ``ceil(K/d) x ceil(K/d)`` depthwise convolution with dilation ``d``
(long range) and a ``1 x 1`` convolution (channels), and uses the result as an attention map
that multiplies the input element-wise (Eq. 1-2)::

    Attention = Conv1x1(DW-D-Conv(DW-Conv(F)));   Output = Attention * F

VAN's token mixer ("spatial attention", official ``Attention``) wraps it:
``x + proj_2(LKA(GELU(proj_1(x))))`` with 1x1 projections and **its own shortcut** (the block
adds a second, outer residual around it).

Layout: every module here takes and returns NHWC tokens ``(B, H, W, C)`` (the zoo's mixer
contract). 1x1 convolutions are ``nn.Linear`` over the last dimension (the same arithmetic; the
checkpoint filter reshapes the official ``(C_out, C_in, 1, 1)`` weights), depthwise convolutions
and BatchNorm run on the NCHW *view* of the NHWC memory (``x.permute(0, 3, 1, 2)``, a
channels-last tensor) and hand NHWC back, so nothing is copied between the ops.

All convolutions use "same" zero padding, so every map size ``H, W >= 1`` works without padding
or masking (the official code has no size restriction either).
"""
from __future__ import annotations

import math
from typing import Optional, Type

import torch
from torch import nn

__all__ = ["LKA", "LargeKernelAttention", "DWConvMlp", "BatchNormNHWC", "lka_kernels"]


def lka_kernels(kernel_size: int, dilation: int):
    """The decomposition of a ``kernel_size`` receptive field with ``dilation`` (paper Sec. 3.1).

    Returns:
        ``(k_local, k_dilated)``: the depthwise kernel ``2 * dilation - 1`` and the dilated
        depthwise kernel ``ceil(kernel_size / dilation)`` (VAN: 21, 3 -> 5, 7).

    Raises:
        ValueError: non-positive arguments, or an even ``k_dilated`` (no symmetric "same" padding).
    """
    if not isinstance(kernel_size, int) or not isinstance(dilation, int) or kernel_size < 1 or dilation < 1:
        raise ValueError(f"LKA: kernel_size and dilation must be positive ints, got kernel_size={kernel_size!r}, dilation={dilation!r}")
    k_local, k_dilated = 2 * dilation - 1, math.ceil(kernel_size / dilation)
    if k_dilated % 2 == 0:
        raise ValueError(
            f"LKA: kernel_size={kernel_size} with dilation={dilation} gives an even dilated kernel "
            f"ceil({kernel_size}/{dilation}) = {k_dilated}; choose values whose ratio rounds up to an odd number (VAN: 21, 3)"
        )
    return k_local, k_dilated


class LKA(nn.Module):
    """Large-kernel attention (paper Eq. 1-2, official ``LKA``): ``u * conv1(conv_spatial(conv0(u)))``.

    Args:
        dim: channels ``C``.
        kernel_size: receptive field ``K`` of the decomposed convolution (21).
        dilation: dilation ``d`` of the long-range depthwise convolution (3).

    Keys: ``conv0`` (depthwise ``(2d-1)^2``, bias), ``conv_spatial`` (depthwise ``ceil(K/d)^2``,
    dilation ``d``, bias), ``conv1`` (``Linear(C, C)``: the 1x1 convolution).

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``; MACs ``N*C*((2d-1)^2 + ceil(K/d)^2 + C)``.

    Raises:
        ValueError: see :func:`lka_kernels`.
    """

    def __init__(self, dim: int, kernel_size: int = 21, dilation: int = 3):
        super().__init__()
        k0, kd = lka_kernels(kernel_size, dilation)
        self.conv0 = nn.Conv2d(dim, dim, k0, padding=k0 // 2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, kd, padding=dilation * (kd // 2), dilation=dilation, groups=dim)
        self.conv1 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.conv_spatial(self.conv0(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        return x * self.conv1(attn)


class LargeKernelAttention(nn.Module):
    """VAN's token mixer (official ``Attention``): ``x + proj_2(LKA(GELU(proj_1(x))))``.

    Args:
        dim: channels ``C``.
        kernel_size, dilation: the LKA decomposition (21, 3: 5x5 depthwise, 7x7 depthwise
            dilation 3, 1x1).
        act_layer: activation after ``proj_1`` (GELU, exact erf).
        shortcut: add the mixer's input to its output, as the official module does (VAN's block
            then adds its outer residual too); False gives the bare gated branch.
        proj_drop: dropout after ``proj_2`` (none officially).

    Keys: ``proj_1``, ``lka.{conv0, conv_spatial, conv1}``, ``proj_2`` (1x1 convolutions as
    ``Linear``). No heads: the mixer registry's ``num_heads`` is ignored.

    Shapes: NHWC ``(B, H, W, C) -> (B, H, W, C)``, any ``H, W >= 1``.
    MACs: ``3*N*C^2 + N*C*((2d-1)^2 + ceil(K/d)^2)`` (VAN: ``3*N*C^2 + 74*N*C``).

    Raises:
        ValueError: see :func:`lka_kernels`.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 21,
        dilation: int = 3,
        act_layer: Type[nn.Module] = nn.GELU,
        shortcut: bool = True,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.shortcut = shortcut
        self.proj_1 = nn.Linear(dim, dim)
        self.act = act_layer()
        self.lka = LKA(dim, kernel_size, dilation)
        self.proj_2 = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj_drop(self.proj_2(self.lka(self.act(self.proj_1(x)))))
        return x + y if self.shortcut else y


class DWConvMlp(nn.Module):
    """MLP with a depthwise convolution after the expansion (VAN's ``Mlp``, PVTv2-style).

    ``fc2(drop(act(dwconv(fc1(x)))))`` then dropout: the 3x3 depthwise conv (with bias) sits
    between ``fc1`` and the activation, as in the official code.

    Args:
        in_features: channels ``C``; hidden_features: expansion width (default ``C``);
        out_features: output channels (default ``C``); act_layer: activation (GELU);
        drop: dropout after the activation and after ``fc2``; kernel_size: odd depthwise kernel.

    Keys: ``fc1``, ``dwconv``, ``fc2`` (``fc1``/``fc2`` are the official 1x1 convolutions as ``Linear``).

    Shapes: NHWC ``(B, H, W, C) -> (B, H, W, out_features)``.

    Raises:
        ValueError: an even or non-positive ``kernel_size``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        act_layer: Type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        kernel_size: int = 3,
    ):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"DWConvMlp: kernel_size must be a positive odd int, got {kernel_size}")
        hidden = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, out_features or in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(self.fc1(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.drop2(self.fc2(self.drop1(self.act(x))))


class BatchNormNHWC(nn.Module):
    """``nn.BatchNorm2d`` over the channels of NHWC tokens (statistics per channel over B, H, W).

    The norm is a real ``nn.BatchNorm2d`` (key ``bn``) applied to the NCHW view, so everything
    that handles BatchNorm2d works on it unchanged: ``SyncBatchNorm.convert_sync_batchnorm``,
    :func:`visionattn.detection.freeze_batch_norm`, timm's ``freeze_batch_norm_2d``, fvcore.

    Args:
        num_features: channels ``C``; eps, momentum: as ``nn.BatchNorm2d`` (1e-5, 0.1).

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
