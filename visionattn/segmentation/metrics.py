"""Semantic-segmentation metrics: aAcc, mIoU, mAcc and per-class IoU / accuracy from one
confusion matrix, summed over images and reduced over processes.

The definitions are mmsegmentation's ``IoUMetric`` (``mmseg/evaluation/metrics/iou_metric.py``;
0.x ``mmseg/core/evaluation/metrics.py``), which every paper in the zoo used for its ADE20K
numbers:

- pixels whose label equals ``ignore_index`` (255; ADE20K's class 0 "other" becomes 255 through
  ``reduce_zero_label`` in the dataset, see :mod:`visionattn.segmentation.data`) are dropped
  before anything is counted, whatever the prediction there;
- the per-class areas are summed over the whole dataset first (not averaged per image):
  ``IoU_c = TP_c / (GT_c + Pred_c - TP_c)``, ``Acc_c = TP_c / GT_c``,
  ``aAcc = sum_c TP_c / sum_c GT_c``;
- a class with no ground-truth pixel and no predicted pixel has IoU = Acc = NaN (0/0) and is left
  out of the means (``np.nanmean``); a class that is predicted but absent from the ground truth
  has IoU 0 and Acc NaN, so it lowers mIoU but not mAcc, exactly as mmseg.

Unlike mmseg (whose ``torch.histc`` silently drops them), labels outside ``[0, num_classes)``
other than ``ignore_index`` and predictions outside ``[0, num_classes)`` raise ``ValueError``:
they mean a wrong ``num_classes`` or a wrong ``reduce_zero_label``, which would otherwise give
quietly wrong numbers.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.distributed as dist

__all__ = ["SegMetric", "metrics_from_confusion"]


def metrics_from_confusion(confusion: torch.Tensor) -> Dict[str, object]:
    """aAcc, mIoU, mAcc, per-class IoU and Acc from a ``(K, K)`` confusion matrix whose entry
    ``[t, p]`` counts pixels of true class ``t`` predicted as ``p`` (ignored pixels excluded).

    Returns ``dict(aAcc=float, mIoU=float, mAcc=float, IoU=list[float], Acc=list[float])`` as
    fractions in [0, 1]; per-class entries are ``nan`` where mmseg's are (see the module doc);
    ``mIoU``/``mAcc`` are ``nan`` only when every class is ``nan``.
    """
    cm = confusion.to(torch.float64)
    tp = cm.diagonal()
    gt = cm.sum(dim=1)
    pred = cm.sum(dim=0)
    union = gt + pred - tp
    iou = tp / union  # 0/0 -> nan, as numpy in mmseg
    acc = tp / gt
    total = gt.sum()
    a_acc = float(tp.sum() / total) if total > 0 else math.nan
    return dict(aAcc=a_acc, mIoU=_nanmean(iou), mAcc=_nanmean(acc), IoU=iou.tolist(), Acc=acc.tolist())


def _nanmean(x: torch.Tensor) -> float:
    keep = ~torch.isnan(x)
    return float(x[keep].mean()) if keep.any() else math.nan


class SegMetric:
    """Accumulates a ``(num_classes, num_classes)`` confusion matrix over batches.

    Args:
        num_classes: ``K``, the number of evaluated classes (150 for ADE20K, 19 for Cityscapes).
        ignore_index: label value whose pixels are not counted (mmseg: 255).

    Methods:
        ``update(pred, target)``: ``pred`` and ``target`` integer tensors of the same shape
            ``(B, H, W)`` (or ``(H, W)``); ``pred`` holds class indices (``logits.argmax(1)``) in
            ``[0, K)``, ``target`` class indices or ``ignore_index``. Counts are int64 on the
            device of the first update.
        ``reduce()``: the confusion matrix summed over all processes (``all_reduce`` when
            ``torch.distributed`` is initialised; a copy of the local one otherwise). The local
            state is not changed, so ``reduce``/``compute`` may be called any number of times.
        ``compute(reduce=True)``: :func:`metrics_from_confusion` of the (reduced) matrix.
        ``reset()``: zero the counts.

    Every process must call ``reduce``/``compute`` (it is a collective). With NCCL the counts
    must be on the rank's CUDA device (update with CUDA tensors); gloo reduces CPU tensors.

    Raises:
        ValueError: ``num_classes < 1``, shape mismatch, non-integer inputs, or values outside
            the accepted ranges (see the module doc).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.confusion: Optional[torch.Tensor] = None

    def reset(self) -> None:
        self.confusion = None

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"SegMetric.update: pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("SegMetric.update expects integer class maps (e.g. logits.argmax(1)), got floating tensors")
        k = self.num_classes
        target = target.reshape(-1).to(torch.int64)
        pred = pred.reshape(-1).to(device=target.device, dtype=torch.int64)
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]
        if target.numel():
            bad_t = (target < 0) | (target >= k)
            if bad_t.any():
                raise ValueError(
                    f"SegMetric: target values {sorted(set(target[bad_t].unique().tolist()))[:10]} are outside "
                    f"[0, {k}) and are not ignore_index={self.ignore_index} (wrong num_classes or reduce_zero_label?)")
            bad_p = (pred < 0) | (pred >= k)
            if bad_p.any():
                raise ValueError(f"SegMetric: predicted classes {sorted(set(pred[bad_p].unique().tolist()))[:10]} "
                                 f"are outside [0, {k})")
        counts = torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)
        if self.confusion is None:
            self.confusion = counts
        else:
            self.confusion += counts.to(self.confusion.device)

    def _local(self) -> torch.Tensor:
        if self.confusion is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self.confusion

    def reduce(self) -> torch.Tensor:
        cm = self._local().clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl" and cm.device.type != "cuda":
                cm = cm.cuda()
            dist.all_reduce(cm, op=dist.ReduceOp.SUM)
        return cm

    def compute(self, reduce: bool = True) -> Dict[str, object]:
        cm = self.reduce() if reduce else self._local()
        return metrics_from_confusion(cm.cpu())

    def __repr__(self) -> str:
        return f"SegMetric(num_classes={self.num_classes}, ignore_index={self.ignore_index})"
