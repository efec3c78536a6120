"""Segmentors: a multi-scale backbone (any registered visionattn model or timm model, through the
adapter shared with detection) + a decode head (UPerNet or Semantic FPN) + UPerNet's FCN
auxiliary head, and mmseg's loss.

``build_segmentor('nat_tiny', 'upernet', 150)`` is the papers' "UPerNet NAT-T" (58M parameters,
as in the NAT README); the parameter counts of every paper row are checked against
:data:`visionattn.segmentation.PAPER_SEGMENTATION` in ``tests/test_segmentation.py``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import visionattn.models  # noqa: F401  (registers the zoo with timm)
from visionattn.models._multiscale import MultiScaleBackbone

from .heads import FCNHead, SemanticFPN, UPerHead, norm_layer

__all__ = ["HEADS", "Segmentor", "build_segmentor", "segmentation_loss"]

HEADS = ("upernet", "fpn")
_DEFAULT_CHANNELS = {"upernet": 512, "fpn": 256}


class Segmentor(nn.Module):
    """Backbone + decode head (+ auxiliary head).

    ``forward(images)``: ``(B, 3, H, W)`` normalised float images (any size the backbone accepts)
    -> ``dict(out=(B, K, ceil(H/4), ceil(W/4)) logits)``, plus ``aux=(B, K, ceil(H/16), ceil(W/16))``
    when the model has an auxiliary head and is in training mode. Logits are at the heads' own
    resolution; :func:`segmentation_loss` and :func:`visionattn.segmentation.inference` resize
    them (bilinear, ``align_corners=False``) as mmseg does.

    Attributes: ``backbone`` (:class:`~visionattn.models._multiscale.MultiScaleBackbone`; its
    ``model`` is the timm model with ``group_matcher``/``no_weight_decay`` for parameter groups),
    ``decode_head``, ``aux_head`` (None without one), ``num_classes``, ``head`` (the head's name),
    ``aux_index`` (the level the auxiliary head reads: 2 = stride 16 = stage 3).
    """

    def __init__(self, backbone: MultiScaleBackbone, decode_head: nn.Module, num_classes: int,
                 aux_head: Optional[nn.Module] = None, head: str = "upernet", aux_index: int = 2):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.num_classes = int(num_classes)
        self.head = head
        self.aux_index = aux_index

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Parameter names (prefixed ``backbone.``) that the backbone excludes from weight decay
        (position tables); norms and biases are excluded by the optimizer factory by shape."""
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        levels = self.backbone(images)
        out = {"out": self.decode_head(levels)}
        if self.aux_head is not None and self.training:
            out["aux"] = self.aux_head(levels[self.aux_index])
        return out


def build_segmentor(backbone: str, head: str = "upernet", num_classes: int = 150, *, pretrained: bool = False,
                    pretrained_file: Optional[str] = None, aux_head: bool = True, norm: str = "bn",
                    channels: Optional[int] = None, drop_path_rate: Optional[float] = None,
                    backbone_kwargs: Optional[Dict[str, Any]] = None) -> Segmentor:
    """Build UPerNet or Semantic FPN on a backbone (mmseg's heads, see :mod:`.heads`).

    Args:
        backbone: a model registered with timm: every visionattn model (``visionattn.list_models()``;
            plain stride-16 models get ViTDet's simple pyramid) or timm's own (``convnext_tiny``,
            ``resnet18``, ...).
        head: ``'upernet'`` (UPerHead, 512 channels, PPM 1/2/3/6) or ``'fpn'`` (Semantic FPN:
            256-channel FPN neck + 128-channel FPNHead).
        num_classes: ``K`` (150 for ADE20K).
        pretrained: load the backbone's ImageNet weights; ``pretrained_file`` a local checkpoint.
        aux_head: UPerNet's FCN auxiliary head on stage 3 (256 channels; loss weight 0.4 in
            :func:`segmentation_loss`). Semantic FPN has none (ignored for ``'fpn'``).
        norm: ``'bn'`` or ``'syncbn'`` in the heads (the papers: SyncBN over 8 GPUs).
        channels: head width; default the papers' (512 UPerNet, 256 for the Semantic FPN neck).
        drop_path_rate: the backbone's stochastic depth (the papers' segmentation configs set it,
            e.g. 0.2 for NAT-T, 0.3 for CSWin-T); None keeps the model's default.
        backbone_kwargs: extra backbone constructor kwargs (e.g. DiNAT's segmentation ``dilations``,
            or a shrunk ``depths``/``embed_dim``).

    Raises:
        ValueError: unknown ``head``/``norm``/backbone, or a backbone without stride 4-32 taps.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    norm_layer(norm)  # validates
    kwargs = dict(backbone_kwargs or {})
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = float(drop_path_rate)
    body = MultiScaleBackbone(backbone, pretrained=pretrained, pretrained_file=pretrained_file, model_kwargs=kwargs,
                              reductions=(4, 8, 16, 32))
    chs = body.in_channels_list
    width = int(channels or _DEFAULT_CHANNELS[head])
    if head == "upernet":
        decode = UPerHead(chs, num_classes, channels=width, norm=norm)
        aux = FCNHead(chs[2], num_classes, channels=256, norm=norm) if aux_head else None
    else:
        decode = SemanticFPN(chs, num_classes, reductions=body.reductions, neck_channels=width, norm=norm)
        aux = None
    return Segmentor(body, decode, num_classes, aux, head=head)


def segmentation_loss(outputs: Dict[str, torch.Tensor], target: torch.Tensor, ignore_index: int = 255,
                      aux_weight: float = 0.4, avg_non_ignore: bool = False) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """mmseg's decode-head loss: each logit map is resized bilinearly (``align_corners=False``) to
    the label size ``(H, W)`` and scored with pixel-wise cross-entropy, ignoring ``ignore_index``.

    Args:
        outputs: :class:`Segmentor` output (``out`` and optionally ``aux``: ``(B, K, h, w)``).
        target: ``(B, H, W)`` int64 train ids or ``ignore_index``.
        aux_weight: weight of the auxiliary loss (0.4 in the papers).
        avg_non_ignore: mmseg's ``CrossEntropyLoss(avg_non_ignore=...)``; the default False (mmseg's
            default and what the papers ran) averages over all ``B*H*W`` pixels, ignored ones
            contributing 0, so a batch of only ignored pixels gives 0, not NaN.

    Returns ``(loss, parts)``: the weighted sum and ``dict(loss_decode=..., loss_aux=...)``
    (detached; ``loss_aux`` only with an auxiliary output).

    Raises:
        ValueError: ``target`` not ``(B, H, W)`` integers matching the logits' batch size.
    """
    logits = outputs["out"]
    if target.dim() != 3 or target.is_floating_point() or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target must be (B, H, W) integer labels with B={logits.shape[0]}, got "
                         f"{tuple(target.shape)} {target.dtype}")

    def ce(x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(x.float(), target, ignore_index=ignore_index, reduction="none")
        if avg_non_ignore:
            return loss.sum() / (target != ignore_index).sum().clamp(min=1)
        return loss.mean()

    loss = ce(logits)
    parts = {"loss_decode": loss.detach()}
    if "aux" in outputs and aux_weight:
        aux = ce(outputs["aux"])
        parts["loss_aux"] = aux.detach()
        loss = loss + aux_weight * aux
    return loss, parts
