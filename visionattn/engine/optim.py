"""The optimisation pieces of a training recipe, built from its flags with timm's factories:
the optimizer (weight decay and layer-wise LR decay), the loss, and Mixup/CutMix."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2


def mixup_active(cfg: Dict[str, Any]) -> bool:
    """Whether the flags (as a dict) turn Mixup or CutMix on."""
    return bool(cfg.get("mixup") or cfg.get("cutmix") or cfg.get("cutmix_minmax"))


def build_mixup(args: argparse.Namespace, num_classes: int) -> Optional[Mixup]:
    """``timm.data.Mixup`` from the flags (label smoothing folded into its soft targets), or
    None when mixup and cutmix are off."""
    if not mixup_active(vars(args)):
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix,
                 cutmix_minmax=tuple(args.cutmix_minmax) if args.cutmix_minmax else None, prob=args.mixup_prob,
                 switch_prob=args.mixup_switch_prob, mode=args.mixup_mode, label_smoothing=args.smoothing,
                 num_classes=num_classes)


def build_loss(smoothing: float, mixup: bool) -> nn.Module:
    """The training loss: ``SoftTargetCrossEntropy`` while Mixup/CutMix is active (its soft
    targets already carry the label smoothing), else ``LabelSmoothingCrossEntropy(smoothing)``,
    or plain cross-entropy for ``smoothing == 0``. Inputs: logits (B, C) and targets (B,) int64
    or (B, C) probabilities."""
    if mixup:
        return SoftTargetCrossEntropy()
    return LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else nn.CrossEntropyLoss()


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2`` from the flags: ``opt`` (adamw, sgd, lamb, ...), ``lr``,
    ``weight_decay`` (skipping 1-D parameters and ``model.no_weight_decay()``), ``momentum``,
    ``opt_eps``/``opt_betas`` when given, and ``layer_decay``: parameter group ``i`` of the model's
    ``group_matcher`` (stem first, head last) gets ``lr_scale = layer_decay ** (last - i)``, which
    the scheduler multiplies into every LR it sets. Build it after FSDP sharding."""
    kwargs: Dict[str, Any] = {}
    if getattr(args, "opt_eps", None) is not None:
        kwargs["eps"] = args.opt_eps
    if getattr(args, "opt_betas", None) is not None:
        kwargs["betas"] = tuple(args.opt_betas)
    return create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                               momentum=getattr(args, "momentum", 0.9), layer_decay=args.layer_decay,
                               layer_decay_min_scale=getattr(args, "layer_decay_min_scale", 0.0), **kwargs)
