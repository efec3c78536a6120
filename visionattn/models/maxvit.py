"""MaxViT: multi-axis (block + grid) attention with MBConv, the TensorFlow-released models.

Paper:
    Tu, Talebi, Zhang, Yang, Milanfar, Bovik, Li. "MaxViT: Multi-Axis Vision Transformer".
    ECCV 2022. arXiv:2204.01697
Official code and weights (TensorFlow, Apache-2.0): github google-research/maxvit
(``maxvit/models/maxvit.py``, ``hp/vision.py``); PyTorch ports of those weights: timm
``maxvit_{tiny,small,base,large,xlarge}_tf_{224,384,512}`` (``models/maxxvit.py``, ``_tf_cfg()``),
whose state dicts :func:`checkpoint_filter_fn` converts.

A MaxViT block (Fig. 2, Sec. 3.3) is a composition of shared parts:
:class:`~visionattn.layers.conv.MBConv` (``conv``), then two pre-norm
:class:`~visionattn.layers.TransformerBlock` s around one
:class:`~visionattn.layers.WindowAttention` mixer, with the block partition (``attn_block``) and
then the grid partition (``attn_grid``). Window = grid = ``img_size // 32`` (7/12/16 at 224/384/512),
heads = channels / 32, MLP ratio 4, GELU (tanh) everywhere, BatchNorm eps 1e-3, LayerNorm eps 1e-5.
The first block of each stage strides its MBConv (no separate downsampler); the stem is
:class:`~visionattn.layers.conv.ConvBNStem`; the head pools, LayerNorms, applies
``Linear(C, C) + tanh`` and classifies (timm ``NormMlpClassifierHead``; official
``final_layer_norm`` -> ``inner_dense`` -> ``logit_dense``).

Any input size: every conv and pool uses TF "same" padding (``ceil`` sizes), and maps not divisible
by the window/grid are padded inside the mixer with padded keys masked (upstream asserts
divisibility, google-research/maxvit#10). Where timm runs (every map divisible), outputs equal timm's.

@article{tu2022maxvit, title={MaxViT: Multi-Axis Vision Transformer},
  author={Tu, Zhengzhong and Talebi, Hossein and Zhang, Han and Yang, Feng and Milanfar, Peyman
  and Bovik, Alan and Li, Yinxiao}, journal={ECCV}, year={2022}}
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Dict, Sequence, Tuple, Union

import torch
from torch import nn
from timm.layers import LayerNorm2d, NormMlpClassifierHead, get_act_layer, to_2tuple
from timm.models import generate_default_cfgs

from ..layers.block import TransformerBlock
from ..layers.conv import ConvBNStem, MBConv
from ..layers.pos import resize_rel_pos_table
from ..layers.window import WindowAttention
from ._backbone import HierarchicalBackbone, Stage, drop_path_rates, init_weights
from ._manifest import family_cfg, manifest_cfgs
from ._registry import build_model, check_state_dict, register_model, unwrap_state_dict

__all__ = ["MaxViT", "checkpoint_filter_fn"]


class MaxViT(HierarchicalBackbone):
    """MaxViT (TF-released configuration) on the shared hierarchical backbone.

    Args:
        img_size: training resolution; sets window = grid = ``img_size // partition_ratio``
            unless ``window_size`` is given (any input size runs regardless).
        in_chans: image channels; num_classes: classifier outputs (0: none); global_pool: timm pool type.
        embed_dim: channels per stage; depths: MaxViT blocks per stage; stem_width: stem channels.
        head_dim: channels per attention head (heads = channels / head_dim).
        window_size: block and grid partition size (int or pair; None: from ``img_size``).
        partition_ratio: ``img_size / window`` (32 for the released models).
        mlp_ratio, expand_ratio, se_ratio: transformer MLP, MBConv expansion (w.r.t. output
            channels) and SE width (w.r.t. output channels).
        head_hidden_size: width of the head's ``tanh`` pre-logits layer (-1, the default: the last
            stage's width, as in every released model; None: no such layer).
        drop_rate: dropout before the classifier; drop_path_rate: stochastic depth, linear over
            all MaxViT blocks (one rate per block, shared by its MBConv and both attentions).
        mask_padding: mask padded keys in block/grid attention on maps not divisible by the window.

    Shapes: images ``(B, in_chans, H, W)``, ``H, W >= 32``; ``forward_features`` gives
    ``(B, embed_dim[-1], ceil(H/32), ceil(W/32))``; taps: stem (stride 2) and the four stages.

    Raises:
        ValueError: per-stage arguments of different lengths; channels not divisible by ``head_dim``.
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 5, 2),
        stem_width: int = 64,
        head_dim: int = 32,
        window_size: Union[None, int, Tuple[int, int]] = None,
        partition_ratio: int = 32,
        mlp_ratio: float = 4.0,
        expand_ratio: float = 4.0,
        se_ratio: float = 0.25,
        head_hidden_size: Union[None, int] = -1,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        mask_padding: bool = True,
    ):
        if len(embed_dim) != len(depths):
            raise ValueError(f"embed_dim and depths need one entry per stage; got {embed_dim!r} and {depths!r}")
        for d in embed_dim:
            if d % head_dim:
                raise ValueError(f"stage width {d} is not divisible by head_dim {head_dim}")
        img_size = to_2tuple(img_size)
        if window_size is None:
            window_size = (max(img_size[0] // partition_ratio, 1), max(img_size[1] // partition_ratio, 1))
        window_size = tuple(to_2tuple(window_size))
        if head_hidden_size == -1:
            head_hidden_size = embed_dim[-1]
        act = get_act_layer("gelu_tanh")
        dpr = drop_path_rates(drop_path_rate, depths)

        def maxvit_block(dim_in: int, dim: int, stride: int, dp: float) -> nn.Module:
            def attn(partition: str) -> nn.Module:
                mixer = WindowAttention(dim, dim // head_dim, window_size, partition=partition, mask_padding=mask_padding)
                return TransformerBlock(dim, mixer, mlp_ratio=mlp_ratio, drop_path=dp, act_layer=act)

            return nn.Sequential(
                OrderedDict(
                    conv=MBConv(dim_in, dim, stride, expand_ratio=expand_ratio, se_ratio=se_ratio, drop_path=dp),
                    attn_block=attn("block"),
                    attn_grid=attn("grid"),
                )
            )

        stages, dim_in = [], stem_width
        for i, (dim, depth) in enumerate(zip(embed_dim, depths)):
            stages.append(Stage([maxvit_block(dim_in if j == 0 else dim, dim, 2 if j == 0 else 1, dpr[i][j]) for j in range(depth)]))
            dim_in = dim
        head = NormMlpClassifierHead(
            embed_dim[-1],
            num_classes,
            hidden_size=head_hidden_size,
            pool_type=global_pool,
            drop_rate=drop_rate,
            norm_layer=partial(LayerNorm2d, eps=1e-5),
        )
        super().__init__(
            ConvBNStem(in_chans, stem_width),
            stages,
            embed_dim,
            [4 * 2**i for i in range(len(depths))],
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            norm_layer=None,
            min_input_size=32,
            head=head,
            stem_feature=(stem_width, 2),
        )
        self.window_size = window_size
        self.apply(init_weights)


# ------------------------------------------------------------------------------------------------
# Checkpoint conversion

_TIMM_TABLE = "attn.rel_pos.relative_position_bias_table"


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MaxViT) -> Dict[str, torch.Tensor]:
    """Convert a timm ``maxvit_*_tf_*`` state dict (or our own) to this model's keys, strictly.

    The layouts coincide except for the relative position tables:
    ``*.attn.rel_pos.relative_position_bias_table`` ``(heads, 2P-1, 2P-1)`` -> ``*.attn.rpb``
    (same indexing, see :mod:`visionattn.layers.window`). A table trained for another window
    (e.g. 224 weights into a 384 model) is resized to the model's window by plain bicubic
    interpolation (``align_corners=False``). This is neither the official TF fine-tuning's
    bilinear resize (``scale_ratio``) nor timm's BEiT-style geometric-progression resize
    (``resize_rel_pos_bias_table``), so a fine-tune started from resized tables starts from
    slightly different biases than either; released ``_384``/``_512`` weights carry their own
    tables and are not resized. Wrapped checkpoints (``model`` /
    ``state_dict``) and ``module.`` prefixes are accepted.

    Raises:
        CheckpointKeyError: unknown, missing or mis-shaped keys (all listed); classifier keys
            may be absent or of another class count.
    """
    sd, _ = unwrap_state_dict(state_dict)
    model_sd = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.endswith(_TIMM_TABLE):
            k = k[: -len(_TIMM_TABLE)] + "attn.rpb"
        if k.endswith("attn.rpb") and k in model_sd and v.shape != model_sd[k].shape and v.dim() == 3:
            v = resize_rel_pos_table(v, tuple(model_sd[k].shape[-2:]))
        out[k] = v
    check_state_dict(out, model, source="MaxViT checkpoint")
    return out


# ------------------------------------------------------------------------------------------------
# Pretrained configs: generated from the manifest (visionattn/models/pretrained.yaml): timm's PyTorch
# ports of the official TF checkpoints (``hf_hub_id`` = timm's live repos, converted on load by
# checkpoint_filter_fn), the official TF checkpoints in ``official_urls`` / notes. ``_cfg`` holds the
# defaults (224 in1k and in21k; per-tag resolution, crop and mean/std come from the manifest).

_ORIGIN = "https://github.com/google-research/maxvit"


_cfg = family_cfg(
    min_input_size=(3, 32, 32),  # smallest image side the model accepts (plain models: 16, per tag)
    crop_pct=0.95,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    first_conv="stem.conv1",
    fixed_input_size=False,
    license="apache-2.0",
    origin_url=_ORIGIN,
    paper_ids="arXiv:2204.01697",
    paper_name="MaxViT: Multi-Axis Vision Transformer",
)


default_cfgs = generate_default_cfgs(manifest_cfgs("maxvit", _cfg))


# ------------------------------------------------------------------------------------------------
# Variants (google-research/maxvit ``maxvit/models/hp/vision.py`` maxvit_t/s/b/l/xl)

_TINY = dict(embed_dim=(64, 128, 256, 512), depths=(2, 2, 5, 2), stem_width=64)
_SMALL = dict(embed_dim=(96, 192, 384, 768), depths=(2, 2, 5, 2), stem_width=64)
_BASE = dict(embed_dim=(96, 192, 384, 768), depths=(2, 6, 14, 2), stem_width=64)
_LARGE = dict(embed_dim=(128, 256, 512, 1024), depths=(2, 6, 14, 2), stem_width=128)
_XLARGE = dict(embed_dim=(192, 384, 768, 1536), depths=(2, 6, 14, 2), stem_width=192)


def _create(variant: str, pretrained: bool, defaults: Dict, size: int, kwargs: Dict) -> MaxViT:
    return build_model(MaxViT, variant, pretrained, checkpoint_filter_fn, dict(defaults, img_size=size), kwargs, (0, 1, 2, 3, 4))


@register_model
def maxvit_tiny(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-T 224 (window/grid 7): 30.9M params, 5.6 GMACs, 83.62 top-1 (official)."""
    return _create("maxvit_tiny", pretrained, _TINY, 224, kwargs)


@register_model
def maxvit_tiny_384(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-T 384 (window/grid 12): 31.0M params, 17.5 GMACs, 85.24 top-1."""
    return _create("maxvit_tiny_384", pretrained, _TINY, 384, kwargs)


@register_model
def maxvit_tiny_512(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-T 512 (window/grid 16): 31.1M params, 33.5 GMACs, 85.72 top-1."""
    return _create("maxvit_tiny_512", pretrained, _TINY, 512, kwargs)


@register_model
def maxvit_small(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-S 224: 68.9M params, 11.7 GMACs, 84.45 top-1."""
    return _create("maxvit_small", pretrained, _SMALL, 224, kwargs)


@register_model
def maxvit_small_384(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-S 384: 69.0M params, 35.9 GMACs, 85.74 top-1."""
    return _create("maxvit_small_384", pretrained, _SMALL, 384, kwargs)


@register_model
def maxvit_small_512(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-S 512: 69.1M params, 67.3 GMACs, 86.19 top-1."""
    return _create("maxvit_small_512", pretrained, _SMALL, 512, kwargs)


@register_model
def maxvit_base(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-B 224: 119.5M params, 24.0 GMACs, 84.95 top-1 (also IN-21k pre-trained weights)."""
    return _create("maxvit_base", pretrained, _BASE, 224, kwargs)


@register_model
def maxvit_base_384(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-B 384: 119.7M params, 73.8 GMACs, 86.34 top-1 (IN-1k); 87.93 (IN-21k fine-tuned, timm)."""
    return _create("maxvit_base_384", pretrained, _BASE, 384, kwargs)


@register_model
def maxvit_base_512(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-B 512: 119.9M params, 138.0 GMACs, 86.66 top-1 (IN-1k); 88.21 (IN-21k fine-tuned, timm)."""
    return _create("maxvit_base_512", pretrained, _BASE, 512, kwargs)


@register_model
def maxvit_large(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-L 224: 211.8M params, 43.7 GMACs, 85.17 top-1 (also IN-21k pre-trained weights)."""
    return _create("maxvit_large", pretrained, _LARGE, 224, kwargs)


@register_model
def maxvit_large_384(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-L 384: 212.0M params, 132.6 GMACs, 86.40 top-1 (IN-1k); 87.99 (IN-21k fine-tuned, timm)."""
    return _create("maxvit_large_384", pretrained, _LARGE, 384, kwargs)


@register_model
def maxvit_large_512(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-L 512: 212.3M params, 244.8 GMACs, 86.70 top-1 (IN-1k); 88.24 (IN-21k fine-tuned, timm)."""
    return _create("maxvit_large_512", pretrained, _LARGE, 512, kwargs)


@register_model
def maxvit_xlarge(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-XL 224 (IN-21k pre-trained, 21,843-class head): 475.0M params with a 1k head."""
    return _create("maxvit_xlarge", pretrained, _XLARGE, 224, kwargs)


@register_model
def maxvit_xlarge_384(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-XL 384 (IN-21k pre-trained, IN-1k fine-tuned): 475.3M params, 292.8 GMACs, 88.30 top-1 (timm)."""
    return _create("maxvit_xlarge_384", pretrained, _XLARGE, 384, kwargs)


@register_model
def maxvit_xlarge_512(pretrained: bool = False, **kwargs) -> MaxViT:
    """MaxViT-XL 512 (IN-21k pre-trained, IN-1k fine-tuned): 475.8M params, 534.1 GMACs, 88.54 top-1 (timm)."""
    return _create("maxvit_xlarge_512", pretrained, _XLARGE, 512, kwargs)
