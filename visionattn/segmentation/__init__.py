"""Semantic segmentation on any visionattn (or timm) backbone, mmseg-compatible without mmseg/mmcv.

- Models: :func:`build_segmentor` (UPerNet with the FCN auxiliary head, Semantic FPN; mmseg's
  heads, :mod:`.heads`) on the backbone adapter shared with detection; :func:`segmentation_loss`.
- Data: :class:`SegmentationDataset` (ADE20K layout, Cityscapes, folders with ``classes.txt``),
  mmseg's ADE20K pipeline (:func:`train_transforms`, :func:`test_transforms`, :func:`build_dataset`),
  :func:`collate` for batches of different sizes.
- Evaluation: :func:`inference` (whole / sliding window, multi-scale + flip), :func:`predict_batch`,
  :class:`SegMetric` (aAcc, mIoU, mAcc, per-class IoU; reduced across processes).
- Visual check: :func:`colorize`, :func:`overlay_triptych`.
- The papers' numbers: :data:`PAPER_SEGMENTATION`.

The program is ``visionattn/tools/seg.py`` (``visionattn-seg``).
"""
from ._meta import ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, default_palette
from .data import (KINDS, PadTo, PhotoMetricDistortion, RandomCropCatMax, RandomResize, ResizeImageKeepRatio,
                   SegmentationDataset, build_dataset, collate, read_image, read_label, test_transforms,
                   train_transforms)
from .heads import FCNHead, SemanticFPN, UPerHead
from .inference import MS_RATIOS, inference, predict_batch, slide_windows
from .metrics import SegMetric, metrics_from_confusion
from .models import HEADS, Segmentor, build_segmentor, segmentation_loss
from .overlay import colorize, overlay_triptych, to_uint8_image
from .paper import PAPER_SEGMENTATION

__all__ = [
    "ADE20K_CLASSES", "ADE20K_PALETTE", "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "default_palette",
    "KINDS", "PadTo", "PhotoMetricDistortion", "RandomCropCatMax", "RandomResize", "ResizeImageKeepRatio",
    "SegmentationDataset", "build_dataset", "collate", "read_image", "read_label", "test_transforms",
    "train_transforms", "FCNHead", "SemanticFPN", "UPerHead", "MS_RATIOS", "inference", "predict_batch",
    "slide_windows", "SegMetric", "metrics_from_confusion", "HEADS", "Segmentor", "build_segmentor",
    "segmentation_loss", "colorize", "overlay_triptych", "to_uint8_image", "PAPER_SEGMENTATION",
]
