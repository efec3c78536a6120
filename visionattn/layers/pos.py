"""Relative position bias tables and their indices.

Convention (NAT/DiNAT, NATTEN, and the ViT-rpb models of the NAT repository, whose index
buffer is Swin's ``relative_position_index`` flipped on both axes): a table of shape
``(heads, 2Sh-1, 2Sw-1)`` gives the bias of query ``(i, j)`` to key ``(kr, kc)`` as
``table[h, kr - i + Sh - 1, kc - j + Sw - 1]``.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

from ..ops._trace import cache_context, is_tracing, script_ignore

__all__ = ["relative_position_bias", "relative_position_index", "resize_rel_pos_table"]


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
