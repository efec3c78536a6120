"""The residual transformer block shared by every family.

``x = x + drop_path(ls1(attn(norm1(x))))`` then ``x = x + drop_path(ls2(mlp(norm2(x))))``
(pre-norm, Xiong et al. 2020), optionally preceded by a positional module ``x = pos(x)`` (BiFormer's
3x3 depthwise conv, DaViT's ConvPosEnc) that carries its own residual.

Tokens are NHWC ``(B, H, W, C)`` for the hierarchical families, ``(B, N, C)`` for sequence models;
the block itself is layout-agnostic: norms and the MLP act on the last dimension and the mixer
keeps the shape. Layer scale follows CaiT (Touvron et al. 2021) through timm's ``LayerScale``
(key ``ls{1,2}.gamma``; the NAT checkpoints call it ``gamma{1,2}``).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Type

import torch
from torch import nn
from timm.layers import DropPath, LayerScale, Mlp

__all__ = ["TransformerBlock"]


class TransformerBlock(nn.Module):
    """Pre-norm residual block around a token mixer.

    Args:
        dim: channels ``C``.
        attn: the token mixer, a module mapping the token tensor to the same shape.
        mlp_ratio: MLP hidden width ``int(C * mlp_ratio)``; 0 disables the MLP branch.
        drop_path: stochastic-depth rate of both branches (Huang et al. 2016).
        layer_scale: initial value of the per-channel layer scale, or None for none.
        norm_layer: norm constructor taking ``dim`` (default ``nn.LayerNorm``, eps 1e-5).
        act_layer: MLP activation (default exact-erf GELU).
        mlp_drop: dropout inside the MLP.
        pos: optional module applied first, ``x = pos(x)`` (it includes its own residual).
        pos2: optional module applied between the two branches, before the MLP branch (DaViT's
            second ConvPosEnc, ``cpe2``); like ``pos`` it includes its own residual.
        mlp_layer: MLP constructor called as ``mlp_layer(dim, hidden, act_layer=..., drop=...)``
            (default timm's ``Mlp``; VAN: :class:`~visionattn.layers.lka.DWConvMlp`, timm's name
            and signature for this hook).

    Shapes: ``(..., C) -> (..., C)``.

    Sequence mixers (``(B, N, C)`` tokens whose grid the mixer must know, e.g. Agent-DeiT's
    :class:`~visionattn.layers.AgentAttention`) set the instance attribute ``takes_grid = True``
    and accept ``forward(x, grid)``; the block hands them its ``grid`` argument. Other mixers are
    called as ``attn(x)``. (An attribute test rather than ``**kwargs``, so TorchScript can
    compile the block: it resolves ``hasattr`` on a submodule when it compiles.) Mixers that also
    read the block input before ``norm1`` (InLine-CSwin's local kernels,
    :class:`~visionattn.layers.inline.InLineAttention` with ``residual_source='block'``) set
    ``takes_context = True`` and accept ``forward(x, grid, context)``.
    """

    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        layer_scale: Optional[float] = None,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Type[nn.Module] = nn.GELU,
        mlp_drop: float = 0.0,
        pos: Optional[nn.Module] = None,
        pos2: Optional[nn.Module] = None,
        mlp_layer: Callable[..., nn.Module] = Mlp,
    ):
        super().__init__()
        self.pos = pos
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if mlp_ratio > 0:
            self.norm2 = norm_layer(dim)
            self.mlp = mlp_layer(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=mlp_drop)
            self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
            self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        else:
            self.norm2 = self.mlp = None
        self.pos2 = pos2

    def forward(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """``grid = (H, W)``: the token grid of ``(B, N, C)`` sequences, passed to mixers that take it."""
        if self.pos is not None:
            x = self.pos(x)
        if hasattr(self.attn, "takes_context"):
            a = self.attn(self.norm1(x), grid, x)
        elif hasattr(self.attn, "takes_grid"):
            a = self.attn(self.norm1(x), grid)
        else:
            a = self.attn(self.norm1(x))
        x = x + self.drop_path1(self.ls1(a))
        if self.pos2 is not None:
            x = self.pos2(x)
        if self.mlp is not None:
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x
