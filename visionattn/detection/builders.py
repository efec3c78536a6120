"""Mask R-CNN, Faster R-CNN and RetinaNet (torchvision.models.detection) on any visionattn backbone.

The papers all use mmdetection 2.x; these builders keep torchvision's detector classes and set the
knobs that matter to the mmdet configs the papers cite (``configs/_base_/models/mask_rcnn_r50_fpn.py``,
``retinanet_r50_fpn.py``): FPN with 256 channels, P2-P6 for the R-CNNs (RPN anchors 32..512,
ratios 0.5/1/2), P3-P7 with P6 from C5 for RetinaNet (anchors 32..512 x 2^{0,1/3,2/3}), 512 RoIs
per image with 25% positives, 1000 RPN proposals at test time, 100 detections per image, score
threshold 0.05. Differences that stay (torchvision's heads): RoIAlign ``aligned=False`` and
``sampling_ratio=2`` instead of mmdet's ``aligned=True``/adaptive sampling, and RPN proposals
selected per level as torchvision does. Cascade Mask R-CNN is not in torchvision and is not built.

Images are normalised inside the model with ImageNet mean/std (our backbones' pretraining), and
batches are zero-padded to a multiple of 32 (``size_divisible``); every backbone pads internally
to its window/region sizes, so no larger multiple is needed.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from .backbone import DetectionBackbone

__all__ = ["DETECTORS", "DetectionTransform", "build_detector"]

DETECTORS = ("mask_rcnn", "faster_rcnn", "retinanet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's ``GeneralizedRCNNTransform`` that can leave training images at their size.

    With ``resize_in_train=False`` a training batch is only normalised and padded (the data
    pipeline has already done the papers' multi-scale resize with ``transforms.v2``); at eval the
    image is resized to ``min_size``/``max_size`` and the outputs are mapped back to the input
    size, exactly as torchvision does. Shapes as the parent: list of ``(3, H_i, W_i)`` float
    images in [0, 1] -> ``ImageList`` of ``(B, 3, H_pad, W_pad)``.
    """

    def __init__(self, *args, resize_in_train: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.resize_in_train = resize_in_train

    def resize(self, image, target=None):
        if self.training and not self.resize_in_train:
            return image, target
        return super().resize(image, target)


def _check_sizes(min_size, max_size) -> Tuple[Tuple[int, ...], int]:
    sizes = (min_size,) if isinstance(min_size, int) else tuple(int(s) for s in min_size)
    if not sizes or any(s < 32 for s in sizes) or int(max_size) < max(sizes):
        raise ValueError(f"min_size must be int(s) >= 32 and max_size >= max(min_size); got {min_size!r}, {max_size!r}")
    return sizes, int(max_size)


def build_detector(
    detector: str,
    model_name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    pretrained_file: Optional[str] = None,
    model_kwargs: Optional[Dict[str, Any]] = None,
    min_size=800,
    max_size: int = 1333,
    resize_in_train: bool = True,
    frozen_bn: bool = False,
    out_norm: bool = True,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    mask_head_channels: int = 256,
    **detector_kwargs: Any,
) -> nn.Module:
    """Build a torchvision detector on a :class:`DetectionBackbone`.

    Args:
        detector: ``'mask_rcnn'``, ``'faster_rcnn'`` or ``'retinanet'``.
        model_name: backbone name registered with timm (``visionattn.list_models()``).
        num_classes: classes *including* background (COCO: 80 + 1; labels 1..C, 0 = background).
        pretrained / pretrained_file / model_kwargs / frozen_bn / out_norm: see
            :class:`DetectionBackbone` (ImageNet weights go into the backbone only).
        min_size: eval short side (int) or training choices (tuple: torchvision picks one per
            batch when ``resize_in_train``; the last one is used at eval).
        max_size: cap on the long side (1333 in every paper).
        resize_in_train: False when the data pipeline already resized the training images.
        fpn_channels: FPN width (256).
        representation_size: width of the R-CNN box head's two FC layers (1024, mmdet
            ``Shared2FCBBoxHead``; torchvision ``TwoMLPHead``).
        mask_head_channels: width of the 4 convs of the Mask R-CNN mask head (256, mmdet
            ``FCNMaskHead``; torchvision ``MaskRCNNHeads``). Smaller values only for quick tests.
        **detector_kwargs: passed to the torchvision class (e.g. ``box_detections_per_img``,
            ``rpn_post_nms_top_n_test``, ``score_thresh``).

    Returns:
        the detector. Train: ``model(images, targets)`` -> dict of losses; eval:
        ``model(images)`` -> list of dicts (``boxes`` xyxy in input pixels, ``labels``,
        ``scores``, and for Mask R-CNN ``masks`` ``(N, 1, H, W)`` probabilities).

    Raises:
        ValueError: unknown detector, ``num_classes < 2``, bad sizes, or a backbone error.
    """
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
    sizes, max_size = _check_sizes(min_size, max_size)
    retina = detector == "retinanet"
    backbone = DetectionBackbone(
        model_name, pretrained=pretrained, pretrained_file=pretrained_file, model_kwargs=model_kwargs,
        reductions=(8, 16, 32) if retina else (4, 8, 16, 32), out_channels=fpn_channels,
        extra_blocks="p6p7" if retina else "maxpool", out_norm=out_norm, frozen_bn=frozen_bn)
    if retina:
        anchor_sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in (32, 64, 128, 256, 512))
        anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
        model = RetinaNet(backbone, int(num_classes), anchor_generator=anchors, **detector_kwargs)
    else:
        anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
        kw = dict(detector_kwargs)
        kw.setdefault("box_head", TwoMLPHead(fpn_channels * 7 * 7, representation_size))
        kw.setdefault("box_predictor", FastRCNNPredictor(representation_size, int(num_classes)))
        if detector == "mask_rcnn":
            kw.setdefault("mask_head", MaskRCNNHeads(fpn_channels, (mask_head_channels,) * 4, 1))
            kw.setdefault("mask_predictor", MaskRCNNPredictor(mask_head_channels, mask_head_channels, int(num_classes)))
            model = MaskRCNN(backbone, None, rpn_anchor_generator=anchors, **kw)
        else:
            model = FasterRCNN(backbone, None, rpn_anchor_generator=anchors, **kw)
    model.transform = DetectionTransform(
        sizes, max_size, list(IMAGENET_MEAN), list(IMAGENET_STD), size_divisible=32, resize_in_train=resize_in_train)
    model.detector_name = detector
    return model
