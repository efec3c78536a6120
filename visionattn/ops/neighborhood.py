"""2-D (dilated) neighborhood attention with relative position bias.

Semantics are those of the NATTEN kernels (<= 0.17) that the released NAT / DiNAT checkpoints
were trained with (Hassani et al., "Neighborhood Attention Transformer", CVPR 2023; Hassani &
Shi, "Dilated Neighborhood Attention Transformer", arXiv:2209.15001; github SHI-Labs/NATTEN
``csrc/include/natten/cpu/naive/natten_cpu_commons.h::get_window_start`` and
``rel_pos_bias_2d.hpp::get_pb_start`` at v0.17.5):

* Each axis of length ``L`` is split by the dilation ``d`` into ``d`` interleaved residue classes
  (positions ``r, r + d, r + 2d, ...``). Plain neighborhood attention runs inside each class.
* Inside a class of length ``Lr`` a query at index ``ip`` sees the ``K`` consecutive class members
  starting at ``s = max(ip - K//2, 0) + [ip + K//2 >= Lr] * (Lr - ip - K//2 - 1)``: the window is
  *shifted* at the borders, never truncated, so every query sees exactly ``K`` keys per axis.
* The 2-D window is the Cartesian product of the row and column windows.
* The relative position bias table ``rpb`` has shape ``(heads, 2K-1, 2K-1)``; the bias of query
  ``(i, j)`` and key ``(kr, kc)`` is ``rpb[h, (kr - i) / d + K - 1, (kc - j) / d + K - 1]``.

Two implementations give the same numbers:

* :func:`na2d_reference`: dense attention over all ``H*W`` tokens with a ``-inf`` mask outside
  the neighborhood. Obviously correct, ``O((H*W)^2)``; kept for tests and as documentation.
* the tiled path used by :func:`na2d`: queries of each residue class are grouped into tiles of
  ``T x T``; the keys a tile needs form one ``(T+K-1) x (T+K-1)`` block (windows of neighboring
  queries move by at most one step), so attention becomes a batch of small dense problems with
  an additive bias/mask. Time and memory are ``O(H*W * (T+K-1)^2)``, linear in ``H*W``; no
  ``(H*W)^2`` matrix is formed. Index tables are per axis, ``O(L * (T+K-1))``, and cached.
* the gather path (:func:`na2d_with_weights`, and :func:`na2d` under ``torch.export`` with a
  symbolic height/width): each query's ``K x K`` keys gathered through :func:`neighborhood_indices`,
  whose windows are tensor arithmetic on the map size, so an exported graph takes any size.
  ``O(H*W * K^2)`` memory.
* the flex path (``backend="flex"``): ``torch.nn.attention.flex_attention`` on the tokens
  reordered dilation-class-major (each residue class contiguous, so the window stays local in the
  sequence), a ``mask_mod`` encoding the exact window above, an rpb ``score_mod``, and a
  block-sparse ``BlockMask`` built from the windows (never from an ``(H*W)^2`` mask). Compiled,
  it is a fused kernel (CUDA: Triton; CPU: the inductor C++ template, forward only in torch 2.14).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from timm.layers import register_notrace_function

from ._trace import cache_context, has_symbolic_hw, is_tracing, script_ignore

__all__ = [
    "na2d",
    "na2d_reference",
    "na2d_with_weights",
    "window_start",
    "neighborhood_indices",
    "natten_available",
    "check_na2d_args",
    "choose_backend",
]

IntOrPair = Union[int, Sequence[int]]


def _pair(x: IntOrPair, name: str) -> Tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    t = tuple(int(v) for v in x)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {x!r}")
    return t  # type: ignore[return-value]


def window_start(length: int, kernel_size: int, dilation: int = 1, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """Start (in class-local units) of each query's window along one axis.

    Tensor arithmetic only (no Python branch on ``length``), so under ``torch.export`` a symbolic
    ``length`` gives a graph that computes the windows of any size.

    Args:
        length: axis length ``L`` (tokens; an int or a symbolic size).
        kernel_size: odd window size ``K``.
        dilation: dilation ``d`` with ``K * d <= L``.
        device: where the result is made.

    Returns:
        int64 tensor ``(L,)``: for query ``i`` (class ``r = i % d``, local index ``i // d``), the
        local index of its first key; its keys are ``(start + a) * d + r`` for ``a < K``.
        Source: NATTEN v0.17.5 ``get_window_start`` (see module docstring).
    """
    return _window_start_of(torch.arange(length, device=device), length, kernel_size, dilation)


def _window_start_of(i: torch.Tensor, length, kernel_size: int, dilation: int) -> torch.Tensor:
    """:func:`window_start` of the positions ``i`` (int64 tensor) on an axis of ``length`` tokens."""
    r = i % dilation
    ip = i // dilation
    lr = (length - r + dilation - 1) // dilation
    nb = kernel_size // 2
    s = (ip - nb).clamp(min=0)
    s = s + (ip + nb >= lr).long() * (lr - ip - nb - 1)
    return s


def neighborhood_indices(
    length: int, kernel_size: int, dilation: int = 1, device: Union[str, torch.device] = "cpu", queries: Optional[int] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Key positions and bias-table rows of every query along one axis (made on ``device``; tensor
    arithmetic only, as :func:`window_start`).

    ``queries`` (default ``length``) limits the result to the first ``queries`` positions of an
    axis of ``length`` tokens (the rest are padding whose outputs are cropped).

    Returns:
        ``(keys, bias_idx)``, both int64 ``(L, K)`` (``L = queries``): ``keys[i, a]`` is the absolute
        position of the ``a``-th key of query ``i``; ``bias_idx[i, a] = (keys[i, a] - i) / d + K - 1``
        indexes the ``2K-1`` axis of the relative position bias table.
    """
    i = torch.arange(length if queries is None else queries, device=device)
    s = _window_start_of(i, length, kernel_size, dilation)
    r = i % dilation
    a = torch.arange(kernel_size, device=device)
    local = s[:, None] + a[None, :]
    keys = local * dilation + r[:, None]
    bias_idx = local - (i // dilation)[:, None] + kernel_size - 1
    return keys, bias_idx


def check_na2d_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: IntOrPair,
    dilation: IntOrPair,
    rpb: Optional[torch.Tensor],
) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Validate :func:`na2d` arguments; returns ``(kernel_size, dilation)`` as pairs.

    Raises:
        ValueError: on non-5-D or mismatched q/k/v shapes, mismatched dtypes or devices, even or
            non-positive kernel sizes, non-positive dilations, ``K * d > L`` on an axis, or an
            ``rpb`` whose shape is not ``(heads, 2K-1, 2K-1)``.
    """
    ks = _pair(kernel_size, "kernel_size")
    dil = _pair(dilation, "dilation")
    if q.dim() != 5:
        raise ValueError(f"na2d expects q, k, v of shape (B, H, W, heads, head_dim); got q with shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            f"na2d: q, k, v must share (B, H, W, heads) and q/k the head_dim; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"na2d: q, k, v must have one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"na2d: q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    for kk in ks:
        if kk < 1 or kk % 2 == 0:
            raise ValueError(f"na2d: kernel_size must be odd and >= 1 (as in the released NAT/DiNAT models); got {ks}")
    for dd in dil:
        if dd < 1:
            raise ValueError(f"na2d: dilation must be >= 1; got {dil}")
    H, W = q.shape[1], q.shape[2]
    for axis, L, kk, dd in (("H", H, ks[0], dil[0]), ("W", W, ks[1], dil[1])):
        if kk * dd > L:
            raise ValueError(
                f"na2d: kernel_size * dilation = {kk}*{dd} = {kk * dd} exceeds the feature map size {axis}={L}; "
                f"pad the input to at least {kk * dd} (NeighborhoodAttention2d does this) or reduce the dilation"
            )
    if rpb is not None:
        heads = q.shape[3]
        want = (heads, 2 * ks[0] - 1, 2 * ks[1] - 1)
        if tuple(rpb.shape) != want:
            raise ValueError(f"na2d: rpb must have shape (heads, 2K-1, 2K-1) = {want}; got {tuple(rpb.shape)}")
        if rpb.device != q.device:
            raise ValueError(f"na2d: rpb is on {rpb.device}, q on {q.device}")
    return ks, dil


# ------------------------------------------------------------------------------------------------
# Reference implementation: dense masked attention


def na2d_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: IntOrPair,
    dilation: IntOrPair = 1,
    rpb: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Neighborhood attention as dense attention with a neighborhood mask (reference, O(N^2)).

    Args:
        q, k, v: ``(B, H, W, heads, head_dim)``.
        kernel_size, dilation: int or ``(kh, kw)`` / ``(dh, dw)``; see module docstring.
        rpb: optional ``(heads, 2kh-1, 2kw-1)`` relative position bias.
        scale: logit scale, default ``head_dim ** -0.5``.

    Returns:
        ``(B, H, W, heads, head_dim_v)``.
    """
    (kh, kw), (dh, dw) = check_na2d_args(q, k, v, kernel_size, dilation, rpb)
    B, H, W, nh, hd = q.shape
    scale = hd ** -0.5 if scale is None else scale
    keys_r, bias_r = neighborhood_indices(H, kh, dh)
    keys_c, bias_c = neighborhood_indices(W, kw, dw)
    dev = q.device
    # member[i, kr] is True when row kr is in the row window of query row i; likewise columns.
    member_r = torch.zeros(H, H, dtype=torch.bool, device="cpu")
    member_r[torch.arange(H, device="cpu")[:, None], keys_r] = True
    member_c = torch.zeros(W, W, dtype=torch.bool, device="cpu")
    member_c[torch.arange(W, device="cpu")[:, None], keys_c] = True
    mask = (member_r[:, None, :, None] & member_c[None, :, None, :]).reshape(H * W, H * W).to(dev)
    qf = q.reshape(B, H * W, nh, hd).transpose(1, 2)
    kf = k.reshape(B, H * W, nh, hd).transpose(1, 2)
    vf = v.reshape(B, H * W, nh, v.shape[-1]).transpose(1, 2)
    logits = (qf * scale) @ kf.transpose(-2, -1)  # (B, nh, N, N)
    if rpb is not None:
        # Relative offsets between every query and key, in the dilated units of their window.
        row_off = torch.zeros(H, H, dtype=torch.long, device="cpu")
        row_off[torch.arange(H, device="cpu")[:, None], keys_r] = bias_r
        col_off = torch.zeros(W, W, dtype=torch.long, device="cpu")
        col_off[torch.arange(W, device="cpu")[:, None], keys_c] = bias_c
        bias = rpb[:, row_off.to(dev)[:, None, :, None], col_off.to(dev)[None, :, None, :]]
        logits = logits + bias.reshape(nh, H * W, H * W).to(logits.dtype)
    logits = logits.masked_fill(~mask, float("-inf"))
    out = logits.softmax(dim=-1) @ vf
    return out.transpose(1, 2).reshape(B, H, W, nh, v.shape[-1])


# ------------------------------------------------------------------------------------------------
# Tiled implementation


def default_tile_size(length: int, kernel_size: int, dilation: int) -> int:
    """Query tile size (class-local units) used by :func:`na2d` for one axis.

    A tile of ``T`` queries needs ``T + K - 1`` keys, so compute per query grows with ``T`` while
    the number of (small) matrix products shrinks. ``T = K`` (about 3.4x the minimal work for
    ``K = 7``) measured best on CPU and GPU among ``T`` in ``{K//2, K, 2K}``; a residue class
    shorter than that is one tile.
    """
    group_len = -(-length // dilation)
    return max(1, min(kernel_size, group_len))


def _window_start_py(i: int, length: int, kernel_size: int, dilation: int) -> int:
    """Plain-integer twin of :func:`window_start` for one query (used to build plans trace-free)."""
    r, ip = i % dilation, i // dilation
    lr = (length - r + dilation - 1) // dilation
    nb = kernel_size // 2
    return max(ip - nb, 0) + (lr - ip - nb - 1 if ip + nb >= lr else 0)


@lru_cache(maxsize=256)
def _axis_plan(length: int, kernel_size: int, dilation: int, tile: int):
    """Per-axis gather plan of the tiled path, as plain integers (cached).

    Returns ``(q_idx, k_idx, inv_idx, offset, n_tiles, tile, halo)`` (tensors made by
    :func:`_axis_plan_on`):
      q_idx  (n_tiles * tile,)  absolute query position of every query slot (padding slots -> 0)
      k_idx  (n_tiles * halo,)  absolute key position of every key slot of every tile
      inv_idx (length,)         slot of each absolute position (to scatter outputs back)
      offset (n_tiles, tile, halo) bias-table row ``0..2K-2`` of each (query, key) slot pair,
             ``2K-1`` where the key is outside the query's window (masked)
    ``n_tiles`` counts tiles over all residue classes.
    """
    K, d, L = kernel_size, dilation, length
    m = -(-L // d)  # longest residue class
    T = max(1, min(tile, m))
    halo = min(T + K - 1, m)
    masked = 2 * K - 1
    q_idx, k_idx, offs = [], [], []
    inv_idx = [0] * L
    n_tiles = 0
    for r in range(d):
        lr = (L - r + d - 1) // d
        for t0 in range(0, m, T):
            first = min(t0, lr - 1)
            ks = max(0, min(_window_start_py(first * d + r, L, K, d), m - halo))
            # Keys past the end of a short class are clamped onto a real position and masked.
            k_idx.extend(min(kk, lr - 1) * d + r for kk in range(ks, ks + halo))
            for a in range(T):
                ip = t0 + a
                if ip < lr:
                    qs = _window_start_py(ip * d + r, L, K, d)
                    row = [kk - ip + K - 1 if (qs <= kk < qs + K and kk < lr) else masked for kk in range(ks, ks + halo)]
                    q_idx.append(ip * d + r)
                    inv_idx[ip * d + r] = n_tiles * T + a
                else:
                    # Padding query slots attend to one arbitrary key so that no softmax row is empty.
                    row = [K - 1] + [masked] * (halo - 1)
                    q_idx.append(0)
                offs.append(row)
            n_tiles += 1
    return (tuple(q_idx), tuple(k_idx), tuple(inv_idx), tuple(map(tuple, offs)), n_tiles, T, halo)


_PLAN_DEVICE_CACHE: dict = {}


def _axis_plan_on(length: int, kernel_size: int, dilation: int, tile: int, like: torch.Tensor):
    """Plan tensors on ``like.device``; cached per device except while tracing (export/compile),
    where fresh constants are made so that no fake tensor ever enters the cache."""
    key = (length, kernel_size, dilation, tile, str(like.device))
    tracing = is_tracing(like)
    plan = None if tracing else _PLAN_DEVICE_CACHE.get(key)
    if plan is None:
        q_idx, k_idx, inv_idx, off, n, T, halo = _axis_plan(length, kernel_size, dilation, tile)
        as_long = dict(dtype=torch.long, device=like.device)
        with cache_context(tracing):
            plan = (
                torch.tensor(q_idx, **as_long),
                torch.tensor(k_idx, **as_long),
                torch.tensor(inv_idx, **as_long),
                torch.tensor(off, **as_long).view(n, T, halo),
                n,
                T,
                halo,
            )
        if not tracing:
            if len(_PLAN_DEVICE_CACHE) > 512:
                _PLAN_DEVICE_CACHE.clear()
            _PLAN_DEVICE_CACHE[key] = plan
    return plan


def _na2d_tiled(q, k, v, ks, dil, rpb, scale, tile):
    B, H, W, nh, hd = q.shape
    hv = v.shape[-1]
    kh, kw = ks
    th = tile[0] if tile is not None else default_tile_size(H, kh, dil[0])
    tw = tile[1] if tile is not None else default_tile_size(W, kw, dil[1])
    qr, kr, invr, offr, nr, Tr, Hr = _axis_plan_on(H, kh, dil[0], th, q)
    qc, kc, invc, offc, nc, Tc, Hc = _axis_plan_on(W, kw, dil[1], tw, q)

    # Gather query tiles (B, nr, nc, heads, Tr*Tc, hd) and key/value halos (..., Hr*Hc, hd).
    qt = q.index_select(1, qr).index_select(2, qc)
    qt = qt.view(B, nr, Tr, nc, Tc, nh, hd).permute(0, 1, 3, 5, 2, 4, 6).reshape(B, nr, nc, nh, Tr * Tc, hd)
    kt = k.index_select(1, kr).index_select(2, kc)
    kt = kt.view(B, nr, Hr, nc, Hc, nh, hd).permute(0, 1, 3, 5, 2, 4, 6).reshape(B, nr, nc, nh, Hr * Hc, hd)
    vt = v.index_select(1, kr).index_select(2, kc)
    vt = vt.view(B, nr, Hr, nc, Hc, nh, hv).permute(0, 1, 3, 5, 2, 4, 6).reshape(B, nr, nc, nh, Hr * Hc, hv)

    # Without autograd the fresh logits / bias buffers are updated in place (less peak memory).
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, rpb))
    logits = (qt * scale) @ kt.transpose(-2, -1)  # (B, nr, nc, nh, Tr*Tc, Hr*Hc)
    dt = logits.dtype
    neg = torch.tensor(float("-inf"), dtype=dt, device=logits.device)
    zero = torch.zeros((), dtype=dt, device=logits.device)
    # offset 2K-1 on either axis marks a (query, key) slot pair outside the window
    mr = torch.where(offr == 2 * kh - 1, neg, zero)  # (nr, Tr, Hr)
    mc = torch.where(offc == 2 * kw - 1, neg, zero)  # (nc, Tc, Hc)
    mask = (mr[:, None, :, None, :, None] + mc[None, :, None, :, None, :]).reshape(nr, nc, 1, Tr * Tc, Hr * Hc)
    if rpb is not None:
        # bias[h, (row slots), (col slots)] = rpb[h, offr, offc] is separable: one-hot(offr) @ rpb
        # @ one-hot(offc)^T. Two small matmuls instead of a gather whose backward is a slow
        # scatter-add onto the (2K-1)^2 table; masked slots get an all-zero one-hot row.
        er = F.one_hot(offr.reshape(-1), 2 * kh)[:, : 2 * kh - 1].to(dt)  # (nr*Tr*Hr, 2kh-1)
        ec = F.one_hot(offc.reshape(-1), 2 * kw)[:, : 2 * kw - 1].to(dt)  # (nc*Tc*Hc, 2kw-1)
        bias = (er @ rpb.to(dt)) @ ec.t()  # (nh, nr*Tr*Hr, nc*Tc*Hc)
        bias = bias.view(nh, nr, Tr, Hr, nc, Tc, Hc).permute(1, 4, 0, 2, 5, 3, 6).reshape(nr, nc, nh, Tr * Tc, Hr * Hc)
        mask = bias + mask if need_grad else bias.add_(mask)
    logits = logits + mask if need_grad else logits.add_(mask)
    del mask
    attn = logits.softmax(dim=-1)
    del logits
    out = attn @ vt  # (B, nr, nc, nh, Tr*Tc, hv)
    out = out.view(B, nr, nc, nh, Tr, Tc, hv).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, nr * Tr, nc * Tc, nh, hv)
    return out.index_select(1, invr).index_select(2, invc)


# ------------------------------------------------------------------------------------------------
# NATTEN backend (optional)


def natten_available() -> bool:
    """True when the ``natten`` package (>= 0.20, with ``natten.na2d``) can be imported."""
    try:
        import natten  # noqa: F401

        return hasattr(natten, "na2d")
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False


def _na2d_natten(q, k, v, ks, dil, scale):
    import natten

    return natten.na2d(q, k, v, kernel_size=ks, dilation=dil, scale=scale)



# ------------------------------------------------------------------------------------------------
# flex_attention backend

FLEX_BLOCK_SIZE = 128
"""Query/key block of the flex ``BlockMask`` (flex_attention's default sparse block)."""


@lru_cache(maxsize=64)
def _flex_plan(H: int, W: int, kh: int, kw: int, dh: int, dw: int, block: int):
    """Token order and block sparsity of the flex path, as (nested) tuples of ints (cached).

    Tokens are put in dilation-class-major order ``(r_h, r_w, i // d_h, j // d_w)``, so each of
    the ``d_h * d_w`` residue classes is a contiguous run and a query's ``kh x kw`` keys lie a few
    class rows around it. Returns ``(order, inverse, row, col, win_row, win_col, kv_num, kv_idx)``:
    ``order[s]`` is the row-major token at sequence slot ``s`` and ``inverse`` its inverse;
    ``row``/``col`` (per slot) its absolute position; ``win_row``/``win_col`` the absolute first
    key row/column of its window; ``kv_num (n_blocks,)`` / ``kv_idx (n_blocks, n_blocks)`` the
    key blocks each query block touches, first ``kv_num`` entries (all partial: a query has at
    most ``kh*kw`` keys, fewer than a block, so no block is full).
    """
    N = H * W
    i = torch.arange(H)
    j = torch.arange(W)
    # sort key (r_h, r_w, i // d_h, j // d_w)
    key = (((i % dh)[:, None] * dw + (j % dw)[None, :]) * H + (i // dh)[:, None]) * W + (j // dw)[None, :]
    order = torch.argsort(key.reshape(-1))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(N)
    row, col = order // W, order % W
    keys_r, _ = neighborhood_indices(H, kh, dh)  # (H, kh) absolute
    keys_c, _ = neighborhood_indices(W, kw, dw)
    win_row, win_col = keys_r[row, 0], keys_c[col, 0]
    # key slots of every query slot -> touched (query block, key block) pairs
    kseq = inverse[(keys_r[row][:, :, None] * W + keys_c[col][:, None, :]).reshape(N, kh * kw)]
    nb = -(-N // block)
    qb = torch.arange(N)[:, None] // block
    hit = torch.zeros(nb * nb, dtype=torch.bool)
    hit[(qb * nb + kseq // block).reshape(-1)] = True
    hit = hit.view(nb, nb)
    kv_num = hit.sum(1).to(torch.int32)
    kv_idx = torch.argsort((~hit).to(torch.int8), dim=1, stable=True)
    return tuple(tuple(t.tolist()) if t.dim() == 1 else tuple(map(tuple, t.tolist())) for t in (order, inverse, row, col, win_row, win_col, kv_num, kv_idx))


_FLEX_DEVICE_CACHE: dict = {}


def _flex_tables(H: int, W: int, ks: Tuple[int, int], dil: Tuple[int, int], like: torch.Tensor):
    """Tensors of :func:`_flex_plan` on ``like.device``, cached per (shape, device).

    While tracing, a cached entry (real tensors, made by an earlier eager call) is read and enters
    the graph as constants; a missing one is built as fresh graph constants and not cached, so no
    fake tensor reaches the cache. (Inductor's CPU flex template, torch 2.14, finds no kernel for
    block-mask tensors built inside the graph: call the layer once eagerly before compiling.)
    """
    key = (H, W, ks, dil, FLEX_BLOCK_SIZE, str(like.device))
    hit = _FLEX_DEVICE_CACHE.get(key)
    if hit is None:
        plan = _flex_plan(H, W, ks[0], ks[1], dil[0], dil[1], FLEX_BLOCK_SIZE)
        tracing = is_tracing(like)
        with cache_context(tracing):
            hit = tuple(torch.tensor(t, dtype=torch.long if i < 2 else torch.int32, device=like.device) for i, t in enumerate(plan))
        if not tracing:
            if len(_FLEX_DEVICE_CACHE) > 128:
                _FLEX_DEVICE_CACHE.clear()
            _FLEX_DEVICE_CACHE[key] = hit
    return hit


def _flex_block_mask(H, W, ks, dil, like: torch.Tensor):
    """``(order, inverse, (row, col), BlockMask)`` for the flex path on ``like.device``."""
    from torch.nn.attention.flex_attention import BlockMask

    order, inverse, row, col, win_row, win_col, kv_num, kv_blocks = _flex_tables(H, W, ks, dil, like)
    span_h, span_w = (ks[0] - 1) * dil[0], (ks[1] - 1) * dil[1]
    dh, dw = dil

    def mask_mod(b, h, q_idx, kv_idx):
        # key inside the query's (shifted, per-class) window: offset from the window start is a
        # multiple of d and at most (K-1)*d on both axes
        dr = row[kv_idx] - win_row[q_idx]
        dc = col[kv_idx] - win_col[q_idx]
        return (dr >= 0) & (dr <= span_h) & (dr % dh == 0) & (dc >= 0) & (dc <= span_w) & (dc % dw == 0)

    N = H * W
    block_mask = BlockMask.from_kv_blocks(
        kv_num[None, None], kv_blocks[None, None], BLOCK_SIZE=FLEX_BLOCK_SIZE, mask_mod=mask_mod, seq_lengths=(N, N)
    )
    return order, inverse, (row, col), block_mask


_FLEX_COMPILED = None


def _flex_compiled():
    """``torch.compile(flex_attention)``, made once per process (PyTorch's recommended use)."""
    global _FLEX_COMPILED
    if _FLEX_COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
    return _FLEX_COMPILED


FLEX_RECOMPILE_LIMIT = 64
"""Recompile limit applied around the compiled flex call: every (map size, K, d, grad mode)
compiles once, and a DiNAT forward+backward has more than dynamo's default 8 of them."""


def _na2d_flex(q, k, v, ks, dil, rpb, scale, compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    B, H, W, nh, hd = q.shape
    hv = v.shape[-1]
    order, inverse, (row, col), block_mask = _flex_block_mask(H, W, ks, dil, q)
    kh, kw = ks
    dh, dw = dil

    def to_seq(x):  # (B, H, W, nh, D) -> contiguous (B, nh, N, D) in class-major order
        # (inductor's CPU flex template finds no kernel for non-contiguous (B, N, nh, D) views)
        return x.reshape(B, H * W, nh, x.shape[-1]).transpose(1, 2).index_select(2, order)

    score_mod = None
    if rpb is not None:
        table = rpb.to(q.dtype)

        def rpb_score_mod(score, b, h, q_idx, kv_idx):
            # clamp: flex also evaluates score_mod on masked pairs of partial blocks
            ir = ((row[kv_idx] - row[q_idx]) // dh + kh - 1).clamp(0, 2 * kh - 2)
            ic = ((col[kv_idx] - col[q_idx]) // dw + kw - 1).clamp(0, 2 * kw - 2)
            return score + table[h, ir, ic]

        score_mod = rpb_score_mod

    args = (to_seq(q), to_seq(k), to_seq(v))
    kwargs = dict(score_mod=score_mod, block_mask=block_mask, scale=scale)
    if not compiled or torch.compiler.is_compiling():
        # inside an outer torch.compile the call is traced into that graph (and fused there)
        out = flex_attention(*args, **kwargs)
    else:
        with torch._dynamo.config.patch(recompile_limit=FLEX_RECOMPILE_LIMIT):
            out = _flex_compiled()(*args, **kwargs)
    out = out.index_select(2, inverse).transpose(1, 2)
    return out.reshape(B, H, W, nh, hv)


def _flex_unsupported(q, k, v, rpb) -> Optional[str]:
    """Why flex cannot run these inputs (``None`` if it can)."""
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"dtype {q.dtype} is not supported by flex_attention"
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, rpb)
    ):
        return "torch's flex_attention has no backward on CPU (torch <= 2.14); use backend='torch' or run under torch.no_grad()"
    return None

# ------------------------------------------------------------------------------------------------
# Public entry point

_BACKENDS = ("auto", "torch", "reference", "natten", "flex", "flex-eager")


def choose_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: Optional[torch.Tensor]) -> str:
    """The backend ``backend="auto"`` runs (the one place where backends are chosen).

    * CUDA: NATTEN when installed and there is no ``rpb`` (outside ``torch.compile`` traces);
      else ``"torch"`` (tiled).
    * CPU and other devices: ``"torch"`` (tiled). Measured on CPU (``benchmarks/na2d.py``): the
      tiled path is several times faster than compiled flex, and flex has no CPU backward.

    Compiled ``"flex"`` is opt-in (``backend="flex"``), not the CUDA default, until it has been
    measured on a GPU: it compiles once per map size (multi-scale detection training feeds many
    sizes, and past dynamo's recompile limit flex falls back to its dense O((H*W)^2) eager path),
    and its CUDA speed against the tiled path is not yet recorded in ``benchmarks/``.
    """
    if q.is_cuda and not is_tracing(q) and rpb is None and natten_available():
        return "natten"
    return "torch"


def _is_full_window(H: int, W: int, ks: Tuple[int, int]) -> bool:
    """True when every query's window is the whole map (``K == L`` on both axes, so ``d == 1``)."""
    return ks[0] == H and ks[1] == W


def _na2d_full(q, k, v, ks, rpb, scale):
    """NA when the window is the whole map: full attention plus the relative bias, via SDPA.

    With ``K == H`` and ``K == W`` each query ``(i, j)`` sees every key and the bias index is
    ``(kr - i + K - 1, kc - j + K - 1)``; the ``(heads, N, N)`` bias is at most ``heads * K^4``.
    """
    B, H, W, nh, hd = q.shape
    N = H * W
    bias = None
    if rpb is not None:
        ir = torch.arange(H, device=q.device)
        ic = torch.arange(W, device=q.device)
        dr = ir[None, :] - ir[:, None] + ks[0] - 1  # [query row, key row]
        dc = ic[None, :] - ic[:, None] + ks[1] - 1
        bias = rpb.to(q.dtype)[:, dr[:, None, :, None], dc[None, :, None, :]].reshape(nh, N, N)
    qf, kf, vf = (x.reshape(B, N, nh, x.shape[-1]).transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=bias, scale=scale)
    return out.transpose(1, 2).reshape(B, H, W, nh, v.shape[-1])


@script_ignore(kernel_size=int, dilation=int, tile_size=Optional[int])  # backend choice, cached tiling plans
@register_notrace_function  # a leaf of FX graphs: its plan depends on the map size
def na2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: IntOrPair,
    dilation: IntOrPair = 1,
    rpb: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    backend: str = "auto",
    tile_size: Optional[IntOrPair] = None,
) -> torch.Tensor:
    """2-D (dilated) neighborhood attention with optional relative position bias.

    Same call as NATTEN's ``na2d`` plus ``rpb`` (which NATTEN >= 0.20 no longer supports, so the
    released NAT/DiNAT weights run exactly only through this function).

    Args:
        q, k, v: ``(B, H, W, heads, head_dim)`` tensors (heads-last, as NATTEN), one dtype/device.
            ``v`` may have another head_dim.
        kernel_size: odd window size ``K`` (int or ``(kh, kw)``).
        dilation: ``d`` (int or pair); requires ``K * d <= L`` on each axis.
        rpb: optional relative position bias, ``(heads, 2kh-1, 2kw-1)``; entry ``[h, K-1, K-1]``
            is the bias of a query to itself (see module docstring for the indexing).
        scale: attention logit scale; default ``head_dim ** -0.5``.
        backend: ``"auto"`` (see :func:`choose_backend`),
            ``"torch"`` (tiled pure-PyTorch path, linear in ``H*W``, any device, autograd; when the
            window is the whole map it runs fused SDPA with the bias instead),
            ``"reference"`` (dense masked attention, ``O((H*W)^2)``),
            ``"flex"`` (``torch.compile``-d ``flex_attention`` with a block-sparse NA mask and an rpb
            ``score_mod``; CUDA forward+backward, CPU forward only),
            ``"flex-eager"`` (the same mask/score functions through uncompiled ``flex_attention``,
            which PyTorch evaluates densely, ``O((H*W)^2)``; for tests), or ``"natten"``.
        tile_size: query tile (int or pair, class-local units) for the ``"torch"`` backend;
            default :func:`default_tile_size`. Any value gives the same result.

    Returns:
        ``(B, H, W, heads, head_dim_v)`` attention output.

    Raises:
        ValueError: see :func:`check_na2d_args`; an unknown backend; ``"natten"`` requested
            with an ``rpb`` or without NATTEN installed; ``"flex"``/``"flex-eager"`` with a dtype
            flex does not take or with inputs that require grad on CPU (no CPU flex backward).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"na2d: unknown backend {backend!r}; choose one of {_BACKENDS}")
    ks, dil = check_na2d_args(q, k, v, kernel_size, dilation, rpb)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if backend == "auto":
        backend = choose_backend(q, k, v, rpb)
    if backend == "natten":
        if rpb is not None:
            raise ValueError("na2d: the NATTEN backend has no relative position bias (dropped in NATTEN 0.20); use backend='torch'")
        if not natten_available():
            raise ValueError("na2d: backend='natten' requested but the natten package (>= 0.20) is not importable")
        return _na2d_natten(q, k, v, ks, dil, scale)
    if backend == "reference":
        return na2d_reference(q, k, v, ks, dil, rpb, scale)
    if backend in ("flex", "flex-eager"):
        why = _flex_unsupported(q, k, v, rpb)
        if why is not None:
            raise ValueError(f"na2d: backend={backend!r} cannot run these inputs: {why}")
        return _na2d_flex(q, k, v, ks, dil, rpb, scale, compiled=backend == "flex")
    if has_symbolic_hw(q):
        # torch.export with a symbolic height/width: the gather formulation, whose indices are
        # tensor arithmetic on the map size, so the exported graph takes any height/width (the
        # tiled path's plan and the full-window branch are Python decisions on the size).
        return _na2d_gather(q, k, v, ks, dil, rpb, scale)[0]
    if _is_full_window(q.shape[1], q.shape[2], ks):
        return _na2d_full(q, k, v, ks, rpb, scale)
    tile = None if tile_size is None else _pair(tile_size, "tile_size")
    return _na2d_tiled(q, k, v, ks, dil, rpb, scale, tile)


# ------------------------------------------------------------------------------------------------
# Explicit path with the attention weights (inspection)


def na2d_with_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: IntOrPair,
    dilation: IntOrPair = 1,
    rpb: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighborhood attention that also returns its softmax, one window per query (for inspection).

    The keys of every query are gathered through :func:`neighborhood_indices` (the windows of the
    module docstring, border shift and dilation included), so the softmax is materialised at its
    natural size ``K_h * K_w`` per query: ``O(H*W * K^2)`` memory, no ``(H*W)^2`` matrix.

    Args:
        q, k, v, kernel_size, dilation, rpb, scale: as :func:`na2d`.

    Returns:
        ``(out, attn, keys_r, keys_c)``: ``out (B, H, W, heads, head_dim_v)`` (what :func:`na2d`
        returns), ``attn (B, heads, H, W, K_h * K_w)`` the softmax of query ``(i, j)`` over its keys
        in row-major window order, ``keys_r (H, K_h)`` / ``keys_c (W, K_w)`` int64 (on q's device) the absolute
        rows / columns of those keys (key ``a * K_w + b`` of query ``(i, j)`` is
        ``(keys_r[i, a], keys_c[j, b])``).

    Raises:
        ValueError: see :func:`check_na2d_args`.
    """
    ks, dil = check_na2d_args(q, k, v, kernel_size, dilation, rpb)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _na2d_gather(q, k, v, ks, dil, rpb, scale)


def _na2d_gather(q, k, v, ks, dil, rpb, scale, lengths=None):
    """NA by gathering each query's ``K_h x K_w`` keys (:func:`neighborhood_indices`); returns what
    :func:`na2d_with_weights` returns. ``O(H*W * K^2)`` memory; no Python branch on the map size
    (used under ``torch.export``).

    ``lengths`` ``(Lh, Lw)`` (default ``(H, W)`` of ``q``): the windows are those of an
    ``Lh x Lw`` map of which ``q`` holds the first ``H x W`` queries; ``k``/``v`` hold at least
    ``Lh x Lw`` tokens (a padded map whose padded queries are not computed).
    """
    (kh, kw), (dh, dw) = ks, dil
    B, H, W, nh, hd = q.shape
    dev = q.device
    Lh, Lw = (H, W) if lengths is None else lengths
    keys_r, bias_r = neighborhood_indices(Lh, kh, dh, dev, queries=H)
    keys_c, bias_c = neighborhood_indices(Lw, kw, dw, dev, queries=W)
    ir = keys_r[:, None, :, None]  # (H, 1, Kh, 1)
    ic = keys_c[None, :, None, :]  # (1, W, 1, Kw)
    # Products and sums over aligned axes, no einsum/matmul: their internal reshapes of symbolic
    # sizes leave guards (``(2*n) % n == 0``) that torch.export cannot prove.
    kg = k[:, ir, ic].flatten(3, 4)  # (B, H, W, Kh*Kw, heads, d)
    vg = v[:, ir, ic].flatten(3, 4)
    logits = (q[:, :, :, None] * scale * kg).sum(-1)  # (B, H, W, Kh*Kw, heads)
    if rpb is not None:
        bias = rpb.permute(1, 2, 0)[bias_r[:, None, :, None], bias_c[None, :, None, :]]  # (H, W, Kh, Kw, heads)
        logits = logits + bias.flatten(2, 3).to(logits.dtype)
    attn = logits.softmax(dim=3)
    out = (attn[..., None] * vg).sum(3)  # (B, H, W, heads, d_v)
    return out, attn.permute(0, 4, 1, 2, 3), keys_r, keys_c
