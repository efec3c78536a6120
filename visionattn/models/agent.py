"""Agent attention backbones: Agent-PVT, Agent-DeiT, Agent-Swin and Agent-CSwin.

Paper: Han, Ye, Han, Xia, Pan, Wan, Song, Huang. "Agent Attention: On the Integration of Softmax
and Linear Attention". ECCV 2024, arXiv:2312.08874 (Sec. 3; Sec. 4.1 and Appendix for the
models). Official code and weights: github LeapLabTHU/Agent-Attention (no licence file),
``agent_transformer/models/agent_{pvt,deit,swin,cswin}.py`` and ``agent_transformer/cfgs/*.yaml``.

Every agent block is :class:`~visionattn.layers.TransformerBlock` around the one mixer
:class:`~visionattn.layers.agent.AgentAttention` (global over the map; Agent-Swin's and
Agent-CSwin's agent "windows" of 56/28/14 at 224 are the whole map, reference sec. 1.6):

* Agent-PVT: PVT-v1 body, a patch embedding (4x4, then 2x2 convs + LayerNorm) and an absolute
  position embedding per stage, every block agent attention with separate ``q`` / ``kv`` and no
  K/V spatial reduction, no final norm, mean pool. ``agent_num`` 9, 16, 49, 49.
* Agent-DeiT: DeiT body (16x16 patches, class token, position embedding, LayerNorm eps 1e-6),
  the mixer on ``(B, 1 + h*w, C)`` sequences with the grid passed explicitly and the class-token
  bias terms ``ac_bias`` / ``ca_bias``; Agent-DeiT-B has 81 agents in blocks 0-3 and standard
  DeiT attention (timm ``Attention``) in blocks 4-11.
* Agent-Swin: Swin body; the first ``agent_blocks[i]`` blocks of stage ``i`` are agent blocks
  (T: stages 1-3; S: stages 1-2; B: stages 1-2 and the first two of stage 3), the others Swin
  W-MSA / SW-MSA blocks (:class:`~visionattn.layers.window.WindowAttention` with a relative position
  bias and ``shift_size``) with window ``max(7, img_size // 32)``, shifted by half a window on odd
  blocks unless the stage map is no larger than the window (then one unshifted window, as
  officially).
* Agent-CSwin: the CSWin body of :mod:`visionattn.models.cswin` (its ``mixer_fn`` hook) with agent
  attention in all blocks of stages 1-2 and CSWin's LePE stripe attention in stages 3-4.

The four bodies take that mixer as a parameter (``mixer_layer``, a :data:`MixerFactory`; default
:func:`agent_mixer`), so other mixers reuse the macro-architectures unchanged: InLine attention
(:mod:`visionattn.models.inline`) is these bodies with :class:`~visionattn.layers.inline.InLineAttention`.

Resolution: the official models fix the bias tables (``ah/aw/ha/wa_bias``) and position
embeddings at construction and fail at any other input size. Here the tables keep the official
shapes of the size the model is built for (``img_size``, so parameter counts and checkpoints match
exactly) and are interpolated at run time to the actual maps: agent row/column tables by 1-D
linear interpolation (``align_corners=False``), ``an_bias``/``na_bias`` bilinearly as officially,
Agent-PVT position embeddings bilinearly (the official run-time rule, ``align_corners=False``,
no antialias) and Agent-DeiT's bicubically (timm's ViT rule, ``align_corners=False``, no
antialias). :func:`checkpoint_filter_fn` applies the same interpolations to a checkpoint trained
at another resolution, so e.g. the 224 weights load strictly into ``agent_swin_small_288`` and
give exactly the 224 model's outputs at 288. Swin window blocks keep their window (and its
relative position table) and pad the map to a multiple of it (padded keys masked).

Agent-DeiT follows timm's ``VisionTransformer`` contract: ``forward_features`` returns the
normalised tokens ``(B, 1 + h*w, C)`` with the class token first (``feats[:, 0]``), which
``forward_head`` reads (``global_pool='token'``, the official head; ``'avg'`` averages the patch
tokens); its feature taps (``forward_intermediates``, ``features_only``) are the patch tokens as
NCHW maps ``(B, C, ceil(H/16), ceil(W/16))`` (or NLC), one per block.

@article{han2023agent, title={Agent Attention: On the Integration of Softmax and Linear Attention},
  author={Han, Dongchen and Ye, Tianzhu and Han, Yizeng and Xia, Zhuofan and Pan, Siyuan and Wan,
  Pengfei and Song, Shiji and Huang, Gao}, journal={arXiv preprint arXiv:2312.08874}, year={2023}}
"""
from __future__ import annotations

import re
from functools import partial
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from timm.layers import Attention, resample_abs_pos_embed, trunc_normal_
from timm.models import generate_default_cfgs

from ..layers.agent import AgentAttention, resize_agent_bias
from ..layers.block import TransformerBlock
from ..layers.conv import PatchEmbed, PatchMerging
from ..layers.cross_shaped import CrossShapedWindowAttention
from ..layers.pos import resize_rel_pos_table
from ..layers.window import WindowAttention
from . import cswin as _cswin
from ._backbone import HierarchicalBackbone, PlainBackbone, Stage, TokenHead, drop_path_rates, init_weights, per_stage, square_img_size
from ._manifest import family_cfg, manifest_cfgs
from ._registry import build_model, check_state_dict, register_model, unwrap_state_dict

torch.fx.wrap("resample_abs_pos_embed")  # a leaf of FX graphs (timm registers it for its own tracer)

__all__ = ["AgentPVT", "AgentDeiT", "AgentSwin", "AgentCSWin", "PosPatchEmbed", "TokenHead", "MixerFactory", "agent_mixer", "checkpoint_filter_fn"]

_LN6 = partial(nn.LayerNorm, eps=1e-6)

#: the mixer factory contract of the Agent bodies (``mixer_layer=``): called as
#: ``factory(dim, num_heads, stage=i, resolution=(h0, w0), qkv_bias=..., attn_drop=..., proj_drop=...,
#: split_qkv=..., num_prefix_tokens=...)`` for every block that is not a plain softmax block
#: (``resolution``: the stage's grid at ``img_size``). InLine (:mod:`visionattn.models.inline`) swaps it.
MixerFactory = Callable[..., nn.Module]


def agent_mixer(agent_num: Sequence[int]) -> MixerFactory:
    """The default :data:`MixerFactory`: :class:`~visionattn.layers.agent.AgentAttention` with ``agent_num[stage]`` agents."""

    def make(dim, num_heads, stage, resolution, qkv_bias, attn_drop, proj_drop, split_qkv=False, num_prefix_tokens=0):
        return AgentAttention(
            dim, num_heads, agent_num[stage], resolution, qkv_bias, split_qkv=split_qkv, num_prefix_tokens=num_prefix_tokens,
            attn_drop=attn_drop, proj_drop=proj_drop,
        )

    return make


# ------------------------------------------------------------------------------------------------
# Agent-PVT


class PosPatchEmbed(PatchEmbed):
    """PVT patch embedding with its absolute position embedding (``patch_embed{i}`` + ``pos_embed{i}``).

    A ``p x p`` stride-``p`` conv (input zero-padded bottom/right to a multiple of ``p``), LayerNorm
    (eps 1e-5), then ``+ pos_embed``. ``pos_embed (1, H0 * W0, dim)`` is sized for the training grid
    ``(H0, W0)`` and bilinearly resampled (``align_corners=False``, no antialias: the official
    ``_get_pos_embed``) when the grid differs. Source: LeapLabTHU/Agent-Attention
    ``agent_transformer/models/agent_pvt.py`` (``PatchEmbed``, ``_get_pos_embed``).

    Args:
        in_chans, dim, patch_size: as :class:`~visionattn.layers.conv.PatchEmbed`.
        grid: ``(H0, W0)`` grid of the position embedding.
        nhwc_input: take NHWC tokens (a downsampler inside the backbone) instead of NCHW images.

    Keys: ``proj``, ``norm``, ``pos_embed``.
    Shapes: ``(B, in_chans, H, W)`` (or ``(B, H, W, in_chans)``) -> ``(B, ceil(H/p), ceil(W/p), dim)``.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int, grid: Tuple[int, int], nhwc_input: bool = False):
        super().__init__(in_chans, dim, patch_size)
        self.nhwc_input = nhwc_input
        self.grid = (int(grid[0]), int(grid[1]))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))
        trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc_input:
            x = x.permute(0, 3, 1, 2)
        x = self.embed(x)  # PatchEmbed's forward
        B, h, w, C = x.shape
        pos = resample_abs_pos_embed(self.pos_embed, [h, w], list(self.grid), num_prefix_tokens=0, interpolation="bilinear", antialias=False)
        return x + pos.reshape(1, h, w, C)


class AgentPVT(HierarchicalBackbone):
    """Agent-PVT: PVT-v1 with agent attention in every block (no K/V spatial reduction).

    Args:
        img_size: training resolution (sizes the position embeddings and agent bias tables; any
            input size runs).
        in_chans, num_classes, global_pool: as usual.
        embed_dims, num_heads, mlp_ratios, depths: per stage.
        agent_num: agents per stage.
        qkv_bias: bias in ``q`` / ``kv``.
        drop_rate, proj_drop_rate, attn_drop_rate, drop_path_rate: dropouts / stochastic depth.
        mixer_layer: factory of every block's mixer (:data:`MixerFactory`, ``split_qkv=True``;
            default :func:`agent_mixer` of ``agent_num``).

    Shapes: ``(B, in_chans, H, W)``, ``H, W >= 32`` -> features ``(B, 512, ceil(H/32), ceil(W/32))``
    (no final norm, as officially). Raises ValueError for per-stage arguments of the wrong length.
    """

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        depths: Sequence[int] = (2, 2, 2, 2),
        agent_num: Sequence[int] = (9, 16, 49, 49),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        mixer_layer: Optional[MixerFactory] = None,
    ):
        n = len(depths)
        for name, v in (("embed_dims", embed_dims), ("num_heads", num_heads), ("mlp_ratios", mlp_ratios), ("agent_num", agent_num)):
            per_stage(v, n, name)
        mixer_layer = mixer_layer or agent_mixer(agent_num)
        reductions = [4 * 2**i for i in range(n)]
        dpr = drop_path_rates(drop_path_rate, depths)
        stages = []
        for i in range(n):
            g = square_img_size(img_size, "Agent/InLine-PVT") // reductions[i]
            down = PosPatchEmbed(embed_dims[i - 1], embed_dims[i], 2, (g, g), nhwc_input=True) if i > 0 else None
            blocks = [
                TransformerBlock(
                    embed_dims[i],
                    mixer_layer(
                        embed_dims[i], num_heads[i], stage=i, resolution=(g, g), qkv_bias=qkv_bias, split_qkv=True,
                        attn_drop=attn_drop_rate, proj_drop=proj_drop_rate,
                    ),
                    mlp_ratio=mlp_ratios[i],
                    drop_path=dpr[i][j],
                    norm_layer=_LN6,
                    mlp_drop=proj_drop_rate,
                )
                for j in range(depths[i])
            ]
            stages.append(Stage(blocks, down))
        g0 = img_size // 4
        super().__init__(
            PosPatchEmbed(in_chans, embed_dims[0], 4, (g0, g0)),
            stages,
            embed_dims,
            reductions,
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            norm_layer=None,
            min_input_size=reductions[-1],
            no_weight_decay_keywords=(),  # official: only the (absent) cls_token
        )
        self.img_size = img_size
        self.apply(init_weights)


# ------------------------------------------------------------------------------------------------
# Agent-DeiT


class AgentDeiT(PlainBackbone):
    """Agent-DeiT: DeiT with agent attention (class token kept out of the pooling and the DWC).

    Each block is its own stage (feature taps after every block at stride 16, as timm's ViT), and
    the model is shaped like timm's ``VisionTransformer``
    (:class:`~visionattn.models._backbone.PlainBackbone`, ``num_prefix_tokens = 1``).

    Args:
        img_size: training resolution (sizes ``pos_embed`` and the agent bias tables).
        patch_size: 16.
        in_chans, num_classes: as usual; global_pool: ``'token'`` (official), ``'avg'`` or ``''``.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the DeiT body (LayerNorm eps 1e-6).
        agent_num: agents of the agent blocks.
        agent_layers: the first ``agent_layers`` blocks use agent attention, the rest standard
            DeiT attention (None: all; Agent-DeiT-B: 4).
        drop_rate, proj_drop_rate, attn_drop_rate, drop_path_rate: dropouts / stochastic depth.
        mixer_layer: factory of the mixer of the first ``agent_layers`` blocks (:data:`MixerFactory`,
            ``stage=0``, ``num_prefix_tokens=1``; default :func:`agent_mixer` of ``agent_num``).

    Shapes: ``(B, in_chans, H, W)``, ``H, W >= 16``; ``forward_features`` ``(B, 1 + h*w, C)``
    (class token first, as timm's DeiT) with ``h, w = ceil(H/16), ceil(W/16)``; taps
    ``(B, C, h, w)`` (or ``(B, h*w, C)`` with ``output_fmt='NLC'``).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        agent_num: int = 49,
        agent_layers: Optional[int] = None,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        mixer_layer: Optional[MixerFactory] = None,
    ):
        g = square_img_size(img_size, "Agent/InLine-DeiT") // patch_size
        agent_layers = depth if agent_layers is None else agent_layers
        mixer_layer = mixer_layer or agent_mixer([agent_num])
        dpr = drop_path_rates(drop_path_rate, [depth])[0]

        def mixer(i: int) -> nn.Module:
            if i < agent_layers:
                return mixer_layer(
                    embed_dim, num_heads, stage=0, resolution=(g, g), qkv_bias=qkv_bias, num_prefix_tokens=1,
                    attn_drop=attn_drop_rate, proj_drop=proj_drop_rate,
                )
            return Attention(embed_dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop_rate, proj_drop=proj_drop_rate)

        stages = [
            Stage([TransformerBlock(embed_dim, mixer(i), mlp_ratio=mlp_ratio, drop_path=dpr[i], norm_layer=_LN6, mlp_drop=proj_drop_rate)])
            for i in range(depth)
        ]
        super().__init__(
            PatchEmbed(in_chans, embed_dim, patch_size, norm_layer=None),
            stages,
            embed_dim,
            patch_size,
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            num_prefix_tokens=1,
            norm_layer=_LN6,
            min_input_size=patch_size,
            no_weight_decay_keywords=("pos_embed", "cls_token"),
        )
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid = (g, g)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + g * g, embed_dim))
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        m = super().group_matcher(coarse)
        m["stem"] = r"^cls_token|^pos_embed|^stem"
        return m

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Images -> ``(B, 1 + h*w, C)`` tokens (class token, then patches + position embedding)."""
        x = self.stem(x)  # (B, h, w, C)
        B, h, w, C = x.shape
        pos = resample_abs_pos_embed(self.pos_embed, [h, w], list(self.grid), num_prefix_tokens=1, interpolation="bicubic", antialias=False)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.reshape(B, h * w, C)], dim=1) + pos
        return x, (h, w)

    def _sequence(self, x: torch.Tensor) -> torch.Tensor:
        return x  # the state is already ``(B, 1 + h*w, C)``


# ------------------------------------------------------------------------------------------------
# Agent-Swin


class AgentSwin(HierarchicalBackbone):
    """Agent-Swin: Swin with global agent attention in the leading blocks of each stage.

    Args:
        img_size: training resolution: sizes the agent tables (``img_size / 4 / 2**i`` per stage)
            and the Swin window ``max(7, img_size // 32)`` (7 at 224, 9 at 288, 12 at 384).
        in_chans, num_classes, global_pool: as usual.
        embed_dim, depths, num_heads, mlp_ratio, qkv_bias: the Swin body.
        agent_num: agents per stage.
        agent_blocks: per stage, how many leading blocks are agent blocks (the rest are Swin
            W-MSA/SW-MSA): T ``(2, 2, 6, 0)``, S ``(2, 2, 0, 0)``, B ``(2, 2, 2, 0)``.
        drop_rate, proj_drop_rate, attn_drop_rate, drop_path_rate: dropouts / stochastic depth.
        mixer_layer: factory of the agent blocks' mixer (:data:`MixerFactory`; default
            :func:`agent_mixer` of ``agent_num``).

    Shapes: ``(B, in_chans, H, W)``, ``H, W >= 32`` -> ``(B, 8 * embed_dim, ceil(H/32), ceil(W/32))``.
    Raises ValueError for per-stage arguments of the wrong length.
    """

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        agent_num: Sequence[int] = (9, 16, 49, 49),
        agent_blocks: Sequence[int] = (2, 2, 6, 0),
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        mixer_layer: Optional[MixerFactory] = None,
    ):
        n = len(depths)
        for name, v in (("num_heads", num_heads), ("agent_num", agent_num), ("agent_blocks", agent_blocks)):
            per_stage(v, n, name)
        mixer_layer = mixer_layer or agent_mixer(agent_num)
        dims = [int(embed_dim * 2**i) for i in range(n)]
        reductions = [4 * 2**i for i in range(n)]
        dpr = drop_path_rates(drop_path_rate, depths)
        img_size = square_img_size(img_size, "Agent/InLine-Swin")
        window = max(7, img_size // 32)
        stages = []
        for i in range(n):
            res = img_size // reductions[i]
            win, shift = (res, 0) if res <= window else (window, window // 2)
            blocks = []
            for j in range(depths[i]):
                if j < agent_blocks[i]:
                    attn = mixer_layer(
                        dims[i], num_heads[i], stage=i, resolution=(res, res), qkv_bias=qkv_bias, attn_drop=attn_drop_rate, proj_drop=proj_drop_rate
                    )
                else:
                    attn = WindowAttention(
                        dims[i],
                        num_heads[i],
                        win,
                        qkv_bias,
                        proj_drop=proj_drop_rate,
                        partition="block",
                        attn_drop=attn_drop_rate,
                        shift_size=shift if j % 2 else 0,
                    )
                blocks.append(TransformerBlock(dims[i], attn, mlp_ratio=mlp_ratio, drop_path=dpr[i][j], mlp_drop=proj_drop_rate))
            stages.append(Stage(blocks, PatchMerging(dims[i - 1], dims[i]) if i > 0 else None))
        super().__init__(
            PatchEmbed(in_chans, embed_dim, 4),
            stages,
            dims,
            reductions,
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            min_input_size=reductions[-1],
            no_weight_decay_keywords=("rpb",),
        )
        self.img_size = img_size
        self.apply(init_weights)


# ------------------------------------------------------------------------------------------------
# Agent-CSwin


class AgentCSWin(_cswin.CSWin):
    """Agent-CSwin: the CSWin body with agent attention in all blocks of the ``agent_stages``.

    Args:
        agent_num: agents per stage.
        agent_stages: stages whose blocks are agent blocks (official ``attn_type='AABB'``: 0, 1);
            their tables are sized for the stage map ``img_size / 4 / 2**i`` (the official
            ``la_split_size``).
        prefer_ema: :func:`checkpoint_filter_fn` loads ``state_dict_ema`` when present (False,
            default: ``model``, the weights the official evaluation uses).
        mixer_layer: factory of the ``agent_stages`` blocks' mixer (:data:`MixerFactory`; default
            :func:`agent_mixer` of ``agent_num``).
        other arguments: :class:`visionattn.models.cswin.CSWin`.

    Shapes: as :class:`~visionattn.models.cswin.CSWin`.
    """

    def __init__(
        self,
        agent_num: Sequence[int] = (9, 16, 49, 49),
        agent_stages: Sequence[int] = (0, 1),
        prefer_ema: bool = False,
        mixer_layer: Optional[MixerFactory] = None,
        **kwargs,
    ):
        mixer_layer = mixer_layer or agent_mixer(list(agent_num))
        agent_stages = set(agent_stages)
        qkv_bias = kwargs.get("qkv_bias", True)
        attn_drop = kwargs.get("attn_drop_rate", 0.0)
        proj_drop = kwargs.get("proj_drop_rate", 0.0)

        def mixer_fn(stage, block, dim, num_heads, split_size, full, resolution):
            if stage not in agent_stages:
                return None
            return mixer_layer(dim, num_heads, stage=stage, resolution=(resolution, resolution), qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)

        super().__init__(mixer_fn=mixer_fn, prefer_ema=prefer_ema, **kwargs)


# ------------------------------------------------------------------------------------------------
# Checkpoint conversion

def _swin_table_to_rpb(table: torch.Tensor) -> torch.Tensor:
    """Swin ``relative_position_bias_table ((2P-1)^2, heads)`` (query minus key) -> ``rpb (heads, 2P-1, 2P-1)`` (key minus query)."""
    n, heads = table.shape
    s = int(round(n**0.5))
    return table.t().reshape(heads, s, s).flip(1, 2).contiguous()


def _pvt_to_ours(sd: Mapping[str, torch.Tensor], model: nn.Module):
    out, unknown = {}, []
    for k, v in sd.items():
        m = re.match(r"^patch_embed(\d)\.(proj|norm)\.(weight|bias)$", k) or re.match(r"^pos_embed(\d)()()$", k)
        if m:
            i = int(m.group(1)) - 1
            base = "stem." if i == 0 else f"stages.{i}.downsample."
            out[base + (f"{m.group(2)}.{m.group(3)}" if m.group(2) else "pos_embed")] = v
            continue
        m = re.match(r"^block(\d)\.(\d+)\.(.*)$", k)
        if m:
            out[f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.{m.group(3)}"] = v
        elif k.startswith("head."):
            out["head.fc." + k[5:]] = v
        else:
            unknown.append(k)
    return out, unknown


def _deit_to_ours(sd: Mapping[str, torch.Tensor], model: nn.Module):
    out, unknown = {}, []
    for k, v in sd.items():
        m = re.match(r"^blocks\.(\d+)\.(.*)$", k)
        if m:
            out[f"stages.{m.group(1)}.blocks.0.{m.group(2)}"] = v
        elif k in ("cls_token", "pos_embed") or k.startswith("norm."):
            out[k] = v
        elif k.startswith("patch_embed.proj."):
            out["stem." + k[len("patch_embed."):]] = v
        elif k.startswith("head."):
            out["head.fc." + k[5:]] = v
        else:
            unknown.append(k)
    return out, unknown


def _swin_to_ours(sd: Mapping[str, torch.Tensor], model: nn.Module):
    out, unknown = {}, []
    for k, v in sd.items():
        m = re.match(r"^layers\.(\d+)\.(blocks\.\d+|downsample)\.(.*)$", k)
        if m:
            i, part, rest = int(m.group(1)), m.group(2), m.group(3)
            if part == "downsample":
                out[f"stages.{i + 1}.downsample.{rest}"] = v
            elif rest in ("attn.relative_position_index", "attn_mask"):
                continue  # buffers derived from the window and shift (ours: rpb_index and the region mask)
            elif rest == "attn.relative_position_bias_table":
                out[f"stages.{i}.{part}.attn.rpb"] = _swin_table_to_rpb(v)
            else:
                out[f"stages.{i}.{part}.{rest}"] = v
        elif k.startswith("patch_embed."):
            out["stem." + k[len("patch_embed."):]] = v
        elif k.startswith("norm."):
            out[k] = v
        elif k.startswith("head."):
            out["head.fc." + k[5:]] = v
        else:
            unknown.append(k)
    return out, unknown


_CS_MIXER = re.compile(r"^stage(\d)\.(\d+)\.attns\.0\.(.+)$")


def _cswin_to_ours(sd: Mapping[str, torch.Tensor], model: nn.Module):
    """Blocks whose mixer is not CSWin's (agent / InLine attention) map ``attns.0.*`` onto the mixer
    (``get_v`` -> ``dwc`` for agent attention, ``lepe`` otherwise); the rest as official CSWin."""
    out, rest = {}, {}
    for k, v in sd.items():
        m = _CS_MIXER.match(k)
        blk = None
        if m:
            try:
                blk = model.stages[int(m.group(1)) - 1].blocks[int(m.group(2))]
            except (IndexError, AttributeError):
                blk = None
        if m and blk is not None and not isinstance(blk.attn, CrossShapedWindowAttention):
            name = m.group(3)
            if name.startswith("get_v."):
                name = ("dwc." if isinstance(blk.attn, AgentAttention) else "lepe.") + name[len("get_v."):]
            out[f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.attn.{name}"] = v
        else:
            rest[k] = v
    out2, unknown = _cswin._official_to_ours(rest, model)
    out.update(out2)
    return out, unknown


def _resize_to_model(sd: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Resize resolution-dependent tensors to the model's shapes.

    Agent row/column tables: 1-D linear (:func:`~visionattn.layers.agent.resize_agent_bias`);
    position embeddings: bicubic (Agent-DeiT ``pos_embed``) or bilinear (Agent-PVT, per stage),
    ``align_corners=False``, no antialias; Swin window tables ``rpb``: bicubic
    (:func:`~visionattn.layers.pos.resize_rel_pos_table`, as the official ``load_pretrained``).
    """
    msd = model.state_dict()
    for k, v in list(sd.items()):
        if k not in msd or tuple(v.shape) == tuple(msd[k].shape):
            continue
        name = k.rsplit(".", 1)[-1]
        target = msd[k].shape
        if name in ("ah_bias", "ha_bias", "aw_bias", "wa_bias"):
            axis = {"ah_bias": 3, "ha_bias": 2, "aw_bias": 4, "wa_bias": 3}[name]
            size = (target[axis], target[axis])
            if v.dim() == len(target) and all(a == b for d, (a, b) in enumerate(zip(v.shape, target)) if d != axis):
                sd[k] = resize_agent_bias(name, v, size)
        elif name == "rpb" and v.dim() == 3 and v.shape[0] == target[0]:
            sd[k] = resize_rel_pos_table(v, tuple(target[-2:]))  # Swin window tables: bicubic (official load_pretrained)
        elif name == "pos_embed" and v.dim() == 3 and v.shape[-1] == target[-1]:
            prefix = getattr(model, "num_prefix_tokens", 0) if k == "pos_embed" else 0
            old = int(round((v.shape[1] - prefix) ** 0.5))
            new = int(round((target[1] - prefix) ** 0.5))
            interp = "bicubic" if k == "pos_embed" else "bilinear"
            sd[k] = resample_abs_pos_embed(v, [new, new], [old, old], num_prefix_tokens=prefix, interpolation=interp, antialias=False)
    return sd


def checkpoint_filter_fn(state_dict: Mapping, model: nn.Module, prefer_ema: Optional[bool] = None) -> Dict[str, torch.Tensor]:
    """Convert an official Agent Attention checkpoint (any of the four families) to this model's keys, strictly.

    Accepts the official ``.pth`` dicts (``{'model': ..., 'optimizer': ..., ...}``; the EMA
    variant also holds ``state_dict_ema``), flat state dicts (with or without ``module.``) and
    visionattn's own layout. ``state_dict_ema`` is used when present and ``prefer_ema`` (default
    ``model.prefer_ema``, False: the official evaluation loads ``model``); the key used is stored in
    ``model.pretrained_state_key``. Checkpoints of another resolution are resized to the model
    (module docstring).

    Official -> ours:
        * PVT: ``patch_embed1``/``pos_embed1`` -> ``stem.{proj,norm,pos_embed}``; ``patch_embed{i}``/``pos_embed{i}``
          -> ``stages.{i-1}.downsample.*``; ``block{i}.{j}.*`` -> ``stages.{i-1}.blocks.{j}.*``; ``head`` -> ``head.fc``.
        * DeiT: ``patch_embed.proj`` -> ``stem.proj``; ``blocks.{i}.*`` -> ``stages.{i}.blocks.0.*``.
        * Swin: ``patch_embed`` -> ``stem``; ``layers.{i}.blocks.{j}`` -> ``stages.{i}.blocks.{j}``;
          ``layers.{i}.downsample`` -> ``stages.{i+1}.downsample``; ``relative_position_bias_table``
          -> ``rpb`` (transposed, both offset axes flipped); the buffers ``relative_position_index``
          and ``attn_mask`` are dropped (ours are derived).
        * CSwin: agent blocks' ``stage{s}.{j}.attns.0.{*_bias, get_v}`` -> ``stages.{s-1}.blocks.{j}.attn.{*_bias, dwc}``;
          all other keys as :func:`visionattn.models.cswin.checkpoint_filter_fn`.

    Raises:
        CheckpointKeyError: unmappable keys, model keys left uncovered, shape mismatches (all listed).
        KeyError: ``prefer_ema=True`` but the checkpoint has no ``state_dict_ema``.
    """
    if prefer_ema is None:
        prefer_ema = getattr(model, "prefer_ema", False)
    key = None
    if prefer_ema:
        if not isinstance(state_dict.get("state_dict_ema"), Mapping):
            raise KeyError("prefer_ema=True but the checkpoint holds no 'state_dict_ema'")
        key = "state_dict_ema"
    sd, key = unwrap_state_dict(state_dict, prefer=key)
    unknown: List[str] = []
    if any(k.startswith("stages.") for k in sd):
        source = "visionattn checkpoint"
    else:
        conv = {AgentPVT: _pvt_to_ours, AgentDeiT: _deit_to_ours, AgentSwin: _swin_to_ours, AgentCSWin: _cswin_to_ours}
        fn = next(f for cls, f in conv.items() if isinstance(model, cls))
        source = f"official {type(model).__name__} checkpoint ({key or 'flat state dict'})"
        sd, unknown = fn(sd, model)
    sd = _resize_to_model(sd, model)
    check_state_dict(sd, model, unknown=unknown, source=source)
    model.pretrained_state_key = key
    return sd


# ------------------------------------------------------------------------------------------------
# Pretrained configs: generated from the manifest (visionattn/models/pretrained.yaml: the official
# TsinghuaCloud links, checkpoint under ``model``, Hub ids, per-tag sizes); ``_cfg`` holds the defaults.

_ORIGIN = "https://github.com/LeapLabTHU/Agent-Attention"


_cfg = family_cfg(
    min_input_size=(3, 32, 32),  # smallest image side the model accepts (plain models: 16, per tag)
    crop_pct=0.875,
    crop_mode="squash",
    first_conv="stem.proj",
    license="unknown",
    origin_url=_ORIGIN,
    paper_ids="arXiv:2312.08874",
    paper_name="Agent Attention: On the Integration of Softmax and Linear Attention",
    notes=(
        "no licence file in the official repository",
        "official eval: square resize to 256/224 x size, then center crop (crop_mode 'squash')",
    ),
)


default_cfgs = generate_default_cfgs(manifest_cfgs("agent", _cfg))


# ------------------------------------------------------------------------------------------------
# Variants (agent_transformer/cfgs/*.yaml and the model factories; drop path from the cfgs)

_PVT = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), agent_num=(9, 16, 49, 49))
_PVT_T = dict(_PVT, depths=(2, 2, 2, 2), drop_path_rate=0.1)
_PVT_S = dict(_PVT, depths=(3, 4, 6, 3), drop_path_rate=0.1)
_PVT_M = dict(_PVT, depths=(3, 4, 18, 3), drop_path_rate=0.3)
_PVT_L = dict(_PVT, depths=(3, 8, 27, 3), drop_path_rate=0.3)
_DEIT_T = dict(embed_dim=192, num_heads=3, agent_num=49, drop_path_rate=0.0)
_DEIT_S = dict(embed_dim=384, num_heads=6, agent_num=49, drop_path_rate=0.1)
_DEIT_B = dict(embed_dim=768, num_heads=12, agent_num=81, agent_layers=4, drop_path_rate=0.3)
_SWIN_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), agent_blocks=(2, 2, 6, 0), drop_path_rate=0.2)
_SWIN_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), agent_blocks=(2, 2, 0, 0), drop_path_rate=0.3)
_SWIN_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), agent_blocks=(2, 2, 2, 0), drop_path_rate=0.5)
_CS_T = dict(embed_dim=64, depths=(2, 4, 18, 1), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7), drop_path_rate=0.2)
_CS_S = dict(embed_dim=64, depths=(3, 6, 29, 2), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7), drop_path_rate=0.4)
_CS_B = dict(embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), split_size=(1, 2, 7, 7), drop_path_rate=0.5)


def _create(cls, variant: str, pretrained: bool, defaults: Dict, kwargs: Dict, out_indices=(0, 1, 2, 3)):
    return build_model(cls, variant, pretrained, checkpoint_filter_fn, defaults, kwargs, out_indices)


_DEIT_TAPS = (2, 5, 8, 11)


@register_model
def agent_pvt_tiny(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-T: 11.6M params, 2.0 GMACs, 78.4 top-1 (ImageNet-1k, 224)."""
    return _create(AgentPVT, "agent_pvt_tiny", pretrained, _PVT_T, kwargs)


@register_model
def agent_pvt_small(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-S: 20.6M params, 4.0 GMACs, 82.2 top-1."""
    return _create(AgentPVT, "agent_pvt_small", pretrained, _PVT_S, kwargs)


@register_model
def agent_pvt_medium(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-M: 35.9M params, 7.0 GMACs, 83.4 top-1."""
    return _create(AgentPVT, "agent_pvt_medium", pretrained, _PVT_M, kwargs)


@register_model
def agent_pvt_medium_256(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-M 256: 36.1M params, 9.2 GMACs, 83.8 top-1."""
    return _create(AgentPVT, "agent_pvt_medium_256", pretrained, dict(_PVT_M, img_size=256), kwargs)


@register_model
def agent_pvt_large(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-L: 48.7M params, 10.4 GMACs, 83.7 top-1."""
    return _create(AgentPVT, "agent_pvt_large", pretrained, _PVT_L, kwargs)


@register_model
def agent_deit_tiny(pretrained: bool = False, **kwargs) -> AgentDeiT:
    """Agent-DeiT-T: 6.0M params, 1.2 GMACs, 74.9 top-1 (49 agents in all 12 blocks)."""
    return _create(AgentDeiT, "agent_deit_tiny", pretrained, _DEIT_T, kwargs, _DEIT_TAPS)


@register_model
def agent_deit_small(pretrained: bool = False, **kwargs) -> AgentDeiT:
    """Agent-DeiT-S: 22.7M params, 4.4 GMACs, 80.5 top-1."""
    return _create(AgentDeiT, "agent_deit_small", pretrained, _DEIT_S, kwargs, _DEIT_TAPS)


@register_model
def agent_deit_small_448(pretrained: bool = False, **kwargs) -> AgentDeiT:
    """Agent-DeiT-S 448: 23.1M params, 17.7 GMACs, 83.1 top-1."""
    return _create(AgentDeiT, "agent_deit_small_448", pretrained, dict(_DEIT_S, img_size=448), kwargs, _DEIT_TAPS)


@register_model
def agent_deit_base(pretrained: bool = False, **kwargs) -> AgentDeiT:
    """Agent-DeiT-B: 87.2M params, 17.6 GMACs, 82.0 top-1 (81 agents in blocks 0-3, DeiT attention after)."""
    return _create(AgentDeiT, "agent_deit_base", pretrained, _DEIT_B, kwargs, _DEIT_TAPS)


@register_model
def agent_swin_tiny(pretrained: bool = False, **kwargs) -> AgentSwin:
    """Agent-Swin-T: 28.9M params, 4.5 GMACs, 82.6 top-1 (agent stages 1-3, W-MSA stage 4)."""
    return _create(AgentSwin, "agent_swin_tiny", pretrained, _SWIN_T, kwargs)


@register_model
def agent_swin_small(pretrained: bool = False, **kwargs) -> AgentSwin:
    """Agent-Swin-S: 49.7M params, 8.7 GMACs, 83.7 top-1 (agent stages 1-2, Swin W7/SW7 stages 3-4)."""
    return _create(AgentSwin, "agent_swin_small", pretrained, _SWIN_S, kwargs)


@register_model
def agent_swin_small_288(pretrained: bool = False, **kwargs) -> AgentSwin:
    """Agent-Swin-S 288: 49.7M params, 14.6 GMACs, 84.1 top-1 (Swin W9/SW9)."""
    return _create(AgentSwin, "agent_swin_small_288", pretrained, dict(_SWIN_S, img_size=288), kwargs)


@register_model
def agent_swin_base(pretrained: bool = False, **kwargs) -> AgentSwin:
    """Agent-Swin-B: 88.1M params, 15.4 GMACs, 84.0 top-1 (agent stages 1-2 and blocks 0-1 of stage 3)."""
    return _create(AgentSwin, "agent_swin_base", pretrained, _SWIN_B, kwargs)


@register_model
def agent_swin_base_384(pretrained: bool = False, **kwargs) -> AgentSwin:
    """Agent-Swin-B 384: 88.3M params, 46.3 GMACs, 84.9 top-1 (Swin W12/SW12)."""
    return _create(AgentSwin, "agent_swin_base_384", pretrained, dict(_SWIN_B, img_size=384), kwargs)


@register_model
def agent_cswin_tiny(pretrained: bool = False, **kwargs) -> AgentCSWin:
    """Agent-CSwin-T: 20.5M params (README "21M"), 4.3 GMACs, 83.1 top-1."""
    return _create(AgentCSWin, "agent_cswin_tiny", pretrained, _CS_T, kwargs)


@register_model
def agent_cswin_small(pretrained: bool = False, **kwargs) -> AgentCSWin:
    """Agent-CSwin-S: 32.8M params, 6.8 GMACs, 83.9 top-1."""
    return _create(AgentCSWin, "agent_cswin_small", pretrained, _CS_S, kwargs)


@register_model
def agent_cswin_base(pretrained: bool = False, **kwargs) -> AgentCSWin:
    """Agent-CSwin-B: 73.3M params, 14.9 GMACs, 84.7 top-1."""
    return _create(AgentCSWin, "agent_cswin_base", pretrained, _CS_B, kwargs)


@register_model
def agent_cswin_base_384(pretrained: bool = False, **kwargs) -> AgentCSWin:
    """Agent-CSwin-B 384 (stripes 1, 2, 12, 12): 73.3M params, 46.3 GMACs, 85.8 top-1."""
    return _create(AgentCSWin, "agent_cswin_base_384", pretrained, dict(_CS_B, split_size=(1, 2, 12, 12), img_size=384, drop_path_rate=0.7), kwargs)
