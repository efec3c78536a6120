"""Relative position bias tables and their indices.

Convention (NAT/DiNAT, NATTEN, and the ViT-rpb models of the NAT repository, whose index
buffer is Swin's ``relative_position_index`` flipped on both axes): a table of shape
``(heads, 2Sh-1, 2Sw-1)`` gives the bias of query ``(i, j)`` to key ``(kr, kc)`` as
``table[h, kr - i + Sh - 1, kc - j + Sw - 1]``.

:class:`DynamicPosBias` (CrossFormer's DPB, Wang et al., ICLR 2022, Sec. 3.3, Fig. 3; github
cheerss/CrossFormer ``models/crossformer.py`` ``DynamicPosBias``) builds such a table for any
window size from an MLP over the relative coordinates, so window-like mixers can take it as
their positional term at any group size (:class:`~visionattn.layers.WindowAttention`
``dynamic_pos_bias=True``).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import register_notrace_function

from ..ops._trace import cache_context, is_tracing, script_ignore

__all__ = ["relative_position_bias", "relative_position_index", "resize_rel_pos_table", "DynamicPosBias"]


def _offsets(n: int):
    """``off[i][k] = k - i + n - 1`` (key minus query, shifted to ``0..2n-2``) as nested ints."""
    return [[k - i + n - 1 for k in range(n)] for i in range(n)]


_OFFSET_CACHE: dict = {}


def _rel_offsets(h: int, w: int, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row and column offset tables ``(h, h)``, ``(w, w)`` on ``like.device`` (cached per device,
    except while tracing, so that no traced tensor enters the cache)."""
    key = (h, w, str(like.device))
    tracing = is_tracing(like)
    out = None if tracing else _OFFSET_CACHE.get(key)
    if out is None:
        with cache_context(tracing):
            out = tuple(torch.tensor(_offsets(n), dtype=torch.long, device=like.device) for n in (h, w))
        if not tracing:
            if len(_OFFSET_CACHE) > 256:
                _OFFSET_CACHE.clear()
            _OFFSET_CACHE[key] = out
    return out


def relative_position_index(h: int, w: int) -> torch.Tensor:
    """Flat index ``(h*w, h*w)`` (CPU, int64) into a flattened ``(2h-1) * (2w-1)`` table (key minus query)."""
    dr = torch.tensor(_offsets(h), dtype=torch.long, device="cpu")
    dc = torch.tensor(_offsets(w), dtype=torch.long, device="cpu")
    return (dr[:, None, :, None] * (2 * w - 1) + dc[None, :, None, :]).reshape(h * w, h * w)


def resize_rel_pos_table(table: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize a ``(heads, Th, Tw)`` table to ``(heads, *size)`` by bicubic interpolation.

    Used when a map's extent differs from the one the table was trained for (align_corners=False,
    as timm's ``resize_rel_pos_bias_table`` for Swin-style tables).
    """
    if tuple(table.shape[-2:]) == tuple(size):
        return table
    return F.interpolate(table[None].float(), size=size, mode="bicubic", align_corners=False)[0].to(table.dtype)


@script_ignore()  # TorchScript calls it through Python (cached index tables)
@register_notrace_function  # a leaf of FX graphs: resizing and caching depend on the map size
def relative_position_bias(table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Dense bias ``(heads, h*w, h*w)`` of all-pairs attention over an ``h x w`` map.

    Args:
        table: ``(heads, 2h'-1, 2w'-1)``; resized bicubically when ``(h', w') != (h, w)``.
        h, w: map size in tokens.
    """
    table = resize_rel_pos_table(table, (2 * h - 1, 2 * w - 1))
    dr, dc = _rel_offsets(h, w, table)
    return table[:, dr[:, None, :, None], dc[None, :, None, :]].reshape(table.shape[0], h * w, h * w)


@script_ignore()
@register_notrace_function  # a leaf of FX graphs: the table's extent follows the window size
def dpb_coords(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Relative coordinates ``(2h-1, 2w-1, 2)`` (float, ``like``'s device and dtype) of the
    entries of a :func:`relative_position_bias` table, as query minus key: entry ``(r, c)`` is
    ``(h - 1 - r, w - 1 - c)``."""
    dr = torch.arange(h - 1, -h, -1, device=like.device, dtype=like.dtype)
    dc = torch.arange(w - 1, -w, -1, device=like.device, dtype=like.dtype)
    return torch.stack((dr[:, None].expand(2 * h - 1, 2 * w - 1), dc[None, :].expand(2 * h - 1, 2 * w - 1)), dim=-1)


torch.fx.wrap("dpb_coords")
torch.fx.wrap("relative_position_bias")


class DynamicPosBias(nn.Module):
    """Dynamic position bias (DPB): an MLP from a relative offset to one bias per head.

    ``bias[h, q, k] = MLP(q - k)[h]`` with ``q - k = (dy, dx)`` the offset of query minus key in
    tokens (CrossFormer, Wang et al., ICLR 2022, Sec. 3.3, Fig. 3; github cheerss/CrossFormer
    ``models/crossformer.py`` ``DynamicPosBias``, ``residual=False`` as every released model).
    MLP: ``proj = Linear(2, D)``, then three ``LayerNorm(D) -> ReLU -> Linear`` layers
    (``layers.{0,1,2}.{0,1,2}``), the last to ``num_heads`` outputs; with ``residual=True`` the first two
    are residual (``x + layer(x)``). Unlike a learned table it works for any window size.

    Args:
        num_heads: heads (outputs of the MLP).
        hidden_dim: MLP width ``D`` (CrossFormer: ``dim // 16`` of the attention's ``dim``).
        residual: residual connections around the two middle layers.

    Shapes: ``forward(h, w)`` returns the dense bias ``(num_heads, h*w, h*w)`` of an ``h x w``
    window (queries and keys row-major), :func:`relative_position_bias` of :meth:`table`.
    """

    def __init__(self, num_heads: int, hidden_dim: int, residual: bool = False):
        super().__init__()
        if hidden_dim < 1:
            raise ValueError(f"DynamicPosBias: hidden_dim must be >= 1, got {hidden_dim}")
        self.num_heads = num_heads
        self.residual = residual
        self.proj = nn.Linear(2, hidden_dim)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim if i < 2 else num_heads))
            for i in range(3)
        )

    def table(self, h: int, w: int) -> torch.Tensor:
        """The bias table ``(num_heads, 2h-1, 2w-1)`` in :func:`relative_position_bias`'s layout."""
        x = self.proj(dpb_coords(h, w, self.proj.weight))
        for i, layer in enumerate(self.layers):
            x = x + layer(x) if (self.residual and i < 2) else layer(x)
        return x.permute(2, 0, 1)

    def forward(self, h: int, w: int) -> torch.Tensor:
        return relative_position_bias(self.table(h, w), h, w)
