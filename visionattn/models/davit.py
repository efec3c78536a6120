"""DaViT: dual attention (spatial window + channel group) vision transformers.

Paper:
    Ding, Xiao, Codella, Luo, Wang, Yuan. "DaViT: Dual Attention Vision Transformers". ECCV 2022.
    arXiv:2204.03645
Official code and weights (MIT): github dingmyu/davit (classification model in
``timm/models/davit.py``; weights on Google Drive, README); timm ``models/davit.py``
(``davit_{tiny,small,base}.msft_in1k``: the same weights re-keyed). timm owns the names
``davit_*``, so ours are ``davit_*_va``.

A stage repeats a dual block (Sec. 3.3, Fig. 1): a *spatial* block then a *channel* block. Each is a
:class:`~visionattn.layers.TransformerBlock` with :class:`~visionattn.layers.conv.ConvPosEnc`
before both branches (``pos`` = official ``cpe[0]``, ``pos2`` = ``cpe[1]``), around
:class:`~visionattn.layers.WindowAttention` (block partition, window 7, no position bias,
padded tokens unmasked as upstream) or :class:`~visionattn.layers.channel.ChannelGroupAttention`
(groups = the stage's heads). Stem :class:`~visionattn.layers.conv.ConvLNStem` (7x7 stride 4 +
LN), downsamplers :class:`~visionattn.layers.conv.LNConvDownsample` (LN + 2x2 stride 2), head:
pool -> LayerNorm -> fc (timm ``NormMlpClassifierHead`` without hidden layer; official
``avgpool -> norms -> head``). Any input size (stem, downsamplers and windows pad bottom/right).

Stochastic depth follows the official code: ``linspace(0, rate, 2 * sum(depths))``, one rate per
spatial or channel block (timm gives both blocks of a pair the same rate). Eval outputs are
unaffected.

@inproceedings{ding2022davit, title={DaViT: Dual Attention Vision Transformers},
  author={Ding, Mingyu and Xiao, Bin and Codella, Noel and Luo, Ping and Wang, Jingdong and Yuan, Lu},
  booktitle={ECCV}, year={2022}}
"""
from __future__ import annotations

import re
from functools import partial
from typing import Dict, Sequence

import torch
from torch import nn
from timm.layers import LayerNorm2d, NormMlpClassifierHead
from timm.models import generate_default_cfgs

from ..layers.block import TransformerBlock
from ..layers.channel import ChannelGroupAttention
from ..layers.conv import ConvLNStem, ConvPosEnc, LNConvDownsample
from ..layers.window import WindowAttention
from ._backbone import HierarchicalBackbone, Stage, drop_path_rates, init_weights
from ._manifest import family_cfg, manifest_cfgs
from ._registry import build_model, check_state_dict, register_model, unwrap_state_dict

__all__ = ["DaViT", "checkpoint_filter_fn"]


class DaViT(HierarchicalBackbone):
    """DaViT on the shared hierarchical backbone.

    Args:
        in_chans: image channels; num_classes: classifier outputs (0: none); global_pool: timm pool type.
        embed_dims: channels per stage; depths: dual (spatial + channel) blocks per stage.
        num_heads: spatial heads = channel groups per stage.
        window_size: spatial attention window; mlp_ratio: MLP expansion; qkv_bias: bias in qkv.
        cpe_act: GELU inside ConvPosEnc (off in DaViT).
        down_kernel_size: downsampler kernel (2; Florence-2 uses 3).
        drop_rate: dropout before the classifier; drop_path_rate: stochastic depth (official schedule).

    Shapes: images ``(B, in_chans, H, W)``, ``H, W >= 32``; ``forward_features`` gives
    ``(B, embed_dims[-1], ceil(H/32), ceil(W/32))``; taps: the four stages.

    Raises:
        ValueError: per-stage arguments of different lengths.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (1, 1, 3, 1),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        cpe_act: bool = False,
        down_kernel_size: int = 2,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
    ):
        if not len(embed_dims) == len(depths) == len(num_heads):
            raise ValueError(f"embed_dims, depths and num_heads need one entry per stage; got {embed_dims!r}, {depths!r}, {num_heads!r}")
        # official schedule: one rate per spatial / channel block, linear over all of them
        dpr = drop_path_rates(drop_path_rate, [2 * d for d in depths])

        def block(dim: int, mixer: nn.Module, dp: float) -> TransformerBlock:
            return TransformerBlock(
                dim, mixer, mlp_ratio=mlp_ratio, drop_path=dp, pos=ConvPosEnc(dim, 3, cpe_act), pos2=ConvPosEnc(dim, 3, cpe_act)
            )

        stages = []
        for i, (dim, depth, heads) in enumerate(zip(embed_dims, depths, num_heads)):
            pairs = [
                nn.Sequential(
                    block(dim, WindowAttention(dim, heads, window_size, qkv_bias, partition="block", rel_pos_bias=False, mask_padding=False), dpr[i][2 * j]),
                    block(dim, ChannelGroupAttention(dim, heads, qkv_bias), dpr[i][2 * j + 1]),
                )
                for j in range(depth)
            ]
            down = LNConvDownsample(embed_dims[i - 1], dim, down_kernel_size) if i > 0 else None
            stages.append(Stage(pairs, down))
        head = NormMlpClassifierHead(
            embed_dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate, norm_layer=partial(LayerNorm2d, eps=1e-5)
        )
        super().__init__(
            ConvLNStem(in_chans, embed_dims[0], kernel_size=7, stride=4),
            stages,
            embed_dims,
            [4 * 2**i for i in range(len(depths))],
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            norm_layer=None,
            min_input_size=32,
            head=head,
        )
        self.window_size = window_size
        self.apply(init_weights)


# ------------------------------------------------------------------------------------------------
# Checkpoint conversion

_OFFICIAL_RULES = [
    (r"^patch_embeds\.0\.proj\.", "stem.conv."),
    (r"^patch_embeds\.0\.norm\.", "stem.norm."),
    (r"^patch_embeds\.(\d+)\.proj\.", r"stages.\1.downsample.conv."),
    (r"^patch_embeds\.(\d+)\.norm\.", r"stages.\1.downsample.norm."),
    (r"^main_blocks\.(\d+)\.(\d+)\.([01])\.cpe\.0\.", r"stages.\1.blocks.\2.\3.pos."),
    (r"^main_blocks\.(\d+)\.(\d+)\.([01])\.cpe\.1\.", r"stages.\1.blocks.\2.\3.pos2."),
    (r"^main_blocks\.(\d+)\.(\d+)\.([01])\.((norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias))$", r"stages.\1.blocks.\2.\3.\4"),
    (r"^norms\.", "head.norm."),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
]
_TIMM_RULES = [
    (r"^stages\.(\d+)\.blocks\.(\d+)\.([01])\.cpe1\.", r"stages.\1.blocks.\2.\3.pos."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.([01])\.cpe2\.", r"stages.\1.blocks.\2.\3.pos2."),
]


def _remap(sd: Dict[str, torch.Tensor], rules, passthrough: bool):
    out, unknown = {}, []
    for k, v in sd.items():
        for pat, rep in rules:
            if re.match(pat, k):
                out[re.sub(pat, rep, k)] = v
                break
        else:
            if passthrough:
                out[k] = v
            else:
                unknown.append(k)
    return out, unknown


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: DaViT) -> Dict[str, torch.Tensor]:
    """Convert a DaViT checkpoint to this model's keys, strictly.

    Accepts (a) the official checkpoints of github dingmyu/davit (``patch_embeds.N``,
    ``main_blocks.S.J.{0,1}`` with ``cpe.{0,1}``, ``norms``, ``head``; flat or wrapped under
    ``model``/``state_dict``, ``module.`` prefixes removed), (b) timm ``davit_*`` state dicts
    (``stem``/``stages``, ``cpe1``/``cpe2``), (c) visionattn's own layout. The fused ``qkv``
    weights are taken as they are (same chunk order, see :mod:`visionattn.layers.channel`).

    Raises:
        CheckpointKeyError: unknown, missing or mis-shaped keys (all listed); classifier keys
            may be absent or of another class count.
    """
    sd, _ = unwrap_state_dict(state_dict)
    if any(k.startswith(("patch_embeds.", "main_blocks.")) for k in sd):
        out, unknown = _remap(sd, _OFFICIAL_RULES, passthrough=False)
        source = "official DaViT checkpoint"
    else:
        out, unknown = _remap(sd, _TIMM_RULES, passthrough=True)
        source = "timm/visionattn DaViT checkpoint"
    check_state_dict(out, model, unknown=unknown, source=source)
    return out


# ------------------------------------------------------------------------------------------------
# Pretrained configs: generated from the manifest (visionattn/models/pretrained.yaml): the official
# weights (Google Drive pages of dingmyu/davit, not direct downloads, in ``official_urls``) loaded
# from timm's Hub copies and converted by checkpoint_filter_fn; L/H/G have no released weights.

_ORIGIN = "https://github.com/dingmyu/davit"


_cfg = family_cfg(
    min_input_size=(3, 32, 32),  # smallest image side the model accepts (plain models: 16, per tag)
    crop_pct=0.95,
    first_conv="stem.conv",
    license="mit",
    origin_url=_ORIGIN,
    paper_ids="arXiv:2204.03645",
    paper_name="DaViT: Dual Attention Vision Transformers",
)


default_cfgs = generate_default_cfgs(manifest_cfgs("davit", _cfg))


# ------------------------------------------------------------------------------------------------
# Variants (dingmyu/davit ``DaViT_{tiny,small,base,large_window12_384}``; timm ``davit_*``)

_TINY = dict(depths=(1, 1, 3, 1), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
_SMALL = dict(depths=(1, 1, 9, 1), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24))
_BASE = dict(depths=(1, 1, 9, 1), embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32))
_LARGE = dict(depths=(1, 1, 9, 1), embed_dims=(192, 384, 768, 1536), num_heads=(6, 12, 24, 48))
_HUGE = dict(depths=(1, 1, 9, 1), embed_dims=(256, 512, 1024, 2048), num_heads=(8, 16, 32, 64))
_GIANT = dict(depths=(1, 1, 12, 3), embed_dims=(384, 768, 1536, 3072), num_heads=(12, 24, 48, 96))


def _create(variant: str, pretrained: bool, defaults: Dict, kwargs: Dict) -> DaViT:
    return build_model(DaViT, variant, pretrained, checkpoint_filter_fn, defaults, kwargs)


@register_model
def davit_tiny_va(pretrained: bool = False, **kwargs) -> DaViT:
    """DaViT-T: 28.4M params, 4.5 GMACs, 82.8 top-1 (official)."""
    return _create("davit_tiny_va", pretrained, _TINY, kwargs)


@register_model
def davit_small_va(pretrained: bool = False, **kwargs) -> DaViT:
    """DaViT-S: 49.7M params, 8.8 GMACs, 84.2 top-1."""
    return _create("davit_small_va", pretrained, _SMALL, kwargs)


@register_model
def davit_base_va(pretrained: bool = False, **kwargs) -> DaViT:
    """DaViT-B: 88.0M params, 15.5 GMACs, 84.6 top-1."""
    return _create("davit_base_va", pretrained, _BASE, kwargs)


@register_model
def davit_large_va(pretrained: bool = False, **kwargs) -> DaViT:
    """DaViT-L (window 7 at 224): 196.8M params, 34.6 GMACs; no released weights."""
    return _create("davit_large_va", pretrained, _LARGE, kwargs)


@register_model
def davit_huge_va(pretrained: bool = False, **kwargs) -> DaViT:
    """DaViT-H: 348.9M params, 61.2 GMACs; no released weights."""
    return _create("davit_huge_va", pretrained, _HUGE, kwargs)


@register_model
def davit_giant_va(pretrained: bool = False, **kwargs) -> DaViT:
    """DaViT-G: 1406.5M params, 192.9 GMACs; no released weights."""
    return _create("davit_giant_va", pretrained, _GIANT, kwargs)
