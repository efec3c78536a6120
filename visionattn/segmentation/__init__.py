"""Semantic segmentation on any visionattn (or timm) backbone: mmseg's metrics (aAcc, mIoU, mAcc)."""
from .metrics import SegMetric, metrics_from_confusion

__all__ = ["SegMetric", "metrics_from_confusion"]
