"""Neighborhood attention mixer (NA; DiNA is NA with a dilation).

Hassani et al., "Neighborhood Attention Transformer" (CVPR 2023), Sec. 3.1, and Hassani & Shi,
"Dilated Neighborhood Attention Transformer" (arXiv:2209.15001), Sec. 3. The module follows
NATTEN <= 0.15 ``NeighborhoodAttention2D`` (github SHI-Labs/NATTEN ``src/natten/natten2d.py`` at
v0.14.6), which the released checkpoints were trained with: fused ``qkv`` with rows ``[q | k | v]``,
scale ``head_dim ** -0.5``, relative position bias ``rpb`` of shape ``(heads, 2K-1, 2K-1)``, and
zero padding (bottom/right) of maps smaller than ``K * d`` *before* the qkv projection, cropped
before ``proj`` — so padded tokens carry the qkv bias and are attended to, exactly as upstream.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import trunc_normal_

from ..ops._trace import crop_nhwc, has_symbolic_hw, pad_nhwc_min
from ..ops.neighborhood import _BACKENDS, _na2d_gather, na2d, na2d_with_weights

# leaves of FX graphs: the padding decision and the attention op (whose tiling plan depends on the
# map size) run at call time (see ops/_trace.py)
torch.fx.wrap("pad_nhwc_min")
torch.fx.wrap("crop_nhwc")
torch.fx.wrap("na2d")

__all__ = ["NeighborhoodAttention2d"]


class NeighborhoodAttention2d(nn.Module):
    """2-D (dilated) neighborhood self-attention on NHWC tokens.

    Args:
        dim: channels ``C`` (divisible by ``num_heads``).
        num_heads: attention heads.
        kernel_size: odd neighborhood size ``K``.
        dilation: dilation ``d`` (any value; maps smaller than ``K * d`` are padded).
        qkv_bias: bias in the qkv projection.
        rel_pos_bias: learn a relative position bias table ``rpb``.
        proj_drop: dropout after ``proj``.
        backend: :func:`visionattn.ops.na2d` backend (``"auto"``, ``"torch"``, ``"reference"``,
            ``"flex"``, ``"flex-eager"``, ``"natten"``); a plain attribute, so it can be switched
            on a built model (``benchmarks/nat_models.py`` does).

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``, an even ``kernel_size`` or an unknown
            ``backend``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int = 7,
        dilation: int = 1,
        qkv_bias: bool = True,
        rel_pos_bias: bool = True,
        proj_drop: float = 0.0,
        backend: str = "auto",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"NeighborhoodAttention2d: dim {dim} is not divisible by num_heads {num_heads}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"NeighborhoodAttention2d: kernel_size must be odd, got {kernel_size}")
        if backend not in _BACKENDS:
            raise ValueError(f"NeighborhoodAttention2d: unknown backend {backend!r}; choose one of {_BACKENDS}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
            trunc_normal_(self.rpb, std=0.02, mean=0.0, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, kernel_size={self.kernel_size}, dilation={self.dilation}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if has_symbolic_hw(x):
            return self._forward_export(x)
        B, H, W, C = x.shape
        span = self.kernel_size * self.dilation
        x = pad_nhwc_min(x, span, span)
        Hp, Wp = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(B, Hp, Wp, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(3)
        x = na2d(q, k, v, self.kernel_size, self.dilation, self.rpb, self.scale, self.backend, None)  # all arguments: TorchScript
        x = crop_nhwc(x.reshape(B, Hp, Wp, C), H, W)
        return self.proj_drop(self.proj(x))

    @torch.jit.unused
    def _forward_export(self, x):  # no annotations: TorchScript reads an unused method's as strings here
        """:meth:`forward` under ``torch.export`` with a symbolic height/width (an export whose
        height/width are fixed runs :meth:`forward`'s tiled path, which ONNX Runtime runs faster).

        The padding of maps smaller than ``K * d`` is a decision on the size (and a padded size
        ``max(H, K*d)`` in a shape makes torch's shape reasoning fail on later reshapes), so here
        nothing is decided: ``qkv`` runs on the ``H x W`` tokens, the keys and values of the zero
        tokens a padded map would add (the qkv bias) are appended, ``K * d`` rows and columns of
        them, always, and each query's window is computed for an axis of
        ``max(L, K * d)`` tokens as a value (:func:`~visionattn.ops.neighborhood._na2d_gather`).
        The padded queries, which :meth:`forward` crops, are not computed. Same numbers as
        :meth:`forward`.
        """
        B, H, W, C = x.shape
        nh, hd = self.num_heads, self.head_dim
        span = self.kernel_size * self.dilation
        q, k, v = self.qkv(x).reshape(B, H, W, 3, nh, hd).unbind(3)
        if self.qkv.bias is not None:
            fill_k, fill_v = self.qkv.bias.view(3, nh, hd)[1:].to(k.dtype).unbind(0)
        else:
            fill_k = fill_v = k.new_zeros(nh, hd)

        def padded(t, fill):  # (B, H, W, nh, hd) -> (B, H + span, W + span, nh, hd)
            t = torch.cat([t, fill.expand(B, span, W, nh, hd)], 1)
            return torch.cat([t, fill.expand(B, H + span, span, nh, hd)], 2)

        lengths = (torch.sym_max(H, span), torch.sym_max(W, span))
        out = _na2d_gather(q, padded(k, fill_k), padded(v, fill_v), (self.kernel_size,) * 2, (self.dilation,) * 2,
                           self.rpb, self.scale, lengths)[0]
        return self.proj_drop(self.proj(out.reshape(B, H, W, C)))

    def forward_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """:meth:`forward` through the explicit softmax, returning the attention it used (inspection).

        :func:`visionattn.visualize.capture_attention` calls this in place of :meth:`forward`; the
        output equals :meth:`forward`'s to float tolerance (same projections, padding and cropping;
        :func:`~visionattn.ops.neighborhood.na2d_with_weights` instead of :func:`na2d`).

        Returns:
            ``(out, record)``, ``record = {"kind": "neighborhood", "attn": (B, heads, Hp, Wp, K*K),
            "keys_r": (Hp, K), "keys_c": (Wp, K), "size": (H, W), "kernel_size", "dilation"}``
            over the map padded to at least ``K*d`` (``Hp, Wp``; keys beyond ``H, W`` are padding).
        """
        B, H, W, C = x.shape
        span = self.kernel_size * self.dilation
        x = pad_nhwc_min(x, span, span)
        Hp, Wp = x.shape[1], x.shape[2]
        q, k, v = self.qkv(x).reshape(B, Hp, Wp, 3, self.num_heads, self.head_dim).unbind(3)
        out, attn, keys_r, keys_c = na2d_with_weights(q, k, v, self.kernel_size, self.dilation, self.rpb, self.scale)
        out = crop_nhwc(out.reshape(B, Hp, Wp, C), H, W)
        record = {"kind": "neighborhood", "attn": attn, "keys_r": keys_r, "keys_c": keys_c, "size": (H, W),
                  "kernel_size": self.kernel_size, "dilation": self.dilation}
        return self.proj_drop(self.proj(out)), record
