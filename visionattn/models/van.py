"""VAN: Visual Attention Network (large-kernel attention, LKA).

Paper: Guo, Lu, Liu, Cheng, Hu. "Visual Attention Network". Computational Visual Media 9(4),
2023, arXiv:2202.09741 (Sec. 3, Table 2 for the variants). Official code and weights (Apache-2.0):
github Visual-Attention-Network/VAN-Classification ``models/van.py`` (B0-B6 defined; ImageNet-1k
weights released for B0-B3 on Hugging Face, Google Drive and TsinghuaCloud).

The macro-architecture is PVTv2's: four stages at strides 4, 8, 16, 32, each an overlapping
patch embedding (7x7 stride 4 then 3x3 stride 2 convolutions with bias, BatchNorm), blocks, and a
LayerNorm (eps 1e-6) that ends the stage. A block is the zoo's
:class:`~visionattn.layers.TransformerBlock` with

* ``norm_layer`` BatchNorm (:class:`~visionattn.layers.lka.BatchNormNHWC`, eps 1e-5),
* the mixer :class:`~visionattn.layers.lka.LargeKernelAttention` (1x1, GELU, LKA = 5x5 depthwise
  -> 7x7 depthwise dilation 3 -> 1x1, multiplied with its input, 1x1, plus its own shortcut),
* the MLP :class:`~visionattn.layers.lka.DWConvMlp` (1x1, 3x3 depthwise, GELU, 1x1; ratio 8, 8, 4, 4),
* layer scale 1e-2 on both branches.

The stage-end LayerNorm is the shared :class:`~visionattn.models._backbone.Stage`'s ``norm``,
so the feature taps (``features_only``, ``forward_intermediates``) are the normalised stage
outputs, as the official segmentation/detection backbones hand them out; the last stage's norm is
the final norm (the backbone adds none). Head: global average pool + Linear.

Quirks of the official code, reproduced:

* the mixer adds its own input (``x + proj_2(...)``) and the block adds the residual again, so
  the attention branch is ``x + ls1 * (BN(x) + proj_2(LKA(GELU(proj_1(BN(x))))))``;
* the per-stage LayerNorm sits *in* the main path (between every stage), not only on the taps;
* the depthwise conv of the MLP sits before the activation;
* ``drop_rate`` of the official ``VAN`` is the MLP dropout (``proj_drop_rate`` here; ours
  ``drop_rate`` is the classifier dropout, timm's meaning; both 0 in every recipe).

Layout: NHWC tokens between and inside the blocks, as every family of the zoo. The 1x1
convolutions are ``nn.Linear`` on the channel dimension; the depthwise convolutions and BatchNorm
run on the NCHW view of the same memory (channels-last), so no copy is made between ops. NCHW inside
the family was not needed: on CPU this layout is 6-30 % faster than the official NCHW code (VAN-B0,
inference and training, 224 and 800x1216; ``benchmarks/results/models_vs_baselines.md``).

Any input size: every convolution pads "same"-style, so the maps are ``ceil(H / 4)``, ... ,
``ceil(H / 32)`` with no padding or masking needed; the zoo's minimum of 32 px applies.

@article{guo2023visual, title={Visual Attention Network}, author={Guo, Meng-Hao and Lu, Cheng-Ze
  and Liu, Zheng-Ning and Cheng, Ming-Ming and Hu, Shi-Min}, journal={Computational Visual Media},
  volume={9}, number={4}, pages={733--752}, year={2023}}
"""
from __future__ import annotations

import math
import re
from typing import Dict, Mapping, Sequence

import torch
from torch import nn
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs

from ..layers.block import TransformerBlock
from ..layers.conv import ConvDownsampler, ConvLNStem
from ..layers.lka import BatchNormNHWC, DWConvMlp, LargeKernelAttention
from ._backbone import HierarchicalBackbone, Stage, drop_path_rates, per_stage
from ._manifest import family_cfg, manifest_cfgs
from ._registry import build_model, check_state_dict, register_model, unwrap_state_dict

__all__ = ["VAN", "checkpoint_filter_fn"]


class VAN(HierarchicalBackbone):
    """Visual Attention Network on the shared hierarchical backbone.

    Args:
        in_chans: image channels; num_classes: classifier outputs (0: none); global_pool: timm pool type.
        embed_dims: channels per stage; depths: blocks per stage; mlp_ratios: MLP expansion per stage.
        kernel_size, dilation: the LKA decomposition (21, 3: 5x5 depthwise, 7x7 dilation 3, 1x1).
        layer_scale_init_value: initial layer scale of both branches (1e-2).
        drop_rate: dropout before the classifier (none officially).
        proj_drop_rate: dropout inside the MLP (the official ``drop_rate``).
        drop_path_rate: stochastic depth, ``linspace(0, rate, sum(depths))``.

    Shapes: images ``(B, in_chans, H, W)``, ``H, W >= 32``; ``forward_features`` gives
    ``(B, embed_dims[-1], ceil(H/32), ceil(W/32))``; taps: the four (normalised) stage outputs at
    strides 4, 8, 16, 32.

    Raises:
        ValueError: per-stage arguments of different lengths, or an LKA decomposition with an even
            dilated kernel.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        kernel_size: int = 21,
        dilation: int = 3,
        layer_scale_init_value: float = 1e-2,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        n = len(depths)
        embed_dims = per_stage(embed_dims, n, "embed_dims")
        mlp_ratios = per_stage(mlp_ratios, n, "mlp_ratios")
        dpr = drop_path_rates(drop_path_rate, depths)
        stages = []
        for i in range(n):
            dim = embed_dims[i]
            blocks = [
                TransformerBlock(
                    dim,
                    LargeKernelAttention(dim, kernel_size, dilation),
                    mlp_ratio=mlp_ratios[i],
                    drop_path=dpr[i][j],
                    layer_scale=layer_scale_init_value,
                    norm_layer=BatchNormNHWC,
                    mlp_drop=proj_drop_rate,
                    mlp_layer=DWConvMlp,
                )
                for j in range(depths[i])
            ]
            down = ConvDownsampler(embed_dims[i - 1], dim, norm_layer=BatchNormNHWC, bias=True) if i > 0 else None
            stages.append(Stage(blocks, down, norm=nn.LayerNorm(dim, eps=1e-6)))
        super().__init__(
            ConvLNStem(in_chans, embed_dims[0], kernel_size=7, stride=4, norm_layer=BatchNormNHWC),
            stages,
            embed_dims,
            [4 * 2**i for i in range(n)],
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            norm_layer=None,  # the last stage's LayerNorm is the final norm
            min_input_size=32,
            no_weight_decay_keywords=(),
        )
        self.apply(_init_weights)
        _init_head(self)


def _init_weights(m: nn.Module) -> None:
    """The official init: convolutions (1x1 ones included, here ``Linear``) ``N(0, sqrt(2 / fan_out))``
    with ``fan_out = k*k*C_out / groups``, zero bias; the classifier trunc-normal (std .02);
    LayerNorm 1 / 0; BatchNorm PyTorch's default (1 / 0)."""
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        # every Linear below the head is an official 1x1 conv; the head is re-initialised by _init_head
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.out_features))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _init_head(model: HierarchicalBackbone) -> None:
    """The official classifier init: trunc-normal (std .02), zero bias."""
    fc = model.head.fc
    if isinstance(fc, nn.Linear):
        trunc_normal_(fc.weight, std=0.02)
        nn.init.zeros_(fc.bias)


# ------------------------------------------------------------------------------------------------
# Checkpoint conversion

_BLOCK = r"^block(\d)\.(\d+)\."
_OFFICIAL_RULES = [
    (r"^patch_embed1\.proj\.", "stem.conv."),
    (r"^patch_embed1\.norm\.", "stem.norm.bn."),
    (r"^patch_embed(\d)\.proj\.", "{s}.downsample.reduction."),
    (r"^patch_embed(\d)\.norm\.", "{s}.downsample.norm.bn."),
    (r"^norm(\d)\.", "{s}.norm."),
    (_BLOCK + r"norm([12])\.", "{b}.norm{g}.bn."),
    (_BLOCK + r"layer_scale_([12])$", "{b}.ls{g}.gamma"),
    (_BLOCK + r"attn\.proj_([12])\.", "{b}.attn.proj_{g}."),
    (_BLOCK + r"attn\.spatial_gating_unit\.(conv0|conv_spatial|conv1)\.", "{b}.attn.lka.{g}."),
    (_BLOCK + r"mlp\.(fc1|fc2)\.", "{b}.mlp.{g}."),
    (_BLOCK + r"mlp\.dwconv\.dwconv\.", "{b}.mlp.dwconv."),
    (r"^head\.", "head.fc."),
]


_LINEAR = re.compile(r"\.(attn\.proj_[12]|attn\.lka\.conv1|mlp\.fc[12])\.weight$")


def _official_to_ours(sd: Mapping[str, torch.Tensor]):
    out, unknown = {}, []
    for k, v in sd.items():
        for pat, rep in _OFFICIAL_RULES:
            m = re.match(pat, k)
            if m is None:
                continue
            g = m.groups()
            if pat.startswith(_BLOCK):
                new = rep.format(b=f"stages.{int(g[0]) - 1}.blocks.{g[1]}", g=g[2] if len(g) > 2 else "")
            else:
                new = rep.format(s=f"stages.{int(g[0]) - 1}" if g else "")
            new += k[m.end():]
            if _LINEAR.search(new) and v.dim() == 4:
                v = v.flatten(1)  # an official 1x1 convolution (C_out, C_in, 1, 1): ours is a Linear
            out[new] = v
            break
        else:
            unknown.append(k)
    return out, unknown


def checkpoint_filter_fn(state_dict: Mapping, model: VAN) -> Dict[str, torch.Tensor]:
    """Convert a VAN checkpoint to this model's keys, strictly.

    Accepts the official files of Visual-Attention-Network/VAN-Classification (timm 0.4 training
    checkpoints: weights under ``state_dict``, the key the official ``load_model_weights`` reads;
    ``model`` or flat dicts and ``module.`` prefixes too) and visionattn's own layout.

    Official -> ours: ``patch_embed1.{proj,norm}`` -> ``stem.{conv,norm.bn}``;
    ``patch_embed{i}.{proj,norm}`` -> ``stages.{i-1}.downsample.{reduction,norm.bn}``;
    ``block{i}.{j}`` -> ``stages.{i-1}.blocks.{j}`` with ``norm{1,2}`` -> ``norm{1,2}.bn``,
    ``layer_scale_{1,2}`` -> ``ls{1,2}.gamma``, ``attn.spatial_gating_unit`` -> ``attn.lka``,
    ``mlp.dwconv.dwconv`` -> ``mlp.dwconv``; ``norm{i}`` -> ``stages.{i-1}.norm``; ``head`` ->
    ``head.fc``. The 1x1 convolution weights ``(C_out, C_in, 1, 1)`` of ``proj_1``, ``proj_2``,
    ``conv1``, ``fc1``, ``fc2`` become ``Linear`` weights ``(C_out, C_in)``. BatchNorm buffers
    (running statistics, ``num_batches_tracked``) are kept.

    Raises:
        CheckpointKeyError: unknown, missing or mis-shaped keys (all listed); classifier keys may
            be absent or of another class count.
    """
    sd, key = unwrap_state_dict(state_dict)
    if any(re.match(r"^(patch_embed\d|block\d)\.", k) for k in sd):
        out, unknown = _official_to_ours(sd)
        source = f"official VAN checkpoint ({key or 'flat state dict'})"
    else:
        out, unknown = sd, []
        source = "visionattn VAN checkpoint"
    check_state_dict(out, model, unknown=unknown, source=source)
    return out


# ------------------------------------------------------------------------------------------------
# Pretrained configs: generated from the manifest (visionattn/models/pretrained.yaml)

_ORIGIN = "https://github.com/Visual-Attention-Network/VAN-Classification"

_cfg = family_cfg(
    min_input_size=(3, 32, 32),
    crop_pct=0.9,  # the official validate.py: timm 0.4 ``_cfg()`` of vision_transformer (0.9, bicubic)
    first_conv="stem.conv",
    license="apache-2.0",
    origin_url=_ORIGIN,
    paper_ids="arXiv:2202.09741",
    paper_name="Visual Attention Network",
)

default_cfgs = generate_default_cfgs(manifest_cfgs("van", _cfg))


# ------------------------------------------------------------------------------------------------
# Variants (VAN-Classification ``models/van.py`` ``van_b0`` ... ``van_b6``; paper Table 2)

_S = dict(mlp_ratios=(8, 8, 4, 4))
_B0 = dict(_S, embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), drop_path_rate=0.1)
_B1 = dict(_S, embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), drop_path_rate=0.1)
_B2 = dict(_S, embed_dims=(64, 128, 320, 512), depths=(3, 3, 12, 3), drop_path_rate=0.1)
_B3 = dict(_S, embed_dims=(64, 128, 320, 512), depths=(3, 5, 27, 3), drop_path_rate=0.2)
_B4 = dict(_S, embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3), drop_path_rate=0.2)
_B5 = dict(_S, embed_dims=(96, 192, 480, 768), depths=(3, 3, 24, 3), drop_path_rate=0.2)
_B6 = dict(_S, embed_dims=(96, 192, 384, 768), depths=(6, 6, 90, 6), drop_path_rate=0.3)


def _create(variant: str, pretrained: bool, defaults: Dict, kwargs: Dict) -> VAN:
    return build_model(VAN, variant, pretrained, checkpoint_filter_fn, defaults, kwargs)


@register_model
def van_b0(pretrained: bool = False, **kwargs) -> VAN:
    """VAN-B0: 4.1M params, 0.9 GMACs, 75.4 top-1 (official README)."""
    return _create("van_b0", pretrained, _B0, kwargs)


@register_model
def van_b1(pretrained: bool = False, **kwargs) -> VAN:
    """VAN-B1: 13.9M params, 2.5 GMACs, 81.1 top-1."""
    return _create("van_b1", pretrained, _B1, kwargs)


@register_model
def van_b2(pretrained: bool = False, **kwargs) -> VAN:
    """VAN-B2: 26.6M params, 5.0 GMACs, 82.8 top-1."""
    return _create("van_b2", pretrained, _B2, kwargs)


@register_model
def van_b3(pretrained: bool = False, **kwargs) -> VAN:
    """VAN-B3: 44.8M params, 9.0 GMACs, 83.9 top-1."""
    return _create("van_b3", pretrained, _B3, kwargs)


@register_model
def van_b4(pretrained: bool = False, **kwargs) -> VAN:
    """VAN-B4: 60.3M params, 12.2 GMACs, 84.2 top-1 (paper); no ImageNet-1k weights in the official README."""
    return _create("van_b4", pretrained, _B4, kwargs)


@register_model
def van_b5(pretrained: bool = False, **kwargs) -> VAN:
    """VAN-B5 (official ``van_b5`` config); no released ImageNet-1k classifier weights."""
    return _create("van_b5", pretrained, _B5, kwargs)


@register_model
def van_b6(pretrained: bool = False, **kwargs) -> VAN:
    """VAN-B6 (official ``van_b6`` config); no released ImageNet-1k classifier weights."""
    return _create("van_b6", pretrained, _B6, kwargs)
