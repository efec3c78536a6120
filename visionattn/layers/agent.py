"""Agent attention: softmax attention through a small set of agent tokens (Agent Attention).

Paper: Han, Ye, Han, Xia, Pan, Wan, Song, Huang. "Agent Attention: On the Integration of Softmax
and Linear Attention". ECCV 2024, arXiv:2312.08874, Sec. 3.2 (Eq. 3-5: agent aggregation and
agent broadcast) and Sec. 3.3 (agent bias, DWC). Official code: github LeapLabTHU/Agent-Attention
``agent_transformer/models/agent_{swin,pvt,deit,cswin}.py`` (class ``AgentAttention`` in each).

With ``Q, K, V`` of ``N`` tokens (``h x w`` patch tokens, optionally after ``P`` prefix tokens such
as Agent-DeiT's class token), ``m`` heads of width ``d`` and scale ``s = d ** -0.5``:

1. agent tokens ``A = AdaptiveAvgPool2d(p x p)`` of the patch queries, pooled over all ``C``
   channels before the head split (``n = p * p`` agents);
2. agent aggregation ``V_A = softmax(s * A K^T + B1) V``  (``(n, N)`` attention);
3. agent broadcast ``O = softmax(s * Q A^T + B2) V_A``  (``(N, n)`` attention);
4. ``O[patch tokens] += DWC(V[patch tokens])`` (3x3 depthwise conv on ``V`` as an image), then
   ``proj``.

Agent bias (Sec. 3.3; official names): ``B1 = bilinear(an_bias, (h, w)) + ah_bias + aw_bias``
(agent -> key) and ``B2 = bilinear(na_bias, (h, w))^T + ha_bias + wa_bias`` (query -> agent), with
``an_bias, na_bias`` of shape ``(m, n, 7, 7)`` and the row/column tables sized for the training
resolution ``(H0, W0)`` given at construction: ``ah_bias (1, m, n, H0, 1)``, ``aw_bias
(1, m, n, 1, W0)``, ``ha_bias (1, m, H0, 1, n)``, ``wa_bias (1, m, 1, W0, n)``. With prefix tokens
(Agent-DeiT) ``ac_bias (1, m, n, P)`` is the bias of the agents to the prefix keys (first key
columns of ``B1``) and ``ca_bias (1, m, P, n)`` that of the prefix queries to the agents (first
rows of ``B2``); the prefix tokens get no DWC term.

Resolution: the official modules only run at ``(H0, W0)``. Here any ``h x w`` works: ``an_bias`` /
``na_bias`` are bilinearly interpolated to ``(h, w)`` as officially (``F.interpolate(...,
mode='bilinear', align_corners=False)``, the identity at 7 -> 7), and the row/column tables are
resized along their spatial axis by 1-D linear interpolation (``mode='linear',
align_corners=False``; the identity at the training size, and the rule of the official
``utils.py:load_pretrained``). :func:`resize_agent_bias` applies the same rule to a checkpoint
tensor, so a checkpoint trained at one resolution loaded into a model built for another gives
exactly the outputs of the original model run at the new size.

The two attentions use ``F.scaled_dot_product_attention`` with the bias as an additive float
mask (the math of ``softmax(s * q k^T + B) v``), except when training on CPU, where they
are explicit products with ``s`` applied to the agents (SDPA's math path, the CPU path with a mask,
would save a ``sqrt(s)``-scaled copy of the ``(B, N, C)`` keys / queries for backward).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import register_notrace_function, to_2tuple, trunc_normal_

from ..ops._trace import script_ignore

__all__ = ["AgentAttention", "resize_agent_bias"]

_AXES = {"ah_bias": 3, "aw_bias": 4, "ha_bias": 2, "wa_bias": 3}


def _resize_axis(t: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """1-D linear interpolation (align_corners=False) of ``t`` along ``axis`` to ``size`` entries."""
    if t.shape[axis] == size:
        return t
    moved = t.movedim(axis, -1)
    lead = moved.shape[:-1]
    flat = moved.reshape(1, -1, moved.shape[-1])
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    out = F.interpolate(flat, size=size, mode="linear", align_corners=False)
    return out.reshape(*lead, size).movedim(-1, axis).to(t.dtype)


@script_ignore()  # TorchScript calls it through Python
@register_notrace_function  # a leaf of FX graphs: resizing depends on the map size
def resize_agent_bias(name: str, tensor: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize a row/column agent bias table to the map ``size = (h, w)``.

    Args:
        name: the parameter's last name component: ``ah_bias`` / ``ha_bias`` (resized along the
            height axis) or ``aw_bias`` / ``wa_bias`` (width axis); other names are returned as is.
        tensor: the official-shaped table, e.g. ``ah_bias (1, m, n, H0, 1)``.
        size: ``(h, w)`` target map size.

    Returns:
        the table with its spatial axis linearly interpolated (``align_corners=False``) to ``h`` or
        ``w``; the same tensor when the size already matches.
    """
    if name not in _AXES:
        return tensor
    target = size[0] if name in ("ah_bias", "ha_bias") else size[1]
    return _resize_axis(tensor, _AXES[name], int(target))


@script_ignore()  # TorchScript calls it through Python (formatted errors)
@register_notrace_function  # a leaf of FX graphs: the checks need the run-time sizes
def check_token_input(x: torch.Tensor, num_prefix_tokens: int, grid: Optional[Tuple[int, int]], owner: str) -> None:
    """Input checks of a mixer that takes NHWC maps ``(B, H, W, C)`` without ``grid`` and token
    sequences ``(B, P + H*W, C)`` (``P`` prefix tokens first) with ``grid=(H, W)``: AgentAttention,
    InLineAttention. ``owner`` names the module in the messages.

    Raises:
        ValueError: prefix tokens without a grid, a 3-D input without a grid, a grid with a
            non-3-D input, or a token count that is not ``P + H*W``.
    """
    P = num_prefix_tokens
    if grid is None:
        if P:
            raise ValueError(f"{owner}: a module with prefix tokens takes (B, N, C) sequences and a grid")
        if x.dim() != 4:
            raise ValueError(f"{owner}: (B, N, C) inputs need grid=(H, W); got shape {tuple(x.shape)} without a grid")
    else:
        if x.dim() != 3:
            raise ValueError(f"{owner}: grid= is given for (B, N, C) sequences; got shape {tuple(x.shape)}")
        H, W, N = int(grid[0]), int(grid[1]), x.shape[1]
        if N != P + H * W:
            raise ValueError(f"{owner}: {N} tokens but grid {H}x{W} + {P} prefix token(s) = {P + H * W}")


def token_sequence(
    x: torch.Tensor, num_prefix_tokens: int, grid: Optional[Tuple[int, int]], owner: str
) -> Tuple[torch.Tensor, int, int]:
    """:func:`check_token_input`, then the tokens as one sequence: ``(x_seq, H, W)`` with
    ``x_seq`` ``(B, P + H*W, C)``: an NHWC map ``(B, H, W, C)`` flattened row-major (``P = 0``), a
    sequence returned as given with ``(H, W) = grid``. Raises what :func:`check_token_input` raises."""
    check_token_input(x, num_prefix_tokens, grid, owner)
    if grid is None:
        B, H, W, C = x.shape
        return x.reshape(B, H * W, C), H, W
    return x, grid[0], grid[1]


@register_notrace_function  # a leaf of FX graphs: it branches on device and autograd state
def _agent_attend(
    agents: torch.Tensor, qh: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, scale: float, drop: float
) -> torch.Tensor:
    """Agent aggregation then broadcast: ``(B, m, N, d)`` out of agents ``(B, m, n, d)``, q/k/v ``(B, m, N, d)``
    and the biases ``b1 (m, n, N)``, ``b2 (m, N, n)``."""
    if qh.device.type == "cpu" and torch.is_grad_enabled() and (qh.requires_grad or b1.requires_grad):
        # Training on CPU: explicit products with the scale on the small agent side. SDPA's math path
        # (the CPU path with an additive mask and autograd) scales both operands by sqrt(scale)
        # and saves the scaled (B, m, N, d) copy of K (and of Q) for backward; here only views
        # of the q / kv outputs (already saved by the pool / DWC) and (n x N) maps are saved.
        a_s = agents * scale
        attn = torch.softmax(a_s @ kh.transpose(-2, -1) + b1.to(qh.dtype), dim=-1)
        agent_v = F.dropout(attn, drop, training=True) @ vh if drop else attn @ vh
        attn = torch.softmax(qh @ a_s.transpose(-2, -1) + b2.to(qh.dtype), dim=-1)
        return F.dropout(attn, drop, training=True) @ agent_v if drop else attn @ agent_v
    agent_v = F.scaled_dot_product_attention(agents, kh, vh, attn_mask=b1.to(qh.dtype)[None], dropout_p=drop, scale=scale)
    return F.scaled_dot_product_attention(qh, agents, agent_v, attn_mask=b2.to(qh.dtype)[None], dropout_p=drop, scale=scale)


def _agent_attend_weights(
    agents: torch.Tensor, qh: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, scale: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_agent_attend` (eval, no dropout) with both softmaxes explicit: ``(out, agent_attn
    (B, m, n, N), query_attn (B, m, N, n))``."""
    agent_attn = torch.softmax((agents * scale) @ kh.transpose(-2, -1) + b1.to(qh.dtype), dim=-1)
    query_attn = torch.softmax((qh * scale) @ agents.transpose(-2, -1) + b2.to(qh.dtype), dim=-1)
    return query_attn @ (agent_attn @ vh), agent_attn, query_attn


# leaves of FX graphs (see ops/_trace.py)
torch.fx.wrap("resize_agent_bias")
torch.fx.wrap("check_token_input")
torch.fx.wrap("_agent_attend")


class AgentAttention(nn.Module):
    """Agent attention token mixer (global over the map), with agent bias and DWC on V.

    Args:
        dim: channels ``C``.
        num_heads: heads ``m`` (``C`` divisible by it); scale ``(C / m) ** -0.5``.
        agent_num: agent tokens ``n``; a perfect square ``p * p`` (pool size ``p``).
        resolution: ``(H0, W0)`` (or an int) patch grid the row/column bias tables are sized for
            (the training resolution of the stage); any other grid is served by interpolation.
        qkv_bias: bias in the q/k/v projections.
        split_qkv: separate ``q`` (Linear(C, C)) and ``kv`` (Linear(C, 2C), rows ``k | v``)
            projections as Agent-PVT; default one fused ``qkv`` (Linear(C, 3C), rows ``q | k | v``)
            as Agent-Swin / Agent-DeiT / Agent-CSwin.
        num_prefix_tokens: tokens before the patch grid in ``(B, N, C)`` inputs (Agent-DeiT: 1,
            the class token); creates ``ac_bias`` / ``ca_bias``.
        attn_drop: dropout of both attention maps; proj_drop: dropout after ``proj``.
        dwc_kernel: kernel of the depthwise conv on V (3 officially).

    Keys (the official names): ``qkv`` or ``q`` + ``kv``, ``proj``, ``dwc``, ``an_bias``,
    ``na_bias``, ``ah_bias``, ``aw_bias``, ``ha_bias``, ``wa_bias`` (+ ``ac_bias``, ``ca_bias``).

    Shapes:
        * NHWC tokens ``(B, H, W, C) -> (B, H, W, C)`` (hierarchical families), any ``H, W >= 1``;
        * sequences ``(B, P + H * W, C) -> (B, P + H * W, C)`` with ``grid=(H, W)`` (Agent-DeiT),
          the ``P = num_prefix_tokens`` prefix tokens first, patch tokens row-major.

    Raises:
        ValueError: ``C`` not divisible by the heads, ``agent_num`` not a perfect square, a
            sequence input without ``grid`` or whose length is not ``P + H * W``, an NHWC input
            to a module with prefix tokens.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        agent_num: int = 49,
        resolution=(7, 7),
        qkv_bias: bool = True,
        split_qkv: bool = False,
        num_prefix_tokens: int = 0,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        dwc_kernel: int = 3,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"AgentAttention: dim {dim} is not divisible by num_heads {num_heads}")
        p = int(round(agent_num ** 0.5))
        if p * p != agent_num:
            raise ValueError(f"AgentAttention: agent_num must be a perfect square (p x p pooled agents), got {agent_num}")
        H0, W0 = (int(r) for r in to_2tuple(resolution))
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.takes_grid = True  # TransformerBlock passes its grid= (see layers/block.py)
        self.agent_num = agent_num
        self.pool_size = p
        self.resolution = (H0, W0)
        self.split_qkv = split_qkv
        self.num_prefix_tokens = num_prefix_tokens
        self.attn_drop = attn_drop
        if split_qkv:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = nn.Conv2d(dim, dim, dwc_kernel, padding=dwc_kernel // 2, groups=dim)
        m, n = num_heads, agent_num
        self.an_bias = nn.Parameter(torch.zeros(m, n, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(m, n, 7, 7))
        self.ah_bias = nn.Parameter(torch.zeros(1, m, n, H0, 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, m, n, 1, W0))
        self.ha_bias = nn.Parameter(torch.zeros(1, m, H0, 1, n))
        self.wa_bias = nn.Parameter(torch.zeros(1, m, 1, W0, n))
        names = ["an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias"]
        if num_prefix_tokens:
            self.ac_bias = nn.Parameter(torch.zeros(1, m, n, num_prefix_tokens))
            self.ca_bias = nn.Parameter(torch.zeros(1, m, num_prefix_tokens, n))
            names += ["ac_bias", "ca_bias"]
        for name in names:
            trunc_normal_(getattr(self, name), std=0.02)

    def _apply(self, fn, recurse: bool = True):
        """``nn.Module._apply`` with the 5-D row/column tables handed to ``fn`` as 4-D views.

        ``Module.to(memory_format=torch.channels_last)`` (timm's ``--channels-last``) passes every
        4-D *and 5-D* tensor to ``Tensor.to(memory_format=...)``, which refuses rank 5 for
        ``channels_last``. The official tables ``ah/aw/ha/wa_bias`` are ``(1, ...)`` 5-D, so for the
        conversion they (and their gradients) are viewed without the leading 1 and restored after:
        the parameter objects, their official shapes and the state-dict layout are unchanged, and
        any other conversion (device, dtype) gives the same values as on the 5-D tensors.
        """
        tables = [
            p for p in (self._parameters.get(k) for k in _AXES)
            if p is not None and p.dim() == 5 and p.shape[0] == 1 and type(p.data) is torch.Tensor
        ]
        with torch.no_grad():
            for p in tables:
                p.data = p.data[0]
                if p.grad is not None:
                    p.grad.data = p.grad.data[0]
        try:
            return super()._apply(fn, recurse)
        finally:
            with torch.no_grad():
                for p in tables:
                    p.data = p.data.unsqueeze(0)
                    if p.grad is not None and p.grad.dim() == 4:
                        p.grad.data = p.grad.data.unsqueeze(0)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, agent_num={self.agent_num}, resolution={self.resolution}, "
            f"num_prefix_tokens={self.num_prefix_tokens}"
        )

    def agent_biases(self, h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two agent biases for an ``h x w`` grid (prefix terms included).

        Returns:
            ``B1 (m, n, P + h*w)`` (agents -> keys) and ``B2 (m, P + h*w, n)`` (queries -> agents).
        """
        m, n = self.num_heads, self.agent_num
        size = (h, w)
        an = F.interpolate(self.an_bias, size=size, mode="bilinear", align_corners=False)
        na = F.interpolate(self.na_bias, size=size, mode="bilinear", align_corners=False)
        ah, aw = resize_agent_bias("ah_bias", self.ah_bias, size), resize_agent_bias("aw_bias", self.aw_bias, size)
        ha, wa = resize_agent_bias("ha_bias", self.ha_bias, size), resize_agent_bias("wa_bias", self.wa_bias, size)
        b1 = (an + (ah + aw)[0]).reshape(m, n, h * w)
        b2 = na.reshape(m, n, h * w).transpose(1, 2) + (ha + wa)[0].reshape(m, h * w, n)
        if hasattr(self, "ac_bias"):  # num_prefix_tokens > 0 (hasattr: see forward)
            b1 = torch.cat([self.ac_bias[0], b1], dim=-1)
            b2 = torch.cat([self.ca_bias[0], b2], dim=-2)
        return b1, b2

    def forward(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        P = self.num_prefix_tokens
        nhwc = grid is None
        x, H, W = token_sequence(x, P, grid, "AgentAttention")
        B, N, C = x.shape
        m, d, n = self.num_heads, self.head_dim, self.agent_num
        if hasattr(self, "q"):  # split_qkv (hasattr: TorchScript compiles only the branch this module has)
            q = self.q(x)
            k, v = self.kv(x).reshape(B, N, 2, C).unbind(2)
        else:
            q, k, v = self.qkv(x).reshape(B, N, 3, C).unbind(2)
        # agent tokens: pooled patch queries over all channels, then split into heads
        q_img = q[:, P:].reshape(B, H, W, C).permute(0, 3, 1, 2)
        agents = F.adaptive_avg_pool2d(q_img, self.pool_size).reshape(B, m, d, n).transpose(-1, -2)  # (B, m, n, d)
        # heads: (B, N, C) -> (B, m, N, d)
        qh, kh, vh = q.reshape(B, N, m, d).transpose(1, 2), k.reshape(B, N, m, d).transpose(1, 2), v.reshape(B, N, m, d).transpose(1, 2)
        b1, b2 = self.agent_biases(H, W)
        drop = self.attn_drop if self.training else 0.0
        out = _agent_attend(agents, qh, kh, vh, b1, b2, self.scale, drop)
        out = out.transpose(1, 2).reshape(B, N, C)
        v_img = v[:, P:].reshape(B, H, W, C).permute(0, 3, 1, 2)
        local = self.dwc(v_img).permute(0, 2, 3, 1).reshape(B, H * W, C)
        if P:
            out = torch.cat([out[:, :P], out[:, P:] + local], dim=1)
        else:
            out = out + local
        out = self.proj_drop(self.proj(out))
        return out.reshape(B, H, W, C) if nhwc else out

    def forward_attention(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """:meth:`forward` with both softmaxes explicit, returning them (inspection).

        Called by :func:`visionattn.visualize.capture_attention` in place of :meth:`forward`
        (same output to float tolerance, eval mode).

        Returns:
            ``(out, record)``, ``record = {"kind": "agent", "agent_attn": (B, m, n, P + H*W)``
            (agent aggregation, agents -> keys), ``"query_attn": (B, m, P + H*W, n)`` (agent
            broadcast, queries -> agents), ``"size": (H, W), "prefix": P}``. The composed
            query -> key map is ``query_attn @ agent_attn`` (rows sum to 1); the DWC term on V is
            not attention and is not part of it.
        """
        P = self.num_prefix_tokens
        nhwc = grid is None
        x, H, W = token_sequence(x, P, grid, "AgentAttention")
        B, N, C = x.shape
        m, d, n = self.num_heads, self.head_dim, self.agent_num
        if hasattr(self, "q"):
            q = self.q(x)
            k, v = self.kv(x).reshape(B, N, 2, C).unbind(2)
        else:
            q, k, v = self.qkv(x).reshape(B, N, 3, C).unbind(2)
        q_img = q[:, P:].reshape(B, H, W, C).permute(0, 3, 1, 2)
        agents = F.adaptive_avg_pool2d(q_img, self.pool_size).reshape(B, m, d, n).transpose(-1, -2)
        qh, kh, vh = (t.reshape(B, N, m, d).transpose(1, 2) for t in (q, k, v))
        b1, b2 = self.agent_biases(H, W)
        out, agent_attn, query_attn = _agent_attend_weights(agents, qh, kh, vh, b1, b2, self.scale)
        out = out.transpose(1, 2).reshape(B, N, C)
        local = self.dwc(v[:, P:].reshape(B, H, W, C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(B, H * W, C)
        out = torch.cat([out[:, :P], out[:, P:] + local], dim=1) if P else out + local
        out = self.proj_drop(self.proj(out))
        record = {"kind": "agent", "agent_attn": agent_attn, "query_attn": query_attn, "size": (H, W), "prefix": P}
        return (out.reshape(B, H, W, C) if nhwc else out), record
