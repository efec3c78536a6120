"""InLine attention backbones: InLine-DeiT, InLine-PVT, InLine-Swin and InLine-CSwin.

Paper: Han, Pu, Xia, Han, Pan, Li, Lu, Song, Huang. "Bridging the Divide: Reconsidering Softmax and
Linear Attention". NeurIPS 2024, arXiv:2412.06590 (Sec. 4; Sec. 5.1 and Appendix for the models).
Official code and weights: github LeapLabTHU/InLine (no licence file),
``models/inline_{deit,pvt,swin,cswin}.py``, ``cfgs/*.yaml``, README table.

The four macro-architectures are exactly those of the Agent attention models by the same group
(:mod:`visionattn.models.agent`): each InLine model is that body with its mixer factory
(``mixer_layer``) swapped for :class:`~visionattn.layers.inline.InLineAttention`. Per family:

* InLine-DeiT: DeiT body, every block InLine attention on ``(B, 1 + h*w, C)`` (the class token is
  attended to and averaged, but gets no local term). Widths and heads differ from DeiT's names:
  T 192 / 6 heads, S 320 / 10 heads trained at 288, B 384 / 12 heads trained at 448
  (``models/inline_deit.py``; the README's sizes).
* InLine-PVT: PVT-v1 body with InLine attention in every block (separate ``q`` / ``kv``, no K/V
  spatial reduction: ``PVT_LA_SR_RATIOS 1111``), heads (2, 4, 10, 16), no final norm, mean pool.
* InLine-Swin: Swin body; ``WINDOW_SIZE 56`` makes the InLine blocks global over the stage map,
  ``ATTN_TYPE`` T ``IIIS`` / S ``IISS`` / B ``IIMS2`` gives the leading InLine blocks per stage
  ``(2, 2, 6, 0)`` / ``(2, 2, 0, 0)`` / ``(2, 2, 2, 0)``; the others are Swin W-MSA/SW-MSA blocks
  with window ``max(7, img_size // 32)``.
* InLine-CSwin: the CSWin body, ``ATTN_TYPE IISS``: stages 1-2 InLine attention over the whole map
  (``CSWIN_LA_SPLIT_SIZE`` equals the stage resolution, so CSWin's single full branch) that keeps
  CSWin's LePE conv (``get_v`` -> ``lepe``) and, as officially, computes its local kernels from the
  token mean of the block input *before* ``norm1`` (``residual_source='block'``); stages 3-4 CSWin
  stripe attention.

Resolution: InLine attention has no position-dependent parameter, so the InLine blocks run at any
map size without padding and are global at every size (the official Swin/CSwin code fixes the map
size at construction and would window a larger map). Position embeddings (DeiT, PVT) and the Swin
window blocks follow the Agent models: embeddings sized for ``img_size`` and resampled at run time
(DeiT bicubic, PVT bilinear), window blocks padded to a multiple of the window with the padded keys
masked. :func:`checkpoint_filter_fn` (the Agent converter) resizes them for a checkpoint of another
resolution.

Parameter counts and GMACs: the parameter counts equal the unmodified official definitions at 1000
classes for every variant; the README rounds them for DeiT/PVT-T/S/M/Swin, but lists 25 / 43 / 96M for
InLine-CSwin-T/S/B where the official code builds 20.6 / 33.0 / 73.4M, and 50.2M for InLine-PVT-L where it
builds 51.15M. fvcore GMACs (``count_gmacs``, at each model's resolution) are within 2% of the README's
FLOPs column for all 13 released models: DeiT 1.113 / 4.978 / 17.203, PVT 1.985 / 3.930 / 6.884 /
10.160, Swin 4.476 / 8.746 / 15.433 (B-384 46.305), CSwin 4.330 / 6.801 / 14.927 (B-384 46.343).
(The local term is one grouped ``F.conv2d`` per block, ``9 * N * C`` MACs, as officially.)

@inproceedings{han2024inline, title={Bridging the Divide: Reconsidering Softmax and Linear
  Attention}, author={Han, Dongchen and Pu, Yifan and Xia, Zhuofan and Han, Yizeng and Pan, Xuran
  and Li, Xiu and Lu, Jiwen and Song, Shiji and Huang, Gao}, booktitle={NeurIPS}, year={2024}}
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
from torch import nn
from timm.models import generate_default_cfgs

from ..layers.inline import InLineAttention
from . import agent as _agent
from ._manifest import family_cfg, manifest_cfgs
from ._registry import build_model, register_model

__all__ = ["InLinePVT", "InLineDeiT", "InLineSwin", "InLineCSWin", "inline_mixer", "checkpoint_filter_fn"]


def inline_mixer(kernel_func: str = "identity", lepe: bool = False, residual_source: str = "input") -> _agent.MixerFactory:
    """A :data:`~visionattn.models.agent.MixerFactory` building :class:`~visionattn.layers.inline.InLineAttention`.

    Args: as :class:`~visionattn.layers.inline.InLineAttention` (the factory takes the body's
    ``dim, num_heads, qkv_bias, split_qkv, num_prefix_tokens, proj_drop``; ``stage``,
    ``resolution`` and ``attn_drop`` do not apply: InLine has neither tables nor attention maps).
    """

    def make(dim, num_heads, stage, resolution, qkv_bias, attn_drop, proj_drop, split_qkv=False, num_prefix_tokens=0):
        return InLineAttention(
            dim, num_heads, qkv_bias=qkv_bias, split_qkv=split_qkv, num_prefix_tokens=num_prefix_tokens, kernel_func=kernel_func,
            lepe=lepe, residual_source=residual_source, proj_drop=proj_drop,
        )

    return make


class InLinePVT(_agent.AgentPVT):
    """InLine-PVT: PVT-v1 with InLine attention in every block.

    Args:
        kernel_func: InLine's ``phi`` (``'identity'`` officially).
        other arguments: :class:`~visionattn.models.agent.AgentPVT` (``agent_num`` is unused).

    Shapes: ``(B, in_chans, H, W)``, ``H, W >= 32`` -> features ``(B, 512, ceil(H/32), ceil(W/32))``.
    """

    def __init__(self, kernel_func: str = "identity", **kwargs):
        kwargs.setdefault("num_heads", (2, 4, 10, 16))
        super().__init__(mixer_layer=inline_mixer(kernel_func), **kwargs)


class InLineDeiT(_agent.AgentDeiT):
    """InLine-DeiT: DeiT with InLine attention in every block (timm ``VisionTransformer`` contract).

    Args:
        kernel_func: InLine's ``phi`` (``'identity'`` officially).
        other arguments: :class:`~visionattn.models.agent.AgentDeiT` (``agent_num`` and
            ``agent_layers`` are unused).

    Shapes: as :class:`~visionattn.models.agent.AgentDeiT`: ``forward_features`` ``(B, 1 + h*w, C)``.
    """

    def __init__(self, kernel_func: str = "identity", **kwargs):
        super().__init__(mixer_layer=inline_mixer(kernel_func), **kwargs)


class InLineSwin(_agent.AgentSwin):
    """InLine-Swin: Swin with global InLine attention in the leading blocks of each stage.

    Args:
        inline_blocks: per stage, how many leading blocks are InLine blocks (the rest Swin
            W-MSA/SW-MSA): T ``(2, 2, 6, 0)``, S ``(2, 2, 0, 0)``, B ``(2, 2, 2, 0)``.
        kernel_func: InLine's ``phi`` (``'identity'`` officially).
        other arguments: :class:`~visionattn.models.agent.AgentSwin` (``agent_num`` is unused).

    Shapes: ``(B, in_chans, H, W)``, ``H, W >= 32`` -> ``(B, 8 * embed_dim, ceil(H/32), ceil(W/32))``.
    """

    def __init__(self, inline_blocks: Sequence[int] = (2, 2, 6, 0), kernel_func: str = "identity", **kwargs):
        super().__init__(agent_blocks=inline_blocks, mixer_layer=inline_mixer(kernel_func), **kwargs)


class InLineCSWin(_agent.AgentCSWin):
    """InLine-CSwin: the CSWin body with InLine attention (plus LePE) in all blocks of ``inline_stages``.

    Args:
        inline_stages: stages whose blocks are InLine blocks (official ``ATTN_TYPE 'IISS'``: 0, 1).
        kernel_func: InLine's ``phi`` (``'identity'`` officially).
        other arguments: :class:`~visionattn.models.agent.AgentCSWin` / :class:`~visionattn.models.cswin.CSWin`.

    Shapes: as :class:`~visionattn.models.cswin.CSWin`.
    """

    def __init__(self, inline_stages: Sequence[int] = (0, 1), kernel_func: str = "identity", **kwargs):
        mixer = inline_mixer(kernel_func, lepe=True, residual_source="block")
        super().__init__(agent_stages=inline_stages, mixer_layer=mixer, **kwargs)


def checkpoint_filter_fn(state_dict: Mapping, model: nn.Module, prefer_ema: Optional[bool] = None) -> Dict[str, torch.Tensor]:
    """Convert an official InLine checkpoint to this model's keys, strictly.

    The official InLine files share the Agent-Attention layout (``{'model': state_dict, ...}``; the
    CSwin runs add ``state_dict_ema``) and module names, so this is
    :func:`visionattn.models.agent.checkpoint_filter_fn`; InLine's own keys map as
    ``*.attn.residual.{0,2}.*`` -> the same names, and InLine-CSwin's
    ``stage{s}.{j}.attns.0.{residual.*, get_v.*}`` -> ``stages.{s-1}.blocks.{j}.attn.{residual.*, lepe.*}``.
    ``state_dict_ema`` is used only with ``prefer_ema=True`` (the README's evaluation reads ``model``).

    Raises:
        CheckpointKeyError: unmappable keys, model keys left uncovered, shape mismatches (all listed).
        KeyError: ``prefer_ema=True`` but the checkpoint has no ``state_dict_ema``.
    """
    return _agent.checkpoint_filter_fn(state_dict, model, prefer_ema=prefer_ema)


# ------------------------------------------------------------------------------------------------
# Pretrained configs: generated from the manifest (visionattn/models/pretrained.yaml: the official
# TsinghuaCloud links, checkpoint under ``model``); ``_cfg`` holds the defaults.

_cfg = family_cfg(
    min_input_size=(3, 32, 32),  # smallest image side the model accepts (plain models: 16, per tag)
    crop_pct=0.875,
    crop_mode="squash",
    first_conv="stem.proj",
    license="unknown",
    origin_url="https://github.com/LeapLabTHU/InLine",
    paper_ids="arXiv:2412.06590",
    paper_name="Bridging the Divide: Reconsidering Softmax and Linear Attention",
    notes=(
        "no licence file in the official repository",
        "official eval: square resize to 256/224 x size, then center crop (crop_mode 'squash')",
    ),
)

default_cfgs = generate_default_cfgs(manifest_cfgs("inline", _cfg))


# ------------------------------------------------------------------------------------------------
# Variants (cfgs/*.yaml and the model factories; drop path from the cfgs)

_PVT = dict(embed_dims=(64, 128, 320, 512), num_heads=(2, 4, 10, 16), mlp_ratios=(8, 8, 4, 4))
_DEIT_TAPS = (2, 5, 8, 11)
_SWIN_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), inline_blocks=(2, 2, 6, 0), drop_path_rate=0.2)
_SWIN_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), inline_blocks=(2, 2, 0, 0), drop_path_rate=0.3)
_SWIN_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), inline_blocks=(2, 2, 2, 0), drop_path_rate=0.5)
_CS_T = dict(embed_dim=64, depths=(2, 4, 18, 1), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7), drop_path_rate=0.2)
_CS_S = dict(embed_dim=64, depths=(3, 6, 29, 2), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7), drop_path_rate=0.4)
_CS_B = dict(embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), split_size=(1, 2, 7, 7), drop_path_rate=0.5)


def _create(cls, variant: str, pretrained: bool, defaults: Dict, kwargs: Dict, out_indices=(0, 1, 2, 3)):
    return build_model(cls, variant, pretrained, checkpoint_filter_fn, defaults, kwargs, out_indices)


@register_model
def inline_deit_tiny(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-T (dim 192, 6 heads): 6.5M params, 1.1 GFLOPs, 74.5 top-1 (ImageNet-1k, 224)."""
    return _create(InLineDeiT, "inline_deit_tiny", pretrained, dict(embed_dim=192, num_heads=6, drop_path_rate=0.1), kwargs, _DEIT_TAPS)


@register_model
def inline_deit_small(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-S (dim 320, 10 heads, trained at 288): 16.7M params, 5.0 GFLOPs, 80.2 top-1."""
    return _create(InLineDeiT, "inline_deit_small", pretrained, dict(embed_dim=320, num_heads=10, img_size=288, drop_path_rate=0.1), kwargs, _DEIT_TAPS)


@register_model
def inline_deit_base(pretrained: bool = False, **kwargs) -> InLineDeiT:
    """InLine-DeiT-B (dim 384, 12 heads, trained at 448): 23.8M params, 17.2 GFLOPs, 82.3 top-1."""
    return _create(InLineDeiT, "inline_deit_base", pretrained, dict(embed_dim=384, num_heads=12, img_size=448, drop_path_rate=0.1), kwargs, _DEIT_TAPS)


@register_model
def inline_pvt_tiny(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-T: 12.0M params, 2.0 GFLOPs, 78.2 top-1."""
    return _create(InLinePVT, "inline_pvt_tiny", pretrained, dict(_PVT, depths=(2, 2, 2, 2), drop_path_rate=0.1), kwargs)


@register_model
def inline_pvt_small(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-S: 21.6M params, 3.9 GFLOPs, 82.0 top-1."""
    return _create(InLinePVT, "inline_pvt_small", pretrained, dict(_PVT, depths=(3, 4, 6, 3), drop_path_rate=0.1), kwargs)


@register_model
def inline_pvt_medium(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-M: 37.6M params, 6.9 GFLOPs, 83.2 top-1."""
    return _create(InLinePVT, "inline_pvt_medium", pretrained, dict(_PVT, depths=(3, 4, 18, 3), drop_path_rate=0.3), kwargs)


@register_model
def inline_pvt_large(pretrained: bool = False, **kwargs) -> InLinePVT:
    """InLine-PVT-L: 50.2M params, 10.2 GFLOPs, 83.6 top-1."""
    return _create(InLinePVT, "inline_pvt_large", pretrained, dict(_PVT, depths=(3, 8, 27, 3), drop_path_rate=0.3), kwargs)


@register_model
def inline_swin_tiny(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-T: 30M params, 4.5 GFLOPs, 82.4 top-1 (InLine stages 1-3, W-MSA stage 4)."""
    return _create(InLineSwin, "inline_swin_tiny", pretrained, _SWIN_T, kwargs)


@register_model
def inline_swin_small(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-S: 50M params, 8.7 GFLOPs, 83.6 top-1 (InLine stages 1-2, Swin W7/SW7 stages 3-4)."""
    return _create(InLineSwin, "inline_swin_small", pretrained, _SWIN_S, kwargs)


@register_model
def inline_swin_base(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-B: 88M params, 15.4 GFLOPs, 84.1 top-1 (InLine stages 1-2 and blocks 0-1 of stage 3)."""
    return _create(InLineSwin, "inline_swin_base", pretrained, _SWIN_B, kwargs)


@register_model
def inline_swin_base_384(pretrained: bool = False, **kwargs) -> InLineSwin:
    """InLine-Swin-B 384 (``cfgs/inline_swin_b_384.yaml``, Swin W12/SW12; no released weights)."""
    return _create(InLineSwin, "inline_swin_base_384", pretrained, dict(_SWIN_B, img_size=384), kwargs)


@register_model
def inline_cswin_tiny(pretrained: bool = False, **kwargs) -> InLineCSWin:
    """InLine-CSwin-T: 25M params, 4.3 GFLOPs, 83.2 top-1."""
    return _create(InLineCSWin, "inline_cswin_tiny", pretrained, _CS_T, kwargs)


@register_model
def inline_cswin_small(pretrained: bool = False, **kwargs) -> InLineCSWin:
    """InLine-CSwin-S: 43M params, 6.8 GFLOPs, 83.8 top-1."""
    return _create(InLineCSWin, "inline_cswin_small", pretrained, _CS_S, kwargs)


@register_model
def inline_cswin_base(pretrained: bool = False, **kwargs) -> InLineCSWin:
    """InLine-CSwin-B: 96M params, 14.9 GFLOPs, 84.5 top-1."""
    return _create(InLineCSWin, "inline_cswin_base", pretrained, _CS_B, kwargs)


@register_model
def inline_cswin_base_384(pretrained: bool = False, **kwargs) -> InLineCSWin:
    """InLine-CSwin-B 384 (stripes 1, 2, 12, 12; ``cfgs/inline_cswin_b_384.yaml``; no released weights)."""
    return _create(InLineCSWin, "inline_cswin_base_384", pretrained, dict(_CS_B, split_size=(1, 2, 12, 12), img_size=384, drop_path_rate=0.7), kwargs)
