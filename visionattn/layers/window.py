"""Multi-head self-attention over windows of NHWC tokens, with an optional relative position bias.

One mixer, three partitions (``partition=``):

* ``'global'``: the whole map is one window: the ViT-rpb baseline of the NAT paper (Hassani et
  al., CVPR 2023, Table 7; github SHI-Labs/Neighborhood-Attention-Transformer
  ``classification/isotropic.py`` ``MHSARPB``). The ``rpb`` table ``(heads, 2S-1, 2S-1)`` is
  resized bicubically when the map is not ``S x S``. Padding never happens.
* ``'block'``: non-overlapping ``P x P`` windows of adjacent tokens: MaxViT block attention
  (Tu et al., ECCV 2022, Sec. 3.2) and DaViT spatial window attention (Ding et al., ECCV 2022,
  Sec. 3.1; github dingmyu/davit ``WindowAttention``).
* ``'grid'``: ``G x G`` windows of tokens spaced ``H/G`` apart: MaxViT grid attention (Sec. 3.2).
* ``'dilated'``: ``G x G`` windows of tokens spaced ``interval`` apart, inside regions of
  ``G*interval`` tokens: CrossFormer long-distance attention (LDA; Wang et al., ICLR 2022,
  Sec. 3.2); ``'block'`` is its short-distance attention (SDA).

Projections: fused ``qkv = Linear(C, 3C)`` whose rows are ``[q | k | v]``, each ``(heads, head_dim)``
(the TF MaxViT port's ``head_first=False`` layout, timm ``AttentionCl``; DaViT's layout), scale
``head_dim ** -0.5``, output ``proj = Linear(C, C)``.

Relative position bias (``rel_pos_bias=True``): one table ``rpb`` of shape ``(heads, 2P-1, 2P-1)``;
query ``(i, j)`` and key ``(r, c)`` of a window get ``rpb[h, r - i + P - 1, c - j + P - 1]``
(:mod:`visionattn.layers.pos`). This is exactly the TF MaxViT bias (google-research/maxvit
``maxvit/models/attention_utils.py`` ``reindex_2d_einsum_lookup``; timm ``RelPosBiasTf``), which
builds the same ``(heads, P^2, P^2)`` matrix with one-hot einsums; here it is a gather through a
precomputed index. For grid windows the offsets are between grid slots (tokens ``H/G`` apart).

Dynamic position bias (``dynamic_pos_bias=True``, CrossFormer's DPB, Sec. 3.3): instead of a
table, :class:`~visionattn.layers.pos.DynamicPosBias` (an MLP over relative offsets, keys
``dpb.*``) gives the bias of whatever window size the map ends up with; ``fit_map=True`` makes a
map no larger than one window along a side (``H <= P_h`` or ``W <= P_w``) a single window of the
whole map (CrossFormer's rule: official classification code at square sizes, and its detection
backbone ``crossformer_backbone_det.py`` at any size). With either option, and for ``'dilated'``,
``qkv`` is applied before padding when padded keys are masked (their projections never matter;
the official code projects the zero padding too, with the same result).

Any map size (block/grid/dilated): the map is zero-padded bottom/right to a multiple of ``P`` (after the
pre-norm, before ``qkv``), partitioned, attended, reversed and cropped back. With
``mask_padding=True`` (our MaxViT; upstream MaxViT only accepts multiples of the window) padded
keys are masked out, so real tokens never attend to padding and a map smaller than one window
is plain attention among its tokens. With ``mask_padding=False`` padded tokens take part unmasked,
exactly as the official DaViT code and timm's ``davit.py`` do.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import register_notrace_function, trunc_normal_, to_2tuple

from ..ops._trace import crop_nhwc, pad_nhwc, script_ignore
from ..ops.window import padding_mask, partition as _partition, partition_multiple, reverse as _reverse, shift_region_mask
from .pos import DynamicPosBias, relative_position_bias, relative_position_index

__all__ = ["WindowAttention"]

_MASK_VALUE = -1.0e4  # added to padded keys' logits: exp underflows to exactly 0 in fp32/fp16/bf16
_SHIFT_MASK_VALUE = -100.0  # Swin's value for keys of another region in shifted windows (official parity)


@register_notrace_function  # a leaf of FX graphs: it branches on device and autograd state
def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], scale: float, dropout_p: float) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` on ``(B, heads, N, head_dim)``.

    ``F.scaled_dot_product_attention``, except with a bias while autograd records on CPU: torch's
    CPU SDPA has no fused backward with an additive mask and falls back to its math path, which
    measured slower than this explicit product for MaxViT's 49-token windows.
    """
    if mask is not None and q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or mask.requires_grad):
        attn = (q * scale) @ k.transpose(-2, -1) + mask
        attn = attn.softmax(dim=-1)
        if dropout_p > 0:
            attn = F.dropout(attn, dropout_p)
        return attn @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


@script_ignore()  # TorchScript calls it through Python (the masks are built with cached Python-side helpers)
@register_notrace_function  # a leaf of FX graphs: which masks exist depends on the map size
def _window_mask(
    bias: Optional[torch.Tensor],
    like: torch.Tensor,
    H: int,
    W: int,
    Hp: int,
    Wp: int,
    window: Tuple[int, int],
    shift: Tuple[int, int],
    mode: str,
    mask_padding: bool,
    batch: int,
) -> Optional[torch.Tensor]:
    """The additive attention mask of :meth:`WindowAttention._forward_windows`.

    Args:
        bias: the window's relative position bias ``(heads, N, N)`` or None.
        like: a tensor with the dtype and device of the attention logits.
        H, W: the map size; Hp, Wp: its size padded to multiples of ``window``.
        window, shift, mode, mask_padding: as :class:`WindowAttention`.
        batch: images in the batch ``B``.

    Returns:
        ``(1 or B * nW, heads or 1, N, N)``: bias + Swin's shifted-region mask + padded-key mask
        (whichever apply), windows in partition order; None when nothing applies.
    """
    mask = bias.to(like.dtype).unsqueeze(0) if bias is not None else None  # (1, heads, N, N)
    if shift[0] or shift[1]:
        region = shift_region_mask(Hp, Wp, window, shift, device=like.device)  # (nW, N, N)
        region = torch.zeros(region.shape, dtype=like.dtype, device=like.device).masked_fill_(region, _SHIFT_MASK_VALUE)
        mask = region[:, None] if mask is None else mask + region[:, None]
    if (Hp != H or Wp != W) and mask_padding:
        pad = padding_mask(H, W, Hp - H, Wp - W, window, mode, device=like.device, shift=shift)  # (nW, N)
        pad = torch.zeros(pad.shape, dtype=like.dtype, device=like.device).masked_fill_(pad, _MASK_VALUE)
        pad = pad[:, None, None, :]  # (nW, 1, 1, N)
        mask = pad if mask is None else mask + pad
    if mask is not None and mask.shape[0] > 1:
        mask = mask.repeat(batch, 1, 1, 1)  # window index b * nW + w, as the partition orders them
    return mask


def _group_layout(H: int, W: int, size: Tuple[int, int], mode: str, interval: int, fit_map: bool):
    """``(group, mode, interval)`` of :meth:`WindowAttention._forward_groups` on an ``H x W`` map:
    the configured ones, or the whole map as one block window when ``fit_map`` and the map is no
    larger than the window along a side."""
    if fit_map and (H <= size[0] or W <= size[1]):
        return (H, W), "block", 0
    return (size[0], size[1]), mode, interval


@script_ignore()
@register_notrace_function  # a leaf of FX graphs: padding and the layout depend on the map size
def _group_windows(x: torch.Tensor, H: int, W: int, size: Tuple[int, int], mode: str, interval: int, fit_map: bool) -> torch.Tensor:
    """Pad ``x`` ``(B, H, W, C')`` bottom/right and partition it: ``(B * nW, gh, gw, C')``."""
    group, mode, interval = _group_layout(H, W, size, mode, interval, fit_map)
    m = partition_multiple(group, mode, interval)
    return _partition(pad_nhwc(x, m[0], m[1]), group, mode, interval)


@script_ignore()
@register_notrace_function
def _group_reverse(win: torch.Tensor, H: int, W: int, size: Tuple[int, int], mode: str, interval: int, fit_map: bool) -> torch.Tensor:
    """Inverse of :func:`_group_windows`, cropped back: ``(B * nW, gh, gw, C) -> (B, H, W, C)``."""
    group, mode, interval = _group_layout(H, W, size, mode, interval, fit_map)
    m = partition_multiple(group, mode, interval)
    Hp, Wp = H + (m[0] - H % m[0]) % m[0], W + (m[1] - W % m[1]) % m[1]
    return crop_nhwc(_reverse(win, group, (Hp, Wp), mode, interval), H, W)


@script_ignore()
@register_notrace_function
def _group_mask(
    bias: Optional[torch.Tensor], like: torch.Tensor, H: int, W: int, size: Tuple[int, int], mode: str, interval: int,
    fit_map: bool, mask_padding: bool, batch: int,
) -> Optional[torch.Tensor]:
    """Bias ``(1, heads, N, N)`` plus the padded-key mask ``(nW, 1, 1, N)`` of :func:`_group_windows`
    (repeated over the batch, windows in partition order); None when neither applies."""
    group, mode, interval = _group_layout(H, W, size, mode, interval, fit_map)
    m = partition_multiple(group, mode, interval)
    ph, pw = (m[0] - H % m[0]) % m[0], (m[1] - W % m[1]) % m[1]
    mask = bias.to(like.dtype).unsqueeze(0) if bias is not None else None
    if (ph or pw) and mask_padding:
        pad = padding_mask(H, W, ph, pw, group, mode, device=like.device, interval=interval)  # (nW, N)
        pad = torch.zeros(pad.shape, dtype=like.dtype, device=like.device).masked_fill_(pad, _MASK_VALUE)[:, None, None, :]
        mask = pad if mask is None else mask + pad
        mask = mask.repeat(batch, 1, 1, 1)
    return mask


# leaves of FX graphs (see ops/_trace.py)
torch.fx.wrap("pad_nhwc")
torch.fx.wrap("crop_nhwc")
torch.fx.wrap("_partition")
torch.fx.wrap("relative_position_bias")
torch.fx.wrap("_attend")
torch.fx.wrap("_window_mask")
torch.fx.wrap("_group_windows")
torch.fx.wrap("_group_reverse")
torch.fx.wrap("_group_mask")


class WindowAttention(nn.Module):
    """Window self-attention on NHWC tokens (global, block, grid or dilated partition).

    Args:
        dim: channels ``C``; num_heads: heads (``C`` divisible by it).
        window_size: ``(P_h, P_w)`` (or an int): the window (``'block'``), grid (``'grid'``) or
            table extent (``'global'``).
        qkv_bias: bias in ``qkv``; proj_drop: dropout after ``proj``; attn_drop: attention dropout.
        partition: ``'global'``, ``'block'``, ``'grid'`` or ``'dilated'`` (see the module docstring).
        rel_pos_bias: learn the relative position table ``rpb``.
        mask_padding: mask padded keys (block/grid/dilated partitions on maps not divisible by the window).
        interval: the dilation ``I`` of ``'dilated'`` (CrossFormer LDA); ignored otherwise.
        dynamic_pos_bias: the bias comes from a :class:`~visionattn.layers.pos.DynamicPosBias`
            (``dpb``, width ``dpb_dim``) instead of a table (needs ``rel_pos_bias=False``).
        dpb_dim: width of the DPB's MLP (default ``max(dim // 16, 1)``, CrossFormer's).
        fit_map: a map with ``H <= P_h`` or ``W <= P_w`` is one window of the whole map.
        shift_size: Swin's cyclic shift (SW-MSA, Liu et al. ICCV 2021, Sec. 3.2), ``'block'`` only:
            the (padded) map is rolled by ``-shift`` before partitioning and back afterwards;
            tokens from non-adjacent regions are masked with Swin's ``-100`` (default 0: no shift).

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``, any ``H, W >= 1``.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``; unknown ``partition``; ``'dilated'``
            without ``interval >= 1``; both ``rel_pos_bias`` and ``dynamic_pos_bias``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Union[int, Tuple[int, int]],
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        partition: str = "global",
        rel_pos_bias: bool = True,
        mask_padding: bool = True,
        attn_drop: float = 0.0,
        shift_size: Union[int, Tuple[int, int]] = 0,
        interval: int = 0,
        dynamic_pos_bias: bool = False,
        dpb_dim: Optional[int] = None,
        fit_map: bool = False,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"WindowAttention: dim {dim} is not divisible by num_heads {num_heads}")
        if partition not in ("global", "block", "grid", "dilated"):
            raise ValueError(f"WindowAttention: partition must be 'global', 'block', 'grid' or 'dilated', got {partition!r}")
        if partition == "dilated" and interval < 1:
            raise ValueError(f"WindowAttention: partition='dilated' needs interval >= 1, got {interval}")
        if rel_pos_bias and dynamic_pos_bias:
            raise ValueError("WindowAttention: rel_pos_bias (a table) and dynamic_pos_bias (an MLP) are alternatives; pass rel_pos_bias=False")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.window_size = tuple(to_2tuple(window_size))
        self.partition = partition
        self.mask_padding = mask_padding
        self.attn_drop = attn_drop
        self.shift_size = tuple(to_2tuple(shift_size))
        self.interval = int(interval) if partition == "dilated" else 0
        self.fit_map = fit_map
        # the general path (any group size, dilated groups): also for a DPB, whose size follows the map
        self._groups = partition == "dilated" or dynamic_pos_bias or fit_map
        if any(self.shift_size) and (partition != "block" or self._groups):
            raise ValueError(f"WindowAttention: shift_size needs partition='block' (without dpb / fit_map), got {partition!r}")
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * self.window_size[0] - 1, 2 * self.window_size[1] - 1))
            trunc_normal_(self.rpb, std=0.02)
        else:
            self.register_parameter("rpb", None)
        self.dpb = DynamicPosBias(num_heads, dpb_dim or max(dim // 16, 1)) if dynamic_pos_bias else None
        if partition != "global" and rel_pos_bias:
            # flat index into rpb.flatten(1) for the fixed window: (P^2, P^2); derived, not saved
            index = relative_position_index(*self.window_size).to(self.rpb.device)  # the default (or meta) device
            self.register_buffer("rpb_index", index, persistent=False)
        else:
            self.rpb_index = None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, window_size={self.window_size}, partition={self.partition!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.partition == "global":
            return self._forward_global(x)
        if self._groups:
            return self._forward_groups(x)
        return self._forward_windows(x)

    def _forward_global(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = None
        if self.rpb is not None:
            bias = relative_position_bias(self.rpb, H, W).to(q.dtype).unsqueeze(0)
        elif self.dpb is not None:
            bias = self.dpb(H, W).to(q.dtype).unsqueeze(0)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        x = x.transpose(1, 2).reshape(B, H, W, C)
        return self.proj_drop(self.proj(x))

    def window_bias(self) -> Optional[torch.Tensor]:
        """The relative position bias of one window, ``(heads, P_h*P_w, P_h*P_w)`` (None without ``rpb``)."""
        if self.rpb is None or self.rpb_index is None:  # (no index: 'global' partition)
            return None
        n = self.window_size[0] * self.window_size[1]
        return self.rpb.flatten(1)[:, self.rpb_index.flatten()].view(self.num_heads, n, n)

    def _forward_windows(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        P = self.window_size
        xp = pad_nhwc(x, P[0], P[1])
        Hp, Wp = xp.shape[1], xp.shape[2]
        S = self.shift_size
        if S[0] or S[1]:
            xp = torch.roll(xp, shifts=(-S[0], -S[1]), dims=(1, 2))
        win = _partition(xp, P, self.partition, 0)  # (B * nW, Ph, Pw, C); TorchScript needs every argument
        Bw, N = win.shape[0], P[0] * P[1]
        qkv = self.qkv(win).reshape(Bw, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B * nW, heads, N, head_dim)
        mask = _window_mask(self.window_bias(), q, H, W, Hp, Wp, P, S, self.partition, self.mask_padding, B)
        out = _attend(q, k, v, mask, self.scale, self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(Bw, P[0], P[1], C)
        out = _reverse(out, P, (Hp, Wp), self.partition, 0)
        if S[0] or S[1]:
            out = torch.roll(out, shifts=(S[0], S[1]), dims=(1, 2))
        out = crop_nhwc(out, H, W)
        return self.proj_drop(self.proj(out))

    def forward_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """:meth:`forward` through the explicit softmax, returning the attention it used (inspection).

        Called by :func:`visionattn.visualize.capture_attention` in place of :meth:`forward`:
        the same projections, partition, bias and masks (:func:`_window_mask`), with
        ``softmax(q k^T * scale + mask)`` materialised; outputs equal :meth:`forward`'s to float
        tolerance (eval mode: no attention dropout).

        Returns:
            ``(out, record)``. Global partition: ``{"kind": "global", "attn": (B, heads, H*W, H*W),
            "size": (H, W), "prefix": 0}``. Block / grid: ``{"kind": "windows", "attn": (B, nW, heads,
            N, N), "pos": (nW, N), "size": (H, W), "partition", "window", "shift"}`` where window
            ``w`` slot ``s`` holds token ``pos[w, s]`` (row-major index into the ``H x W`` map, -1 for
            a padded slot), windows in the partition's order (after Swin's roll when shifted).

        CrossFormer's group windows (dynamic position bias, the dilated ``"dilated"`` partition,
        ``fit_map``) give the same ``"windows"`` record, their windows in the order of
        :func:`_group_windows`; a padded slot that takes part unmasked (``mask_padding=False``, as
        the official code) has ``pos`` -1, so its weight is dropped from the map.
        """
        if self._groups:
            return self._forward_groups_attention(x)
        B, H, W, C = x.shape
        if self.partition == "global":
            q, k, v = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            logits = (q * self.scale) @ k.transpose(-2, -1)
            if self.rpb is not None:
                logits = logits + relative_position_bias(self.rpb, H, W).to(q.dtype).unsqueeze(0)
            attn = logits.softmax(dim=-1)
            out = (attn @ v).transpose(1, 2).reshape(B, H, W, C)
            return self.proj_drop(self.proj(out)), {"kind": "global", "attn": attn, "size": (H, W), "prefix": 0}
        P, S = self.window_size, self.shift_size
        xp = pad_nhwc(x, P[0], P[1])
        Hp, Wp = xp.shape[1], xp.shape[2]
        # where each window slot comes from: the same pad / roll / partition applied to token indices
        pos = torch.arange(1, H * W + 1, device=x.device, dtype=torch.float64).view(1, H, W, 1)
        pos = pad_nhwc(pos, P[0], P[1])
        if S[0] or S[1]:
            xp = torch.roll(xp, shifts=(-S[0], -S[1]), dims=(1, 2))
            pos = torch.roll(pos, shifts=(-S[0], -S[1]), dims=(1, 2))
        win = _partition(xp, P, self.partition)
        pos = _partition(pos, P, self.partition).reshape(-1, P[0] * P[1]).long() - 1  # (nW, N)
        Bw, N = win.shape[0], P[0] * P[1]
        q, k, v = self.qkv(win).reshape(Bw, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        mask = _window_mask(self.window_bias(), q, H, W, Hp, Wp, P, S, self.partition, self.mask_padding, B)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        attn = (logits if mask is None else logits + mask).softmax(dim=-1)  # (B * nW, heads, N, N)
        out = (attn @ v).transpose(1, 2).reshape(Bw, P[0], P[1], C)
        out = _reverse(out, P, (Hp, Wp), self.partition)
        if S[0] or S[1]:
            out = torch.roll(out, shifts=(S[0], S[1]), dims=(1, 2))
        out = crop_nhwc(out, H, W)
        record = {"kind": "windows", "attn": attn.view(B, -1, self.num_heads, N, N), "pos": pos, "size": (H, W),
                  "partition": self.partition, "window": P, "shift": S}
        return self.proj_drop(self.proj(out)), record
    def _forward_groups_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """:meth:`_forward_groups` through the explicit softmax, with the slot positions
        (:meth:`forward_attention`'s ``"windows"`` record)."""
        B, H, W, C = x.shape
        P = self.window_size
        if self.mask_padding:
            win = _group_windows(self.qkv(x), H, W, P, self.partition, self.interval, self.fit_map)
        else:
            win = self.qkv(_group_windows(x, H, W, P, self.partition, self.interval, self.fit_map))
        # where each slot comes from: the same padding and partition applied to token indices
        pos = torch.arange(1, H * W + 1, device=x.device, dtype=torch.float64).view(1, H, W, 1)
        pos = _group_windows(pos, H, W, P, self.partition, self.interval, self.fit_map)
        Bw, gh, gw = win.shape[0], win.shape[1], win.shape[2]
        pos = pos.reshape(-1, gh * gw).long() - 1  # (nW, N)
        q, k, v = win.reshape(Bw, gh * gw, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias: Optional[torch.Tensor] = None
        if self.dpb is not None:
            bias = self.dpb(gh, gw)
        elif self.rpb is not None:
            bias = relative_position_bias(self.rpb, gh, gw)
        mask = _group_mask(bias, q, H, W, P, self.partition, self.interval, self.fit_map, self.mask_padding, B)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        attn = (logits if mask is None else logits + mask).softmax(dim=-1)  # (B * nW, heads, N, N)
        out = (attn @ v).transpose(1, 2).reshape(Bw, gh, gw, C)
        out = _group_reverse(out, H, W, P, self.partition, self.interval, self.fit_map)
        record = {"kind": "windows", "attn": attn.view(B, -1, self.num_heads, gh * gw, gh * gw), "pos": pos,
                  "size": (H, W), "partition": self.partition, "window": (gh, gw), "shift": (0, 0)}
        return self.proj_drop(self.proj(out)), record

    def _forward_groups(self, x: torch.Tensor) -> torch.Tensor:
        """Block / grid / dilated windows of a size that may follow the map (DPB, ``fit_map``)."""
        B, H, W, C = x.shape
        P = self.window_size
        if self.mask_padding:  # padded keys are masked: project before padding (fewer tokens)
            win = _group_windows(self.qkv(x), H, W, P, self.partition, self.interval, self.fit_map)
        else:  # unmasked padding takes part as the official code has it: project the padded map
            win = self.qkv(_group_windows(x, H, W, P, self.partition, self.interval, self.fit_map))
        Bw, gh, gw = win.shape[0], win.shape[1], win.shape[2]
        qkv = win.reshape(Bw, gh * gw, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B * nW, heads, N, head_dim)
        bias: Optional[torch.Tensor] = None
        if self.dpb is not None:
            bias = self.dpb(gh, gw)
        elif self.rpb is not None:
            bias = relative_position_bias(self.rpb, gh, gw)
        mask = _group_mask(bias, q, H, W, P, self.partition, self.interval, self.fit_map, self.mask_padding, B)
        out = _attend(q, k, v, mask, self.scale, self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(Bw, gh, gw, C)
        out = _group_reverse(out, H, W, P, self.partition, self.interval, self.fit_map)
        return self.proj_drop(self.proj(out))
