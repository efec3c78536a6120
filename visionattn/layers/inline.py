"""Injective linear attention (InLine) with its local residual term.

Paper: Han, Pu, Xia, Han, Pan, Li, Lu, Song, Huang. "Bridging the Divide: Reconsidering Softmax and
Linear Attention". NeurIPS 2024, arXiv:2412.06590, Sec. 4 (Eq. 5: the injective linear attention;
Eq. 6: the local residual). Official code: github LeapLabTHU/InLine,
``models/inline_{deit,pvt,swin,cswin}.py`` (class ``InLineAttention`` in each).

With ``N`` tokens, ``m`` heads of width ``d``, scale ``s = d ** -0.5`` and a kernel ``phi`` (the
identity in every released model), InLine replaces the softmax of ``q_i . k_j`` by the centred,
shifted weights

    ``w_ij = (s / N) * (phi(q_i) . phi(k_j) - mean_t phi(q_i) . phi(k_t)) + 1 / N``,

which sum to 1 over ``j`` for every query and, unlike plain linear attention, are injective in
``q_i``. The output ``o_i = sum_j w_ij v_j`` is computed in linear time by this module as

    ``o_i = mean_j v_j + (s / N) * phi(q_i)^T [sum_j (phi(k_j) - mean_t phi(k_t)) v_j^T]``

(the keys centred once, one ``d x d`` matrix per head). The official code evaluates the same sum
as ``q (s/N K^T V) + (1 - s q . mean(K)) mean(V)``.

Local residual (the "local modeling ability" of Sec. 4.2): a 3x3 depthwise convolution of ``V``
(as an image over the patch grid, zero padding 1) whose kernel is predicted per image and channel
from the token mean of the mixer input: ``W = Conv1d(C, 9C, 1, groups=m)(GELU(Conv1d(C, C, 1,
groups=m)(mean_tokens(x))))`` reshaped to ``(B, C, 3, 3)``; ``o += dwconv(V, W)`` on the patch
tokens. InLine-CSwin also keeps CSWin's LePE (a learned 3x3 depthwise conv of ``V``, ``lepe=True``)
and takes the mean from the *block input before its norm* (``residual_source='block'``, an
official quirk reproduced here; the other three families use the mixer input).

The attention is global over all ``N`` tokens (prefix tokens included; they get no local term).
The module has no position-dependent parameter, so any grid ``H, W >= 1`` runs without padding.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import register_notrace_function

from ..ops._trace import is_exporting
from .agent import token_sequence

__all__ = ["InLineAttention", "dynamic_dwconv3x3", "KERNEL_FUNCS"]

#: kernels ``phi`` of the official code (``kernel_func`` of ``inline_swin.py``; all models use ``identity``)
KERNEL_FUNCS = ("identity", "relu", "leakyrelu", "exp")


def _phi(x: torch.Tensor, kernel_func: str) -> torch.Tensor:
    if kernel_func == "relu":
        return F.relu(x)
    if kernel_func == "leakyrelu":
        return F.leaky_relu(x)
    if kernel_func == "exp":
        return torch.exp(0.2 * x)  # official exp_kernel, t = 0.2
    return x


def _shifted_dwconv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """:func:`dynamic_dwconv3x3` as nine shifted multiply-adds on the zero-padded NHWC map."""
    B, H, W, C = x.shape
    xp = F.pad(x, (0, 0, 1, 1, 1, 1))
    w = weight.transpose(1, 2).reshape(B, 9, 1, 1, C).to(x.dtype)
    out = xp[:, 0:H, 0:W] * w[:, 0]
    for t in range(1, 9):
        di, dj = t // 3, t % 3
        out = out + xp[:, di:di + H, dj:dj + W] * w[:, t]
    return out


@register_notrace_function  # a leaf of FX graphs: it branches on the batch size
def dynamic_dwconv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel 3x3 depthwise cross-correlation of NHWC maps, zero padding 1.

    Args:
        x: ``(B, H, W, C)`` maps.
        weight: ``(B, C, 9)`` kernels, row-major over the 3x3 taps (tap ``3 * di + dj`` weighs
            ``x[h + di - 1, w + dj - 1]``), the layout of ``F.conv2d`` weights ``(C, 1, 3, 3)``.

    Returns:
        ``(B, H, W, C)``: ``out[b, h, w, c] = sum_{di, dj} weight[b, c, 3 di + dj] x[b, h+di-1, w+dj-1, c]``.

    One grouped ``F.conv2d`` over the batch folded into channels (``B * C`` groups, as the official
    code); an empty batch (zero groups, which ``conv2d`` refuses) takes nine shifted multiply-adds,
    and so does ``torch.export`` (ONNX export with a dynamic batch): ``groups = B * C`` would be a
    symbolic batch in a conv attribute, which ONNX cannot express. (``torch.jit.trace`` keeps the
    conv: fvcore counts its MACs through such a trace.)
    """
    B, H, W, C = x.shape
    if is_exporting() or B * C == 0:
        return _shifted_dwconv3x3(x, weight)
    y = F.conv2d(x.permute(0, 3, 1, 2).reshape(1, B * C, H, W), weight.reshape(B * C, 1, 3, 3).to(x.dtype), padding=1, groups=B * C)
    return y.reshape(B, C, H, W).permute(0, 2, 3, 1)


torch.fx.wrap("dynamic_dwconv3x3")


class InLineAttention(nn.Module):
    """Injective linear attention token mixer (global over the map) with the local residual term.

    Args:
        dim: channels ``C``.
        num_heads: heads ``m`` (``C`` divisible by it); scale ``(C / m) ** -0.5``.
        qkv_bias: bias in the q/k/v projections.
        split_qkv: separate ``q`` (Linear(C, C)) and ``kv`` (Linear(C, 2C), rows ``k | v``) as
            InLine-PVT; default one fused ``qkv`` (rows ``q | k | v``) as InLine-DeiT/-Swin/-CSwin.
        num_prefix_tokens: tokens before the patch grid in ``(B, N, C)`` inputs (InLine-DeiT: 1, the
            class token). They take part in the attention and the mean, not in the local term.
        kernel_func: ``phi`` applied to ``q`` and ``k``: ``'identity'`` (all released models),
            ``'relu'``, ``'leakyrelu'`` or ``'exp'`` (``exp(0.2 x)``).
        lepe: add a learned 3x3 depthwise conv of ``V`` (key ``lepe``; InLine-CSwin's ``get_v``).
        residual_source: ``'input'``: the local kernels come from the token mean of the mixer input
            (InLine-DeiT/-PVT/-Swin); ``'block'``: from the block input before its norm, which
            :class:`~visionattn.layers.TransformerBlock` passes as ``context`` (InLine-CSwin).
        proj_drop: dropout after ``proj``. (The official modules build an attention dropout that
            they never apply; there is no attention map to drop here.)

    Keys (official names): ``qkv`` or ``q`` + ``kv``, ``proj``, ``residual.0`` (Conv1d(C, C, 1,
    groups=m)), ``residual.2`` (Conv1d(C, 9C, 1, groups=m)), ``lepe`` (with ``lepe=True``).

    Shapes:
        * NHWC tokens ``(B, H, W, C) -> (B, H, W, C)``, any ``H, W >= 1``;
        * sequences ``(B, P + H * W, C) -> (B, P + H * W, C)`` with ``grid=(H, W)`` (prefix tokens
          first, patch tokens row-major).
        ``context`` (``residual_source='block'``): a tensor of the input's layout whose token mean
        (over all tokens) drives the local kernels; None uses ``x``.

    Raises:
        ValueError: ``C`` not divisible by the heads, an unknown ``kernel_func`` or
            ``residual_source``, a sequence input without ``grid`` or whose length is not
            ``P + H * W``, an NHWC input to a module with prefix tokens.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        split_qkv: bool = False,
        num_prefix_tokens: int = 0,
        kernel_func: str = "identity",
        lepe: bool = False,
        residual_source: str = "input",
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"InLineAttention: dim {dim} is not divisible by num_heads {num_heads}")
        if kernel_func not in KERNEL_FUNCS:
            raise ValueError(f"InLineAttention: kernel_func must be one of {KERNEL_FUNCS}, got {kernel_func!r}")
        if residual_source not in ("input", "block"):
            raise ValueError(f"InLineAttention: residual_source must be 'input' or 'block', got {residual_source!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.num_prefix_tokens = num_prefix_tokens
        self.kernel_func = kernel_func
        self.residual_source = residual_source
        self.takes_grid = True  # TransformerBlock passes its grid= (see layers/block.py)
        if residual_source == "block":
            self.takes_context = True  # TransformerBlock also passes its un-normalised input
        if split_qkv:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.residual = nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size=1, groups=num_heads),
            nn.GELU(),
            nn.Conv1d(dim, dim * 9, kernel_size=1, groups=num_heads),
        )
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if lepe else None

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, kernel_func={self.kernel_func!r}, "
            f"num_prefix_tokens={self.num_prefix_tokens}, residual_source={self.residual_source!r}"
        )

    def forward(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        nhwc = grid is None
        x, H, W = token_sequence(x, self.num_prefix_tokens, grid, "InLineAttention")
        B, N, C = x.shape
        qh, kh, vh, v = self._heads(x)
        kt = kh.transpose(-2, -1)  # (B, m, d, N): the centred copy is made in this layout, so K^T V needs no copy
        kv = ((kt - kt.mean(dim=-1, keepdim=True)) @ vh) * (self.scale / N)  # (B, m, d, d)
        out = (qh @ kv + vh.mean(dim=2, keepdim=True)).transpose(1, 2).reshape(B, N, C)
        out = self._local_and_proj(out, v, x if context is None else context, H, W)
        return out if nhwc else out.reshape(B, N, C)

    def _heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``phi(q), phi(k), v`` per head ``(B, m, N, d)`` of tokens ``(B, N, C)``, and ``v`` ``(B, N, C)``."""
        B, N, C = x.shape
        m, d = self.num_heads, self.head_dim
        if hasattr(self, "q"):  # split_qkv (hasattr: TorchScript compiles only the branch this module has)
            q = self.q(x)
            k, v = self.kv(x).reshape(B, N, 2, C).unbind(2)
        else:
            q, k, v = self.qkv(x).reshape(B, N, 3, C).unbind(2)
        q, k = _phi(q, self.kernel_func), _phi(k, self.kernel_func)
        qh = q.reshape(B, N, m, d).transpose(1, 2)  # (B, m, N, d)
        kh = k.reshape(B, N, m, d).transpose(1, 2)
        vh = v.reshape(B, N, m, d).transpose(1, 2)
        return qh, kh, vh, v

    def _local_and_proj(self, out: torch.Tensor, v: torch.Tensor, context: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Attention output ``(B, P + N, C)`` plus the local 3x3 term of ``v``'s patch tokens, projected."""
        B, N, C = out.shape
        P = self.num_prefix_tokens
        ctx = context.flatten(1, -2)  # (B, tokens, C) of either layout
        # local residual: per-image 3x3 depthwise kernels from the token mean
        kernels = self.residual(ctx.mean(dim=1).unsqueeze(-1)).reshape(B, C, 9)
        v_img = v[:, P:].reshape(B, H, W, C)
        local = dynamic_dwconv3x3(v_img, kernels)
        if self.lepe is not None:
            local = local + self.lepe(v_img.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        # (the local terms are NCHW-strided views: added on the (B, H, W, C) view of the output, no copy)
        if P:
            patches = (out[:, P:].reshape(B, H, W, C) + local).reshape(B, H * W, C)
            out = torch.cat([out[:, :P], patches], dim=1)
        else:
            out = out.reshape(B, H, W, C) + local
        return self.proj_drop(self.proj(out))

    @torch.jit.unused
    def forward_attention(
        self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None, context: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """:meth:`forward` with the injective linear attention materialised (inspection).

        Called by :func:`visionattn.visualize.capture_attention` in place of :meth:`forward`. The
        weights are the paper's (Han et al. 2024, Eq. 5): ``A_ij = (phi(q_i) . phi(k_j) - mean_s
        phi(q_i) . phi(k_s)) * scale / N + 1 / N``, so each row sums to exactly 1 but entries may
        be negative; ``out = A v`` plus the local 3x3 term (not an attention, not recorded).
        Outputs equal :meth:`forward`'s to float tolerance.

        Returns:
            ``(out, {"kind": "linear", "attn": (B, heads, P+N, P+N), "size": (H, W), "prefix": P})``.
        """
        P = self.num_prefix_tokens
        nhwc = grid is None
        x, H, W = token_sequence(x, P, grid, "InLineAttention")
        B, N, C = x.shape
        qh, kh, vh, v = self._heads(x)
        logits = qh @ kh.transpose(-2, -1)  # (B, m, N, N)
        attn = (logits - logits.mean(dim=-1, keepdim=True)) * (self.scale / N) + 1.0 / N
        out = (attn @ vh).transpose(1, 2).reshape(B, N, C)
        out = self._local_and_proj(out, v, x if context is None else context, H, W)
        record = {"kind": "linear", "attn": attn, "size": (H, W), "prefix": P}
        return (out if nhwc else out.reshape(B, N, C)), record
