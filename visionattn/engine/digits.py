"""The demo data: scikit-learn's bundled handwritten digits (1797 real 8x8 scans, 10 classes,
nothing downloaded) as a fixed stratified 80/20 split of small normalised RGB images."""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .cli import UsageError


DEMO_NUM_CLASSES = 10
DEMO_NUM_SAMPLES = 1797
DEMO_SPLIT_SEED = 0  # the train/held-out split never depends on --seed
DEMO_HELD_OUT_FRACTION = 0.2


def load_digits_split(seed: int = DEMO_SPLIT_SEED) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """The demo data: scikit-learn's handwritten digits split into ``train`` and ``val``.

    Returns ``{"train": (images, targets), "val": (images, targets)}`` with images as float32
    arrays of shape ``(N, 8, 8)`` holding ink intensities in ``[0, 16]`` and int64 targets in
    ``[0, 10)``. The 1797 samples are split 80/20 (1437/360), stratified by class, with a fixed
    ``seed`` so the held-out set is the same in every run. Needs scikit-learn (the data ship
    inside the package; nothing is downloaded).
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - scikit-learn is a declared demo dependency
        raise UsageError("the demo data need scikit-learn: pip install 'visionattn[demo]'") from e
    digits = load_digits()
    images = digits.images.astype(np.float32)
    targets = digits.target.astype(np.int64)
    idx_train, idx_val = train_test_split(
        np.arange(len(targets)), test_size=DEMO_HELD_OUT_FRACTION, stratify=targets, random_state=seed)
    idx_train, idx_val = np.sort(idx_train), np.sort(idx_val)
    return {"train": (images[idx_train], targets[idx_train]), "val": (images[idx_val], targets[idx_val])}


class DigitsDataset(torch.utils.data.Dataset):
    """8x8 digit scans as normalised RGB tensors of shape ``(3, img_size, img_size)``.

    Images are scaled to ``[0, 1]``, upsampled bilinearly to ``img_size``, replicated to three
    channels and normalised with ``mean``/``std`` (per channel, as in the model's data config).
    With ``shift > 0`` each training sample is translated by up to ``shift`` pixels in x and y
    (zero-ink padding), drawn from torch's RNG, so it is reproducible under a fixed seed.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, img_size: int = 32,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                 shift: int = 0):
        if images.ndim != 3 or len(images) != len(targets):
            raise ValueError(f"expected images (N, H, W) and N targets, got {images.shape} and {len(targets)}")
        x = torch.as_tensor(images, dtype=torch.float32)[:, None] / 16.0
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False).clamp_(0, 1)
        self.images = x.expand(-1, 3, -1, -1).contiguous()  # (N, 3, S, S) in [0, 1]
        self.targets = torch.as_tensor(targets, dtype=torch.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.shift = int(shift)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        x = self.images[index]
        if self.shift > 0:
            s = self.shift
            dy, dx = torch.randint(0, 2 * s + 1, (2,)).tolist()
            size = x.shape[-1]
            x = F.pad(x, (s, s, s, s))[:, dy:dy + size, dx:dx + size]
        return (x - self.mean) / self.std, int(self.targets[index])


def build_demo_datasets(data_config: Dict[str, Any], shift: int = 0):
    """Train and held-out :class:`DigitsDataset` at ``data_config['input_size']`` with its mean/std.

    Returns ``(train_ds, val_ds, class_to_idx)``; classes are named ``"0"`` ... ``"9"``.
    Raises :class:`UsageError` for a non-square or non-RGB input size.
    """
    c, h, w = data_config["input_size"]
    if c != 3 or h != w:
        raise UsageError(f"the demo digits need a square RGB input size, got {data_config['input_size']}")
    split = load_digits_split()
    kw = dict(img_size=h, mean=data_config["mean"], std=data_config["std"])
    train_ds = DigitsDataset(*split["train"], shift=shift, **kw)
    val_ds = DigitsDataset(*split["val"], **kw)
    return train_ds, val_ds, {str(i): i for i in range(DEMO_NUM_CLASSES)}
