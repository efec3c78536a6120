"""Training and evaluation loops for the COCO detectors (used by ``visionattn/tools/coco.py``).

* :func:`init_distributed`: ``torchrun`` environment -> process group (nccl on CUDA, gloo on
  CPU), device.
* :func:`param_groups`: AdamW groups as the papers' mmdet ``paramwise_cfg`` (no weight decay on
  norms, relative-position biases / position embeddings, biases), optional layer-wise LR decay
  over the backbone's ``group_matcher`` layers (timm ``_layer_map``).
* :class:`WarmupMultiStep`: mmdet's ``lr_config = dict(policy='step', warmup='linear',
  warmup_iters=500, warmup_ratio=0.001, step=[8, 11])`` as a per-iteration ``LambdaLR`` factor.
* :func:`train_one_epoch` (AMP, all-reduced per-iteration losses, non-finite guard) and
  :func:`evaluate` (rank-sharded inference + :class:`~visionattn.detection.evaluation.CocoEvaluator`).
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from visionattn.engine.distributed import init_distributed as _init_process_group

from .evaluation import CocoEvaluator

__all__ = [
    "init_distributed", "is_main", "unwrap", "param_groups", "WarmupMultiStep", "SCHEDULES",
    "train_one_epoch", "evaluate", "NO_DECAY_KEYWORDS",
]

# name components excluded from weight decay in the papers' configs: NAT/DiNAT {'rpb', 'norm'};
# Swin-style (Agent-Swin, CSWin, DaViT, BiFormer/UniFormer) {'absolute_pos_embed',
# 'relative_position_bias_table', 'norm'}; plus our position/agent biases and all 1-d biases.
NO_DECAY_KEYWORDS = ("norm", "rpb", "relative_position_bias_table", "pos_embed", "absolute_pos_embed", "cls_token",
                     "an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias", "ac_bias", "ca_bias")

# epochs and LR steps (epochs after which LR x 0.1) of the mmdet schedules
SCHEDULES = {"1x": (12, (8, 11)), "3x": (36, (27, 33))}


def init_distributed(device_name: Optional[str] = None, timeout_s: int = 1800) -> Dict[str, Any]:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (set by ``torchrun``) and set things up.

    Returns ``{'rank', 'world_size', 'local_rank', 'device', 'distributed'}``. With
    ``WORLD_SIZE > 1`` it initialises the default process group (``env://``): nccl and
    ``cuda:LOCAL_RANK`` on CUDA, gloo on CPU. ``device_name`` forces ``'cpu'`` or ``'cuda'``.

    The process group is :func:`visionattn.engine.distributed.init_distributed`'s (the
    classification trainer's), so both programs join it the same way.

    Raises:
        ValueError: ``device_name='cuda'`` without CUDA (a ``UsageError``), or an unknown device name.
    """
    if device_name not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device_name!r}")
    rank, world, device = _init_process_group(device_name, timeout_s=timeout_s)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is None:  # one process: still a numbered device
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return {"rank": rank, "world_size": world, "local_rank": local, "device": device, "distributed": world > 1}


def is_main() -> bool:
    """True on rank 0 (or without a process group)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _layer_ids(model: nn.Module) -> Tuple[Dict[str, int], int]:
    """Backbone parameter name (``backbone.body.model.*``) -> layer id from its group_matcher."""
    from timm.optim._param_groups import _layer_map
    body = unwrap(model).backbone.body.model
    if not hasattr(body, "group_matcher"):
        raise ValueError(f"layer_decay needs a backbone with group_matcher(); {type(body).__name__} has none")
    mapping = _layer_map(body)
    num_layers = max(mapping.values()) + 1
    return {f"backbone.body.model.{k}": v for k, v in mapping.items()}, num_layers


def param_groups(model: nn.Module, lr: float, weight_decay: float, no_decay_keywords: Sequence[str] = NO_DECAY_KEYWORDS,
                 layer_decay: Optional[float] = None, no_decay_1d: bool = True) -> List[Dict[str, Any]]:
    """AdamW parameter groups for a detector built by :func:`~visionattn.detection.build_detector`.

    A parameter gets no weight decay when it is 1-d (norm weights, biases; unless
    ``no_decay_1d=False``, for recipes that decay everything such as DaViT's), when a dot-separated
    component of its name contains one of ``no_decay_keywords``, or when the backbone's
    ``no_weight_decay()`` names it. With ``layer_decay`` (0 < d < 1), backbone layer ``i`` of
    ``L`` gets ``lr_scale = d ** (L - i)`` (the neck and heads keep 1.0), as BEiT/timm's
    ``param_groups_layer_decay``. Frozen parameters are skipped. Each group has ``lr_scale`` and
    ``lr = lr * lr_scale`` (so a ``LambdaLR`` on top keeps the scale).

    Raises:
        ValueError: ``layer_decay`` outside (0, 1], or a backbone without ``group_matcher``.
    """
    model = unwrap(model)
    skip: Set[str] = set()
    bb = getattr(model, "backbone", None)
    if bb is not None and hasattr(bb, "no_weight_decay"):
        skip = {f"backbone.{n}" for n in bb.no_weight_decay()}
    layer_of, num_layers = ({}, 0)
    if layer_decay is not None:
        if not 0 < layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        layer_of, num_layers = _layer_ids(model)
    groups: Dict[Tuple[bool, int], Dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        no_decay = (no_decay_1d and p.ndim <= 1) or name in skip or any(k in part for part in parts for k in no_decay_keywords)
        layer = layer_of.get(name, num_layers)
        scale = float(layer_decay ** (num_layers - layer)) if layer_decay is not None else 1.0
        key = (no_decay, layer)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale,
                           "lr": lr * scale,
                           "names": []}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    out = []
    for key in sorted(groups):
        g = groups[key]
        g.pop("names")
        out.append(g)
    return out


class WarmupMultiStep:
    """LR factor per iteration: linear warmup from ``warmup_ratio`` over ``warmup_iters``, times
    ``gamma ** k`` where ``k`` counts the epochs in ``steps`` already finished (mmdet
    ``policy='step'``, ``warmup='linear'``). Use with ``torch.optim.lr_scheduler.LambdaLR``
    stepped once per iteration; picklable, so the scheduler state round-trips."""

    def __init__(self, iters_per_epoch: int, steps: Sequence[int], gamma: float = 0.1, warmup_iters: int = 500,
                 warmup_ratio: float = 0.001):
        if iters_per_epoch < 1:
            raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
        self.iters_per_epoch, self.steps, self.gamma = int(iters_per_epoch), sorted(int(s) for s in steps), float(gamma)
        self.warmup_iters, self.warmup_ratio = int(warmup_iters), float(warmup_ratio)

    def __call__(self, it: int) -> float:
        epoch = it // self.iters_per_epoch
        factor = self.gamma ** sum(1 for s in self.steps if epoch >= s)
        if it < self.warmup_iters:
            factor *= 1.0 - (1.0 - it / self.warmup_iters) * (1.0 - self.warmup_ratio)
        return factor


def _reduce_losses(losses: Dict[str, torch.Tensor]) -> Dict[str, float]:
    names = sorted(losses)
    vals = torch.stack([losses[k].detach().float() for k in names])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(vals)
        vals /= dist.get_world_size()
    return {k: float(v) for k, v in zip(names, vals.tolist())}


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler, *, device: torch.device,
                    epoch: int, global_step: int, autocast_dtype: Optional[torch.dtype] = None,
                    scaler: Optional[torch.amp.GradScaler] = None, clip_grad: Optional[float] = None,
                    log_fn: Optional[Callable[[Dict[str, Any]], None]] = None, progress: bool = True,
                    max_iters: Optional[int] = None) -> Dict[str, Any]:
    """One epoch of detector training; returns mean losses and the new ``global_step``.

    ``epoch`` is the 0-based epoch index (the progress bar and error messages show ``epoch + 1``,
    as ``log.csv`` does; the ``epoch`` of the records stays 0-based). ``loader`` yields
    ``(images, targets)`` lists (:func:`~visionattn.detection.data.collate_fn`).
    ``scheduler`` (per-iteration ``LambdaLR``) is stepped after every update; ``log_fn`` receives
    one record per iteration on rank 0 (epoch, iter, step, lr, the all-reduced loss terms and
    their sum, seconds). Raises ``FloatingPointError`` when the loss is not finite.
    """
    model.train()
    sums: Dict[str, float] = {}
    n = 0
    total = len(loader) if max_iters is None else min(len(loader), max_iters)
    bar = tqdm(total=total, desc=f"epoch {epoch + 1}", disable=not (progress and is_main()), dynamic_ncols=True)
    t0 = time.time()
    for i, (images, targets) in enumerate(loader):
        if max_iters is not None and i >= max_iters:
            break
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
                   for t in targets]
        ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
        with ctx:
            losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss at epoch {epoch + 1} iteration {i}: "
                + ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items()))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        global_step += 1
        reduced = _reduce_losses(losses)
        reduced["loss"] = sum(reduced.values())
        for k, v in reduced.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        if log_fn is not None and is_main():
            log_fn({"epoch": epoch, "iter": i, "step": global_step, "lr": lr, **reduced,
                    "time": round(time.time() - t0, 4)})
        bar.set_postfix(loss=f"{reduced['loss']:.3f}", lr=f"{lr:.2e}")
        bar.update(1)
    bar.close()
    return {"global_step": global_step, "iters": n, **{k: v / max(n, 1) for k, v in sums.items()}}


@torch.inference_mode()
def evaluate(model: nn.Module, loader, coco_gt, label_to_cat_id, *, device: torch.device,
             iou_types: Sequence[str] = ("bbox",), autocast_dtype: Optional[torch.dtype] = None,
             progress: bool = True, verbose: bool = True) -> Dict[str, Any]:
    """Run the (unwrapped) detector over this rank's share of ``loader`` and score with COCOeval.

    Every rank must call it (the results are gathered to rank 0). Returns, on rank 0, the
    :meth:`CocoEvaluator.summarize` dict (``bbox``/``segm`` stats, ``num_images``, ``results``);
    ``{}`` on other ranks.
    """
    net = unwrap(model)
    net.eval()
    evaluator = CocoEvaluator(coco_gt, iou_types, label_to_cat_id)
    bar = tqdm(total=len(loader), desc="eval", disable=not (progress and is_main()), dynamic_ncols=True)
    for images, targets in loader:
        images = [im.to(device, non_blocking=True) for im in images]
        ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
        with ctx:
            outputs = net(images)
        outputs = [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()} for o in outputs]
        evaluator.update({int(t["image_id"]): o for t, o in zip(targets, outputs)})
        bar.update(1)
    bar.close()
    return evaluator.summarize(verbose=verbose)
