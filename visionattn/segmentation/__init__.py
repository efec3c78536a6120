"""Semantic segmentation on any visionattn (or timm) backbone: mmseg's metrics (aAcc, mIoU, mAcc),
the ADE20K / Cityscapes / folder datasets with mmseg's pipeline."""
from ._meta import ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, default_palette
from .data import (KINDS, PadTo, PhotoMetricDistortion, RandomCropCatMax, RandomResize, ResizeImageKeepRatio,
                   SegmentationDataset, build_dataset, collate, read_image, read_label, test_transforms,
                   train_transforms)
from .metrics import SegMetric, metrics_from_confusion

__all__ = [
    "ADE20K_CLASSES", "ADE20K_PALETTE", "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "default_palette",
    "KINDS", "PadTo", "PhotoMetricDistortion", "RandomCropCatMax", "RandomResize", "ResizeImageKeepRatio",
    "SegmentationDataset", "build_dataset", "collate", "read_image", "read_label", "test_transforms",
    "train_transforms", "SegMetric", "metrics_from_confusion",
]
