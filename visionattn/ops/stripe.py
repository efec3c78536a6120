"""Stripe attention: self-attention inside horizontal or vertical stripes of an NHWC token map,
with CSWin's locally-enhanced positional encoding (LePE) computed per stripe.

Paper: Dong et al., "CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped
Windows", CVPR 2022 (arXiv:2107.00652), Sec. 3.2 (cross-shaped window self-attention, Eq. 1-2)
and Sec. 3.3 (LePE, Eq. 4). Official code: github microsoft/CSWin-Transformer ``models/cswin.py``
(``LePEAttention``, ``img2windows`` / ``windows2img``) and, for arbitrary map sizes,
``segmentation/backbone/cswin_transformer.py`` (symmetric padding after the qkv projection).

A stripe is a rectangular window; the partition itself is
:func:`visionattn.ops.window.window_partition` with a ``(sh, sw)`` window:

* vertical stripes ``stripe=(None, sw)``: full-height columns ``H x sw`` (CSWin's branch ``idx=0``,
  which takes the first half of the channels),
* horizontal stripes ``stripe=(sw, None)``: full-width rows ``sw x W`` (branch ``idx=1``),
* the whole map ``stripe=(None, None)`` (CSWin's last stage, ``idx=-1``).

Maps whose stripe axis is not a multiple of the stripe width are zero-padded **symmetrically**
(``pad // 2`` before, the rest after, as the official segmentation backbone does), so stripes
are placed exactly as there. Padded tokens have ``q = k = v = 0`` (padding happens after the
projection). With ``mask_padding=True`` (default) they are excluded from every softmax (boolean
key mask), so a real token's output equals attention inside its stripe clipped to the map, and
its LePE sees zeros beyond the map edge exactly as at any stripe edge. With
``mask_padding=False`` the padded keys keep logit 0 and enter the softmax (bit-for-bit the
official segmentation backbone). Outputs at padded positions are cropped away.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function

from ._trace import script_ignore

from .window import window_partition, window_reverse

__all__ = ["stripe_size", "pad_symmetric", "stripe_attention", "stripe_attention_with_weights"]

Stripe = Tuple[Optional[int], Optional[int]]


def stripe_size(H: int, W: int, stripe: Stripe) -> Tuple[int, int]:
    """Window extent ``(sh, sw)`` of ``stripe`` on an ``H x W`` map (``None`` = the full extent).

    Raises:
        ValueError: a stripe width below 1.
    """
    sh = H if stripe[0] is None else int(stripe[0])
    sw = W if stripe[1] is None else int(stripe[1])
    if sh < 1 or sw < 1:
        raise ValueError(f"stripe widths must be >= 1, got {stripe}")
    return sh, sw


def pad_symmetric(x: torch.Tensor, size: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int, int, int]]:
    """Zero-pad NHWC tokens so ``H, W`` become multiples of ``size``, ``pad // 2`` before and the rest after.

    Args:
        x: ``(B, H, W, C)``.
        size: ``(mh, mw)``.

    Returns:
        ``(x_padded, (top, bottom, left, right))``; ``x`` itself when no padding is needed.
    """
    H, W = x.shape[1], x.shape[2]
    ph, pw = (-H) % size[0], (-W) % size[1]
    pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    if ph or pw:
        x = F.pad(x, (0, 0, pads[2], pads[3], pads[0], pads[1]))
    return x, pads


@script_ignore()  # TorchScript calls it through Python (stripe layout and padding are Python-side)
@register_notrace_function  # a leaf of FX graphs: its stripes and padding depend on the map size
def stripe_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    stripe: Stripe,
    scale: Optional[float] = None,
    lepe_weight: Optional[torch.Tensor] = None,
    lepe_bias: Optional[torch.Tensor] = None,
    mask_padding: bool = True,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Multi-head attention inside stripes, plus LePE on V per stripe (CSWin Eq. 4).

    ``out = softmax(q k^T * scale) v + DWConv(v)`` in every stripe window, where the depthwise conv
    sees the stripe's V as an image ``(C, sh, sw)`` zero-padded at the stripe border.

    Args:
        q, k, v: ``(B, H, W, heads, head_dim)`` (NATTEN layout); heads take contiguous channels.
        stripe: ``(sh, sw)`` window extent, ``None`` meaning the full height / width:
            ``(None, sw)`` vertical stripes, ``(sw, None)`` horizontal stripes, ``(None, None)`` global.
        scale: logit scale (default ``head_dim ** -0.5``).
        lepe_weight: depthwise conv weight ``(heads * head_dim, 1, k, k)`` (odd ``k``) or None for no LePE.
        lepe_bias: its bias ``(heads * head_dim,)`` or None.
        mask_padding: exclude the zero tokens padded onto non-divisible maps from attention
            (see the module docstring); False reproduces the official segmentation backbone.
        dropout_p: attention dropout (pass 0 in eval).

    Returns:
        ``(B, H, W, heads, head_dim)``.

    Raises:
        ValueError: mismatched shapes, a non-positive stripe width, a bad LePE weight.
    """
    return _stripe(q, k, v, stripe, scale, lepe_weight, lepe_bias, mask_padding, dropout_p, False)[0]


def stripe_attention_with_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    stripe: Stripe,
    scale: Optional[float] = None,
    lepe_weight: Optional[torch.Tensor] = None,
    lepe_bias: Optional[torch.Tensor] = None,
    mask_padding: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`stripe_attention` (no dropout) with the softmax materialised and returned (inspection).

    Returns:
        ``(out, attn, pos)``: ``out`` as :func:`stripe_attention`; ``attn (B, nW, heads, N, N)``
        the softmax inside each stripe window (``N = sh * sw``, slots row-major); ``pos (nW, N)``
        int64, the token each slot holds as a row-major index into the ``H x W`` map, -1 for a
        padded slot.

    Raises:
        ValueError: as :func:`stripe_attention`.
    """
    return _stripe(q, k, v, stripe, scale, lepe_weight, lepe_bias, mask_padding, 0.0, True)


def _stripe(q, k, v, stripe: Stripe, scale, lepe_weight, lepe_bias, mask_padding: bool, dropout_p: float, need_weights: bool):
    """The body of :func:`stripe_attention`; with ``need_weights`` the softmax is explicit and
    ``(out, attn, pos)`` is returned (see :func:`stripe_attention_with_weights`), else ``(out, None, None)``."""
    if q.dim() != 5 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"stripe_attention: q, k, v must share a (B, H, W, heads, head_dim) shape; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, H, W, m, d = q.shape
    C = m * d
    sh, sw = stripe_size(H, W, stripe)
    if lepe_weight is not None and (lepe_weight.shape[0] != C or lepe_weight.shape[1] != 1 or lepe_weight.shape[-1] % 2 == 0):
        raise ValueError(f"stripe_attention: lepe_weight must be ({C}, 1, k, k) with odd k, got {tuple(lepe_weight.shape)}")
    q, pads = pad_symmetric(q.reshape(B, H, W, C), (sh, sw))
    k, _ = pad_symmetric(k.reshape(B, H, W, C), (sh, sw))
    v, _ = pad_symmetric(v.reshape(B, H, W, C), (sh, sw))
    Hp, Wp = q.shape[1], q.shape[2]
    N = sh * sw
    v_win = window_partition(v, (sh, sw))  # (B*nW, sh, sw, C)
    nBW = v_win.shape[0]

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(nBW, N, m, d).transpose(1, 2)

    mask = None
    if mask_padding and (Hp != H or Wp != W):
        valid = torch.zeros(1, Hp, Wp, 1, dtype=torch.bool, device=q.device)
        valid[:, pads[0] : pads[0] + H, pads[2] : pads[2] + W] = True
        valid = window_partition(valid, (sh, sw)).reshape(1, -1, 1, 1, N)  # (1, nW, 1, 1, N)
        mask = valid.expand(B, -1, 1, 1, N).reshape(nBW, 1, 1, N)
    attn = pos = None
    if need_weights:
        qh, kh = heads(window_partition(q, (sh, sw))), heads(window_partition(k, (sh, sw)))
        logits = (qh @ kh.transpose(-2, -1)) * (d ** -0.5 if scale is None else scale)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        attn = logits.softmax(dim=-1)  # (B*nW, heads, N, N)
        out = attn @ heads(v_win)
        ids = torch.arange(1, H * W + 1, dtype=torch.float64, device=q.device).view(1, H, W, 1)
        ids, _ = pad_symmetric(ids, (sh, sw))
        pos = window_partition(ids, (sh, sw)).reshape(-1, N).long() - 1
        attn = attn.view(B, -1, m, N, N)
    else:
        out = F.scaled_dot_product_attention(
            heads(window_partition(q, (sh, sw))),
            heads(window_partition(k, (sh, sw))),
            heads(v_win),
            attn_mask=mask,
            dropout_p=dropout_p,
            scale=scale,
        )
    out = out.transpose(1, 2).reshape(nBW, sh, sw, C)
    if lepe_weight is not None:
        ks = lepe_weight.shape[-1]
        lepe = F.conv2d(v_win.permute(0, 3, 1, 2), lepe_weight, lepe_bias, padding=ks // 2, groups=C)
        out = out + lepe.permute(0, 2, 3, 1)
    out = window_reverse(out, (sh, sw), (Hp, Wp))
    if Hp != H or Wp != W:
        out = out[:, pads[0] : pads[0] + H, pads[2] : pads[2] + W]
    return out.reshape(B, H, W, m, d), attn, pos
