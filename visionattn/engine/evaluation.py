"""Evaluation of a classifier: top-1/top-5 and cross-entropy over a loader (rank-sharded,
summed over ranks), in the precision :func:`resolve_amp` picks (fp32 or a bf16/fp16 autocast)."""
from __future__ import annotations

import contextlib
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import accuracy
from tqdm import tqdm

from .cli import UsageError
from .distributed import all_reduce_sum


def resolve_amp(device: torch.device, amp: bool, amp_dtype: str = "auto") -> Tuple[Optional[torch.dtype], bool]:
    """Autocast dtype (None = full fp32) and whether a GradScaler is needed.

    CPU: bfloat16 only. CUDA: ``auto`` picks bfloat16 where supported, else float16 with a
    GradScaler. Raises :class:`UsageError` for a combination the device cannot run.
    """
    if not amp:
        return None, False
    if amp_dtype not in ("auto", "bfloat16", "float16"):
        raise UsageError(f"--amp-dtype must be auto, bfloat16 or float16, got {amp_dtype!r}")
    if device.type == "cpu":
        if amp_dtype == "float16":
            raise UsageError("--amp on CPU supports bfloat16 only (use --amp-dtype bfloat16 or auto)")
        return torch.bfloat16, False
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if amp_dtype == "bfloat16" and not bf16_ok:
            raise UsageError("--amp-dtype bfloat16 is not supported by this GPU; use float16")
        if amp_dtype == "bfloat16" or (amp_dtype == "auto" and bf16_ok):
            return torch.bfloat16, False
        return torch.float16, True
    raise UsageError(f"--amp is supported on cpu and cuda devices, not {device.type}")


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` on ``device`` to ``dtype``, or a no-op context for None (full fp32)."""
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def precision_name(autocast_dtype: Optional[torch.dtype]) -> str:
    """How a forward pass computes: ``"float32"`` without autocast, else e.g. ``"bfloat16 autocast"``."""
    return "float32" if autocast_dtype is None else f"{str(autocast_dtype).replace('torch.', '')} autocast"


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, autocast_dtype: Optional[torch.dtype] = None,
             progress: bool = True, desc: str = "eval", num_valid: Optional[int] = None,
             channels_last: bool = False, reduce: bool = True) -> Dict[str, float]:
    """Top-1/top-5 accuracy (percent) and mean cross-entropy of ``model`` over ``loader``.

    Uses ``timm.utils.accuracy``; top-5 becomes top-k with ``k = min(5, num_classes)``. Only the
    first ``num_valid`` samples are counted (the rest pad a distributed shard, see
    :func:`eval_shard_indices`). With ``reduce`` the counts are summed over all ranks. Returns
    ``{"top1", "top5", "loss", "correct1", "correct5", "count"}``; the model is left in eval mode.
    Raises :class:`UsageError` when nothing was counted.
    """
    model.eval()
    correct1 = correct5 = 0
    loss_sum, count, seen = 0.0, 0, 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        if batch is None:  # every sample of the batch was skipped as unreadable (--bad-data skip)
            continue
        images, targets = batch
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, autocast_dtype):
            output = model(images)
        output = output.float()
        keep = targets.shape[0] if num_valid is None else max(0, min(targets.shape[0], num_valid - seen))
        seen += targets.shape[0]
        if keep == 0:
            continue
        output, targets = output[:keep], targets[:keep]
        k5 = min(5, output.shape[1])
        acc1, acc5 = accuracy(output, targets, topk=(1, k5))
        correct1 += round(acc1.item() * keep / 100.0)
        correct5 += round(acc5.item() * keep / 100.0)
        loss_sum += F.cross_entropy(output, targets, reduction="sum").item()
        count += keep
    if hasattr(model, "reshard"):  # FSDP2 keeps the root unsharded after a forward without backward
        model.reshard()
    if reduce:
        correct1, correct5, loss_sum, count = all_reduce_sum((correct1, correct5, loss_sum, count), device)
        correct1, correct5, count = int(round(correct1)), int(round(correct5)), int(round(count))
    if count == 0:
        raise UsageError("the held-out split is empty")
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count,
            "correct1": correct1, "correct5": correct5, "count": count}
