"""Any registered classifier as a multi-scale detection backbone with a torchvision FPN.

:class:`DetectionBackbone` is the shared :class:`visionattn.models._multiscale.MultiScaleBackbone`
(timm ``features_only=True`` taps picked from ``feature_info`` by stride, 4, 8, 16, 32 by default;
MaxViT's stride-2 stem tap is skipped, no index is hard-coded; one extra channel LayerNorm per
output as the official detection backbones do: NAT/DiNAT ``detection/backbone/nat.py``
``norm{i}`` per out index, Swin/CSWin/Agent-Swin mmdet backbones likewise; ViTDet's simple
pyramid for plain models, see below), whose maps feed ``torchvision.ops.FeaturePyramidNetwork``
with ``LastLevelMaxPool`` (Mask/Faster R-CNN: P2-P6) or ``LastLevelP6P7`` (RetinaNet: P3-P7,
P6 from C5 as mmdet's ``add_extra_convs='on_input'``).

Plain (isotropic) models whose taps all have stride 16 (``agent_deit_*``, ``nat_isotropic_*``,
``dinat_isotropic_*``, ``vitrpb_*``) get ViTDet's simple feature pyramid (Li et al., "Exploring
Plain Vision Transformer Backbones for Object Detection", ECCV 2022, §3: deconvolutions for
strides 4 and 8, identity for 16, max-pool for 32) on their last tap. That tap is the last block's
patch tokens as an NCHW map (``features_only`` / ``forward_intermediates(output_fmt='NCHW')``,
prefix tokens such as Agent-DeiT's class token dropped), not ``forward_features``, whose plain-model
layout is timm's ViT token sequence ``(B, num_prefix_tokens + h*w, C)``.

The result satisfies torchvision's detection-backbone contract: ``forward(images)`` returns an
``OrderedDict[str, Tensor]`` of NCHW maps with ``out_channels`` channels each, keys ``'0'..``
then ``'pool'`` (or ``'p6'``, ``'p7'``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence

import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

import visionattn.models  # noqa: F401  (registers the zoo with timm)
from visionattn.models._multiscale import MultiScaleBackbone, SimpleFeaturePyramid, freeze_batch_norm, select_taps

__all__ = ["DetectionBackbone", "SimpleFeaturePyramid", "freeze_batch_norm", "select_taps"]

_EXTRA_BLOCKS = ("maxpool", "p6p7", "none")


class DetectionBackbone(MultiScaleBackbone):
    """A visionattn (or any timm ``features_only``) model + per-level LayerNorm + FPN.

    Args:
        model_name: a name registered with timm (``visionattn.list_models()``).
        pretrained: load the model's ImageNet weights (its pretrained cfg; Hub or official URL).
        pretrained_file: a local checkpoint file to load instead (timm ``pretrained_cfg_overlay``;
            implies ``pretrained``).
        model_kwargs: extra constructor kwargs (e.g. ``drop_path_rate``, DiNAT's detection
            ``dilations``, or a shrunk ``depths``/``embed_dim`` for tests).
        reductions: backbone strides fed to the FPN, ascending (``(4, 8, 16, 32)`` for R-CNNs,
            ``(8, 16, 32)`` for RetinaNet).
        out_channels: FPN channels (256 in every paper's detector).
        extra_blocks: ``'maxpool'`` (P6 by stride-2 max-pool, key ``'pool'``; R-CNN RPN),
            ``'p6p7'`` (P6/P7 by 3x3 stride-2 convs from C5, keys ``'p6'``, ``'p7'``; RetinaNet)
            or ``'none'``.
        out_norm: add a channel LayerNorm per output (official detection backbones do).
        frozen_bn: turn the body's BatchNorm2d layers into FrozenBatchNorm2d.

    ``forward(x)``: ``(B, 3, H, W)`` float images (any H, W >= the model's minimum; the
    backbones pad internally) -> ``OrderedDict`` of ``(B, out_channels, ceil(H/r), ceil(W/r))``.
    ``forward_levels(x)``: the normalised maps before the FPN (list of NCHW).
    Attributes: ``out_channels`` (int), ``in_channels_list`` (body channels per level),
    ``reductions``, ``body`` (timm ``FeatureGetterNet``), ``simple_pyramid`` (bool).

    Raises:
        ValueError: an unknown model, bad ``reductions``/``extra_blocks``, or a model whose
            ``feature_info`` offers neither the strides asked for nor a plain stride-16 tap.
    """

    def __init__(
        self,
        model_name: str,
        *,
        pretrained: bool = False,
        pretrained_file: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        reductions: Sequence[int] = (4, 8, 16, 32),
        out_channels: int = 256,
        extra_blocks: str = "maxpool",
        out_norm: bool = True,
        frozen_bn: bool = False,
    ):
        if extra_blocks not in _EXTRA_BLOCKS:
            raise ValueError(f"extra_blocks must be one of {_EXTRA_BLOCKS}, got {extra_blocks!r}")
        super().__init__(model_name, pretrained=pretrained, pretrained_file=pretrained_file,
                         model_kwargs=model_kwargs, reductions=reductions, out_norm=out_norm, frozen_bn=frozen_bn)
        in_chs = self.in_channels_list
        if extra_blocks == "maxpool":
            extra = LastLevelMaxPool()
        elif extra_blocks == "p6p7":
            extra = LastLevelP6P7(in_chs[-1], out_channels)
        else:
            extra = None
        self.fpn = FeaturePyramidNetwork(in_chs, out_channels, extra_blocks=extra)
        self.out_channels = int(out_channels)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.forward_levels(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
