"""Baseline token mixers without attention: pooling (PoolFormer), depthwise convolution (ConvNeXt-style)
and identity.

They exist so that :mod:`visionattn.mixers` can put an attention mixer and its cheap baselines in the
same macro-architecture (the MetaFormer argument: Yu et al., "MetaFormer Is Actually What You Need
for Vision", CVPR 2022, arXiv:2111.11418, Sec. 3-4, where pooling and identity are the ablation's
floor). All three follow the mixer contract of the zoo: NHWC tokens ``(B, H, W, C) -> (B, H, W, C)``,
any ``H, W >= 1``; the conv ones permute to NCHW locally (as DESIGN.md asks) and hand NHWC back.
"""
from __future__ import annotations

import torch
from torch import nn
from timm.models.metaformer import Pooling

__all__ = ["PoolMixer", "DepthwiseConvMixer", "IdentityMixer"]


class PoolMixer(nn.Module):
    """PoolFormer token mixer: ``AvgPool(x) - x`` (Yu et al., CVPR 2022, Eq. 4).

    The pooling is timm's ``metaformer.Pooling`` (``AvgPool2d(pool_size, stride 1, padding
    pool_size // 2, count_include_pad=False)`` minus the input): borders average over the real
    tokens only, so no padding reaches the output.

    Args:
        dim: channels ``C`` (kept for the mixer contract; no parameters depend on it).
        pool_size: odd pooling window.

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``.

    Raises:
        ValueError: an even or non-positive ``pool_size``.
    """

    def __init__(self, dim: int, pool_size: int = 3):
        super().__init__()
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"PoolMixer: pool_size must be a positive odd int, got {pool_size}")
        self.dim = dim
        self.pool = Pooling(pool_size)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class DepthwiseConvMixer(nn.Module):
    """ConvNeXt-style token mixer: one ``k x k`` depthwise convolution (Liu et al., "A ConvNet for
    the 2020s", CVPR 2022, arXiv:2201.03545, Sec. 2.4: 7x7 depthwise conv as the spatial mixer).

    Inside the zoo's pre-norm block this gives ``x + dwconv(LN(x))`` then the MLP branch, i.e. the
    ConvNeXt block with the norm moved before the conv (MetaFormer's ``ConvFormer`` ordering).

    Args:
        dim: channels ``C``; kernel_size: odd kernel ``k`` (zero padding ``k // 2``);
        bias: conv bias.

    Keys: ``conv`` (``Conv2d(C, C, k, groups=C)``).

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``.

    Raises:
        ValueError: an even or non-positive ``kernel_size``.
    """

    def __init__(self, dim: int, kernel_size: int = 7, bias: bool = True):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"DepthwiseConvMixer: kernel_size must be a positive odd int, got {kernel_size}")
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class IdentityMixer(nn.Module):
    """No token mixing at all: returns its input (MetaFormer's ``IdentityFormer`` floor).

    Args:
        dim: channels (kept for the mixer contract).

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
