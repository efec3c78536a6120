"""BiFormer token mixers: bi-level routing attention and the last stage's global attention with LePE.

Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention", CVPR 2023, Sec. 3.2
(BRA, Eq. 1-4) and Sec. 3.3 (LePE, the 5x5 depthwise "local context enhancement"); official code
github rayleizhu/BiFormer at 1697bbb: ``ops/bra_legacy.py::BiLevelRoutingAttention`` (stages 1-3
of BiFormer-T/S/B, STL) and ``models/_common.py::AttentionLePE`` (stage 4, ``topk=-2``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..ops._trace import crop_nhwc, pad_nhwc
from ..ops.routing import bra2d, bra2d_with_weights

# leaves of FX graphs: padding decisions and the routing op (its region grid depends on the map
# size) run at call time (see ops/_trace.py)
torch.fx.wrap("pad_nhwc")
torch.fx.wrap("crop_nhwc")
torch.fx.wrap("bra2d")

__all__ = ["BiLevelRoutingAttention", "AttentionLePE"]


class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention on NHWC tokens, with LePE on V (BiFormer stages 1-3).

    ``qkv = Linear(C, 2*qk_dim + C)`` with rows ``[q | k | v]`` (official ``qkv.qkv``), heads split
    head-major, region routing + attention by :func:`visionattn.ops.bra2d` with scale
    ``qk_dim ** -0.5`` (the official scale; *not* the head dim), ``lepe`` = depthwise
    ``lepe_kernel``-conv on the full V map (it spans region borders), and
    ``out = proj(attn + lepe)`` (LePE added before the output projection, official ``wo``).

    Args:
        dim: channels ``C``.
        num_heads: heads (``dim`` and ``qk_dim`` divisible by it).
        num_regions: regions per side, ``n_win`` (7 for the ImageNet models, 16/8 in the official
            detection/segmentation configs); an ``(nh, nw)`` pair is accepted too.
        topk: routed regions per query region.
        qk_dim: query/key channels (default ``dim``).
        qkv_bias: bias in ``qkv``.
        lepe_kernel: LePE depthwise kernel (0: no LePE).
        pad_mode: what happens when the map is not a multiple of ``num_regions``:
            ``'mask'`` (default): q/k/v padded after projection, padded tokens left out of the
            region means and masked as keys (see :mod:`visionattn.ops.routing`), LePE on the
            unpadded V; ``'zero'``: the official ``auto_pad=True`` of the detection/segmentation
            backbones: the (normalised) input is zero-padded to ``n_win`` regions of
            ``ceil(L/n_win)`` before ``qkv``, padded tokens (carrying the qkv bias) take part in
            routing and attention and LePE sees them, and the output is cropped. Both are
            identical when the map is divisible.
        proj_drop: dropout after ``proj``.

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``, any ``H, W >= 1``.

    Raises:
        ValueError: indivisible channels, ``topk < 1`` or an unknown ``pad_mode``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_regions: Union[int, Tuple[int, int]] = 7,
        topk: int = 4,
        qk_dim: Optional[int] = None,
        qkv_bias: bool = True,
        lepe_kernel: int = 5,
        pad_mode: str = "mask",
        proj_drop: float = 0.0,
    ):
        super().__init__()
        qk_dim = qk_dim or dim
        if dim % num_heads or qk_dim % num_heads:
            raise ValueError(f"BiLevelRoutingAttention: dim {dim} and qk_dim {qk_dim} must be divisible by num_heads {num_heads}")
        if topk < 1:
            raise ValueError(f"BiLevelRoutingAttention: topk must be >= 1, got {topk}")
        if pad_mode not in ("mask", "zero"):
            raise ValueError(f"BiLevelRoutingAttention: pad_mode must be 'mask' or 'zero', got {pad_mode!r}")
        self.dim, self.qk_dim, self.num_heads = dim, qk_dim, num_heads
        self.num_regions, self.topk, self.pad_mode = num_regions, topk, pad_mode
        self.scale = qk_dim ** -0.5
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=qkv_bias)
        self.lepe = nn.Conv2d(dim, dim, lepe_kernel, padding=lepe_kernel // 2, groups=dim) if lepe_kernel > 0 else None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, qk_dim={self.qk_dim}, num_regions={self.num_regions}, topk={self.topk}, pad_mode={self.pad_mode!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if self.pad_mode == "zero":
            n_h, n_w = (self.num_regions, self.num_regions) if isinstance(self.num_regions, int) else self.num_regions
            x = pad_nhwc(x, n_h, n_w)
        Hp, Wp = x.shape[1], x.shape[2]
        m = self.num_heads
        q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, C], dim=-1)
        out = bra2d(
            q.reshape(B, Hp, Wp, m, self.qk_dim // m),  # explicit sizes: an empty batch has no -1 to infer
            k.reshape(B, Hp, Wp, m, self.qk_dim // m),
            v.reshape(B, Hp, Wp, m, C // m),
            self.num_regions,
            self.topk,
            self.scale,
        ).reshape(B, Hp, Wp, C)  # positional: TorchScript passes an ignored function's arguments by position
        if self.lepe is not None:
            out = out + self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = crop_nhwc(out, H, W)
        return self.proj_drop(self.proj(out))

    def forward_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """:meth:`forward` through the explicit softmax, returning the routing and weights it used.

        Called by :func:`visionattn.visualize.capture_attention` in place of :meth:`forward`
        (same output to float tolerance: :func:`~visionattn.ops.routing.bra2d_with_weights` shares
        :func:`~visionattn.ops.routing.bra2d`'s routing).

        Returns:
            ``(out, record)``, ``record = {"kind": "routing", "attn": (B, heads, R, T, topk*T),
            "idx": (B, R, topk), "grid": RegionGrid, "size": (H, W)}`` (see
            :func:`~visionattn.ops.routing.bra2d_with_weights`; with ``pad_mode='zero'`` the grid
            covers the zero-padded map and its padded tokens are real keys).
        """
        B, H, W, C = x.shape
        if self.pad_mode == "zero":
            n_h, n_w = (self.num_regions, self.num_regions) if isinstance(self.num_regions, int) else self.num_regions
            x = pad_nhwc(x, n_h, n_w)
        Hp, Wp = x.shape[1], x.shape[2]
        m = self.num_heads
        q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, C], dim=-1)
        out, attn, idx, grid = bra2d_with_weights(
            q.reshape(B, Hp, Wp, m, self.qk_dim // m), k.reshape(B, Hp, Wp, m, self.qk_dim // m),
            v.reshape(B, Hp, Wp, m, C // m), self.num_regions, self.topk, self.scale)
        out = out.reshape(B, Hp, Wp, C)
        if self.lepe is not None:
            out = out + self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = crop_nhwc(out, H, W)
        record = {"kind": "routing", "attn": attn, "idx": idx, "grid": grid, "size": (H, W), "topk": self.topk}
        return self.proj_drop(self.proj(out)), record


class AttentionLePE(nn.Module):
    """Global multi-head self-attention with LePE on the block input (BiFormer stage 4).

    Official ``models/_common.py::AttentionLePE``: ``qkv = Linear(C, 3C, bias=False)`` (rows
    ``[q | k | v]``), ``num_heads`` heads (8 in every released model, not ``C/32``), scale
    ``head_dim ** -0.5``, ``lepe`` = depthwise ``lepe_kernel``-conv of the mixer *input* (the
    normalised block input, not V), ``out = proj(softmax(q k^T * scale) v + lepe)``.

    Args:
        dim: channels ``C``; num_heads: heads; qkv_bias: bias in ``qkv``;
        lepe_kernel: LePE kernel (0: none); proj_drop: dropout after ``proj``.

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``, any ``H, W``.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, lepe_kernel: int = 5, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"AttentionLePE: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.lepe = nn.Conv2d(dim, dim, lepe_kernel, padding=lepe_kernel // 2, groups=dim) if lepe_kernel > 0 else None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, H, W, C)
        if self.lepe is not None:
            out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj_drop(self.proj(out))

    def forward_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """:meth:`forward` through the explicit softmax; ``record = {"kind": "global", "attn":
        (B, heads, H*W, H*W), "size": (H, W), "prefix": 0}`` (query rows, key columns, row-major
        tokens). Called by :func:`visionattn.visualize.capture_attention`."""
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, H, W, C)
        if self.lepe is not None:
            out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj_drop(self.proj(out)), {"kind": "global", "attn": attn, "size": (H, W), "prefix": 0}
