"""COCO detection and instance segmentation on any visionattn backbone (torchvision detectors,
pycocotools evaluation; no mmdet/mmcv). See :func:`build_detector`, :class:`DetectionBackbone`,
:class:`CocoDetection`, :class:`CocoEvaluator` and ``visionattn/tools/coco.py``."""
from .backbone import DetectionBackbone, SimpleFeaturePyramid, freeze_batch_norm, select_taps
from .builders import DETECTORS, DetectionTransform, build_detector
from .data import (MULTISCALE_SIZES, CocoDetection, GroupedBatchSampler, RandomSizeCrop, ShardedSampler,
                   aspect_ratio_groups, build_transforms, collate_fn)
from .evaluation import STAT_NAMES, CocoEvaluator, evaluate_coco_results, format_stats, outputs_to_coco_results

__all__ = [
    "DetectionBackbone", "SimpleFeaturePyramid", "freeze_batch_norm", "select_taps", "DETECTORS",
    "DetectionTransform", "build_detector", "MULTISCALE_SIZES", "CocoDetection", "GroupedBatchSampler",
    "RandomSizeCrop", "ShardedSampler", "aspect_ratio_groups", "build_transforms", "collate_fn", "STAT_NAMES",
    "CocoEvaluator", "evaluate_coco_results", "format_stats", "outputs_to_coco_results",
]
