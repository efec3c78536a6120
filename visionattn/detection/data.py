"""COCO-format instance data for torchvision detectors: dataset, augmentation, batching.

* :class:`CocoDetection` reads the official ``instances_*.json`` format through pycocotools'
  ``COCO``: polygon and RLE (compressed or not) masks, crowd annotations (kept apart: not in the
  training targets; COCOeval ignores detections on them), images without annotations (always
  kept for evaluation; optional in training), non-contiguous category ids mapped to contiguous
  labels ``1..C`` (0 = background) and back (``label_to_cat_id``). Grayscale/CMYK images are
  converted to RGB. The rules follow torchvision's ``references/detection/coco_utils.py``
  (``ConvertCocoPolysToMask``, ``_coco_remove_images_without_annotations``).
* :func:`build_transforms` gives the papers' augmentation with ``torchvision.transforms.v2`` on
  ``tv_tensors``: multi-scale training (short side drawn from a list, long side <= 1333) and
  horizontal flip (mmdet's 1x/3x "multi-scale" recipe); DETR-style resize-or-crop-then-resize
  (NAT/DiNAT configs); large-scale jitter (optional).
* :class:`GroupedBatchSampler` / :func:`aspect_ratio_groups`: batches of images from one
  aspect-ratio bin (as torchvision's ``references/detection/group_by_aspect_ratio.py``), so padded
  batches waste little.
"""
from __future__ import annotations

import bisect
import contextlib
import io
import math
import os
from collections import defaultdict
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = [
    "CocoDetection", "build_transforms", "RandomSizeCrop", "GroupedBatchSampler", "aspect_ratio_groups",
    "ShardedSampler", "collate_fn", "MULTISCALE_SIZES",
]

# mmdet's multi-scale list (480..800 step 32) used by NAT/DiNAT, Swin-style 3x, DaViT, Agent-Swin
MULTISCALE_SIZES = tuple(range(480, 801, 32))


def _ann_to_mask(segm: Any, h: int, w: int) -> np.ndarray:
    """One annotation's ``segmentation`` (polygon list, uncompressed or compressed RLE) ->
    ``(h, w)`` uint8 mask (pycocotools ``frPyObjects`` / ``decode``, as ``COCO.annToMask``)."""
    if isinstance(segm, list):
        rles = mask_utils.frPyObjects(segm, h, w)
        rle = mask_utils.merge(rles)
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, h, w)
    elif isinstance(segm, dict):
        rle = segm
    else:
        raise ValueError(f"unsupported segmentation of type {type(segm).__name__}: expected a polygon list or an RLE dict")
    return mask_utils.decode(rle).astype(np.uint8)


class CocoDetection(Dataset):
    """COCO instances as ``(image, target)`` pairs for torchvision detectors.

    Args:
        image_dir: folder holding the images named by ``file_name``.
        ann_file: the instances JSON (``annotations/instances_<split>.json``).
        transforms: a ``transforms.v2`` callable on ``(tv_tensors.Image, target)`` (see
            :func:`build_transforms`), or None (then only converted to float in [0, 1]).
        with_masks: decode instance masks (Mask R-CNN); False skips the decoding.
        remove_images_without_annotations: drop images with no usable non-crowd box (training
            as torchvision's references; keep False for evaluation).
        image_ids: restrict to these ids (in this order); default all ids sorted.

    Items: ``image`` ``(3, H, W)`` float32 in [0, 1] (``tv_tensors.Image``); ``target`` dict with
    ``boxes`` (``tv_tensors.BoundingBoxes``, XYXY, float32, ``(N, 4)`` in pixels), ``labels``
    (int64 ``(N,)`` in 1..C), ``masks`` (``tv_tensors.Mask`` uint8 ``(N, H, W)``, when
    ``with_masks``), ``image_id`` (int), ``area`` and ``iscrowd`` (``(N,)``, all 0), ``orig_size``
    (``(H, W)``). Crowd annotations and boxes with no area after clipping are left out.
    Attributes: ``coco`` (pycocotools ``COCO``), ``ids``, ``cat_ids`` (sorted original ids),
    ``cat_id_to_label``, ``label_to_cat_id``, ``num_classes`` (C, without background),
    ``class_names`` (index = label; 0 = ``'__background__'``).

    Raises:
        FileNotFoundError: a missing image folder or annotation file (message names it).
        ValueError: an annotation file without ``images``/``annotations``/``categories``.
    """

    def __init__(self, image_dir: os.PathLike, ann_file: os.PathLike, transforms: Optional[Callable] = None, *,
                 with_masks: bool = True, remove_images_without_annotations: bool = False,
                 image_ids: Optional[Sequence[int]] = None):
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"image folder {image_dir} does not exist")
        if not os.path.isfile(ann_file):
            raise FileNotFoundError(f"annotation file {ann_file} does not exist (expected COCO instances JSON)")
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(ann_file))
        for key in ("images", "annotations", "categories"):
            if key not in self.coco.dataset:
                raise ValueError(f"{ann_file} is not a COCO instances file: it has no {key!r} list")
        self.image_dir = str(image_dir)
        self.transforms = transforms
        self.with_masks = with_masks
        self.cat_ids = sorted(self.coco.getCatIds())
        self.cat_id_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.num_classes = len(self.cat_ids)
        self.class_names = ["__background__"] + [self.coco.cats[c]["name"] for c in self.cat_ids]
        ids = list(image_ids) if image_ids is not None else sorted(self.coco.getImgIds())
        if remove_images_without_annotations:
            ids = [i for i in ids if self._has_valid_annotation(i)]
        self.ids = ids

    def _has_valid_annotation(self, image_id: int) -> bool:
        anns = self.coco.imgToAnns.get(image_id, [])
        return any(not a.get("iscrowd", 0) and a["bbox"][2] > 1 and a["bbox"][3] > 1 for a in anns)

    def __len__(self) -> int:
        return len(self.ids)

    def image_size(self, index: int) -> tuple:
        """``(height, width)`` of item ``index`` from the annotation file (no image decoding)."""
        info = self.coco.imgs[self.ids[index]]
        return int(info["height"]), int(info["width"])

    def load_target(self, index: int, height: int, width: int) -> Dict[str, Any]:
        """The raw target of item ``index`` for an image of ``height x width`` (see class doc)."""
        image_id = self.ids[index]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
        kept = [a for a, k in zip(anns, keep.tolist()) if k]
        target: Dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes[keep], format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.cat_id_to_label[a["category_id"]] for a in kept], dtype=torch.int64),
            "image_id": int(image_id),
            "area": torch.tensor([float(a.get("area", 0.0)) for a in kept], dtype=torch.float32),
            "iscrowd": torch.zeros(len(kept), dtype=torch.int64),
            "orig_size": (height, width),
        }
        if self.with_masks:
            if kept:
                masks = np.stack([_ann_to_mask(a["segmentation"], height, width) for a in kept])
            else:
                masks = np.zeros((0, height, width), dtype=np.uint8)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        return target

    def __getitem__(self, index: int):
        info = self.coco.imgs[self.ids[index]]
        with Image.open(os.path.join(self.image_dir, info["file_name"])) as im:
            im = im.convert("RGB")
            image = tv_tensors.Image(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
        h, w = image.shape[-2:]
        target = self.load_target(index, int(h), int(w))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        else:
            image = v2.functional.to_dtype(image, torch.float32, scale=True)
        return image, target


class RandomSizeCrop(torch.nn.Module):
    """Crop a random ``h x w`` window with ``h, w`` uniform in ``[min_size, max_size]`` (bounded by
    the image), as mmdet's ``RandomCrop(crop_type='absolute_range')`` in the DETR-style recipe.
    Works on ``(image, target)`` with ``tv_tensors``; apply ``SanitizeBoundingBoxes`` after."""

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"RandomSizeCrop needs 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = int(min_size), int(max_size)

    def forward(self, *inputs):
        h, w = v2.functional.get_size(next(x for x in _flatten(inputs) if isinstance(x, tv_tensors.Image)))
        ch = int(torch.randint(min(self.min_size, h), min(self.max_size, h) + 1, ()).item())
        cw = int(torch.randint(min(self.min_size, w), min(self.max_size, w) + 1, ()).item())
        return v2.RandomCrop((ch, cw))(*inputs)


def _flatten(obj):
    if isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _flatten(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flatten(o)
    else:
        yield obj


def build_transforms(train: bool, augment: str = "multiscale", min_sizes: Sequence[int] = MULTISCALE_SIZES,
                     max_size: int = 1333, lsj_size: int = 1024) -> v2.Compose:
    """The training or eval pipeline on ``(tv_tensors.Image uint8, target)``.

    Args:
        train: False gives the eval pipeline (float conversion only; the detector's transform
            resizes to its eval size and maps outputs back to the original image).
        augment: ``'multiscale'`` (short side from ``min_sizes``, long side <= ``max_size``, flip;
            mmdet ``Resize(multiscale_mode='value')`` + ``RandomFlip``), ``'detr'`` (NAT/DiNAT:
            with p=0.5 the multi-scale resize, else resize to 400/500/600, crop 384-600, then the
            multi-scale resize; flip), ``'lsj'`` (large-scale jitter 0.1-2.0 of ``lsj_size``,
            crop/pad to ``lsj_size``², flip), ``'single'`` (short side ``min_sizes[-1]``, flip;
            plain 1x) or ``'none'`` (no resize, no flip).
        min_sizes / max_size / lsj_size: sizes in pixels.

    Raises:
        ValueError: an unknown ``augment`` or empty ``min_sizes``.
    """
    to_float = [v2.ToDtype(torch.float32, scale=True)]
    if not train:
        return v2.Compose(to_float)
    if not min_sizes:
        raise ValueError("min_sizes must list at least one short-side size")
    sizes = [int(s) for s in min_sizes]
    flip = v2.RandomHorizontalFlip(0.5)
    sanitize = v2.SanitizeBoundingBoxes(labels_getter=lambda inputs: (inputs[1]["labels"], inputs[1]["area"], inputs[1]["iscrowd"]))
    if augment == "multiscale":
        ops = [v2.RandomShortestSize(sizes, max_size), flip]
    elif augment == "single":
        ops = [v2.RandomShortestSize([sizes[-1]], max_size), flip]
    elif augment == "detr":
        crop = v2.Compose([v2.RandomShortestSize([400, 500, 600], max_size), RandomSizeCrop(384, 600), sanitize,
                           v2.RandomShortestSize(sizes, max_size)])
        ops = [flip, v2.RandomChoice([v2.RandomShortestSize(sizes, max_size), crop])]
    elif augment == "lsj":
        ops = [v2.ScaleJitter((lsj_size, lsj_size), (0.1, 2.0)), v2.RandomCrop((lsj_size, lsj_size), pad_if_needed=True),
               flip]
    elif augment == "none":
        ops = []
    else:
        raise ValueError(f"augment must be multiscale, detr, lsj, single or none; got {augment!r}")
    return v2.Compose(ops + [sanitize] + to_float)


def collate_fn(batch):
    """Lists, not stacked tensors: ``(images, targets)`` as torchvision detectors take them."""
    return tuple(zip(*batch))


def aspect_ratio_groups(aspect_ratios: Sequence[float], k: int = 3) -> List[int]:
    """Bin index per image from ``width / height`` with ``2k`` log-spaced bins around 1
    (edges ``2**linspace(-1, 1, 2k+1)``, as torchvision's ``create_aspect_ratio_groups``)."""
    bins = (2 ** np.linspace(-1, 1, 2 * k + 1)).tolist() if k > 0 else [1.0]
    return [bisect.bisect_right(bins, float(r)) for r in aspect_ratios]


class ShardedSampler(Sampler[int]):
    """This rank's share of ``range(n)``: an epoch-seeded permutation (``shuffle``) cut into
    ``world_size`` strided parts. Training pads by wrapping so every rank has the same count
    (DDP needs equal step counts); evaluation (``pad=False``) never duplicates an image.

    ``set_epoch(e)`` changes the order (permutation seeded with ``seed + e``); the order depends
    only on (seed, epoch), so a resumed run sees the same images as an uninterrupted one.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 pad: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)
        self.shuffle, self.seed, self.pad, self.epoch = shuffle, int(seed), pad, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _indices(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        if self.pad and self.n:
            total = math.ceil(self.n / self.world_size) * self.world_size
            idx = (idx * math.ceil(total / self.n))[:total]
        return idx[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


class GroupedBatchSampler(Sampler[List[int]]):
    """Batches of ``batch_size`` indices from ``sampler`` that share a group id (aspect-ratio bin).

    Indices are buffered per group and a batch is emitted as soon as one group holds
    ``batch_size``; at the end the leftovers are completed, in sampler order, with the
    earliest-seen indices of their own group, so every batch is full and single-group and the
    number of batches is ``ceil(len(sampler) / batch_size)`` (as torchvision's
    ``GroupedBatchSampler``; a group with fewer members than needed is padded from any group).

    Args:
        sampler: yields dataset indices (e.g. :class:`ShardedSampler`).
        group_ids: group id per dataset index.
        batch_size: images per batch (>= 1).
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler, self.group_ids, self.batch_size = sampler, list(group_ids), int(batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        buffers: Dict[int, List[int]] = defaultdict(list)
        seen: Dict[int, List[int]] = defaultdict(list)
        order: List[int] = []
        emitted = 0
        for idx in self.sampler:
            g = self.group_ids[idx]
            buffers[g].append(idx)
            seen[g].append(idx)
            if len(buffers[g]) == self.batch_size:
                yield buffers[g]
                emitted += 1
                buffers[g] = []
            order.append(idx)
        expected = len(self)
        if emitted == expected:
            return
        for g, buf in list(buffers.items()):
            if not buf:
                continue
            pool = [i for i in seen[g] if i not in buf] or order
            j = 0
            while len(buf) < self.batch_size:
                buf.append(pool[j % len(pool)])
                j += 1
            yield buf
            emitted += 1
            if emitted == expected:
                return

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)
