"""CrossFormer and CrossFormer++: cross-scale embeddings and long/short distance attention.

Papers:
    Wang, Yao, Chen, Lin, Cai, He, Liu. "CrossFormer: A Versatile Vision Transformer Hinging on
    Cross-scale Attention". ICLR 2022. arXiv:2108.00154
    Wang, Chen, Qiu, Chen, Wu, Lin, He, Liu. "CrossFormer++: A Versatile Vision Transformer
    Hinging on Cross-scale Attention". IEEE TPAMI 2023. arXiv:2303.06908
Official code and weights (MIT): github cheerss/CrossFormer (``models/crossformer.py``,
``configs/crossformer/*.yaml``, ``configs/crossformer_pp/*.yaml``; the ``crossformer`` branch
keeps the ICLR code the CrossFormer-T/S/B/L weights were trained with).

The family is a composition of shared parts:

* stem and downsamplers: :class:`~visionattn.layers.conv.CrossScaleEmbed` (the cross-scale
  embedding layer, CEL: kernels 4/8/16/32 at stride 4, then 2/4 at stride 2, concatenated);
* blocks: :class:`~visionattn.layers.TransformerBlock` around
  :class:`~visionattn.layers.WindowAttention`, alternating short-distance attention (SDA:
  ``'block'`` groups of ``G x G`` adjacent tokens) and long-distance attention (LDA:
  ``'dilated'`` groups of ``G x G`` tokens ``I`` apart), both with the dynamic position bias
  (DPB, ``dynamic_pos_bias=True``) and CrossFormer's rule that a map no larger than a group along
  a side is one group (``fit_map=True``);
* CrossFormer++ adds the progressive group size (PGS: per-stage ``G`` 4/4/14/7 with intervals
  4/2/1/1 instead of 7 everywhere with 8/4/2/1) and the activation cooling layer (ACL,
  :class:`~visionattn.layers.conv.ActivationCooling`) after every third block of a stage except
  the last block; here it is the ``pos`` module (applied first, no residual) of the next block.

Any input size >= 32 px: maps not divisible by ``G`` (SDA) or ``G * I`` (LDA) are padded
bottom/right inside the mixer and padded keys are masked, as the official code does (its masks
are built for the training size; ours for each input). The official classification model accepts
only the size it was built for; at that size (any size for square inputs) outputs are equal.
Two documented differences from the official code, both outside the sizes it runs: a rectangular
map with ``min(H, W) <= G`` is one ``H x W`` group (the official detection backbone's rule; the
classification code only builds square maps), and images / maps that are not multiples of the
stride are zero-padded bottom/right before the cross-scale convs, giving ``ceil(H / 4)`` and
``ceil(H / 2)`` as every family of the zoo (the official merging asserts even maps).

@inproceedings{wang2021crossformer, title={CrossFormer: A Versatile Vision Transformer Hinging on
  Cross-scale Attention}, author={Wang, Wenxiao and Yao, Lu and Chen, Long and Lin, Binbin and Cai,
  Deng and He, Xiaofei and Liu, Wei}, booktitle={ICLR}, year={2022}}
@article{wang2023crossformer++, title={CrossFormer++: A Versatile Vision Transformer Hinging on
  Cross-scale Attention}, author={Wang, Wenxiao and Chen, Wei and Qiu, Qibo and Chen, Long and Wu,
  Boxi and Lin, Binbin and He, Xiaofei and Liu, Wei}, journal={IEEE TPAMI}, year={2023}}
"""
from __future__ import annotations

import re
from typing import Dict, Sequence, Tuple, Union

import torch
from torch import nn
from timm.models import generate_default_cfgs

from ..layers.block import TransformerBlock
from ..layers.conv import ActivationCooling, CrossScaleEmbed
from ..layers.window import WindowAttention
from ._backbone import HierarchicalBackbone, Stage, drop_path_rates, init_weights, per_stage
from ._manifest import family_cfg, manifest_cfgs
from ._registry import build_model, check_state_dict, register_model, unwrap_state_dict

__all__ = ["CrossFormer", "checkpoint_filter_fn"]


def crossformer_block(
    dim: int,
    num_heads: int,
    group_size: int,
    interval: int,
    long_distance: bool,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    drop_path: float = 0.0,
    cooling: bool = False,
    proj_drop: float = 0.0,
    attn_drop: float = 0.0,
) -> TransformerBlock:
    """One CrossFormer block: SDA (``long_distance=False``) or LDA with DPB, then the MLP;
    ``cooling=True`` puts an :class:`ActivationCooling` before it (the previous block's ACL)."""
    attn = WindowAttention(
        dim,
        num_heads,
        group_size,
        qkv_bias=qkv_bias,
        proj_drop=proj_drop,
        attn_drop=attn_drop,
        partition="dilated" if long_distance else "block",
        interval=interval if long_distance else 0,
        rel_pos_bias=False,
        dynamic_pos_bias=True,
        fit_map=True,
        mask_padding=True,
    )
    return TransformerBlock(
        dim, attn, mlp_ratio=mlp_ratio, drop_path=drop_path, mlp_drop=proj_drop, pos=ActivationCooling(dim) if cooling else None
    )


class CrossFormer(HierarchicalBackbone):
    """CrossFormer / CrossFormer++ on the shared hierarchical backbone.

    Args:
        img_size: accepted for timm's factory (the model runs at any size >= 32 px).
        in_chans: image channels; num_classes: classifier outputs (0: none); global_pool: timm pool type.
        embed_dim: channels of stage 1 (doubling per stage); depths: blocks per stage;
        num_heads: heads per stage.
        group_size: ``G`` per stage; interval: LDA interval ``I`` per stage.
        mlp_ratio: MLP width ratio (scalar or per stage).
        patch_kernels: kernels of the stem's CEL (stride 4); merge_kernels: kernels of each
            downsampler's CEL (stride 2; one sequence for all, or one per downsampler).
        qkv_bias: bias in ``qkv``.
        activation_cooling: CrossFormer++'s ACL after blocks 3, 6, ... of a stage (not the last).
        drop_rate: dropout before the classifier and inside the blocks (attention output and MLP;
            ``DROP_RATE`` of the official code, 0 in every released model).
        attn_drop_rate: attention dropout; drop_path_rate: stochastic depth, linear over all blocks.

    Shapes: images ``(B, in_chans, H, W)``, ``H, W >= 32``; ``forward_features`` gives
    ``(B, 8 * embed_dim, ceil(H / 32), ceil(W / 32))``;
    taps: the four stages (strides 4, 8, 16, 32).

    Raises:
        ValueError: per-stage arguments of the wrong length; channels not divisible by heads.
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        group_size: Union[int, Sequence[int]] = 7,
        interval: Sequence[int] = (8, 4, 2, 1),
        mlp_ratio: Union[float, Sequence[float]] = 4.0,
        patch_kernels: Sequence[int] = (4, 8, 16, 32),
        merge_kernels: Sequence = (2, 4),
        qkv_bias: bool = True,
        activation_cooling: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
    ):
        n = len(depths)
        num_heads = per_stage(num_heads, n, "num_heads")
        group_size = per_stage(group_size, n, "group_size")
        interval = per_stage(interval, n, "interval")
        mlp_ratio = per_stage(mlp_ratio, n, "mlp_ratio")
        if merge_kernels and isinstance(merge_kernels[0], int):
            merge_kernels = [tuple(merge_kernels)] * (n - 1)
        if len(merge_kernels) != n - 1:
            raise ValueError(f"merge_kernels must have one entry per downsampler ({n - 1}); got {merge_kernels!r}")
        dims = [embed_dim * 2**i for i in range(n)]
        dpr = drop_path_rates(drop_path_rate, depths)
        stages = []
        for i in range(n):
            blocks = [
                crossformer_block(
                    dims[i], num_heads[i], group_size[i], interval[i], long_distance=j % 2 == 1, mlp_ratio=mlp_ratio[i],
                    qkv_bias=qkv_bias, drop_path=dpr[i][j], cooling=activation_cooling and j > 0 and j % 3 == 0,
                    proj_drop=drop_rate, attn_drop=attn_drop_rate,
                )
                for j in range(depths[i])
            ]
            down = CrossScaleEmbed(dims[i - 1], dims[i], merge_kernels[i - 1], stride=2, position="downsample") if i else None
            stages.append(Stage(blocks, down))
        super().__init__(
            CrossScaleEmbed(in_chans, embed_dim, patch_kernels, stride=4, position="stem"),
            stages,
            dims,
            [4 * 2**i for i in range(n)],
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            min_input_size=32,
            no_weight_decay_keywords=(),
        )
        self.apply(init_weights)


# ------------------------------------------------------------------------------------------------
# Checkpoint conversion

_RULES = (
    (r"^patch_embed\.projs\.(\d+)\.", r"stem.convs.\1."),
    (r"^patch_embed\.norm\.", r"stem.norm."),
    (r"\.attn\.pos\.pos_proj\.", r".attn.dpb.proj."),
    (r"^head\.", r"head.fc."),
)
# buffers the official code derives (ICLR-branch checkpoints saved them; the TPAMI code does not)
_DERIVED = ("attn.biases", "attn.relative_position_index", "attn_mask")


def _convert_key(k: str):
    """Our key for one official key (None: a derived buffer); stage/block indices per the module docstring."""
    if k.endswith(_DERIVED):
        return None
    for pat, rep in _RULES:
        k = re.sub(pat, rep, k)
    k = re.sub(r"\.attn\.pos\.pos(\d)\.", lambda m: f".attn.dpb.layers.{int(m.group(1)) - 1}.", k)
    m = re.match(r"^layers\.(\d+)\.downsample\.(norm|reductions)\.(.*)$", k)
    if m:  # the official stage i ends with the merge that our stage i + 1 starts with
        part = "norm" if m.group(2) == "norm" else "convs"
        return f"stages.{int(m.group(1)) + 1}.downsample.{part}.{m.group(3)}"
    m = re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.ex_(conv|ln)\.(.*)$", k)
    if m:  # block j's ACL is block j + 1's ``pos``
        part = "conv" if m.group(3) == "conv" else "norm"
        return f"stages.{m.group(1)}.blocks.{int(m.group(2)) + 1}.pos.{part}.{m.group(4)}"
    return re.sub(r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks.", k)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: CrossFormer) -> Dict[str, torch.Tensor]:
    """Convert an official CrossFormer / CrossFormer++ state dict (or our own) to this model's keys, strictly.

    Official -> ours: ``patch_embed.projs.i`` -> ``stem.convs.i``, ``patch_embed.norm`` ->
    ``stem.norm``; ``layers.s.blocks.j.*`` -> ``stages.s.blocks.j.*`` with ``attn.pos.pos_proj``
    -> ``attn.dpb.proj`` and ``attn.pos.pos{1,2,3}.*`` -> ``attn.dpb.layers.{0,1,2}.*``;
    ``layers.s.blocks.j.ex_{conv,ln}`` (ACL) -> ``stages.s.blocks.(j+1).pos.{conv,norm}``;
    ``layers.s.downsample.{norm,reductions.i}`` -> ``stages.(s+1).downsample.{norm,convs.i}``;
    ``norm`` -> ``norm``; ``head`` -> ``head.fc``. Derived buffers the ICLR-branch checkpoints
    contain (``attn.biases``, ``attn.relative_position_index``) are dropped. Wrapped checkpoints
    (``model`` / ``state_dict``) and ``module.`` prefixes are accepted.

    Raises:
        CheckpointKeyError: unknown, missing or mis-shaped keys (all listed); classifier keys
            may be absent or of another class count.
    """
    sd, _ = unwrap_state_dict(state_dict)
    if any(k.startswith(("stem.", "stages.")) for k in sd):  # already ours
        check_state_dict(sd, model, source="CrossFormer checkpoint")
        return sd
    out: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        nk = _convert_key(k)
        if nk is not None:
            out[nk] = v
    check_state_dict(out, model, source="CrossFormer checkpoint")
    return out


# ------------------------------------------------------------------------------------------------
# Pretrained configs: generated from the manifest (visionattn/models/pretrained.yaml)

_cfg = family_cfg(
    min_input_size=(3, 32, 32),
    crop_pct=0.875,
    first_conv=("stem.convs.0", "stem.convs.1", "stem.convs.2", "stem.convs.3"),
    fixed_input_size=False,
    license="mit",
    origin_url="https://github.com/cheerss/CrossFormer",
    paper_ids="arXiv:2108.00154",
    paper_name="CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention",
)

default_cfgs = generate_default_cfgs(manifest_cfgs("crossformer", _cfg))


# ------------------------------------------------------------------------------------------------
# Variants (cheerss/CrossFormer configs/crossformer/*_patch4_group7_224.yaml and
# configs/crossformer_pp/*_patch4_group_const_224.yaml; config.py defaults: kernels 4/8/16/32 and
# 2/4, MLP ratio 4, qkv bias, intervals 8/4/2/1)

_CF = dict(group_size=7, interval=(8, 4, 2, 1))
_PP = dict(group_size=(4, 4, 14, 7), interval=(4, 2, 1, 1), activation_cooling=True)
_VARIANTS = {
    "crossformer_tiny": dict(_CF, embed_dim=64, depths=(1, 1, 8, 6), num_heads=(2, 4, 8, 16), drop_path_rate=0.1),
    "crossformer_small": dict(_CF, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "crossformer_base": dict(_CF, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    "crossformer_large": dict(_CF, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    "crossformerpp_small": dict(_PP, embed_dim=64, depths=(2, 2, 18, 2), num_heads=(2, 4, 8, 16), drop_path_rate=0.2),
    "crossformerpp_base": dict(_PP, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    "crossformerpp_large": dict(_PP, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    "crossformerpp_huge": dict(_PP, embed_dim=128, depths=(6, 6, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
}


def _create(variant: str, pretrained: bool, kwargs: Dict) -> CrossFormer:
    return build_model(CrossFormer, variant, pretrained, checkpoint_filter_fn, _VARIANTS[variant], kwargs)


@register_model
def crossformer_tiny(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer-T: 27.8M params, 2.9 GFLOPs, 81.5 top-1 (official README)."""
    return _create("crossformer_tiny", pretrained, kwargs)


@register_model
def crossformer_small(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer-S: 30.7M params, 4.9 GFLOPs, 82.5 top-1."""
    return _create("crossformer_small", pretrained, kwargs)


@register_model
def crossformer_base(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer-B: 52.0M params, 9.2 GFLOPs, 83.4 top-1."""
    return _create("crossformer_base", pretrained, kwargs)


@register_model
def crossformer_large(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer-L: 92.0M params, 16.1 GFLOPs, 84.0 top-1."""
    return _create("crossformer_large", pretrained, kwargs)


@register_model
def crossformerpp_small(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer++-S: 23.3M params, 4.9 GFLOPs (README; the released code counts 4.39 with its flops(), 4.45 with fvcore, ours 4.42), 83.2 top-1."""
    return _create("crossformerpp_small", pretrained, kwargs)


@register_model
def crossformerpp_base(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer++-B: 52.0M params, 9.5 GFLOPs, 84.2 top-1."""
    return _create("crossformerpp_base", pretrained, kwargs)


@register_model
def crossformerpp_large(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer++-L: 92.0M params, 16.6 GFLOPs, 84.7 top-1."""
    return _create("crossformerpp_large", pretrained, kwargs)


@register_model
def crossformerpp_huge(pretrained: bool = False, **kwargs) -> CrossFormer:
    """CrossFormer++-H: 96.0M params, 21.8 GFLOPs, 84.9 top-1."""
    return _create("crossformerpp_huge", pretrained, kwargs)
