"""Relative position bias tables and their indices.

Convention (NAT/DiNAT, NATTEN, and the ViT-rpb models of the NAT repository, whose index
buffer is Swin's ``relative_position_index`` flipped on both axes): a table of shape
``(heads, 2Sh-1, 2Sw-1)`` gives the bias of query ``(i, j)`` to key ``(kr, kc)`` as
``table[h, kr - i + Sh - 1, kc - j + Sw - 1]``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["relative_position_bias", "relative_position_index", "resize_rel_pos_table"]


@lru_cache(maxsize=64)
def _rel_offsets(h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(h, device="cpu")
    c = torch.arange(w, device="cpu")
    return (r[None, :] - r[:, None] + h - 1), (c[None, :] - c[:, None] + w - 1)


def relative_position_index(h: int, w: int) -> torch.Tensor:
    """Flat index ``(h*w, h*w)`` into a flattened ``(2h-1) * (2w-1)`` table (key minus query)."""
    dr, dc = _rel_offsets(h, w)
    return (dr[:, None, :, None] * (2 * w - 1) + dc[None, :, None, :]).reshape(h * w, h * w)


def resize_rel_pos_table(table: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize a ``(heads, Th, Tw)`` table to ``(heads, *size)`` by bicubic interpolation.

    Used when a map's extent differs from the one the table was trained for (align_corners=False,
    as timm's ``resize_rel_pos_bias_table`` for Swin-style tables).
    """
    if tuple(table.shape[-2:]) == tuple(size):
        return table
    return F.interpolate(table[None].float(), size=size, mode="bicubic", align_corners=False)[0].to(table.dtype)


def relative_position_bias(table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Dense bias ``(heads, h*w, h*w)`` of all-pairs attention over an ``h x w`` map.

    Args:
        table: ``(heads, 2h'-1, 2w'-1)``; resized bicubically when ``(h', w') != (h, w)``.
        h, w: map size in tokens.
    """
    table = resize_rel_pos_table(table, (2 * h - 1, 2 * w - 1))
    dr, dc = _rel_offsets(h, w)
    dr, dc = dr.to(table.device), dc.to(table.device)
    return table[:, dr[:, None, :, None], dc[None, :, None, :]].reshape(table.shape[0], h * w, h * w)
