"""The registry of token mixers by name: any mixer of the zoo in any backbone.

Every token mixer of visionattn shares one contract: NHWC tokens ``(B, H, W, C) -> (B, H, W, C)``
at any ``H, W >= 1`` (maps that do not fit a window, region or stripe are padded and masked inside
the mixer, as its family does). This module gives each one a short name and one constructor
contract, ``factory(dim, num_heads, **mixer_kwargs) -> nn.Module``, so that a macro-architecture
(:class:`visionattn.models.mixernet.MixerNet`, ``timm.create_model('<name>_mixernet_tiny')``) can swap
the mixer or mix several in one model.

>>> import visionattn
>>> visionattn.list_mixers()[:3]
['agent', 'bra', 'cswin']
>>> m = visionattn.create_mixer("na", 64, 2, kernel_size=5)

Each entry (:class:`MixerSpec`) documents its kwargs (name, default, meaning), its cost in MACs for
one image and the paper it comes from. Notation of the cost formulas: ``N = H * W`` tokens, ``C``
channels, MACs of one forward pass of one image as fvcore counts them with the handles of
the zoo's fvcore counter (``count_gmacs``) (linear layers ``N * C_in * C_out``, attention ``Q K^T`` plus ``A V``);
element-wise ops, softmax and pooling are not counted, as in the papers. Maps padded by the mixer
are counted at their padded size (``N_p``).

Users add their own with :func:`register_mixer`; the factory must follow the same contract.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

from torch import nn

from .layers.agent import AgentAttention
from .layers.baseline import DepthwiseConvMixer, IdentityMixer, PoolMixer
from .layers.channel import ChannelGroupAttention
from .layers.cross_shaped import CrossShapedWindowAttention
from .layers.lka import LargeKernelAttention
from .layers.inline import InLineAttention
from .layers.neighborhood import NeighborhoodAttention2d
from .layers.routing import BiLevelRoutingAttention
from .layers.window import WindowAttention

__all__ = ["MixerSpec", "register_mixer", "list_mixers", "get_mixer", "create_mixer", "mixer_kwargs_of", "UnknownMixerError"]


class UnknownMixerError(KeyError, ValueError):
    """An unknown mixer name (the message lists the registered ones)."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class MixerSpec:
    """One registered mixer.

    Attributes:
        name: the registry name.
        factory: ``factory(dim, num_heads, **kwargs) -> nn.Module`` mapping ``(B, H, W, C)`` to itself.
        description: one line saying what it is (and its layer class).
        kwargs: ``{kwarg: meaning}`` for the kwargs the factory takes besides ``dim, num_heads``.
        cost: MACs of one forward on ``N`` tokens (notation in the module docstring).
        paper: the source paper (and official code).
    """

    name: str
    factory: Callable[..., nn.Module]
    description: str = ""
    kwargs: Mapping[str, str] = field(default_factory=dict)
    cost: str = ""
    paper: str = ""

    def accepted_kwargs(self) -> Optional[List[str]]:
        """Names of the kwargs the factory takes besides ``dim, num_heads`` (None: any, ``**kwargs``)."""
        params = list(inspect.signature(self.factory).parameters.values())[2:]
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]

    def defaults(self) -> Dict[str, Any]:
        """``{kwarg: default}`` of the factory's keyword arguments."""
        params = list(inspect.signature(self.factory).parameters.values())[2:]
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


_MIXERS: Dict[str, MixerSpec] = {}


def register_mixer(
    name: str,
    factory: Callable[..., nn.Module],
    *,
    description: str = "",
    kwargs: Optional[Mapping[str, str]] = None,
    cost: str = "",
    paper: str = "",
    overwrite: bool = False,
) -> MixerSpec:
    """Register a token mixer under ``name`` (usable in ``MixerNet(mixers=...)`` and the presets).

    Args:
        name: a short identifier (letters, digits, ``_``).
        factory: a callable ``factory(dim, num_heads, **kwargs)`` returning an ``nn.Module`` that maps
            NHWC ``(B, H, W, C)`` tokens to the same shape at any ``H, W >= 1``. A class works too.
        description, kwargs, cost, paper: documentation (see :class:`MixerSpec`).
        overwrite: replace an existing entry of that name (default: refuse).

    Returns:
        the new :class:`MixerSpec`.

    Raises:
        ValueError: a malformed name, a name already registered (without ``overwrite``), or a
            factory that does not take ``(dim, num_heads, ...)`` positionally.
        TypeError: ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name.replace("_", "").isalnum() or not name[:1].isalpha():
        raise ValueError(f"register_mixer: name must be an identifier such as 'my_mixer', got {name!r}")
    if not callable(factory):
        raise TypeError(f"register_mixer: factory for {name!r} must be callable, got {type(factory).__name__}")
    if name in _MIXERS and not overwrite:
        raise ValueError(f"register_mixer: a mixer named {name!r} is already registered (pass overwrite=True to replace it)")
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: trust the caller
        params = None
    if params is not None:
        positional = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        var_pos = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
        if len(positional) < 2 and not var_pos:
            raise ValueError(
                f"register_mixer: factory for {name!r} must take (dim, num_heads, **mixer_kwargs); "
                f"its signature is {inspect.signature(factory)}"
            )
    spec = MixerSpec(name, factory, description, dict(kwargs or {}), cost, paper)
    _MIXERS[name] = spec
    return spec


def list_mixers() -> List[str]:
    """Names of the registered mixers, sorted."""
    return sorted(_MIXERS)


def get_mixer(name: str) -> MixerSpec:
    """The :class:`MixerSpec` of ``name``.

    Raises:
        UnknownMixerError: ``name`` is not registered (the message lists the registered names).
    """
    try:
        return _MIXERS[name]
    except (KeyError, TypeError):
        raise UnknownMixerError(f"unknown mixer {name!r}; registered mixers: {', '.join(list_mixers())}") from None


def mixer_kwargs_of(name: str) -> Optional[List[str]]:
    """The kwargs mixer ``name`` accepts besides ``dim, num_heads`` (None: anything)."""
    return get_mixer(name).accepted_kwargs()


def create_mixer(name: str, dim: int, num_heads: int, **kwargs: Any) -> nn.Module:
    """Build mixer ``name`` for ``dim`` channels and ``num_heads`` heads.

    Returns:
        an ``nn.Module`` mapping ``(B, H, W, dim) -> (B, H, W, dim)``.

    Raises:
        UnknownMixerError: an unknown ``name`` (lists the registered ones).
        TypeError: a kwarg the mixer does not take (lists the accepted ones).
        ValueError: whatever the layer raises for bad values (e.g. indivisible heads).
    """
    spec = get_mixer(name)
    accepted = spec.accepted_kwargs()
    if accepted is not None:
        bad = sorted(k for k in kwargs if k not in accepted)
        if bad:
            raise TypeError(
                f"mixer {name!r} does not take {', '.join(map(repr, bad))}; it accepts: "
                + (", ".join(accepted) if accepted else "no kwargs besides dim and num_heads")
            )
    return spec.factory(dim, num_heads, **kwargs)


# ------------------------------------------------------------------------------------------------
# The zoo's mixers. Factories restate only the defaults the contract needs; every module is the
# family's own layer class, so a mixer here computes exactly what it computes in its family.

def _na(dim, num_heads, kernel_size=7, dilation=1, qkv_bias=True, rel_pos_bias=True, proj_drop=0.0, backend="auto"):
    return NeighborhoodAttention2d(dim, num_heads, kernel_size, dilation, qkv_bias, rel_pos_bias, proj_drop, backend)


def _dina(dim, num_heads, kernel_size=7, dilation=2, qkv_bias=True, rel_pos_bias=True, proj_drop=0.0, backend="auto"):
    return NeighborhoodAttention2d(dim, num_heads, kernel_size, dilation, qkv_bias, rel_pos_bias, proj_drop, backend)


def _bra(dim, num_heads, num_regions=7, topk=4, qk_dim=None, qkv_bias=True, lepe_kernel=5, pad_mode="mask", proj_drop=0.0):
    return BiLevelRoutingAttention(dim, num_heads, num_regions, topk, qk_dim, qkv_bias, lepe_kernel, pad_mode, proj_drop)


def _swin(dim, num_heads, window_size=7, shift_size=0, qkv_bias=True, rel_pos_bias=True, mask_padding=False, attn_drop=0.0, proj_drop=0.0):
    return WindowAttention(
        dim, num_heads, window_size, qkv_bias, proj_drop, partition="block", rel_pos_bias=rel_pos_bias,
        mask_padding=mask_padding, attn_drop=attn_drop, shift_size=shift_size,
    )


def _swin_shift(dim, num_heads, window_size=7, shift_size=None, qkv_bias=True, rel_pos_bias=True, mask_padding=False, attn_drop=0.0, proj_drop=0.0):
    if shift_size is None:
        shift_size = window_size // 2 if isinstance(window_size, int) else tuple(w // 2 for w in window_size)
    return _swin(dim, num_heads, window_size, shift_size, qkv_bias, rel_pos_bias, mask_padding, attn_drop, proj_drop)


def _maxvit_block(dim, num_heads, window_size=7, qkv_bias=True, rel_pos_bias=True, mask_padding=True, attn_drop=0.0, proj_drop=0.0):
    return WindowAttention(dim, num_heads, window_size, qkv_bias, proj_drop, "block", rel_pos_bias, mask_padding, attn_drop)


def _maxvit_grid(dim, num_heads, grid_size=7, qkv_bias=True, rel_pos_bias=True, mask_padding=True, attn_drop=0.0, proj_drop=0.0):
    return WindowAttention(dim, num_heads, grid_size, qkv_bias, proj_drop, "grid", rel_pos_bias, mask_padding, attn_drop)


def _sda(dim, num_heads, group_size=7, qkv_bias=True, dynamic_pos_bias=True, mask_padding=True, attn_drop=0.0, proj_drop=0.0):
    return WindowAttention(
        dim, num_heads, group_size, qkv_bias, proj_drop, "block", rel_pos_bias=not dynamic_pos_bias, mask_padding=mask_padding,
        attn_drop=attn_drop, dynamic_pos_bias=dynamic_pos_bias, fit_map=True,
    )


def _lda(dim, num_heads, group_size=7, interval=2, qkv_bias=True, dynamic_pos_bias=True, mask_padding=True, attn_drop=0.0, proj_drop=0.0):
    return WindowAttention(
        dim, num_heads, group_size, qkv_bias, proj_drop, "dilated", rel_pos_bias=not dynamic_pos_bias, mask_padding=mask_padding,
        attn_drop=attn_drop, interval=interval, dynamic_pos_bias=dynamic_pos_bias, fit_map=True,
    )


def _cswin(dim, num_heads, stripe_width=7, full=False, qkv_bias=True, mask_padding=True, lepe_kernel=3, attn_drop=0.0, proj_drop=0.0):
    return CrossShapedWindowAttention(dim, num_heads, stripe_width, full, qkv_bias, attn_drop, proj_drop, mask_padding, lepe_kernel)


def _davit_channel(dim, num_heads, qkv_bias=True, proj_drop=0.0):
    return ChannelGroupAttention(dim, num_heads, qkv_bias, proj_drop)


def _agent(dim, num_heads, agent_num=49, resolution=7, qkv_bias=True, dwc_kernel=3, attn_drop=0.0, proj_drop=0.0):
    return AgentAttention(dim, num_heads, agent_num, resolution, qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, dwc_kernel=dwc_kernel)


def _inline(dim, num_heads, qkv_bias=True, kernel_func="identity", lepe=False, proj_drop=0.0):
    return InLineAttention(dim, num_heads, qkv_bias=qkv_bias, kernel_func=kernel_func, lepe=lepe, proj_drop=proj_drop)


def _mhsa(dim, num_heads, qkv_bias=True, rel_pos_bias=False, table_size=7, attn_drop=0.0, proj_drop=0.0):
    return WindowAttention(dim, num_heads, table_size, qkv_bias, proj_drop, "global", rel_pos_bias, attn_drop=attn_drop)


def _pool(dim, num_heads, pool_size=3):
    return PoolMixer(dim, pool_size)


def _dwconv(dim, num_heads, kernel_size=7, bias=True):
    return DepthwiseConvMixer(dim, kernel_size, bias)


def _identity(dim, num_heads):
    return IdentityMixer(dim)


_LIN = "4*N*C^2 (qkv + proj)"
_DROP = {"proj_drop": "dropout after the output projection"}
_ADROP = {"attn_drop": "attention-probability dropout", **_DROP}
_NA_KW = {
    "kernel_size": "odd neighborhood size K (7)",
    "dilation": "dilation d; maps smaller than K*d are zero-padded before qkv as NATTEN <= 0.15 does",
    "qkv_bias": "bias in qkv",
    "rel_pos_bias": "learned relative position bias (heads, 2K-1, 2K-1)",
    "backend": "na2d backend ('auto', 'torch', 'reference', 'flex', 'flex-eager', 'natten')",
    **_DROP,
}
_WIN_KW = {
    "qkv_bias": "bias in qkv",
    "rel_pos_bias": "learned relative position bias (heads, 2P-1, 2P-1)",
    "mask_padding": "mask the zero tokens padded onto maps not divisible by the window",
    **_ADROP,
}

register_mixer(
    "na", _na, description="neighborhood attention: each token attends to its K x K nearest neighbors (NeighborhoodAttention2d)",
    kwargs=_NA_KW, cost=f"{_LIN} + 2*N_p*K^2*C (QK^T + AV over the neighborhood)",
    paper="Hassani et al., Neighborhood Attention Transformer, CVPR 2023 (SHI-Labs/Neighborhood-Attention-Transformer)",
)
register_mixer(
    "dina", _dina, description="dilated neighborhood attention: K x K neighbors spaced d apart (NeighborhoodAttention2d, dilation 2 by default)",
    kwargs=_NA_KW, cost=f"{_LIN} + 2*N_p*K^2*C (the dilation changes which keys, not how many)",
    paper="Hassani & Shi, Dilated Neighborhood Attention Transformer, arXiv:2209.15001",
)
register_mixer(
    "bra", _bra, description="bi-level routing attention: region-to-region top-k routing, then token attention over the routed regions, LePE on V (BiLevelRoutingAttention)",
    kwargs={
        "num_regions": "regions per side S (7); maps not divisible are padded and masked ('mask') or zero-padded ('zero')",
        "topk": "routed regions per query region k (4)",
        "qk_dim": "query/key channels (default C)",
        "qkv_bias": "bias in qkv",
        "lepe_kernel": "LePE depthwise kernel on V (5; 0 = none)",
        "pad_mode": "'mask' (ours) or 'zero' (official detection auto_pad)",
        **_DROP,
    },
    cost="N*C*(2*C_qk + C) (qkv) + N*C^2 (proj) + S^4*C_qk (routing) + N*k*(N_p/S^2)*(C_qk + C) (attention) + N*C*l^2 (LePE)",
    paper="Zhu et al., BiFormer: Vision Transformer with Bi-Level Routing Attention, CVPR 2023 (rayleizhu/BiFormer)",
)
register_mixer(
    "swin", _swin, description="Swin window attention (W-MSA): non-overlapping P x P windows, relative position bias (WindowAttention partition='block')",
    kwargs={"window_size": "window P (7)", "shift_size": "cyclic shift (0; see 'swin_shift')", **_WIN_KW},
    cost="4*N_p*C^2 (qkv + proj on the padded map) + 2*N_p*P^2*C",
    paper="Liu et al., Swin Transformer, ICCV 2021 (microsoft/Swin-Transformer)",
)
register_mixer(
    "swin_shift", _swin_shift, description="Swin shifted window attention (SW-MSA): windows shifted by P//2 with Swin's region mask (WindowAttention shift_size)",
    kwargs={"window_size": "window P (7)", "shift_size": "cyclic shift (default P//2)", **_WIN_KW},
    cost="4*N_p*C^2 + 2*N_p*P^2*C",
    paper="Liu et al., Swin Transformer, ICCV 2021, Sec. 3.2 (microsoft/Swin-Transformer)",
)
register_mixer(
    "maxvit_block", _maxvit_block, description="MaxViT block attention: P x P windows of adjacent tokens, padded keys masked (WindowAttention partition='block')",
    kwargs={"window_size": "window P (7)", **_WIN_KW}, cost="4*N_p*C^2 + 2*N_p*P^2*C",
    paper="Tu et al., MaxViT: Multi-Axis Vision Transformer, ECCV 2022, Sec. 3.2 (google-research/maxvit)",
)
register_mixer(
    "maxvit_grid", _maxvit_grid, description="MaxViT grid attention: G x G windows of tokens spaced H/G apart (sparse global), padded keys masked (WindowAttention partition='grid')",
    kwargs={"grid_size": "grid G (7)", **_WIN_KW}, cost="4*N_p*C^2 + 2*N_p*G^2*C",
    paper="Tu et al., MaxViT: Multi-Axis Vision Transformer, ECCV 2022, Sec. 3.2 (google-research/maxvit)",
)
_LSDA_KW = {
    "qkv_bias": "bias in qkv",
    "dynamic_pos_bias": "CrossFormer's dynamic position bias, an MLP of width C//16 over relative offsets (True); False: a (heads, 2G-1, 2G-1) table",
    "mask_padding": "mask the zero tokens padded onto maps not divisible by the group (G, or G*I for LDA)",
    **_ADROP,
}
register_mixer(
    "sda", _sda, description="CrossFormer short-distance attention: G x G groups of adjacent tokens with a dynamic position bias; a map no larger than G along a side is one group (WindowAttention partition='block', dynamic_pos_bias, fit_map)",
    kwargs={"group_size": "group G (7)", **_LSDA_KW},
    cost=f"{_LIN} + 2*N_p*G^2*C + (2G-1)^2*(2D + 2D^2 + D*heads) (DPB MLP, D = C//16)",
    paper="Wang et al., CrossFormer, ICLR 2022, Sec. 3.2-3.3 (cheerss/CrossFormer)",
)
register_mixer(
    "lda", _lda, description="CrossFormer long-distance attention: G x G groups of tokens spaced I apart within regions of G*I tokens, dynamic position bias (WindowAttention partition='dilated', dynamic_pos_bias, fit_map)",
    kwargs={"group_size": "group G (7)", "interval": "interval I between a group's tokens (2)", **_LSDA_KW},
    cost=f"{_LIN} + 2*N_p*G^2*C + (2G-1)^2*(2D + 2D^2 + D*heads) (DPB MLP, D = C//16)",
    paper="Wang et al., CrossFormer, ICLR 2022, Sec. 3.2-3.3 (cheerss/CrossFormer)",
)
register_mixer(
    "cswin", _cswin, description="CSWin cross-shaped window attention: half the heads in vertical, half in horizontal stripes of width sw, LePE (CrossShapedWindowAttention)",
    kwargs={
        "stripe_width": "stripe width sw (7)",
        "full": "one global branch instead of two stripes (CSWin's last stage)",
        "qkv_bias": "bias in qkv",
        "mask_padding": "mask the tokens padded onto maps not divisible by sw",
        "lepe_kernel": "LePE depthwise kernel (3)",
        **_ADROP,
    },
    cost=f"{_LIN} + N*sw*(H_p + W_p)*C (stripes) + 9*N*C (LePE); full: + 2*N^2*C",
    paper="Dong et al., CSWin Transformer, CVPR 2022 (microsoft/CSWin-Transformer)",
)
register_mixer(
    "davit_channel", _davit_channel, description="DaViT channel group attention: channels attend to channels within num_heads groups, global over tokens (ChannelGroupAttention)",
    kwargs={"qkv_bias": "bias in qkv", **_DROP}, cost=f"{_LIN} + 2*N*C^2/G (G = num_heads groups)",
    paper="Ding et al., DaViT: Dual Attention Vision Transformers, ECCV 2022, Sec. 3.2 (dingmyu/davit)",
)
register_mixer(
    "agent", _agent, description="agent attention: softmax attention through n pooled agent tokens, agent bias, depthwise conv on V (AgentAttention)",
    kwargs={
        "agent_num": "agent tokens n = p*p (49)",
        "resolution": "map size the row/column bias tables are sized for (7); other sizes interpolate",
        "qkv_bias": "bias in qkv",
        "dwc_kernel": "depthwise conv kernel on V (3)",
        **_ADROP,
    },
    cost=f"{_LIN} + 4*N*n*C (aggregation + broadcast) + N*C*k^2 (DWC)",
    paper="Han et al., Agent Attention, ECCV 2024 (LeapLabTHU/Agent-Attention)",
)
register_mixer(
    "inline", _inline,
    description="injective linear attention: centred linear attention weights (sum to 1, injective in q), global, "
    "plus a per-image predicted 3x3 depthwise conv on V (InLineAttention)",
    kwargs={
        "qkv_bias": "bias in qkv",
        "kernel_func": "phi on q and k: 'identity' (official models), 'relu', 'leakyrelu', 'exp'",
        "lepe": "also a learned 3x3 depthwise conv on V, as InLine-CSwin (False)",
        **_DROP,
    },
    cost=f"{_LIN} + 2*N*C^2/m (K^T V and Q (K^T V), m heads) + 10*C^2/m (kernel MLP, per image) "
    "+ 9*N*C (local conv) [+ 9*N*C with lepe]",
    paper="Han et al., Bridging the Divide: Reconsidering Softmax and Linear Attention, NeurIPS 2024 (LeapLabTHU/InLine)",
)
register_mixer(
    "mhsa", _mhsa, description="global multi-head self-attention over all tokens, F.scaled_dot_product_attention (WindowAttention partition='global')",
    kwargs={
        "qkv_bias": "bias in qkv",
        "rel_pos_bias": "relative position bias table, resized bicubically to the map (False)",
        "table_size": "extent of that table (7)",
        **_ADROP,
    },
    cost=f"{_LIN} + 2*N^2*C",
    paper="Vaswani et al., Attention Is All You Need, NeurIPS 2017; Dosovitskiy et al., ViT, ICLR 2021",
)
register_mixer(
    "pool", _pool, description="PoolFormer pooling: AvgPool(x) - x, no parameters (PoolMixer)",
    kwargs={"pool_size": "odd pooling window (3)"}, cost="0 (about pool_size^2*N*C additions, not MACs)",
    paper="Yu et al., MetaFormer Is Actually What You Need for Vision, CVPR 2022 (sail-sg/poolformer)",
)
register_mixer(
    "dwconv", _dwconv, description="ConvNeXt-style depthwise k x k convolution (DepthwiseConvMixer)",
    kwargs={"kernel_size": "odd kernel k (7)", "bias": "conv bias"}, cost="N*C*k^2",
    paper="Liu et al., A ConvNet for the 2020s, CVPR 2022 (facebookresearch/ConvNeXt)",
)
register_mixer(
    "identity", _identity, description="no token mixing (IdentityMixer): the floor of the ablation", kwargs={}, cost="0",
    paper="Yu et al., MetaFormer Baselines for Vision, TPAMI 2023 (IdentityFormer)",
)


def _lka(dim, num_heads, kernel_size=21, dilation=3, shortcut=True, proj_drop=0.0):
    return LargeKernelAttention(dim, kernel_size, dilation, shortcut=shortcut, proj_drop=proj_drop)


register_mixer(
    "lka", _lka,
    description="VAN large-kernel attention: 1x1, GELU, LKA (depthwise (2d-1)^2 -> depthwise ceil(K/d)^2 dilated d -> 1x1, "
    "times its input), 1x1, plus the mixer's own shortcut; no heads (num_heads is ignored) (LargeKernelAttention)",
    kwargs={
        "kernel_size": "receptive field K of the decomposed convolution (21)",
        "dilation": "dilation d of the long-range depthwise conv (3: kernels 5x5 and 7x7)",
        "shortcut": "add the mixer's input to its output, as VAN's official Attention does (True)",
        **_DROP,
    },
    cost="3*N*C^2 (proj_1, LKA 1x1, proj_2) + N*C*((2d-1)^2 + ceil(K/d)^2) (depthwise; VAN: 74*N*C)",
    paper="Guo et al., Visual Attention Network, CVMJ 2023, Sec. 3.1-3.2 (Visual-Attention-Network/VAN-Classification)",
)
