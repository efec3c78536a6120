#!/usr/bin/env python3
"""Semantic segmentation with any visionattn backbone: ``train`` and ``eval`` (UPerNet, Semantic FPN).

Models: :func:`visionattn.segmentation.build_segmentor` (UPerNet with PPM + FPN fusion and an
auxiliary FCN head on stage 3, or Semantic FPN, on any registered model). Data: ADE20K
(``images/{training,validation}/*.jpg`` + ``annotations/{training,validation}/*.png``, 0 =
ignore with ``reduce_zero_label``), Cityscapes (``leftImg8bit`` / ``gtFine *_labelTrainIds.png``)
or any folder in the ADE20K layout with a ``classes.txt`` (``--dataset folder``). Training
pipeline as mmseg's ADE20K one (resize to ``--scale`` 2048x512 with ratio 0.5-2.0, random crop
``--crop-size`` with ``cat_max_ratio`` 0.75, flip, photometric distortion, pad with ignore);
evaluation at ``--scale`` keeping the aspect ratio, whole-image or sliding-window
(``--eval-mode slide``, crop 512, stride 341) inference, ``--aug-test`` for the papers' "MS"
column (ratios 0.5-1.75 + flip). Metrics: aAcc, mIoU, mAcc and per-class IoU/Acc from a
confusion matrix summed over processes (mmseg's definitions, 255 ignored).

Recipes: ``configs/ade20k/*.yaml`` (one per backbone x head the papers report: AdamW lr 6e-5, wd
0.01 without decay on norms and position tables, poly power 1.0 with a 1,500-iteration linear
warm-up from 1e-6, 160k iterations, 2 images per GPU x 8 GPUs for UPerNet). The LR schedule is a
per-iteration ``LambdaLR`` with mmcv's exact rule (:class:`MMSegSchedule`): timm's
``PolyLRScheduler`` warms up linearly towards the *base* LR, while mmcv multiplies the poly value
of the current iteration by the warm-up factor, so timm's cannot reproduce it exactly.

Distributed: launch with ``torchrun --nproc_per_node=G``; NCCL on CUDA, gloo on CPU. Each rank
draws its own shard of a seeded permutation per pass over the data; evaluation shards the
validation images and sums the confusion matrices. ``--norm syncbn`` turns the heads' BatchNorm
into SyncBatchNorm under DDP on CUDA (torch's SyncBatchNorm has no CPU kernel: on CPU it stays BatchNorm).

Outputs in ``--output``: ``last.pth.tar`` (model, optimizer, scheduler, grad scaler, iteration,
RNG states of every rank, arguments, class names; written atomically every
``--checkpoint-interval`` iterations and at the end), ``iterations.jsonl`` (one record per
iteration: loss terms, lr, seconds), ``log.csv`` (one row per evaluation), ``eval_iter<N>.json``,
``eval.json`` + ``eval.md`` (the last evaluation: aAcc, mIoU, mAcc, per-class IoU and Acc),
``curves.png`` (loss, LR and mIoU against iteration) and ``summary.json``. ``--resume auto``
continues from ``last.pth.tar``; on CPU with a fixed seed and ``--workers 0`` a resumed run ends
with the same weights as an uninterrupted one. ``--save-predictions DIR`` writes one PNG per
validation image: image | ground truth | prediction in the dataset's colour palette.

Examples::

    torchrun --nproc_per_node=8 tools/seg.py train -c configs/ade20k/upernet_dinat_tiny.yaml \\
        --data-dir /data/ADEChallengeData2016 --output runs/upernet_dinat_tiny
    python tools/seg.py eval --checkpoint runs/upernet_dinat_tiny/last.pth.tar \\
        --data-dir /data/ADEChallengeData2016 --aug-test
"""
from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from visionattn.engine.checkpoint import find_resume_checkpoint, get_all_rng_states, load_checkpoint, save_checkpoint, set_rng_state
from visionattn.engine.cli import UsageError, check_output_dir, run_cli
from visionattn.engine.config import load_config, parse_model_kwargs
from visionattn.engine.console import default_workers, show_progress, unknown_model_message
from visionattn.engine.distributed import (all_reduce_sum, barrier, init_distributed, is_distributed,
                                           unwrap_model)
from visionattn.engine.evaluation import autocast, precision_name, resolve_amp
from visionattn.engine.files import atomic_write, atomic_write_text, jsonable
from visionattn.engine.reports import save_figure, write_log_csv

PROGRAM = "tools/seg.py"
CHECKPOINT_NAME = "last.pth.tar"
HEADS = ("upernet", "fpn")
DATASETS = ("ade20k", "cityscapes", "folder")
SCHEDULES = ("poly", "cosine")
EVAL_MODES = ("whole", "slide")
RESUME_HINT = "the last checkpoint is in OUTPUT/last.pth.tar, continue with --resume auto"

# Name components excluded from weight decay in the papers' mmseg configs (paramwise_cfg custom_keys):
# NAT/DiNAT {'rpb', 'norm'}; CSWin/BiFormer/Agent-Swin {'absolute_pos_embed', 'relative_position_bias_table',
# 'norm'} plus Agent's agent biases; our models' other position tables and tokens likewise.
NO_DECAY_KEYWORDS = ("norm", "rpb", "relative_position_bias_table", "pos_embed", "absolute_pos_embed", "cls_token",
                     "an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias", "ac_bias", "ca_bias")

DEFAULTS: Dict[str, Any] = dict(
    head="upernet", model=None, model_kwargs={}, pretrained=False, pretrained_file=None, drop_path=None, norm="bn",
    aux_head=True, aux_weight=0.4, channels=None,
    dataset="ade20k", data_dir=None, train_split="training", val_split="validation", reduce_zero_label=None,
    crop_size=[512, 512], scale=[2048, 512], ratio_range=[0.5, 2.0], cat_max_ratio=0.75,
    max_train_images=None, max_val_images=None,
    iters=160000, schedule="poly", power=1.0, min_lr=0.0, min_lr_ratio=None, warmup_iters=1500, warmup_ratio=1e-6,
    lr=6e-5, weight_decay=0.01, betas=[0.9, 0.999], layer_decay=None, no_decay_keywords=list(NO_DECAY_KEYWORDS),
    no_decay_1d=True, clip_grad=None, batch_size=2, recipe_gpus=8,
    workers=None, amp=False, amp_dtype="auto", device=None, seed=0, threads=None,
    eval_interval=16000, checkpoint_interval=None, eval_mode="whole", eval_crop=[512, 512], eval_stride=[341, 341],
    aug_test=False, aug_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], save_predictions=None, max_predictions=None,
    output=None, progress=None, stop_after_iter=None, paper=None, source=None,
)
# arguments whose change makes a resumed run differ from an uninterrupted one
_REPRO_KEYS = ("head", "model", "model_kwargs", "norm", "aux_head", "channels", "crop_size", "scale", "ratio_range",
               "cat_max_ratio", "iters", "schedule", "power", "min_lr", "min_lr_ratio", "warmup_iters", "warmup_ratio",
               "lr", "weight_decay", "layer_decay", "batch_size", "seed")
# arguments that describe the evaluation call rather than the trained model (eval takes them from its own flags)
_EVAL_CALL_KEYS = ("workers", "device", "threads", "output", "amp", "amp_dtype", "progress", "stop_after_iter",
                   "max_val_images", "save_predictions", "max_predictions", "eval_mode", "eval_crop", "eval_stride",
                   "aug_test", "aug_ratios", "data_dir", "val_split", "dataset", "reduce_zero_label")


# ----------------------------------------------------------------------------------------------- CLI
def _add_common(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--config", "-c", help="YAML file of flag values (keys = these flags with '_'); CLI flags override it")
    a("--head", help=f"decode head: {', '.join(HEADS)}")
    a("--model", help="backbone name registered with timm (visionattn.list_models(), or any timm model)")
    a("--model-kwargs", nargs="*", metavar="KEY=VALUE", help="backbone constructor kwargs (YAML values)")
    a("--norm", choices=("bn", "syncbn"), help="BatchNorm of the heads; syncbn = SyncBatchNorm under DDP")
    a("--aux-head", action=argparse.BooleanOptionalAction, default=None,
      help="UPerNet's auxiliary FCN head on stage 3 (loss weight --aux-weight)")
    a("--channels", type=int, help="decode-head channels (default: the paper's, 512 UPerNet / 256+128 FPN)")
    a("--dataset", help=f"data layout: {', '.join(DATASETS)}")
    a("--data-dir", help="dataset root (ADE20K: images/ and annotations/; folder: plus classes.txt)")
    a("--val-split", help="validation split folder name (validation)")
    a("--reduce-zero-label", action=argparse.BooleanOptionalAction, default=None,
      help="label 0 = ignore, 1..K -> 0..K-1 (default: the dataset's convention; on for ADE20K)")
    a("--scale", type=int, nargs=2, metavar=("LONG", "SHORT"), help="resize scale (2048 512), test keeps ratio")
    a("--max-val-images", type=int, help="evaluate on the first N validation images only")
    a("--eval-mode", choices=EVAL_MODES, help="whole-image or sliding-window inference")
    a("--eval-crop", type=int, nargs=2, metavar=("H", "W"), help="sliding-window crop (512 512)")
    a("--eval-stride", type=int, nargs=2, metavar=("H", "W"), help="sliding-window stride (341 341)")
    a("--aug-test", action=argparse.BooleanOptionalAction, default=None,
      help="multi-scale (--aug-ratios) + flip test, the papers' 'MS' column")
    a("--aug-ratios", type=float, nargs="+", help="scale ratios of --aug-test (0.5 0.75 1.0 1.25 1.5 1.75)")
    a("--save-predictions", metavar="DIR", help="write image | ground truth | prediction PNGs of the evaluation here")
    a("--max-predictions", type=int, help="with --save-predictions: at most N images per process")
    a("--workers", type=int, help="data-loader workers per process (default: min(4, CPUs / processes on the node))")
    a("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (bf16, or fp16+GradScaler)")
    a("--amp-dtype", choices=("auto", "bfloat16", "float16"))
    a("--device", choices=("cpu", "cuda"))
    a("--threads", type=int, help="torch.set_num_threads per process")
    a("--output", help="output folder")
    a("--progress", action=argparse.BooleanOptionalAction, default=None,
      help="tqdm progress bar (default: only when stderr is a terminal)")
    a("--paper", help=argparse.SUPPRESS)
    a("--source", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """``train`` and ``eval`` sub-commands (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="visionattn-seg", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a segmentor (DDP with torchrun)")
    _add_common(t)
    a = t.add_argument
    a("--pretrained", action=argparse.BooleanOptionalAction, default=None, help="ImageNet weights for the backbone")
    a("--pretrained-file", help="local ImageNet checkpoint for the backbone (implies --pretrained)")
    a("--drop-path", type=float, help="backbone stochastic depth (drop_path_rate)")
    a("--aux-weight", type=float, help="auxiliary loss weight (0.4)")
    a("--train-split", help="training split folder name (training)")
    a("--crop-size", type=int, nargs=2, metavar=("H", "W"), help="training crop (512 512)")
    a("--ratio-range", type=float, nargs=2, metavar=("LOW", "HIGH"), help="random rescale ratios (0.5 2.0)")
    a("--cat-max-ratio", type=float, help="re-draw a crop where one class covers more than this (0.75)")
    a("--max-train-images", type=int, help="train on the first N images only")
    a("--iters", type=int, help="training iterations (160000)")
    a("--schedule", choices=SCHEDULES, help="poly (power --power, --min-lr) or cosine (--min-lr-ratio)")
    a("--power", type=float, help="poly power (1.0)")
    a("--min-lr", type=float, help="poly end LR (0)")
    a("--min-lr-ratio", type=float, help="cosine end LR as a fraction of the LR")
    a("--warmup-iters", type=int, help="linear warm-up iterations (1500)")
    a("--warmup-ratio", type=float, help="warm-up starts at this fraction of the scheduled LR (1e-6)")
    a("--lr", type=float)
    a("--weight-decay", type=float)
    a("--betas", type=float, nargs=2)
    a("--layer-decay", type=float, help="layer-wise LR decay over the backbone's group_matcher layers (off)")
    a("--no-decay-keywords", nargs="*", help="name components without weight decay")
    a("--no-decay-1d", action=argparse.BooleanOptionalAction, default=None,
      help="no weight decay on 1-d parameters (norm weights, biases); default on")
    a("--clip-grad", type=float, help="clip the gradient norm")
    a("--batch-size", type=int, help="images per process per iteration (2)")
    a("--recipe-gpus", type=int, help=argparse.SUPPRESS)
    a("--seed", type=int)
    a("--eval-interval", type=int, help="evaluate every N iterations (0: only after the last)")
    a("--checkpoint-interval", type=int, help="save last.pth.tar every N iterations (default: --eval-interval)")
    a("--resume", help="'auto' (OUTPUT/last.pth.tar if present) or a checkpoint path")
    a("--overwrite", action="store_true", help="reuse a non-empty --output for a fresh run")
    a("--stop-after-iter", type=int, help="save and exit after this iteration (simulates an interruption)")
    e = sub.add_parser("eval", help="evaluate a checkpoint: mIoU, mAcc, aAcc, per-class IoU")
    _add_common(e)
    e.add_argument("--checkpoint", required=True,
                   help="last.pth.tar written by train, or a file holding a segmentor state dict")
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise KeyError(command)


def _positive(cfg: Dict[str, Any], key: str, low: float = 1) -> None:
    if cfg.get(key) is not None and cfg[key] < low:
        raise UsageError(f"--{key.replace('_', '-')} must be >= {low}, got {cfg[key]}")


def resolve_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, Optional[Dict[str, Any]]]:
    """Merge: CLI flags > ``--config`` > the checkpoint's arguments (resume/eval) > :data:`DEFAULTS`.

    Returns ``(args, checkpoint or None)``. Raises :class:`UsageError` for an unknown config key
    (with the closest flags), model or head, and for values out of range; an ``eval`` checkpoint
    that is a bare state dict needs ``--model`` and ``--head`` (or ``-c``).
    """
    parser = build_parser()
    raw = parser.parse_args(argv)
    explicit = {k: v for k, v in vars(raw).items() if v is not None}
    command = explicit.pop("command")
    config_path = explicit.pop("config", None)
    # a recipe file holds train flags; eval reads the same files (the model, head and data settings it needs)
    config = load_config(config_path, _subparser(parser, "train"), program=PROGRAM) if config_path else {}
    if "model_kwargs" in explicit:
        explicit["model_kwargs"] = parse_model_kwargs(explicit["model_kwargs"])
    resume = explicit.pop("resume", None)
    overwrite = bool(explicit.pop("overwrite", False))
    ckpt, ckpt_path = None, None
    if command == "eval":
        ckpt_path = Path(explicit.pop("checkpoint"))
        ckpt = _load_eval_checkpoint(ckpt_path)
    elif resume:
        ckpt_path = find_resume_checkpoint(resume, explicit.get("output") or config.get("output"), CHECKPOINT_NAME)
        if ckpt_path is not None:
            ckpt = load_checkpoint(ckpt_path, program=f"{PROGRAM} train")
    # what the checkpoint's run was called with, less what names that call only (bars, the interruption)
    base = {k: v for k, v in dict((ckpt or {}).get("args", {})).items()
            if k in DEFAULTS and k not in ("progress", "stop_after_iter")}
    if command == "eval":  # the data, device and test settings come from this call, not from the training run
        for k in _EVAL_CALL_KEYS:
            if k not in ("dataset", "reduce_zero_label") or k in config:
                base.pop(k, None)
    cfg = {**DEFAULTS, **base, **config, **explicit}
    if command == "eval" and "output" not in explicit and "output" not in config:
        cfg["output"] = str(ckpt_path.parent)
    if cfg["model"] is None:
        raise UsageError("--model is required (or -c with a 'model' key)")
    msg = unknown_model_message(cfg["model"])
    if msg:
        raise UsageError(msg)
    if cfg["head"] not in HEADS:
        raise UsageError(f"unknown head {cfg['head']!r}: accepted {', '.join(HEADS)}")
    if cfg["dataset"] not in DATASETS:
        raise UsageError(f"unknown dataset kind {cfg['dataset']!r}: accepted {', '.join(DATASETS)}")
    if cfg["schedule"] not in SCHEDULES:
        raise UsageError(f"unknown schedule {cfg['schedule']!r}: accepted {', '.join(SCHEDULES)}")
    if cfg["eval_mode"] not in EVAL_MODES:
        raise UsageError(f"unknown eval mode {cfg['eval_mode']!r}: accepted {', '.join(EVAL_MODES)}")
    if cfg.get("workers") is None:
        cfg["workers"] = default_workers()
    for key, low in (("iters", 1), ("batch_size", 1), ("workers", 0), ("warmup_iters", 0), ("eval_interval", 0),
                     ("checkpoint_interval", 1), ("channels", 1), ("max_train_images", 1), ("max_val_images", 1),
                     ("max_predictions", 0), ("stop_after_iter", 1), ("threads", 1)):
        _positive(cfg, key, low)
    for key in ("crop_size", "scale", "eval_crop", "eval_stride"):
        if len(cfg[key]) != 2 or min(int(v) for v in cfg[key]) < 1:
            raise UsageError(f"--{key.replace('_', '-')} takes two positive integers, got {cfg[key]}")
        cfg[key] = [int(v) for v in cfg[key]]
    if not 0 < cfg["ratio_range"][0] <= cfg["ratio_range"][1]:
        raise UsageError(f"--ratio-range must be 0 < LOW <= HIGH, got {cfg['ratio_range']}")
    if not cfg["aug_ratios"] or min(cfg["aug_ratios"]) <= 0:
        raise UsageError(f"--aug-ratios must be positive, got {cfg['aug_ratios']}")
    if cfg["lr"] <= 0:
        raise UsageError(f"--lr must be > 0, got {cfg['lr']}")
    if cfg["layer_decay"] is not None and not 0 < cfg["layer_decay"] <= 1:
        raise UsageError(f"--layer-decay must be in (0, 1], got {cfg['layer_decay']}")
    if cfg.get("drop_path") is not None:
        cfg["model_kwargs"] = {**cfg["model_kwargs"], "drop_path_rate": float(cfg["drop_path"])}
    if cfg["pretrained_file"]:
        if not Path(cfg["pretrained_file"]).is_file():
            raise UsageError(f"--pretrained-file {cfg['pretrained_file']} does not exist")
        cfg["pretrained"] = True
    if cfg["checkpoint_interval"] is None:
        cfg["checkpoint_interval"] = cfg["eval_interval"] or cfg["iters"]
    if cfg["output"] is None:
        cfg["output"] = str(Path("runs") / f"{cfg['head']}_{cfg['model']}")
    if ckpt is not None and command == "train":
        changed = [k for k in _REPRO_KEYS if k in base and base[k] != cfg.get(k)]
        if changed and _is_main():
            print("warning: resuming with changed arguments: " + ", ".join(
                f"{k}: {base[k]!r} -> {cfg.get(k)!r}" for k in changed), file=sys.stderr)
    check_output_dir(cfg["output"], "--output")
    if cfg.get("save_predictions"):
        check_output_dir(cfg["save_predictions"], "--save-predictions")
    cfg.update(command=command, resume=str(ckpt_path) if ckpt_path else None, overwrite=overwrite)
    return argparse.Namespace(**cfg), ckpt


def _load_eval_checkpoint(path: Path) -> Dict[str, Any]:
    """Our ``last.pth.tar``, or a plain segmentor state dict (``{name: tensor}`` or ``{'state_dict': ...}``)
    wrapped as ``{'model': state_dict}``. Raises :class:`UsageError` for a missing or foreign file."""
    if not path.is_file():
        raise UsageError(f"--checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        return ckpt
    sd = ckpt.get("state_dict") if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) else ckpt
    if isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values()):
        return {"model": {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}}
    raise UsageError(f"--checkpoint {path} is neither a {PROGRAM} train checkpoint nor a segmentor state dict")


# ----------------------------------------------------------------------------------------------- schedule
class MMSegSchedule:
    """LR factor per iteration for ``torch.optim.lr_scheduler.LambdaLR``: mmcv's ``PolyLrUpdaterHook``
    or ``CosineAnnealingLrUpdaterHook`` (``by_epoch=False``) with ``warmup='linear'``, exactly.

    Iteration ``t`` (0-based, the one about to run) of ``max_iters`` gets
    ``regular(t) = (base - min_lr) * (1 - t / max_iters) ** power + min_lr`` (poly) or
    ``end + (base - end) * (1 + cos(pi t / max_iters)) / 2`` with ``end = base * min_lr_ratio``
    (cosine), and during warm-up (``t < warmup_iters``) ``regular(t) * (1 - (1 - t / warmup_iters) *
    (1 - warmup_ratio))``. The factor is that LR divided by ``base_lr`` (the parameter group's
    initial LR, so a layer-decay scale carries through). Picklable: the scheduler state round-trips.

    Raises:
        ValueError: ``max_iters < 1``, an unknown ``kind``, or a negative ``warmup_iters``.
    """

    def __init__(self, max_iters: int, kind: str = "poly", power: float = 1.0, min_lr: float = 0.0,
                 min_lr_ratio: Optional[float] = None, warmup_iters: int = 0, warmup_ratio: float = 1e-6,
                 base_lr: float = 1.0):
        if max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {max_iters}")
        if kind not in SCHEDULES:
            raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        self.max_iters, self.kind, self.power = int(max_iters), kind, float(power)
        self.min_lr, self.min_lr_ratio = float(min_lr), (None if min_lr_ratio is None else float(min_lr_ratio))
        self.warmup_iters, self.warmup_ratio, self.base_lr = int(warmup_iters), float(warmup_ratio), float(base_lr)

    def lr(self, t: int) -> float:
        """The LR of iteration ``t`` for a group whose initial LR is ``base_lr``."""
        base = self.base_lr
        progress = min(int(t), self.max_iters) / self.max_iters
        if self.kind == "poly":
            regular = (base - self.min_lr) * (1.0 - progress) ** self.power + self.min_lr
        else:
            end = base * (self.min_lr_ratio if self.min_lr_ratio is not None else 0.0)
            regular = end + 0.5 * (base - end) * (math.cos(math.pi * progress) + 1.0)
        if t < self.warmup_iters:
            k = (1.0 - t / self.warmup_iters) * (1.0 - self.warmup_ratio)
            regular *= 1.0 - k
        return regular

    def __call__(self, t: int) -> float:
        return self.lr(t) / self.base_lr if self.base_lr else 0.0


def build_scheduler(optimizer: torch.optim.Optimizer, args) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration ``LambdaLR`` with one :class:`MMSegSchedule` per parameter group (its own base LR)."""
    fns = [MMSegSchedule(args.iters, args.schedule, args.power, args.min_lr, args.min_lr_ratio, args.warmup_iters,
                         args.warmup_ratio, base_lr=g["lr"]) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fns)


# ----------------------------------------------------------------------------------------------- optimizer
def _find_timm_backbone(model: nn.Module) -> Tuple[str, Optional[nn.Module]]:
    """``(prefix, module)`` of the first submodule under ``model.backbone`` that has timm's
    ``group_matcher`` (the classifier the segmentor's backbone adapter wraps), or ``("", None)``."""
    root = getattr(model, "backbone", None)
    if root is None:
        return "", None
    for name, m in root.named_modules():
        if hasattr(m, "group_matcher") and callable(getattr(m, "group_matcher")):
            return ("backbone." + name + "." if name else "backbone."), m
    return "", None


def param_groups(model: nn.Module, lr: float, weight_decay: float, no_decay_keywords: Sequence[str] = NO_DECAY_KEYWORDS,
                 layer_decay: Optional[float] = None, no_decay_1d: bool = True) -> List[Dict[str, Any]]:
    """AdamW parameter groups for a segmentor, as the papers' mmseg ``paramwise_cfg``.

    No weight decay for a parameter that is 1-d (norm weights and biases; unless ``no_decay_1d`` is
    off, for recipes that decay everything such as DaViT's), whose dot-separated name has a
    component containing one of ``no_decay_keywords``, or that the backbone's ``no_weight_decay()``
    names. With ``layer_decay`` ``d`` in (0, 1], backbone layer ``i`` of ``L`` (timm's
    ``group_matcher`` layering, as ``timm.optim.param_groups_layer_decay``) gets ``lr_scale = d **
    (L - i)``; the heads keep 1.0. Each group has ``lr = lr * lr_scale`` and ``lr_scale``.

    Raises:
        ValueError: ``layer_decay`` outside (0, 1], or layer decay on a backbone without ``group_matcher``.
    """
    model = unwrap_model(model)
    prefix, body = _find_timm_backbone(model)
    skip = set()
    if body is not None and hasattr(body, "no_weight_decay"):
        skip = {prefix + n for n in body.no_weight_decay()}
    layer_of: Dict[str, int] = {}
    num_layers = 0
    if layer_decay is not None:
        if not 0 < layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        if body is None:
            raise ValueError(f"layer_decay needs a backbone with group_matcher(); {type(model).__name__} has none")
        from timm.optim._param_groups import _layer_map
        mapping = _layer_map(body)
        num_layers = max(mapping.values()) + 1
        layer_of = {prefix + k: v for k, v in mapping.items()}
    groups: Dict[Tuple[bool, int], Dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        no_decay = (no_decay_1d and p.ndim <= 1) or name in skip or \
            any(k in part for part in parts for k in no_decay_keywords)
        layer = layer_of.get(name, num_layers)
        scale = float(layer_decay ** (num_layers - layer)) if layer_decay is not None else 1.0
        g = groups.setdefault((no_decay, layer), {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                                                   "lr_scale": scale, "lr": lr * scale})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


# ----------------------------------------------------------------------------------------------- data
class InfiniteShardedBatches(torch.utils.data.Sampler):
    """Batches of dataset indices for iteration-based training, forever, starting at ``start_step``.

    Pass ``e`` over the data is ``torch.randperm(n)`` drawn with seed ``seed + e``; rank ``r`` of
    ``w`` takes its ``r``-th share of each block of ``w * batch_size`` indices (incomplete blocks
    at the end of a pass are dropped, as mmseg's ``drop_last`` iteration loader). Step ``s`` is
    therefore a function of ``(seed, s)`` alone, which is what makes ``--resume`` exact.

    Raises:
        ValueError: fewer than ``batch_size * world_size`` samples.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start_step: int = 0):
        self.n, self.bs, self.rank, self.world, self.seed = int(n), int(batch_size), int(rank), int(world_size), int(seed)
        self.per_pass = self.n // (self.bs * self.world)
        if self.per_pass < 1:
            raise ValueError(f"{n} training samples cannot fill one step of {batch_size} per process x "
                             f"{world_size} processes")
        self.start_step = int(start_step)

    def __iter__(self) -> Iterator[List[int]]:
        step = self.start_step
        while True:
            epoch, i = divmod(step, self.per_pass)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            block = perm[i * self.bs * self.world:(i + 1) * self.bs * self.world]
            yield block[self.rank * self.bs:(self.rank + 1) * self.bs]
            step += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is endless
        return sys.maxsize


def _seg():
    try:
        import visionattn.segmentation as seg
    except ImportError as e:  # the library needs only the core dependencies (torch, torchvision, timm)
        raise UsageError(f"visionattn.segmentation could not be imported ({e}); reinstall visionattn") from None
    return seg


def _dataset(args, split: str, train: bool):
    """``build_dataset`` for a split, with the data errors turned into one-line :class:`UsageError`."""
    if not args.data_dir:
        raise UsageError("--data-dir is required (the dataset root)")
    root = Path(args.data_dir)
    if not root.is_dir():
        raise UsageError(f"--data-dir {root} is not a directory")
    seg = _seg()
    kwargs: Dict[str, Any] = dict(crop_size=tuple(args.crop_size), scale=tuple(args.scale))
    if train:
        kwargs.update(ratio_range=tuple(args.ratio_range), cat_max_ratio=args.cat_max_ratio)
    if args.reduce_zero_label is not None:
        kwargs["reduce_zero_label"] = bool(args.reduce_zero_label)
    try:
        ds = seg.build_dataset(args.dataset, str(root), split, train=train, **kwargs)
    except (FileNotFoundError, ValueError, NotADirectoryError) as e:
        raise UsageError(str(e)) from None
    limit = args.max_train_images if train else args.max_val_images
    if limit is not None and limit < len(ds):
        ds = _Limited(ds, int(limit))
    if not len(ds):
        raise UsageError(f"the {split} split of {root} has no images")
    return ds


class _Limited(Subset):
    """The first ``n`` samples of a dataset, keeping its ``classes``, ``palette`` and ``samples``."""

    def __init__(self, ds, n: int):
        super().__init__(ds, list(range(n)))
        self.classes, self.palette = ds.classes, getattr(ds, "palette", None)
        self.samples = list(ds.samples[:n])


def _next_batch(it):
    """``next(it)`` of a data loader, a data error (a corrupt image, a bad label; a ``ValueError``
    naming the file, re-raised by a worker with its traceback as the text) as a one-line :class:`UsageError`."""
    try:
        return next(it)
    except ValueError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        last = lines[-1] if lines else repr(e)
        raise UsageError(last[len("ValueError: "):] if last.startswith("ValueError: ") else last) from None


def _classes(ds) -> List[str]:
    return list(ds.classes)


def build_model(args, num_classes: int, pretrained: bool) -> nn.Module:
    """:func:`visionattn.segmentation.build_segmentor` from the arguments (BatchNorm heads; SyncBN is
    applied by the caller under DDP). ``args.pretrained`` may be a tag (``in22k``): the backbone is then
    ``<model>.<tag>``. Raises :class:`UsageError` for arguments the builder rejects."""
    seg = _seg()
    kwargs = dict(args.model_kwargs or {})
    name = args.model
    if pretrained and isinstance(args.pretrained, str):  # a pretrained tag from a config (in22k, in1k, ...)
        name = f"{name.split('.')[0]}.{args.pretrained}"
    try:
        return seg.build_segmentor(name, args.head, num_classes, pretrained=pretrained,
                                   pretrained_file=args.pretrained_file if pretrained else None, aux_head=args.aux_head,
                                   norm="bn", channels=args.channels, backbone_kwargs=kwargs)
    except (ValueError, TypeError) as e:
        raise UsageError(f"cannot build {args.head} on {args.model}: {e}") from None


# ----------------------------------------------------------------------------------------------- evaluation
def _image_path(ds, idx: int) -> Path:
    sample = ds.samples[idx]
    return Path(sample[0] if isinstance(sample, (tuple, list)) else sample)


def _original_image(path: Path):
    from PIL import Image
    with Image.open(path) as im:
        return im.convert("RGB")


@torch.inference_mode()
def evaluate(model: nn.Module, ds, args, device: torch.device, autocast_dtype: Optional[torch.dtype] = None,
             save_dir: Optional[Path] = None, progress: bool = False) -> Dict[str, Any]:
    """aAcc / mIoU / mAcc and per-class IoU / Acc of ``model`` on ``ds`` (one image at a time, as
    mmseg tests). Each rank takes images ``rank, rank + world, ...``; the confusion matrices are
    summed over ranks inside :class:`~visionattn.segmentation.SegMetric`, so every rank returns the
    same numbers; the BatchNorm running statistics of rank 0 (those the checkpoint saves) are
    broadcast first, as mmseg's ``DistEvalHook(broadcast_bn_buffer=True)``. Inference:
    ``args.eval_mode`` (whole / slide with ``eval_crop``/``eval_stride``), ``args.aug_test``
    (scales ``aug_ratios`` and flip); logits are resized to the label's size.
    With ``save_dir``, each rank writes ``<image stem>.png`` triptychs (image | ground truth |
    prediction) for its first ``args.max_predictions`` images (all when None)."""
    seg = _seg()
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    rank = dist.get_rank() if is_distributed() else 0
    world = dist.get_world_size() if is_distributed() else 1
    if world > 1:  # every rank scores with rank 0's BatchNorm statistics (mmseg's DistEvalHook broadcast_bn_buffer)
        for name, buf in net.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                dist.broadcast(buf, 0)
    k = int(net.num_classes)
    metric = seg.SegMetric(k, ignore_index=255)
    indices = list(range(rank, len(ds), world))
    loader = DataLoader(Subset(ds, indices), batch_size=1, num_workers=args.workers, collate_fn=seg.collate)
    scales = tuple(args.aug_ratios) if args.aug_test else (1.0,)
    palette = getattr(ds, "palette", None)
    saved = 0
    batches = iter(loader)
    for j in tqdm(range(len(indices)), desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        batch = _next_batch(batches)
        images, masks = batch[0].to(device), batch[1].to(device)
        with autocast(device, autocast_dtype):
            logits = seg.inference(net, images, mode=args.eval_mode, crop_size=tuple(args.eval_crop),
                                   stride=tuple(args.eval_stride), scales=scales, flip=bool(args.aug_test),
                                   out_size=tuple(masks.shape[-2:]))
        pred = logits.float().argmax(1)
        metric.update(pred, masks)
        if save_dir is not None and (args.max_predictions is None or saved < args.max_predictions):
            path = _image_path(ds, indices[j])
            trip = seg.overlay_triptych(_original_image(path), masks[0].cpu(), pred[0].cpu(), palette)
            save_dir.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            trip.save(buf, format="PNG")
            atomic_write(save_dir / f"{path.stem}.png", lambda f: f.write(buf.getvalue()))
            saved += 1
    res = metric.compute()
    net.train(was_training)
    names = _classes(ds)
    out = {"aAcc": _num(res["aAcc"]), "mIoU": _num(res["mIoU"]), "mAcc": _num(res["mAcc"]),
           "num_images": len(ds), "mode": args.eval_mode + (" + MS/flip" if args.aug_test else ""),
           "IoU": {n: _num(v) for n, v in zip(names, _as_list(res["IoU"]))},
           "Acc": {n: _num(v) for n, v in zip(names, _as_list(res["Acc"]))}}
    return out


def _as_list(v) -> List[float]:
    return v.tolist() if hasattr(v, "tolist") else list(v)


def _num(v) -> Optional[float]:
    v = float(v)
    return None if math.isnan(v) else v


def markdown_table(res: Dict[str, Any]) -> str:
    """The evaluation as markdown: a summary line (percent) and one row per class (IoU, Acc in %;
    ``n/a`` for a class absent from both ground truth and predictions)."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}"
    lines = [f"aAcc {pct(res['aAcc'])} | mIoU {pct(res['mIoU'])} | mAcc {pct(res['mAcc'])} "
             f"({res['num_images']} images, {res['mode']})", "", "| class | IoU | Acc |", "|---|---:|---:|"]
    lines += [f"| {n} | {pct(res['IoU'][n])} | {pct(res['Acc'].get(n))} |" for n in res["IoU"]]
    return "\n".join(lines) + "\n"


def _write_eval(out: Path, name: str, res: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    payload = {**extra, **res}
    atomic_write_text(out / f"{name}.json", json.dumps(jsonable(payload), indent=2) + "\n")
    atomic_write_text(out / f"{name}.md", markdown_table(res))
    return payload


# ----------------------------------------------------------------------------------------------- reports
def plot_curves(path: Path, records: List[Dict[str, Any]], evals: List[Dict[str, Any]]) -> Optional[Path]:
    """``curves.png``: training loss (per iteration and its running mean), LR, and validation mIoU
    against iteration (matplotlib Agg, written atomically). None without records."""
    if not records:
        return None
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in records]
    loss = np.array([r["loss"] for r in records], dtype=float)
    win = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(win) / win, mode="valid")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, loss, lw=0.6, alpha=0.5, label="iteration")
    axes[0].plot(steps[win - 1:], smooth, lw=1.5, label=f"mean of {win}")
    axes[0].set_ylabel("training loss")
    axes[1].plot(steps, [r["lr"] for r in records])
    axes[1].set_ylabel("learning rate")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    if evals:
        axes[2].plot([e["iter"] for e in evals], [100 * (e["mIoU"] or 0.0) for e in evals], marker="o")
    axes[2].set_ylabel("validation mIoU (%)")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def _read_records(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _prepare_output(out: Path, overwrite: bool, resuming: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if resuming:
        return
    existing = sorted(p.name for p in out.iterdir())
    if existing and not overwrite:
        raise UsageError(f"output directory {out} is not empty ({', '.join(existing[:5])}); pass --overwrite "
                         "or --resume auto")
    if overwrite:
        for p in out.iterdir():
            if p.is_file() and (p.name in (CHECKPOINT_NAME, "iterations.jsonl", "log.csv", "summary.json", "eval.json",
                                           "eval.md", "curves.png") or p.name.startswith("eval_iter")):
                p.unlink()


def startup_summary(args, train_ds, val_ds, model: nn.Module, info: Dict[str, Any], start_iter: int) -> str:
    """The lines ``train`` prints before its first step: model, data, schedule, optimisation, device, output."""
    world = info["world"]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    weights = (f"ImageNet weights from {args.pretrained_file}" if args.pretrained_file else
               "ImageNet pretrained" if args.pretrained else "random init")
    if start_iter:
        weights = f"resumed from {args.resume}"
    kwargs = f" {args.model_kwargs}" if args.model_kwargs else ""
    val = f"{len(val_ds)} val images, eval every {args.eval_interval or args.iters} its ({args.eval_mode}" + \
        (", MS+flip" if args.aug_test else "") + ")" if val_ds is not None else "no val set"
    sched = (f"poly power {args.power:g} to {args.min_lr:g}" if args.schedule == "poly" else
             f"cosine to x{args.min_lr_ratio or 0:g}")
    lines = [
        f"seg train: {args.head} on {args.model}{kwargs} ({weights}), {params:.2f}M params, "
        f"{len(_classes(train_ds))} classes",
        f"  data: {args.dataset} {args.data_dir}: {len(train_ds)} train images, {val}; crop {args.crop_size[0]}x"
        f"{args.crop_size[1]}, scale {args.scale[0]}x{args.scale[1]} x{args.ratio_range[0]:g}-{args.ratio_range[1]:g}",
        f"  schedule: {args.iters} iterations x {args.batch_size} images/process x {world} process(es) "
        f"(recipe: x {args.recipe_gpus} GPUs); {sched}, {args.warmup_iters} warm-up its; AdamW lr {args.lr:g} "
        f"wd {args.weight_decay:g}" + (f", layer decay {args.layer_decay:g}" if args.layer_decay else "")
        + (f", clip {args.clip_grad:g}" if args.clip_grad else ""),
        f"  device {info['device']}, {args.workers} loader workers/process, {precision_name(info['amp_dtype'])}, "
        f"norm {args.norm}, seed {args.seed}; output {args.output}",
    ]
    if start_iter:
        lines.append(f"  continuing at iteration {start_iter + 1} of {args.iters}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- train
def _is_main() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _mean_over_ranks(values: Dict[str, float], device: torch.device) -> Dict[str, float]:
    names = sorted(values)
    sums = all_reduce_sum([values[k] for k in names], device)
    world = dist.get_world_size() if is_distributed() else 1
    return {k: v / world for k, v in zip(names, sums)}


def train(args, ckpt: Optional[Dict[str, Any]], info: Dict[str, Any]) -> Dict[str, Any]:
    """The ``train`` command (see the module docstring); returns the summary dict (rank 0)."""
    device, rank, world = info["device"], info["rank"], info["world"]
    out = Path(args.output)
    if _is_main():
        _prepare_output(out, args.overwrite, resuming=ckpt is not None)
    barrier()
    _seed_all(args.seed + rank)
    train_ds = _dataset(args, args.train_split, train=True)
    val_ds = _dataset(args, args.val_split, train=False)
    seg = _seg()
    classes = _classes(train_ds)
    if _classes(val_ds) != classes:
        raise UsageError(f"the {args.train_split} and {args.val_split} splits name different classes")
    model = build_model(args, len(classes), pretrained=bool(args.pretrained) and ckpt is None)
    model.to(device)
    if args.norm == "syncbn" and info["distributed"]:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif _is_main():  # torch's SyncBatchNorm runs on CUDA only
            print("note: --norm syncbn needs CUDA; the heads keep per-process BatchNorm on CPU", file=sys.stderr)
    try:
        groups = param_groups(model, args.lr, args.weight_decay, args.no_decay_keywords, args.layer_decay,
                              no_decay_1d=args.no_decay_1d)
    except ValueError as e:
        raise UsageError(str(e)) from None
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=tuple(args.betas), weight_decay=args.weight_decay)
    scheduler = build_scheduler(optimizer, args)
    autocast_dtype, need_scaler = info["amp_dtype"], info["need_scaler"]
    scaler = torch.amp.GradScaler(device.type) if need_scaler else None
    data_gen = torch.Generator().manual_seed(args.seed + rank)

    start_iter = 0
    evals: List[Dict[str, Any]] = []
    if ckpt is not None:
        unwrap_model(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_iter = int(ckpt["iter"])
        evals = list(ckpt.get("evals", []))
        rngs = ckpt.get("rng")
        if isinstance(rngs, list) and rank < len(rngs):
            set_rng_state(rngs[rank], data_gen)
        if _is_main():  # drop records of iterations after the checkpoint
            kept = [r for r in _read_records(out / "iterations.jsonl") if r["step"] <= start_iter]
            atomic_write_text(out / "iterations.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
    if _is_main():
        print(startup_summary(args, train_ds, val_ds, model, info, start_iter), flush=True)
    ddp_model = model
    if info["distributed"]:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    try:
        sampler = InfiniteShardedBatches(len(train_ds), args.batch_size, rank, world, args.seed, start_iter)
    except ValueError as e:
        raise UsageError(str(e)) from None
    loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=args.workers, collate_fn=seg.collate,
                        generator=data_gen, persistent_workers=False, pin_memory=device.type == "cuda")
    args_dict = jsonable({k: v for k, v in vars(args).items() if k in DEFAULTS})
    progress = show_progress(args.progress) and _is_main()
    log_file = open(out / "iterations.jsonl", "a") if _is_main() else None
    stop_at = min(args.iters, args.stop_after_iter or args.iters)
    bar = tqdm(total=args.iters, initial=start_iter, desc="train", disable=not progress, dynamic_ncols=True)
    window: List[float] = []
    step = start_iter
    t_data = time.perf_counter()
    t_start = time.perf_counter()
    last_eval: Dict[str, Any] = evals[-1] if evals else {}

    def save() -> None:
        rngs = get_all_rng_states(data_gen)
        if _is_main():
            state = {"model": unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else {},
                     "iter": step, "rng": rngs, "args": args_dict, "evals": evals, "classes": classes}
            save_checkpoint(out / CHECKPOINT_NAME, state)
        barrier()

    try:
        ddp_model.train()
        it = iter(loader)
        while step < stop_at:
            batch = _next_batch(it)
            images = batch[0].to(device, non_blocking=True)
            masks = batch[1]
            masks = masks.to(device, non_blocking=True)
            data_s = time.perf_counter() - t_data
            with autocast(device, autocast_dtype):
                outputs = ddp_model(images)
            loss, parts = seg.segmentation_loss(outputs, masks, ignore_index=255, aux_weight=args.aux_weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at iteration {step + 1}: " + ", ".join(
                    f"{k}={float(v):.4g}" for k, v in parts.items()))
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if args.clip_grad:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if args.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
                optimizer.step()
            lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
            scheduler.step()
            step += 1
            terms = _mean_over_ranks({"loss": float(loss.detach()),
                                      **{k: float(v.detach() if torch.is_tensor(v) else v) for k, v in parts.items()
                                         if k != "loss"}}, device)
            window.append(terms["loss"])
            if log_file is not None:
                log_file.write(json.dumps({"step": step, "lr": lr, **{k: round(v, 6) for k, v in terms.items()},
                                           "data_s": round(data_s, 4),
                                           "time_s": round(time.perf_counter() - t_data, 4)}) + "\n")
                log_file.flush()
            bar.set_postfix(loss=f"{terms['loss']:.3f}", lr=f"{lr:.2e}")
            bar.update(1)
            final = step == args.iters
            if final or (args.eval_interval and step % args.eval_interval == 0):
                res = evaluate(model, val_ds, args, device, autocast_dtype,
                               save_dir=Path(args.save_predictions) if final and args.save_predictions else None,
                               progress=progress)
                row = {"iter": step, "train_loss": round(sum(window) / max(1, len(window)), 6), "lr": lr,
                       **{m: None if res[m] is None else round(res[m], 6) for m in ("mIoU", "mAcc", "aAcc")}}
                window = []
                evals.append(row)
                last_eval = row
                if _is_main():
                    _write_eval(out, f"eval_iter{step}", res, {"iter": step})
                    if final:
                        _write_eval(out, "eval", res, {"iter": step})
                    write_log_csv(out / "log.csv", evals)
                    bar.write(f"iter {step}: " + markdown_table(res).splitlines()[0] +
                              f"; train loss {row['train_loss']:.4f}")
                ddp_model.train()
            if final or step % args.checkpoint_interval == 0 or step == stop_at:
                save()
                if _is_main():
                    log_file.flush()
                    plot_curves(out / "curves.png", _read_records(out / "iterations.jsonl"), evals)
            t_data = time.perf_counter()
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    if step < args.iters and _is_main():
        print(f"stopping after iteration {step} as asked; continue with --resume auto")
    summary = {"command": "train", "output": str(out), "iters_done": step, "iters": args.iters,
               "train_time_s": round(time.perf_counter() - t_start, 2), "evals": evals, "eval": last_eval,
               "classes": classes, "param_count": sum(p.numel() for p in model.parameters()), "args": args_dict}
    if _is_main():
        atomic_write_text(out / "summary.json", json.dumps(jsonable(summary), indent=2) + "\n")
    return summary


# ----------------------------------------------------------------------------------------------- eval
def evaluate_command(args, ckpt: Dict[str, Any], info: Dict[str, Any]) -> Dict[str, Any]:
    """The ``eval`` command: rebuild the checkpoint's segmentor, evaluate it, write ``eval.json`` + ``eval.md``."""
    device = info["device"]
    out = Path(args.output)
    val_ds = _dataset(args, args.val_split, train=False)
    classes = _classes(val_ds)
    trained = ckpt.get("classes")
    if trained is not None and list(trained) != classes:
        raise UsageError(f"the checkpoint was trained on {len(trained)} classes ({', '.join(trained[:4])}, ...) but "
                         f"{args.data_dir} names {len(classes)} ({', '.join(classes[:4])}, ...); "
                         "evaluate on data with the same classes.txt")
    model = build_model(args, len(classes), pretrained=False)
    missing, unexpected = [], []
    try:
        result = model.load_state_dict(ckpt["model"], strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    except RuntimeError as e:
        raise UsageError(f"--checkpoint {args.resume} does not fit {args.head} on {args.model} with "
                         f"{len(classes)} classes: {str(e).splitlines()[0]}") from None
    if missing or unexpected:
        raise UsageError(f"--checkpoint {args.resume} does not fit {args.head} on {args.model}: missing keys "
                         f"{missing[:5]}, unexpected keys {unexpected[:5]}")
    model.to(device)
    res = evaluate(model, val_ds, args, device, info["amp_dtype"],
                   save_dir=Path(args.save_predictions) if args.save_predictions else None,
                   progress=show_progress(args.progress) and _is_main())
    if not _is_main():
        return {}
    out.mkdir(parents=True, exist_ok=True)
    payload = _write_eval(out, "eval", res, {"checkpoint": args.resume, "iter": ckpt.get("iter")})
    print(markdown_table(res), end="")
    return {"command": "eval", "output": str(out), **payload}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run ``train`` or ``eval``; returns the summary dict (``{}`` on ranks other than 0)."""
    args, ckpt = resolve_args(argv)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    rank, world, device = init_distributed(args.device)
    try:
        amp_dtype, need_scaler = resolve_amp(device, bool(args.amp), args.amp_dtype)
        info = {"rank": rank, "world": world, "device": device, "distributed": world > 1, "amp_dtype": amp_dtype,
                "need_scaler": need_scaler}
        if args.command == "train":
            result = train(args, ckpt, info)
        else:
            result = evaluate_command(args, ckpt, info)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return result if rank == 0 else {}


def _errors() -> Tuple[type, ...]:
    """The exception types printed as one-line errors: :class:`UsageError` and the segmentation
    library's data error (a corrupt image, a bad label file), when it defines one."""
    try:
        import visionattn.segmentation as seg
    except ImportError:
        return (UsageError,)
    extra = getattr(seg, "SegmentationDataError", None)
    return (UsageError,) + ((extra,) if isinstance(extra, type) else ())


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: run :func:`main`, print user and data errors as one line without a traceback."""
    return run_cli(main, argv, errors=_errors(), interrupted=RESUME_HINT)


if __name__ == "__main__":
    sys.exit(cli())
