"""Any timm ``features_only`` model (every registered visionattn model, and timm's own) as a
multi-scale backbone for dense heads: the part that detection (:mod:`visionattn.detection`) and
segmentation (:mod:`visionattn.segmentation`) share.

:class:`MultiScaleBackbone` builds the model with timm's ``features_only=True`` (our models'
``forward_intermediates``), picks from ``feature_info`` the taps whose reductions are the
requested strides (4, 8, 16, 32 by default; MaxViT's stride-2 stem tap is skipped, no index is
hard-coded), and applies one extra channel LayerNorm per output. That norm follows the official
dense-task backbones, which add a norm per out index on top of the classifier's stages: NAT/DiNAT
(``detection/backbone/nat.py`` and ``segmentation/nat.py``: ``norm{i}`` per out index), CSWin
(``segmentation/backbone/cswin_transformer.py``: ``norm1``..``norm4``, one per output, the
classifier's final norm and head dropped), and the Swin-style mmdet/mmseg backbones that
Agent-Swin and DaViT build on (``norm{i}`` per out index). Families whose dense backbones differ
get the same single LayerNorm per level here, so that every backbone hands the heads normalised
maps (a few thousand parameters; the parameter counts of :mod:`visionattn.segmentation` still
match the papers' tables). timm's own models (``convnext_tiny``, ``resnet18``) work the same way.

Plain (isotropic) models whose taps all have stride 16 (``agent_deit_*``, ``nat_isotropic_*``,
``dinat_isotropic_*``, ``vitrpb_*``) get ViTDet's simple feature pyramid (Li et al., "Exploring
Plain Vision Transformer Backbones for Object Detection", ECCV 2022, §3: deconvolutions for
strides 4 and 8, identity for 16, max-pool for 32) on their last tap. That tap is the last block's
patch tokens as an NCHW map (``features_only`` / ``forward_intermediates(output_fmt='NCHW')``,
prefix tokens such as Agent-DeiT's class token dropped), not ``forward_features``, whose plain-model
layout is timm's ViT token sequence ``(B, num_prefix_tokens + h*w, C)``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
import timm
from timm.layers import LayerNorm2d
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["MultiScaleBackbone", "SimpleFeaturePyramid", "freeze_batch_norm", "select_taps"]


def select_taps(reductions: Sequence[int], wanted: Sequence[int]) -> Optional[List[int]]:
    """Indices into ``reductions`` (a model's ``feature_info.reduction()``) giving each stride in
    ``wanted``; the last tap is taken when several share a stride. None when one is missing."""
    out = []
    for r in wanted:
        hits = [i for i, x in enumerate(reductions) if int(x) == int(r)]
        if not hits:
            return None
        out.append(hits[-1])
    return out


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` (in place, recursively) by torchvision's
    ``FrozenBatchNorm2d`` with the same statistics and affine parameters (as torchvision's
    ResNet detection backbones; 2 images per GPU are too few for batch statistics).
    Returns ``module`` (or its replacement when ``module`` itself is a BatchNorm2d)."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats and module.running_mean is not None:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_batch_norm(child)
        if new is not child:
            setattr(module, name, new)
    return module


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid from one stride-16 map (Li et al. 2022, §3, Fig. 2c).

    Args:
        in_chs: channels ``C`` of the stride-16 input.
        reductions: strides to produce, each of 4, 8, 16, 32.

    Shapes: ``(B, C, H/16, W/16)`` -> list of ``(B, C_r, H/r, W/r)``; ``C_4 = C/4`` (two 2x2
    stride-2 deconvolutions with LayerNorm + GELU between), ``C_8 = C/2`` (one deconvolution),
    ``C_16 = C_32 = C`` (identity; 2x2 max-pool). ``channels`` lists ``C_r`` in order.

    Raises:
        ValueError: a reduction outside {4, 8, 16, 32}.
    """

    def __init__(self, in_chs: int, reductions: Sequence[int] = (4, 8, 16, 32)):
        super().__init__()
        bad = [r for r in reductions if r not in (4, 8, 16, 32)]
        if bad:
            raise ValueError(f"SimpleFeaturePyramid: reductions must be among 4, 8, 16, 32; got {list(reductions)}")
        self.reductions = [int(r) for r in reductions]
        self.scales = nn.ModuleList()
        self.channels: List[int] = []
        for r in self.reductions:
            if r == 4:
                op = nn.Sequential(nn.ConvTranspose2d(in_chs, in_chs // 2, 2, 2), LayerNorm2d(in_chs // 2), nn.GELU(),
                                   nn.ConvTranspose2d(in_chs // 2, in_chs // 4, 2, 2))
                self.channels.append(in_chs // 4)
            elif r == 8:
                op = nn.ConvTranspose2d(in_chs, in_chs // 2, 2, 2)
                self.channels.append(in_chs // 2)
            elif r == 16:
                op = nn.Identity()
                self.channels.append(in_chs)
            else:
                op = nn.MaxPool2d(2, 2, ceil_mode=True)
                self.channels.append(in_chs)
            self.scales.append(op)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [op(x) for op in self.scales]


class MultiScaleBackbone(nn.Module):
    """A timm ``features_only`` model + tap selection (+ simple pyramid) + per-level LayerNorm.

    Args:
        model_name: a name registered with timm (``visionattn.list_models()`` or timm's own).
        pretrained: load the model's ImageNet weights (its pretrained cfg; Hub or official URL).
        pretrained_file: a local checkpoint file to load instead (timm ``pretrained_cfg_overlay``;
            implies ``pretrained``).
        model_kwargs: extra constructor kwargs (e.g. ``drop_path_rate``, DiNAT's dense-task
            ``dilations``, or a shrunk ``depths``/``embed_dim`` for tests).
        reductions: backbone strides to return, strictly ascending (``(4, 8, 16, 32)``).
        out_norm: add a channel LayerNorm per output (official dense-task backbones do).
        frozen_bn: turn the body's BatchNorm2d layers into FrozenBatchNorm2d.

    ``forward(x)`` (= ``forward_levels``): ``(B, 3, H, W)`` float images (any H, W >= the model's
    minimum; the backbones pad internally) -> list of NCHW maps ``(B, C_i, ceil(H/r_i), ceil(W/r_i))``
    for ``r_i`` in ``reductions``. Attributes: ``in_channels_list`` (``C_i``), ``reductions``,
    ``body`` (timm ``FeatureGetterNet``), ``taps``, ``pyramid`` (a :class:`SimpleFeaturePyramid`
    or None), ``norms``, ``simple_pyramid`` (bool), ``model`` (the wrapped timm model).

    Raises:
        ValueError: an unknown model, bad ``reductions``, or a model whose ``feature_info`` offers
            neither the strides asked for nor a plain stride-16 tap.
    """

    def __init__(
        self,
        model_name: str,
        *,
        pretrained: bool = False,
        pretrained_file: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        reductions: Sequence[int] = (4, 8, 16, 32),
        out_norm: bool = True,
        frozen_bn: bool = False,
    ):
        super().__init__()
        if not timm.is_model(model_name):
            raise ValueError(f"unknown model {model_name!r}: not registered with timm (see visionattn.list_models())")
        reductions = [int(r) for r in reductions]
        if not reductions or sorted(set(reductions)) != reductions:
            raise ValueError(f"reductions must be strictly ascending strides, got {reductions}")
        kwargs = dict(model_kwargs or {})
        if pretrained_file:
            pretrained = True
            kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file))
        self.body = timm.create_model(model_name, pretrained=pretrained, features_only=True, **kwargs)
        if hasattr(self.body, "model") and hasattr(self.body.model, "head"):
            # forward_intermediates never reaches the classifier head; a head that features_only kept
            # (e.g. MaxViT's norm + pre-logits MLP) would leave parameters without gradients, which DDP rejects
            self.body.model.head = nn.Identity()
        if frozen_bn:
            freeze_batch_norm(self.body)
        body_reds = [int(r) for r in self.body.feature_info.reduction()]
        body_chs = [int(c) for c in self.body.feature_info.channels()]
        taps = select_taps(body_reds, reductions)
        self.simple_pyramid = taps is None
        if taps is None:
            if any(r != 16 for r in body_reds) or any(r not in (4, 8, 16, 32) for r in reductions):
                raise ValueError(
                    f"{model_name}: feature_info reductions {body_reds} do not provide strides {reductions} "
                    "(and are not a plain stride-16 model that a simple feature pyramid could serve)")
            self.taps = [len(body_reds) - 1]
            self.pyramid = SimpleFeaturePyramid(body_chs[-1], reductions)
            in_chs = list(self.pyramid.channels)
        else:
            self.taps = taps
            self.pyramid = None
            in_chs = [body_chs[i] for i in taps]
        self.reductions = reductions
        self.in_channels_list = in_chs
        self.norms = nn.ModuleList([LayerNorm2d(c) if out_norm else nn.Identity() for c in in_chs])

    @property
    def model(self) -> nn.Module:
        """The wrapped timm model (``group_matcher``, ``no_weight_decay``, ...)."""
        return getattr(self.body, "model", self.body)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Body parameter names (prefixed ``body.model.``) the model excludes from weight decay."""
        fn = getattr(self.model, "no_weight_decay", None)
        prefix = "body.model." if hasattr(self.body, "model") else "body."
        return {f"{prefix}{n}" for n in (fn() if fn is not None else ())}

    def forward_levels(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The normalised multi-scale maps: list of ``(B, C_i, H/r_i, W/r_i)``."""
        feats = self.body(x)
        feats = [feats[i] for i in self.taps]
        if self.pyramid is not None:
            feats = self.pyramid(feats[0])
        return [norm(f) for norm, f in zip(self.norms, feats)]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward_levels(x)
