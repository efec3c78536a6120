"""Segmentation datasets (ADE20K layout, Cityscapes, any ADE20K-layout folder with ``classes.txt``)
and mmsegmentation's ADE20K pipeline in torchvision ``transforms.v2`` with ``tv_tensors.Mask``.

Layouts:

- ``ade20k`` (``ADEChallengeData2016``): ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/<same stem>.png`` (single-channel, 0 = "other"/unlabelled,
  1..150 = classes). ``reduce_zero_label`` (default True, as mmseg's ``ADE20KDataset``) maps
  0 -> 255 (ignored) and ``c -> c - 1``, giving train ids 0..149.
- ``folder``: the same layout with a ``classes.txt`` at the root, one class name per line in
  train-id order (line ``i`` = train id ``i`` after ``reduce_zero_label``; with the default
  ``reduce_zero_label=True`` the PNG value of line ``i`` is ``i + 1`` and 0 is ignored, as in
  ADE20K and ``camvid_mini``). Images may be ``.jpg``, ``.jpeg`` or ``.png``.
- ``cityscapes``: ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` (19 train ids, 255 ignored; made by
  cityscapesScripts' ``createTrainIdLabelImgs``); ``reduce_zero_label`` defaults to False.
  Splits ``train``/``val``/``test`` (``training``/``validation`` are accepted as aliases).

Every sample is checked when read: a file PIL cannot decode, a label PNG with more than one
channel, an image/label size mismatch, and a label value outside the classes (after
``reduce_zero_label``; 255 is always allowed) raise ``ValueError`` naming the file.

Pipeline (mmseg 0.x ``configs/_base_/datasets/ade20k.py``, which the papers' UPerNet/FPN configs
use): train = resize to ``scale=(2048, 512)`` times a ratio drawn uniformly from
``ratio_range=(0.5, 2.0)`` keeping the aspect ratio (:class:`RandomResize`), random crop 512x512
re-drawn up to 10 times until no class covers more than ``cat_max_ratio=0.75`` of the labelled
crop (:class:`RandomCropCatMax`), horizontal flip p=0.5, :class:`PhotoMetricDistortion`,
normalise with the ImageNet mean/std, pad to the crop size with 0 (image) / 255 (mask)
(:class:`PadTo`). Test = resize the image only to fit ``(2048, 512)`` keeping the aspect ratio,
normalise; the mask keeps its original size, since mmseg scores predictions resized back to the
original resolution (see :func:`visionattn.segmentation.inference`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image as PILImage
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ._meta import ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, default_palette

__all__ = [
    "KINDS", "SegmentationDataset", "build_dataset", "train_transforms", "test_transforms", "collate",
    "RandomResize", "RandomCropCatMax", "PhotoMetricDistortion", "PadTo", "ResizeImageKeepRatio",
    "read_image", "read_label",
]

KINDS = ("ade20k", "cityscapes", "folder")
IGNORE_INDEX = 255
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_SPLIT_ALIASES = {"cityscapes": {"training": "train", "validation": "val"}}


def read_image(path) -> tv_tensors.Image:
    """An RGB image file as a ``tv_tensors.Image`` ``(3, H, W)`` uint8. Raises ``ValueError``
    naming the file when PIL cannot read or decode it."""
    try:
        with PILImage.open(path) as im:
            arr = np.array(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image {path}: {e}") from e
    return tv_tensors.Image(torch.from_numpy(arr).permute(2, 0, 1).contiguous())


def read_label(path) -> np.ndarray:
    """A single-channel label PNG (mode ``L``, ``P`` or ``I``) as an ``(H, W)`` int64 array of the
    stored values. Raises ``ValueError`` naming the file when it cannot be decoded or has more than
    one channel (an RGB colour-coded mask is not a label map)."""
    try:
        with PILImage.open(path) as im:
            mode = im.mode
            arr = np.array(im)
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read label {path}: {e}") from e
    if arr.ndim != 2:
        raise ValueError(f"label {path} has mode {mode} with shape {arr.shape}: expected a single-channel PNG "
                         "(mode L or P) holding class indices")
    return arr.astype(np.int64)


def _read_classes(path: Path) -> List[str]:
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not names:
        raise ValueError(f"{path} lists no class names (one name per line expected)")
    return names


class SegmentationDataset(Dataset):
    """Image/label pairs of a semantic-segmentation dataset (layouts in the module doc).

    Args:
        root: dataset root (``ADEChallengeData2016``, the Cityscapes root, or a folder).
        split: ``training``/``validation`` (ADE20K layout) or ``train``/``val``/``test``
            (Cityscapes; the ADE20K names are accepted as aliases).
        kind: one of :data:`KINDS`.
        transforms: a callable ``(image, mask) -> (image, mask)`` (e.g. :func:`train_transforms`);
            None returns the decoded pair.
        reduce_zero_label: mmseg's label shift (0 -> 255, c -> c - 1, 255 stays 255). Default True
            for ``ade20k``/``folder``, False for ``cityscapes``.

    ``dataset[i]`` -> ``(image, mask)``: without transforms ``tv_tensors.Image`` ``(3, H, W)``
    uint8 and ``tv_tensors.Mask`` ``(H, W)`` int64 with train ids in ``[0, K)`` or 255.
    Attributes: ``classes`` (``K`` names), ``num_classes``, ``palette`` (``K`` RGB tuples),
    ``samples`` (list of ``(image path, label path)``), ``ignore_index`` (255).

    Raises:
        ValueError: unknown ``kind``/``split``, a missing folder or ``classes.txt``, no images, an
            image without its label file; when reading, the per-file errors of the module doc.
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, root, split: str = "training", kind: str = "ade20k",
                 transforms: Optional[Callable] = None, reduce_zero_label: Optional[bool] = None):
        if kind not in KINDS:
            raise ValueError(f"unknown dataset kind {kind!r}; accepted: {', '.join(KINDS)}")
        self.root = Path(root)
        self.kind = kind
        self.split = _SPLIT_ALIASES.get(kind, {}).get(split, split)
        self.transforms = transforms
        self.reduce_zero_label = (kind != "cityscapes") if reduce_zero_label is None else bool(reduce_zero_label)
        if kind == "cityscapes":
            self.samples = self._cityscapes_samples()
            self.classes, self.palette = list(CITYSCAPES_CLASSES), list(CITYSCAPES_PALETTE)
        else:
            self.samples = self._ade_samples()
            classes_file = self.root / "classes.txt"
            if classes_file.is_file():
                self.classes = _read_classes(classes_file)
                self.palette = (list(ADE20K_PALETTE) if kind == "ade20k" and len(self.classes) == 150
                                else default_palette(len(self.classes)))
            elif kind == "ade20k":
                self.classes, self.palette = list(ADE20K_CLASSES), list(ADE20K_PALETTE)
            else:
                raise ValueError(f"{self.root}: a 'folder' dataset needs a classes.txt (one class name per line, "
                                 "line i = train id i) at its root")
        self.num_classes = len(self.classes)

    def _ade_samples(self) -> List[Tuple[Path, Path]]:
        if self.split not in ("training", "validation"):
            raise ValueError(f"split must be 'training' or 'validation' for the ADE20K layout, got {self.split!r}")
        img_dir, ann_dir = self.root / "images" / self.split, self.root / "annotations" / self.split
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise ValueError(f"{d} does not exist: expected the ADE20K layout images/{{training,validation}}/*.jpg "
                                 "and annotations/{training,validation}/*.png under the root")
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        return self._pair(images, lambda p: ann_dir / f"{p.stem}.png", img_dir)

    def _cityscapes_samples(self) -> List[Tuple[Path, Path]]:
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test' for Cityscapes, got {self.split!r}")
        img_dir = self.root / "leftImg8bit" / self.split
        if not img_dir.is_dir():
            raise ValueError(f"{img_dir} does not exist: expected leftImg8bit/<split>/<city>/*_leftImg8bit.png "
                             "and gtFine/<split>/<city>/*_gtFine_labelTrainIds.png under the root")
        images = sorted(img_dir.glob("*/*_leftImg8bit.png"))

        def label(p: Path) -> Path:
            stem = p.name[: -len("_leftImg8bit.png")]
            return self.root / "gtFine" / self.split / p.parent.name / f"{stem}_gtFine_labelTrainIds.png"
        return self._pair(images, label, img_dir)

    @staticmethod
    def _pair(images, label_of, img_dir) -> List[Tuple[Path, Path]]:
        if not images:
            raise ValueError(f"no images found in {img_dir}")
        pairs = [(p, label_of(p)) for p in images]
        missing = [str(lab) for _, lab in pairs if not lab.is_file()]
        if missing:
            raise ValueError(f"{len(missing)} of {len(pairs)} images have no label file, e.g. {missing[0]}")
        return pairs

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The checked, decoded pair ``index`` before transforms (see the class doc)."""
        img_path, lab_path = self.samples[index]
        image = read_image(img_path)
        label = read_label(lab_path)
        if tuple(label.shape) != tuple(image.shape[-2:]):
            raise ValueError(f"image {img_path} is {image.shape[-1]}x{image.shape[-2]} (WxH) but its label "
                             f"{lab_path} is {label.shape[1]}x{label.shape[0]}: they must have the same size")
        if self.reduce_zero_label:
            label[label == 0] = IGNORE_INDEX  # mmseg: 0 -> 255, c -> c - 1, and 255 stays 255
            label = label - 1
            label[label == IGNORE_INDEX - 1] = IGNORE_INDEX
        bad = (label != IGNORE_INDEX) & ((label < 0) | (label >= self.num_classes))
        if bad.any():
            values = np.unique(label[bad] + (1 if self.reduce_zero_label else 0))[:10].tolist()
            raise ValueError(f"label {lab_path} holds values {values} outside the dataset's {self.num_classes} classes "
                             f"(accepted: {'1..' + str(self.num_classes) + ' and 0 = ignore' if self.reduce_zero_label else '0..' + str(self.num_classes - 1)}"
                             f", and 255 = ignore; reduce_zero_label={self.reduce_zero_label})")
        return image, tv_tensors.Mask(torch.from_numpy(label))

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.transforms is not None:
            return self.transforms(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return (f"SegmentationDataset(kind={self.kind!r}, root={str(self.root)!r}, split={self.split!r}, "
                f"samples={len(self)}, classes={self.num_classes}, reduce_zero_label={self.reduce_zero_label})")


# ---------------------------------------------------------------------------------- transforms
def _rescale_size(h: int, w: int, scale: Sequence[int]) -> Tuple[int, int]:
    """mmcv's ``rescale_size`` with ``keep_ratio``: the largest size whose long side is at most
    ``max(scale)`` and short side at most ``min(scale)``; returns ``(new_h, new_w)``."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _rand(generator: Optional[torch.Generator]) -> float:
    return float(torch.rand((), generator=generator))


class RandomResize:
    """mmseg ``Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)``: draws
    ``r ~ U(ratio_range)``, then resizes ``(image, mask)`` to fit ``(scale[0] * r, scale[1] * r)``
    keeping the aspect ratio (long side <= the larger, short side <= the smaller). Image bilinear
    (no antialias, as cv2), mask nearest. ``generator``: a ``torch.Generator`` for reproducible
    draws (default: torch's global RNG, seeded per DataLoader worker)."""

    def __init__(self, scale: Sequence[int] = (2048, 512), ratio_range: Sequence[float] = (0.5, 2.0),
                 generator: Optional[torch.Generator] = None):
        self.scale, self.ratio_range, self.generator = tuple(scale), tuple(ratio_range), generator

    def __call__(self, image, mask):
        lo, hi = self.ratio_range
        r = lo + (hi - lo) * _rand(self.generator)
        size = _rescale_size(image.shape[-2], image.shape[-1], (int(self.scale[0] * r), int(self.scale[1] * r)))
        image = TF.resize(image, list(size), interpolation=v2.InterpolationMode.BILINEAR, antialias=False)
        mask = TF.resize(mask, list(size), interpolation=v2.InterpolationMode.NEAREST)
        return image, mask


class RandomCropCatMax:
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)``: a random ``crop_size`` window (clipped to
    the image), re-drawn up to 10 times until the crop holds at least two labelled classes and
    no class covers ``cat_max_ratio`` or more of its labelled (non-255) pixels; the last draw is
    kept otherwise. ``cat_max_ratio=1`` disables the check. ``crop_size`` is ``(h, w)``."""

    def __init__(self, crop_size: Sequence[int] = (512, 512), cat_max_ratio: float = 0.75,
                 ignore_index: int = IGNORE_INDEX, generator: Optional[torch.Generator] = None):
        self.crop_size, self.cat_max_ratio = tuple(int(c) for c in crop_size), float(cat_max_ratio)
        self.ignore_index, self.generator = ignore_index, generator

    def _box(self, h: int, w: int) -> Tuple[int, int, int, int]:
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        top = int(torch.randint(0, h - ch + 1, (), generator=self.generator))
        left = int(torch.randint(0, w - cw + 1, (), generator=self.generator))
        return top, left, ch, cw

    def __call__(self, image, mask):
        h, w = mask.shape[-2:]
        box = self._box(h, w)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                t, l_, ch, cw = box
                crop = mask[..., t:t + ch, l_:l_ + cw]
                _, counts = torch.unique(crop[crop != self.ignore_index], return_counts=True)
                if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                    break
                box = self._box(h, w)
        t, l_, ch, cw = box
        return TF.crop(image, t, l_, ch, cw), TF.crop(mask, t, l_, ch, cw)


class PhotoMetricDistortion:
    """mmseg ``PhotoMetricDistortion`` on a 0..255 image, each step applied with probability 0.5:
    brightness (add ``U(-32, 32)``), contrast (multiply by ``U(0.5, 1.5)``) either first or last
    (coin flip), saturation (``U(0.5, 1.5)``) and hue (shift by ``U(-18, 18)`` of OpenCV's 180
    hue steps, i.e. ``+-0.1`` of the circle). Values are clipped to [0, 255] after each step.
    Differences from mmseg: saturation uses torchvision's ``adjust_saturation`` (blend with the
    grey image) instead of scaling the S channel of OpenCV's HSV; the result is a float32 image
    (mmseg also hands float32 to ``Normalize``). The mask passes through."""

    def __init__(self, brightness_delta: int = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: int = 18, generator: Optional[torch.Generator] = None):
        self.brightness_delta, self.contrast_range = brightness_delta, tuple(contrast_range)
        self.saturation_range, self.hue_delta, self.generator = tuple(saturation_range), hue_delta, generator

    def _u(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * _rand(self.generator)

    def __call__(self, image, mask):
        x = image.as_subclass(torch.Tensor).float()
        if _rand(self.generator) < 0.5:
            x = (x + self._u(-self.brightness_delta, self.brightness_delta)).clamp(0, 255)
        contrast_first = _rand(self.generator) < 0.5
        if contrast_first and _rand(self.generator) < 0.5:
            x = (x * self._u(*self.contrast_range)).clamp(0, 255)
        if _rand(self.generator) < 0.5:
            x = (TF.adjust_saturation(x / 255.0, self._u(*self.saturation_range)) * 255.0).clamp(0, 255)
        if _rand(self.generator) < 0.5:
            x = (TF.adjust_hue(x / 255.0, self._u(-self.hue_delta, self.hue_delta) / 180.0) * 255.0).clamp(0, 255)
        if not contrast_first and _rand(self.generator) < 0.5:
            x = (x * self._u(*self.contrast_range)).clamp(0, 255)
        return tv_tensors.Image(x), mask


class PadTo:
    """Pad ``(image, mask)`` at the bottom/right to at least ``size = (h, w)``: image with 0 (after
    normalisation, as mmseg's ``Pad(pad_val=0)``), mask with 255 (``seg_pad_val``)."""

    def __init__(self, size: Sequence[int] = (512, 512), ignore_index: int = IGNORE_INDEX):
        self.size, self.ignore_index = tuple(int(s) for s in size), ignore_index

    def __call__(self, image, mask):
        ph, pw = max(self.size[0] - image.shape[-2], 0), max(self.size[1] - image.shape[-1], 0)
        if ph or pw:
            image = TF.pad(image, [0, 0, pw, ph], fill=0)
            mask = TF.pad(mask, [0, 0, pw, ph], fill=self.ignore_index)
        return image, mask


class ResizeImageKeepRatio:
    """Test-time mmseg ``Resize(scale, keep_ratio=True)`` of the image only (bilinear); the mask
    keeps its original size for scoring at the original resolution."""

    def __init__(self, scale: Sequence[int] = (2048, 512)):
        self.scale = tuple(scale)

    def __call__(self, image, mask):
        size = _rescale_size(image.shape[-2], image.shape[-1], self.scale)
        return TF.resize(image, list(size), interpolation=v2.InterpolationMode.BILINEAR, antialias=False), mask


def _normalize(mean, std):
    return v2.Normalize(mean=[m * 255.0 for m in mean], std=[s * 255.0 for s in std])


def train_transforms(crop_size: Sequence[int] = (512, 512), scale: Sequence[int] = (2048, 512),
                     ratio_range: Sequence[float] = (0.5, 2.0), cat_max_ratio: float = 0.75,
                     mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, photometric: bool = True,
                     generator: Optional[torch.Generator] = None) -> v2.Compose:
    """mmseg's training pipeline (module doc) as ``v2.Compose``; called as ``t(image, mask)`` on a
    uint8 ``tv_tensors.Image`` and a ``tv_tensors.Mask``, it returns a normalised float32 image
    ``(3, crop_h, crop_w)`` and an int64 mask ``(crop_h, crop_w)`` padded with 255. ``crop_size``
    is ``(h, w)``; ``scale`` is ``(long, short)`` as mmseg's ``img_scale``; ``mean``/``std`` on the
    0..1 scale (timm's ImageNet defaults). ``generator`` makes every random draw reproducible
    (the flip draws from it too)."""
    flip = _RandomHFlip(0.5, generator)
    steps = [RandomResize(scale, ratio_range, generator), RandomCropCatMax(crop_size, cat_max_ratio, generator=generator),
             flip]
    if photometric:
        steps.append(PhotoMetricDistortion(generator=generator))
    steps += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}), _normalize(mean, std), PadTo(crop_size)]
    return v2.Compose(steps)


class _RandomHFlip:
    """Horizontal flip of image and mask with probability ``p`` (drawn from ``generator``)."""

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None):
        self.p, self.generator = p, generator

    def __call__(self, image, mask):
        if _rand(self.generator) < self.p:
            return TF.horizontal_flip(image), TF.horizontal_flip(mask)
        return image, mask


def test_transforms(scale: Optional[Sequence[int]] = (2048, 512), mean=IMAGENET_DEFAULT_MEAN,
                    std=IMAGENET_DEFAULT_STD) -> v2.Compose:
    """mmseg's test pipeline: resize the image to fit ``scale`` keeping its aspect ratio (None keeps
    the original size), normalise; the mask is returned unchanged at the original resolution."""
    steps = [ResizeImageKeepRatio(scale)] if scale is not None else []
    steps += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}), _normalize(mean, std)]
    return v2.Compose(steps)


test_transforms.__test__ = False  # not a pytest test despite the name


def build_dataset(kind: str, root, split: str, train: bool, crop_size: Sequence[int] = (512, 512),
                  scale: Sequence[int] = (2048, 512), ratio_range: Sequence[float] = (0.5, 2.0),
                  cat_max_ratio: float = 0.75, reduce_zero_label: Optional[bool] = None) -> SegmentationDataset:
    """A :class:`SegmentationDataset` with mmseg's train (``train=True``) or test pipeline.
    Defaults are the ADE20K 512x512 recipe; for Cityscapes mmseg uses ``scale=(2048, 1024)``,
    ``crop_size=(512, 1024)``."""
    tf = (train_transforms(crop_size, scale, ratio_range, cat_max_ratio) if train else test_transforms(scale))
    return SegmentationDataset(root, split, kind, transforms=tf, reduce_zero_label=reduce_zero_label)


def collate(batch):
    """Batch ``(image, mask)`` pairs of different sizes: images padded at the bottom/right with 0
    to ``(B, 3, H_max, W_max)``, masks with 255 to ``(B, Hm_max, Wm_max)`` (their sizes may differ
    from the images' at test time). Returns ``(images, masks, sizes)`` with ``sizes`` an int64
    ``(B, 4)`` tensor of each sample's ``(image_h, image_w, mask_h, mask_w)`` before padding, which
    :func:`visionattn.segmentation.predict_batch` uses to score each sample at its own size."""
    images = [torch.as_tensor(b[0]) for b in batch]
    masks = [torch.as_tensor(b[1]) for b in batch]
    sizes = torch.tensor([[*i.shape[-2:], *m.shape[-2:]] for i, m in zip(images, masks)], dtype=torch.int64)
    hi, wi = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    hm, wm = int(sizes[:, 2].max()), int(sizes[:, 3].max())
    out_i = images[0].new_zeros((len(batch), images[0].shape[0], hi, wi))
    out_m = masks[0].new_full((len(batch), hm, wm), IGNORE_INDEX)
    for k, (i, m) in enumerate(zip(images, masks)):
        out_i[k, :, :i.shape[-2], :i.shape[-1]] = i
        out_m[k, :m.shape[-2], :m.shape[-1]] = m
    return out_i, out_m, sizes
