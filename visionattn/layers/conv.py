"""Convolutional stems and downsamplers shared by the families.

All modules take NCHW images (stems) or NHWC tokens (downsamplers) and return NHWC tokens.

* :class:`ConvTokenizer` / :class:`ConvDownsampler`: NAT / DiNAT (Hassani et al., CVPR 2023,
  Sec. 3.2; github SHI-Labs/Neighborhood-Attention-Transformer ``classification/nat.py``): two
  stride-2 3x3 convs with no activation between them, then LayerNorm; one stride-2 3x3 conv
  without bias, then LayerNorm. Spatial size ``ceil(H / 2)`` per stride-2 conv.
* :class:`PatchEmbed` / :class:`PatchMerging`: the Swin-style layout used by DiNAT_s and the
  isotropic models (Liu et al., ICCV 2021, Sec. 3.1; ``classification/dinats.py``): a ``p x p``
  stride-``p`` conv (input zero-padded bottom/right to a multiple of ``p``) then LayerNorm;
  2x2 neighbor concatenation ``[x(0,0), x(1,0), x(0,1), x(1,1)]`` -> LayerNorm(4C) -> Linear(4C, 2C)
  without bias (odd maps zero-padded bottom/right first).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvTokenizer", "ConvDownsampler", "PatchEmbed", "PatchMerging"]


class ConvTokenizer(nn.Module):
    """NAT stem: ``(B, in_chans, H, W) -> (B, ceil(H/4), ceil(W/4), dim)``.

    Keys: ``proj.0`` (in_chans -> dim/2), ``proj.1`` (dim/2 -> dim), ``norm``.
    """

    def __init__(self, in_chans: int = 3, dim: int = 64, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """NAT downsampler: ``(B, H, W, dim) -> (B, ceil(H/2), ceil(W/2), dim_out)``.

    Keys: ``reduction`` (3x3 stride-2 conv, no bias), ``norm``.
    """

    def __init__(self, dim: int, dim_out: int, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.reduction = nn.Conv2d(dim, dim_out, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = norm_layer(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class PatchEmbed(nn.Module):
    """Patchify stem: ``(B, in_chans, H, W) -> (B, ceil(H/p), ceil(W/p), dim)``.

    Keys: ``proj`` (p x p conv, stride p, with bias), ``norm`` (absent when ``norm_layer`` is None).
    """

    def __init__(self, in_chans: int = 3, dim: int = 96, patch_size: int = 4, norm_layer=nn.LayerNorm):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        H, W = x.shape[-2:]
        if H % p or W % p:
            x = F.pad(x, (0, (p - W % p) % p, 0, (p - H % p) % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Swin patch merging: ``(B, H, W, dim) -> (B, ceil(H/2), ceil(W/2), dim_out)``.

    Keys: ``norm`` (over ``4 * dim``), ``reduction`` (Linear(4*dim, dim_out), no bias).
    """

    def __init__(self, dim: int, dim_out: int, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, dim_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # (B, H/2, 2 [row offset], W/2, 2 [col offset], C) -> channel order (col, row): x0, x1, x2, x3
        x = x.reshape(B, x.shape[1] // 2, 2, x.shape[2] // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))
