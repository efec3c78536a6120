"""Window partitions of NHWC token maps: block (local) and grid (dilated, global) windows.

* Block partition (Swin, Liu et al. ICCV 2021, Sec. 3.2; MaxViT "block attention", Tu et al.
  ECCV 2022, Sec. 3.2): a ``(B, H, W, C)`` map is cut into non-overlapping ``Ph x Pw`` windows
  of adjacent tokens.
* Grid partition (MaxViT "grid attention", Sec. 3.2, Fig. 3): the map is viewed as a
  ``Gh x Gw`` grid of cells of size ``(H/Gh, W/Gw)``; window ``(a, b)`` gathers the token at
  offset ``(a, b)`` of every cell, i.e. ``Gh x Gw`` tokens spaced ``H/Gh`` and ``W/Gw`` apart.
  (github google-research/maxvit ``maxvit/models/maxvit.py`` ``grid_partition``; timm
  ``models/maxxvit.py`` ``grid_partition``.)
* Dilated partition (CrossFormer "long distance attention", Wang et al., ICLR 2022, Sec. 3.2,
  Fig. 2b; github cheerss/CrossFormer ``models/crossformer.py`` ``CrossFormerBlock``, LDA branch):
  a grid partition with a fixed interval ``I`` instead of one spanning the map: the map is cut
  into regions of ``(Gh*I) x (Gw*I)`` adjacent tokens (:func:`window_partition`) and each region
  is grid-partitioned into ``I x I`` windows of ``Gh x Gw`` tokens spaced ``I`` apart. A map of
  exactly one region is MaxViT's grid partition.

The partitions require ``H, W`` to be multiples of the window/grid size (dilated: of ``G * I``); :func:`pad_to_multiple`
zero-pads bottom/right first and :func:`padding_mask` tells which window slots are padding.
All functions are pure tensor reshapes (no parameters) and raise ``ValueError`` on bad sizes.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

from ._trace import script_ignore

__all__ = [
    "pad_to_multiple",
    "window_partition",
    "window_reverse",
    "grid_partition",
    "grid_reverse",
    "dilated_partition",
    "dilated_reverse",
    "partition_multiple",
    "partition",
    "reverse",
    "padding_mask",
    "shift_region_mask",
]

Size2 = Tuple[int, int]


def _check(x: torch.Tensor, size: Size2, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{what}: expected NHWC tokens (B, H, W, C), got shape {tuple(x.shape)}")
    H, W = x.shape[1], x.shape[2]
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"{what}: size must be positive, got {tuple(size)}")
    if H % size[0] or W % size[1]:
        raise ValueError(f"{what}: map {H}x{W} is not divisible by {size[0]}x{size[1]}; pad it first (pad_to_multiple)")


def pad_to_multiple(x: torch.Tensor, size: Size2) -> Tuple[torch.Tensor, int, int]:
    """Zero-pad NHWC tokens bottom/right so that ``H, W`` become multiples of ``size``.

    Args:
        x: ``(B, H, W, C)``.
        size: ``(mh, mw)``.

    Returns:
        ``(x_padded, pad_h, pad_w)`` with ``x_padded`` of shape ``(B, H + pad_h, W + pad_w, C)``
        (``x`` itself when no padding is needed).
    """
    H, W = x.shape[1], x.shape[2]
    pad_h = (size[0] - H % size[0]) % size[0]
    pad_w = (size[1] - W % size[1]) % size[1]
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x, pad_h, pad_w


def window_partition(x: torch.Tensor, window: Size2) -> torch.Tensor:
    """``(B, H, W, C) -> (B * H/Ph * W/Pw, Ph, Pw, C)``: windows of adjacent tokens, row-major.

    Raises:
        ValueError: ``H`` or ``W`` not divisible by the window.
    """
    _check(x, window, "window_partition")
    B, H, W, C = x.shape
    x = x.view(B, H // window[0], window[0], W // window[1], window[1], C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0], window[1], C)


def window_reverse(windows: torch.Tensor, window: Size2, size: Size2) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, Ph, Pw, C) -> (B, H, W, C)`` for ``size = (H, W)``."""
    H, W = size
    C = windows.shape[-1]
    x = windows.view(-1, H // window[0], W // window[1], window[0], window[1], C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def grid_partition(x: torch.Tensor, grid: Size2) -> torch.Tensor:
    """``(B, H, W, C) -> (B * H/Gh * W/Gw, Gh, Gw, C)``: window ``(a, b)`` holds tokens
    ``x[:, i * H/Gh + a, j * W/Gw + b]`` for ``i < Gh, j < Gw`` (dilated, spanning the map).

    Raises:
        ValueError: ``H`` or ``W`` not divisible by the grid.
    """
    _check(x, grid, "grid_partition")
    B, H, W, C = x.shape
    x = x.view(B, grid[0], H // grid[0], grid[1], W // grid[1], C)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(-1, grid[0], grid[1], C)


def grid_reverse(windows: torch.Tensor, grid: Size2, size: Size2) -> torch.Tensor:
    """Inverse of :func:`grid_partition`: ``(B * nW, Gh, Gw, C) -> (B, H, W, C)`` for ``size = (H, W)``."""
    H, W = size
    C = windows.shape[-1]
    x = windows.view(-1, H // grid[0], W // grid[1], grid[0], grid[1], C)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(-1, H, W, C)


def dilated_partition(x: torch.Tensor, group: Size2, interval: int) -> torch.Tensor:
    """``(B, H, W, C) -> (B * nR * I * I, Gh, Gw, C)``: CrossFormer's long-distance groups.

    Window ``(r, a, b)`` (region ``r`` of ``(Gh*I) x (Gw*I)`` tokens, row-major; offset ``(a, b)``,
    ``a, b < I``) holds the region's tokens ``(i * I + a, j * I + b)`` for ``i < Gh, j < Gw``.

    Raises:
        ValueError: ``interval < 1``; ``H`` or ``W`` not divisible by ``G * I``.
    """
    if interval < 1:
        raise ValueError(f"dilated_partition: interval must be >= 1, got {interval}")
    I = interval
    _check(x, (group[0] * I, group[1] * I), "dilated_partition")
    B, H, W, C = x.shape
    # = grid_partition(window_partition(x, (G*I, G*I)), G) in one copy
    x = x.view(B, H // (group[0] * I), group[0], I, W // (group[1] * I), group[1], I, C)
    return x.permute(0, 1, 4, 3, 6, 2, 5, 7).reshape(-1, group[0], group[1], C)


def dilated_reverse(windows: torch.Tensor, group: Size2, interval: int, size: Size2) -> torch.Tensor:
    """Inverse of :func:`dilated_partition` for a map of ``size = (H, W)``."""
    H, W = size
    I, C = interval, windows.shape[-1]
    x = windows.view(-1, H // (group[0] * I), W // (group[1] * I), I, I, group[0], group[1], C)
    return x.permute(0, 1, 5, 3, 2, 6, 4, 7).reshape(-1, H, W, C)


def partition_multiple(size: Size2, mode: str, interval: int = 0) -> Size2:
    """What ``H, W`` must be multiples of for :func:`partition` (``G * I`` for ``'dilated'``)."""
    if mode == "dilated":
        return (size[0] * interval, size[1] * interval)
    return (size[0], size[1])


@script_ignore()  # TorchScript calls it through Python (size checks with formatted errors)
@register_notrace_function  # a leaf of FX graphs: it checks the map size
def partition(x: torch.Tensor, size: Size2, mode: str, interval: int = 0) -> torch.Tensor:
    """:func:`window_partition` (``mode='block'``), :func:`grid_partition` (``mode='grid'``) or
    :func:`dilated_partition` (``mode='dilated'``, with ``interval``)."""
    if mode == "block":
        return window_partition(x, size)
    if mode == "grid":
        return grid_partition(x, size)
    if mode == "dilated":
        return dilated_partition(x, size, interval)
    raise ValueError(f"partition: mode must be 'block', 'grid' or 'dilated', got {mode!r}")


@script_ignore()
def reverse(windows: torch.Tensor, size: Size2, map_size: Size2, mode: str, interval: int = 0) -> torch.Tensor:
    """Inverse of :func:`partition` for a map of ``map_size = (H, W)``."""
    if mode == "block":
        return window_reverse(windows, size, map_size)
    if mode == "grid":
        return grid_reverse(windows, size, map_size)
    if mode == "dilated":
        return dilated_reverse(windows, size, interval, map_size)
    raise ValueError(f"reverse: mode must be 'block', 'grid' or 'dilated', got {mode!r}")


def padding_mask(
    H: int, W: int, pad_h: int, pad_w: int, size: Size2, mode: str, device=None, shift: Size2 = (0, 0), interval: int = 0
) -> torch.Tensor:
    """Which slots of each window are padding, for a map padded by :func:`pad_to_multiple`.

    Args:
        H, W: the unpadded map size; pad_h, pad_w: the padding added bottom/right.
        size: window (block) or grid size; mode: ``'block'``, ``'grid'`` or ``'dilated'``
            (then ``interval`` is the dilation ``I``).
        shift: cyclic shift ``(sh, sw)`` applied to the padded map before partitioning
            (``torch.roll(x, (-sh, -sw), (1, 2))``, Swin's SW-MSA); default none.

    Returns:
        bool ``(nW, Ph * Pw)``, True where the slot holds a padded token; windows in the order
        :func:`partition` produces them for one image.
    """
    valid = torch.zeros(1, H + pad_h, W + pad_w, 1, dtype=torch.bool, device=device)
    valid[:, :H, :W] = True
    if shift[0] or shift[1]:
        valid = torch.roll(valid, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    return ~partition(valid, size, mode, interval).flatten(1)


def shift_region_mask(Hp: int, Wp: int, window: Size2, shift: Size2, device=None) -> torch.Tensor:
    """Swin's shifted-window attention mask (Liu et al., ICCV 2021, Sec. 3.2, Fig. 4).

    After ``torch.roll(x, (-sh, -sw), (1, 2))`` of an ``Hp x Wp`` map (multiples of the window),
    the windows along the bottom/right border hold tokens from up to three regions per axis
    (rows ``< Hp - Ph``, ``[Hp - Ph, Hp - sh)``, ``>= Hp - sh``; likewise columns) that were not
    adjacent in the image. Tokens of different regions must not attend to each other
    (github microsoft/Swin-Transformer ``models/swin_transformer.py``, ``attn_mask``).

    Returns:
        bool ``(nW, Ph * Pw, Ph * Pw)``, True where query and key lie in different regions;
        windows in :func:`window_partition` order for one image.

    Raises:
        ValueError: ``Hp, Wp`` not multiples of the window.
    """

    def labels(n: int, p: int, s: int) -> torch.Tensor:
        r = torch.arange(n, device=device)
        return (r >= n - p).long() + ((r >= n - s).long() if s > 0 else 0)

    region = labels(Hp, window[0], shift[0])[:, None] * 3 + labels(Wp, window[1], shift[1])[None, :]
    win = window_partition(region[None, :, :, None], window).flatten(1)  # (nW, N)
    return win[:, :, None] != win[:, None, :]
