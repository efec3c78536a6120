"""Cross-shaped window self-attention with locally-enhanced positional encoding (CSWin).

Dong et al., "CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped
Windows", CVPR 2022 (arXiv:2107.00652), Sec. 3.2 (Eq. 1-3) and Sec. 3.3 (LePE, Eq. 4);
official code github microsoft/CSWin-Transformer ``models/cswin.py`` (``CSWinBlock`` +
``LePEAttention``).

The heads are split in two groups: the first ``C/2`` channels (``heads/2`` heads) attend inside
vertical stripes (full height x ``sw`` columns; the official branch ``attns.0``, ``idx=0``), the
second ``C/2`` inside horizontal stripes (``sw`` rows x full width; ``attns.1``). A ``full``
mixer (CSWin's last stage) attends over the whole map with all heads. The stripe attention and
padding rules are :func:`visionattn.ops.stripe.stripe_attention`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..ops.stripe import stripe_attention, stripe_attention_with_weights

torch.fx.wrap("stripe_attention")  # a leaf of FX graphs (stripes and padding depend on the map size)

__all__ = ["CrossShapedWindowAttention"]


class CrossShapedWindowAttention(nn.Module):
    """CSWin token mixer: fused qkv, two stripe branches (or one global branch) with LePE, proj.

    Args:
        dim: channels ``C``.
        num_heads: heads ``m`` (even unless ``full``); ``head_dim = C / m`` in both branches.
        stripe_width: stripe width ``sw`` (tokens); ignored when ``full``.
        full: one branch attending over the whole map (CSWin's last stage, or a stage whose
            resolution equals ``sw`` at construction).
        qkv_bias: bias in ``qkv``.
        attn_drop: attention dropout; proj_drop: dropout after ``proj``.
        mask_padding: mask the zero tokens padded onto maps not divisible by ``sw`` out of attention
            (default); False keeps them as the official segmentation backbone does.
        lepe_kernel: LePE depthwise kernel size (3 in CSWin).

    Keys: ``qkv`` (Linear(C, 3C), output channels ``q | k | v``), ``lepe`` (depthwise
    Conv2d(C, C, 3), channels ``[:C/2]`` = the official ``attns.0.get_v``, ``[C/2:]`` = ``attns.1.get_v``),
    ``proj`` (Linear(C, C)).

    Shapes: ``(B, H, W, C) -> (B, H, W, C)`` (NHWC), any ``H, W >= 1``.

    Raises:
        ValueError: ``C`` not divisible by the heads of a branch, odd heads with two branches,
            ``stripe_width < 1``, even ``lepe_kernel``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        stripe_width: int = 7,
        full: bool = False,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        mask_padding: bool = True,
        lepe_kernel: int = 3,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"CrossShapedWindowAttention: dim {dim} is not divisible by num_heads {num_heads}")
        if not full and num_heads % 2:
            raise ValueError(f"CrossShapedWindowAttention: two stripe branches need an even num_heads, got {num_heads}")
        if not full and stripe_width < 1:
            raise ValueError(f"CrossShapedWindowAttention: stripe_width must be >= 1, got {stripe_width}")
        if lepe_kernel % 2 == 0:
            raise ValueError(f"CrossShapedWindowAttention: lepe_kernel must be odd, got {lepe_kernel}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.stripe_width = stripe_width
        self.full = full
        self.mask_padding = mask_padding
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.lepe = nn.Conv2d(dim, dim, lepe_kernel, padding=lepe_kernel // 2, groups=dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def branches(self) -> List[Tuple[int, int, Tuple[Optional[int], Optional[int]]]]:
        """``(channel_start, channel_end, stripe)`` per branch, in the official order (vertical first)."""
        if self.full:
            return [(0, self.dim, (None, None))]
        h = self.dim // 2
        return [(0, h, (None, self.stripe_width)), (h, self.dim, (self.stripe_width, None))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H, W, 3, C).unbind(3)
        d = self.head_dim
        drop = self.attn_drop if self.training else 0.0
        outs = []
        lepe_bias = self.lepe.bias
        for c0, c1, stripe in self.branches():
            m = (c1 - c0) // d
            o = stripe_attention(
                q[..., c0:c1].reshape(B, H, W, m, d),
                k[..., c0:c1].reshape(B, H, W, m, d),
                v[..., c0:c1].reshape(B, H, W, m, d),
                stripe,
                self.scale,
                self.lepe.weight[c0:c1],  # lepe_weight
                lepe_bias[c0:c1] if lepe_bias is not None else None,
                self.mask_padding,
                drop,  # dropout_p
            )  # positional: TorchScript passes an ignored function's arguments by position
            outs.append(o.reshape(B, H, W, c1 - c0))
        x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return self.proj_drop(self.proj(x))

    def forward_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """:meth:`forward` through the explicit softmax, returning each branch's stripe attention.

        Called by :func:`visionattn.visualize.capture_attention` in place of :meth:`forward`
        (same output to float tolerance, eval mode).

        Returns:
            ``(out, record)``, ``record = {"kind": "stripes", "size": (H, W), "branches": [...]}``
            with one entry per branch in channel order (vertical stripes first, then horizontal;
            one ``full`` branch in the last stage): ``{"attn": (B, nW, heads_b, N, N), "pos": (nW, N),
            "stripe": (sh, sw)}`` as :func:`~visionattn.ops.stripe.stripe_attention_with_weights`
            (``None`` in ``stripe`` = the full extent). Heads are numbered across branches in order.
        """
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H, W, 3, C).unbind(3)
        d = self.head_dim
        outs, branches = [], []
        lepe_bias = self.lepe.bias
        for c0, c1, stripe in self.branches():
            m = (c1 - c0) // d
            o, attn, pos = stripe_attention_with_weights(
                q[..., c0:c1].reshape(B, H, W, m, d), k[..., c0:c1].reshape(B, H, W, m, d), v[..., c0:c1].reshape(B, H, W, m, d),
                stripe, self.scale, self.lepe.weight[c0:c1], lepe_bias[c0:c1] if lepe_bias is not None else None, self.mask_padding)
            outs.append(o.reshape(B, H, W, c1 - c0))
            branches.append({"attn": attn, "pos": pos, "stripe": stripe})
        x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return self.proj_drop(self.proj(x)), {"kind": "stripes", "size": (H, W), "branches": branches}

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, " + (
            "full=True" if self.full else f"stripe_width={self.stripe_width}"
        ) + f", mask_padding={self.mask_padding}"
