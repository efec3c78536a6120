"""Test-side neighborhood attention written independently of ``visionattn.ops``.

The window rule is NATTEN v0.14's closed form for the absolute start of a query's window
(``src/natten/csrc/cpu/natten_cpu_commons.h::get_window_start`` at v0.14.6, which the NAT/DiNAT
checkpoints were trained with), a different-looking formula from the class-local one used by the
package. Attention is computed by gathering each query's K x K keys (no masking, no tiling).
"""
from __future__ import annotations

import torch


def natten014_window_start(index: int, length: int, kernel_size: int, dilation: int) -> int:
    """Absolute position of the first key of ``index``'s window (NATTEN v0.14.6 closed form)."""
    nb = kernel_size // 2
    if dilation <= 1:
        return max(index - nb, 0) + (index + nb >= length) * (length - index - nb - 1)
    ni = index - nb * dilation
    if ni < 0:
        return index % dilation
    if index + nb * dilation >= length:
        imodd = index % dilation
        a = (length // dilation) * dilation
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * nb * dilation
        return a + imodd - kernel_size * dilation
    return ni


def _axis_keys(length: int, kernel_size: int, dilation: int) -> torch.Tensor:
    return torch.tensor(
        [[natten014_window_start(i, length, kernel_size, dilation) + a * dilation for a in range(kernel_size)] for i in range(length)]
    )


def gather_na2d(q, k, v, kernel_size: int, dilation: int = 1, rpb=None, scale=None):
    """(B, H, W, heads, D) neighborhood attention by explicit per-query key gathering."""
    B, H, W, nh, hd = q.shape
    K, d = kernel_size, dilation
    scale = hd ** -0.5 if scale is None else scale
    kr = _axis_keys(H, K, d)  # (H, K)
    kc = _axis_keys(W, K, d)  # (W, K)
    rows = kr[:, None, :, None].expand(H, W, K, K)
    cols = kc[None, :, None, :].expand(H, W, K, K)
    kg = k[:, rows, cols]  # (B, H, W, K, K, nh, hd)
    vg = v[:, rows, cols]
    logits = torch.einsum("bhwnd,bhwijnd->bhwnij", q * scale, kg)
    if rpb is not None:
        ir = (kr - torch.arange(H)[:, None]) // d + K - 1  # (H, K)
        ic = (kc - torch.arange(W)[:, None]) // d + K - 1  # (W, K)
        bias = rpb[:, ir[:, None, :, None], ic[None, :, None, :]]  # (nh, H, W, K, K)
        logits = logits + bias.permute(1, 2, 0, 3, 4)[None]
    attn = logits.flatten(-2).softmax(-1).view_as(logits)
    return torch.einsum("bhwnij,bhwijnd->bhwnd", attn, vg)
