"""Bi-level routing attention (BRA): region partition, top-k region routing, key/value gather.

Semantics follow BiFormer (Zhu, Wang, Ke, Li, Lau, "BiFormer: Vision Transformer with Bi-Level
Routing Attention", CVPR 2023, Sec. 3.2, Eq. 1-4; github rayleizhu/BiFormer ``ops/bra_legacy.py``
at 1697bbb, the implementation the released T/S/B checkpoints were trained with):

1. The ``H x W`` map is split into a grid of ``nh x nw`` regions of ``rh x rw`` tokens
   (``n_win = 7`` regions per side in the released models, so ``rh = H / 7``).
2. Region descriptors are the means of the queries and keys over each region (Eq. 2); the
   region-to-region affinity ``Q_r K_r^T`` (Eq. 2) picks, for every query region, the ``topk``
   key regions with the largest affinity (Eq. 3). Routing is not differentiable: the official code
   detaches the descriptors, and so does :func:`topk_routing`.
3. Every query of a region attends to all tokens of its ``topk`` routed regions (Eq. 4),
   ``softmax(q k^T * scale) v``. Results do not depend on the order of the routed regions.

Layouts: ``q, k`` are ``(B, H, W, heads, d_qk)`` and ``v`` is ``(B, H, W, heads, d_v)`` (the
NATTEN-style layout of :mod:`visionattn.ops.neighborhood`); the output is ``(B, H, W, heads, d_v)``.

Maps not divisible into regions (any input size): the region size is ``ceil(L / n)`` per axis
and the grid has ``ceil(L / rh)`` regions (never a region made only of padding, so at most ``n``;
equal to ``n`` whenever ``L`` is a multiple of ``n``). q/k/v are zero-padded bottom/right to the
grid *after* projection, padded tokens are excluded from the region means (``count_include_pad
=False``, as the official ``nchwBRA``) and masked out as keys; padded queries are cropped. So no
padded token influences any real token (the official ``auto_pad`` of its detection backbone lets
them in as keys; :class:`visionattn.layers.BiLevelRoutingAttention` offers that as
``pad_mode='zero'``).

Two implementations give the same numbers:

* :func:`bra2d_reference`: dense attention over all ``H*W`` tokens with a ``-inf`` mask outside
  the routed regions; routing computed from a per-token region-id map. ``O((HW)^2)``, for tests.
* :func:`bra2d`: the regions are laid out heads-major ``(B, heads, R, rh*rw, d)`` so that the
  routed keys/values of every query region are one ``index_select`` on the flattened
  ``(B*heads*R)`` axis, whose result *is* (as a free view) the ``(B, heads*R, topk*rh*rw, d)``
  batch fed to ``scaled_dot_product_attention``. Compared with the official gather
  (``torch.gather`` over a ``p^2``-times expanded key/value tensor, then two rearrange copies and
  an explicit ``softmax(QK^T)V``), this makes one copy of the routed keys and values instead of
  three, never forms the attention matrix on fused-SDPA backends, and its backward is an
  ``index_add`` into a key-sized buffer instead of a scatter into the ``p^2``-times expanded one
  (BiFormer#21, #50). ``benchmarks/routing_gather.py`` measures it.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

from ._trace import script_ignore

__all__ = [
    "RegionGrid",
    "region_grid",
    "region_partition",
    "region_reverse",
    "region_valid_mask",
    "region_means",
    "topk_routing",
    "gather_regions",
    "bra2d",
    "bra2d_reference",
    "bra2d_with_weights",
    "bra2d_flops",
]

IntOrPair = Union[int, Sequence[int]]


def _pair(x: IntOrPair, name: str) -> Tuple[int, int]:
    t = (int(x), int(x)) if isinstance(x, int) else tuple(int(v) for v in x)
    if len(t) != 2 or min(t) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {x!r}")
    return t  # type: ignore[return-value]


class RegionGrid(NamedTuple):
    """Region layout of an ``H x W`` map: ``nh x nw`` regions of ``rh x rw`` tokens, padded size ``Hp x Wp``."""

    H: int
    W: int
    rh: int
    rw: int
    nh: int
    nw: int

    @property
    def Hp(self) -> int:
        return self.nh * self.rh

    @property
    def Wp(self) -> int:
        return self.nw * self.rw

    @property
    def padded(self) -> bool:
        return self.Hp != self.H or self.Wp != self.W

    @property
    def num_regions(self) -> int:
        return self.nh * self.nw

    @property
    def region_tokens(self) -> int:
        return self.rh * self.rw


def region_grid(H: int, W: int, num_regions: IntOrPair = 7) -> RegionGrid:
    """Region layout for an ``H x W`` map split into (at most) ``num_regions`` regions per side.

    Region size ``r = ceil(L / n)`` and region count ``ceil(L / r)`` per axis: exactly ``n x n``
    regions of ``L/n`` tokens when ``L`` is a multiple of ``n`` (BiFormer's ``n_win`` partition),
    otherwise the smallest zero-padded grid of ``r``-sized regions, none of them all padding.

    Raises:
        ValueError: non-positive sizes.
    """
    n_h, n_w = _pair(num_regions, "num_regions")
    if H < 1 or W < 1:
        raise ValueError(f"region_grid: map size must be positive, got {H}x{W}")
    rh, rw = -(-H // n_h), -(-W // n_w)
    return RegionGrid(H, W, rh, rw, -(-H // rh), -(-W // rw))


def region_partition(x: torch.Tensor, grid: RegionGrid) -> torch.Tensor:
    """``(B, H, W, heads, d) -> (B, heads, R, rh*rw, d)``: zero-pad bottom/right, split into regions.

    Regions are numbered row-major (``R = nh * nw``), tokens inside a region row-major, as in the
    official ``rearrange(x, "n (j h) (i w) c -> n (j i) h w c")``. One copy.

    Raises:
        ValueError: ``x`` is not 5-D or its map size differs from ``grid``.
    """
    if x.dim() != 5 or x.shape[1] != grid.H or x.shape[2] != grid.W:
        raise ValueError(f"region_partition: expected (B, {grid.H}, {grid.W}, heads, d), got {tuple(x.shape)}")
    B, _, _, m, d = x.shape
    if grid.padded:
        x = F.pad(x, (0, 0, 0, 0, 0, grid.Wp - grid.W, 0, grid.Hp - grid.H))
    x = x.reshape(B, grid.nh, grid.rh, grid.nw, grid.rw, m, d).permute(0, 5, 1, 3, 2, 4, 6)
    return x.reshape(B, m, grid.num_regions, grid.region_tokens, d)


def region_reverse(x: torch.Tensor, grid: RegionGrid) -> torch.Tensor:
    """Inverse of :func:`region_partition`: ``(B, heads, R, rh*rw, d) -> (B, H, W, heads, d)`` (cropped)."""
    B, m, _, _, d = x.shape
    x = x.reshape(B, m, grid.nh, grid.nw, grid.rh, grid.rw, d).permute(0, 2, 4, 3, 5, 1, 6)
    x = x.reshape(B, grid.Hp, grid.Wp, m, d)
    if grid.padded:
        x = x[:, : grid.H, : grid.W]
    return x


def region_valid_mask(grid: RegionGrid, device: Optional[torch.device] = None) -> torch.Tensor:
    """``(R, rh*rw)`` bool: True where the region token lies inside the unpadded ``H x W`` map."""
    rows = torch.arange(grid.Hp, device=device) < grid.H
    cols = torch.arange(grid.Wp, device=device) < grid.W
    valid = (rows[:, None] & cols[None, :]).reshape(grid.nh, grid.rh, grid.nw, grid.rw).permute(0, 2, 1, 3)
    return valid.reshape(grid.num_regions, grid.region_tokens)


def region_means(x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Region descriptors ``(B, heads, R, T, d) -> (B, R, heads*d)``: mean over the valid tokens.

    ``valid`` is the ``(R, T)`` mask of :func:`region_valid_mask` (padded tokens, which
    :func:`region_partition` sets to zero, are not counted); None: all tokens count. Channels are
    head-major (``heads*d``), the order of the official ``(m c)`` channel split.
    """
    B, m, R, T, d = x.shape
    if valid is None:
        s = x.mean(dim=3)
    else:
        s = x.sum(dim=3) / valid.sum(dim=1).clamp(min=1).to(x.dtype)[:, None]
    return s.permute(0, 2, 1, 3).reshape(B, R, m * d)


def topk_routing(q_region: torch.Tensor, k_region: torch.Tensor, topk: int) -> torch.Tensor:
    """Indices ``(B, R, topk)`` of the key regions each query region attends to (Eq. 2-3).

    ``q_region, k_region``: ``(B, R, C)`` region descriptors (detached here: routing is
    non-differentiable, official ``TopkRouting(diff_routing=False)``). The affinity is the dot
    product; the official ``qk_dim ** -0.5`` factor and its unused routing softmax do not change
    the selection. ``topk`` is clamped to ``R``.

    Raises:
        ValueError: ``topk < 1``.
    """
    if topk < 1:
        raise ValueError(f"topk_routing: topk must be >= 1, got {topk}")
    logits = q_region.detach() @ k_region.detach().transpose(-2, -1)
    return torch.topk(logits, k=min(topk, logits.shape[-1]), dim=-1).indices


def gather_regions(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Routed tokens: ``x (B, heads, R, T, d)``, ``idx (B, R, k) -> (B, heads, R, k*T, d)``.

    One ``index_select`` on the flattened ``(B*heads*R, T*d)`` view: the result is laid out so
    that the ``(k, T)`` axes are already contiguous per query region (no further copy), and the
    backward is an ``index_add`` into a buffer of ``x``'s size.
    """
    B, m, R, T, d = x.shape
    k = idx.shape[-1]
    base = torch.arange(B * m, device=idx.device).view(B, m, 1, 1) * R
    flat = (base + idx.unsqueeze(1)).reshape(-1)  # (B*m*R*k,)
    out = x.reshape(B * m * R, T * d).index_select(0, flat)
    return out.view(B, m, R, k * T, d)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 5 or k.shape != q.shape or v.dim() != 5 or v.shape[:4] != q.shape[:4]:
        raise ValueError(
            "bra2d: expected q, k of shape (B, H, W, heads, d_qk) and v of shape (B, H, W, heads, d_v); "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def _route(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_regions: IntOrPair, topk: int):
    """The routing half of :func:`bra2d`: ``(grid, idx, q, k, v, mask)`` with queries
    ``(B, heads*R, T, d_qk)``, routed keys/values ``(B, heads*R, topk*T, d)`` and the boolean
    key mask ``(B, heads*R, 1, topk*T)`` of padded tokens (None when the map is divisible)."""
    _check(q, k, v)
    B, H, W, m, dq = q.shape
    grid = region_grid(H, W, num_regions)
    qr, kr, vr = (region_partition(t, grid) for t in (q, k, v))
    valid = region_valid_mask(grid, q.device) if grid.padded else None
    idx = topk_routing(region_means(qr, valid), region_means(kr, valid), topk)  # (B, R, kk)
    kk, R, T = idx.shape[-1], grid.num_regions, grid.region_tokens
    kg = gather_regions(kr, idx).view(B, m * R, kk * T, dq)
    vg = gather_regions(vr, idx).view(B, m * R, kk * T, vr.shape[-1])
    mask = None
    if valid is not None:
        mask = valid[idx].view(B, 1, R, 1, kk * T).expand(B, m, R, 1, kk * T).reshape(B, m * R, 1, kk * T)
    return grid, idx, qr.reshape(B, m * R, T, dq), kg, vg, mask


@script_ignore(num_regions=int)  # TorchScript calls it through Python (region grid: a Python NamedTuple)
@register_notrace_function  # a leaf of FX graphs: its region grid depends on the map size
def bra2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_regions: IntOrPair = 7,
    topk: int = 4,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Bi-level routing attention (BiFormer Eq. 1-4) on NHWC head-split tensors.

    Args:
        q, k: ``(B, H, W, heads, d_qk)``.
        v: ``(B, H, W, heads, d_v)``.
        num_regions: regions per side (``n_win``), int or ``(nh, nw)``; see :func:`region_grid`.
        topk: routed regions per query region (clamped to the number of regions).
        scale: attention logit scale; default ``d_qk ** -0.5`` (BiFormer uses the *total*
            ``(heads*d_qk) ** -0.5``, which :class:`~visionattn.layers.BiLevelRoutingAttention` passes).

    Returns:
        ``(B, H, W, heads, d_v)``.

    Raises:
        ValueError: mismatched shapes, ``topk < 1``.
    """
    grid, idx, qg, kg, vg, mask = _route(q, k, v, num_regions, topk)
    out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, scale=scale)
    return region_reverse(out.view(q.shape[0], q.shape[3], grid.num_regions, grid.region_tokens, v.shape[-1]), grid)


def bra2d_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_regions: IntOrPair = 7,
    topk: int = 4,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Dense-masked reference of :func:`bra2d` (same arguments and shapes; ``O((HW)^2)``).

    Builds the region id of every token, the region means with ``index_add``, the routing, and a
    ``(HW, HW)`` mask allowing query ``i`` to see key ``j`` iff ``region(j)`` is routed from
    ``region(i)``; then plain ``softmax(q k^T * scale) v`` over all tokens.
    """
    _check(q, k, v)
    B, H, W, m, dq = q.shape
    grid = region_grid(H, W, num_regions)
    rows = torch.arange(H, device=q.device) // grid.rh
    cols = torch.arange(W, device=q.device) // grid.rw
    rid = (rows[:, None] * grid.nw + cols[None, :]).reshape(-1)  # (HW,)
    R = grid.num_regions
    count = torch.zeros(R, device=q.device, dtype=q.dtype).index_add_(0, rid, torch.ones_like(rid, dtype=q.dtype))
    qf, kf, vf = q.reshape(B, H * W, m * dq), k.reshape(B, H * W, m * dq), v.reshape(B, H * W, m, v.shape[-1])
    q_reg = torch.zeros(B, R, m * dq, dtype=q.dtype, device=q.device).index_add_(1, rid, qf.detach()) / count[:, None]
    k_reg = torch.zeros(B, R, m * dq, dtype=q.dtype, device=q.device).index_add_(1, rid, kf.detach()) / count[:, None]
    idx = topk_routing(q_reg, k_reg, topk)  # (B, R, kk)
    routed = torch.zeros(B, R, R, dtype=torch.bool, device=q.device)
    routed.scatter_(2, idx, True)
    allowed = routed[:, rid][:, :, rid]  # (B, HW, HW)
    scale = dq ** -0.5 if scale is None else scale
    qh = q.reshape(B, H * W, m, dq).transpose(1, 2)
    kh = k.reshape(B, H * W, m, dq).transpose(1, 2)
    logits = (qh @ kh.transpose(-2, -1)) * scale
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    out = logits.softmax(-1) @ vf.transpose(1, 2)
    return out.transpose(1, 2).reshape(B, H, W, m, v.shape[-1])


def bra2d_flops(H: int, W: int, heads: int, d_qk: int, d_v: int, num_regions: IntOrPair = 7, topk: int = 4, batch: int = 1) -> int:
    """MACs of :func:`bra2d`'s attention matmuls (``QK^T`` + ``AV`` over the padded grid) plus the routing matmul."""
    g = region_grid(H, W, num_regions)
    kk = min(topk, g.num_regions)
    n = batch * heads * g.num_regions * g.region_tokens * kk * g.region_tokens
    return n * (d_qk + d_v) + batch * g.num_regions * g.num_regions * heads * d_qk


def bra2d_with_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_regions: IntOrPair = 7,
    topk: int = 4,
    scale: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, RegionGrid]:
    """:func:`bra2d` with the token-level softmax materialised and returned (for inspection).

    Same routing and gather as :func:`bra2d` (one shared helper); the attention is the explicit
    ``softmax(q k^T * scale)`` over the routed keys, padded keys masked to weight 0.

    Returns:
        ``(out, attn, idx, grid)``: ``out (B, H, W, heads, d_v)``; ``attn (B, heads, R, T,
        topk*T)``, the weights of token ``t`` (row-major inside its region) of query region ``r``
        over the ``T`` tokens of each of its routed regions in ``idx`` order; ``idx (B, R, topk)``
        the routed key regions (row-major region numbers); ``grid`` the :class:`RegionGrid`.

    Raises:
        ValueError: as :func:`bra2d`.
    """
    grid, idx, qg, kg, vg, mask = _route(q, k, v, num_regions, topk)
    dq = q.shape[-1]
    logits = (qg @ kg.transpose(-2, -1)) * (dq ** -0.5 if scale is None else scale)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    attn = logits.softmax(dim=-1)  # (B, heads*R, T, kk*T)
    B, m, R, T = q.shape[0], q.shape[3], grid.num_regions, grid.region_tokens
    out = region_reverse((attn @ vg).view(B, m, R, T, v.shape[-1]), grid)
    return out, attn.view(B, m, R, T, -1), idx, grid
