"""Multi-head self-attention over windows of NHWC tokens with a relative position bias.

``window_size=None`` attends over the whole map (one window): the ViT-rpb baseline of the NAT
paper (Hassani et al., CVPR 2023, Table 7; github SHI-Labs/Neighborhood-Attention-Transformer
``classification/isotropic.py`` ``MHSARPB``): fused ``qkv``, scale ``head_dim ** -0.5``,
``rpb`` table ``(heads, 2S-1, 2S-1)`` indexed as in :mod:`visionattn.layers.pos`; the table is
resized bicubically when the map is not ``S x S``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import trunc_normal_

from .pos import relative_position_bias

__all__ = ["WindowAttention"]


class WindowAttention(nn.Module):
    """Global (single-window) attention with relative position bias on NHWC tokens.

    Args:
        dim: channels ``C``; num_heads: heads (``C`` divisible by it).
        window_size: ``(Sh, Sw)``, the extent the ``rpb`` table is built for (``2S-1`` entries).
        qkv_bias: bias in ``qkv``; proj_drop: dropout after ``proj``.

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``; any ``H, W`` (the table is resized when they differ
    from ``window_size``).
    """

    def __init__(self, dim: int, num_heads: int, window_size: Tuple[int, int], qkv_bias: bool = True, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"WindowAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.window_size = tuple(window_size)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * self.window_size[0] - 1, 2 * self.window_size[1] - 1))
        trunc_normal_(self.rpb, std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = relative_position_bias(self.rpb, H, W).to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0), scale=self.scale)
        x = x.transpose(1, 2).reshape(B, H, W, C)
        return self.proj_drop(self.proj(x))
