"""Channel group attention: DaViT's channel-wise self-attention.

Ding et al., "DaViT: Dual Attention Vision Transformers", ECCV 2022, Sec. 3.2, Eq. (3):
tokens are transposed so that *channels* attend to channels; channels are split into ``G``
groups of ``C_g = C / G`` and, per group,

    A(Q_g, K_g, V_g) = (softmax(Q_g^T K_g / sqrt(C_g)) V_g^T)^T          Q_g, K_g, V_g: (N, C_g)

an ``(C_g x C_g)`` attention map whose every entry sums over all ``N`` tokens (global receptive
field, cost ``O(N C^2 / G)``, linear in tokens).

Fused projection, as in the official code (github dingmyu/davit ``timm/models/davit.py``
``ChannelAttention``; timm ``models/davit.py`` keeps it verbatim): ``qkv = Linear(C, 3C)`` is
split into three chunks of ``(G, C_g)`` which the official code names ``q, k, v`` but uses as
(paper roles) values, queries and keys respectively: ``attention = softmax((k * scale)^T v)``,
``out = (attention @ q^T)^T``. To load the released weights unchanged this module keeps that
chunk order: **rows ``[0:C]`` of ``qkv`` are the values, ``[C:2C]`` the (scaled) queries,
``[2C:3C]`` the keys.** The scale is ``C_g ** -0.5``.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import nn

__all__ = ["ChannelGroupAttention"]


class ChannelGroupAttention(nn.Module):
    """Channel group self-attention (DaViT) on NHWC tokens or token sequences.

    Args:
        dim: channels ``C``; num_groups: channel groups ``G`` (``C`` divisible by it; DaViT uses
            the stage's head count).
        qkv_bias: bias in ``qkv`` (DaViT: True); proj_drop: dropout after ``proj``.

    Shapes: ``(B, H, W, C) -> (B, H, W, C)`` or ``(B, N, C) -> (B, N, C)``.

    Raises:
        ValueError: ``dim`` not divisible by ``num_groups``.
    """

    def __init__(self, dim: int, num_groups: int, qkv_bias: bool = True, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_groups:
            raise ValueError(f"ChannelGroupAttention: dim {dim} is not divisible by num_groups {num_groups}")
        self.num_groups = num_groups
        self.group_dim = dim // num_groups
        self.scale = self.group_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x)[0]

    def _mix(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(output, attention (B, G, C_g, C_g))`` of :meth:`forward`."""
        shape = x.shape
        B, C = shape[0], shape[-1]
        x = x.flatten(1, -2)  # (B, N, C): flatten, not reshape(B, -1, C), so an empty batch works (and TorchScript)
        N = x.shape[1]
        # chunks in the official order: values, queries, keys (see module docstring)
        v, q, k = self.qkv(x).reshape(B, N, 3, self.num_groups, self.group_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)  # (B, G, C_g, C_g): channel i -> channel j
        x = v @ attn.transpose(-2, -1)  # (B, G, N, C_g): out[n, i] = sum_j attn[i, j] v[n, j]
        x = x.transpose(1, 2).reshape(shape)
        return self.proj_drop(self.proj(x)), attn

    def forward_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """:meth:`forward`, also returning its channel attention (the softmax is already explicit).

        Returns:
            ``(out, record)``, ``record = {"kind": "channel", "attn": (B, G, C_g, C_g)}``: row ``i``
            of group ``g`` holds the weights of output channel ``g*C_g + i`` over the group's value
            channels (rows sum to 1). Called by :func:`visionattn.visualize.capture_attention`.
        """
        out, attn = self._mix(x)
        return out, {"kind": "channel", "attn": attn}
