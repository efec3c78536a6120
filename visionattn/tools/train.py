#!/usr/bin/env python3
"""Train an image classifier registered with timm (the visionattn zoo included) on real data.

Two data sources:

* ``--data-dir DIR``: ImageNet-style class folders, ``DIR/train/<class>/*.jpg`` for training and
  the first of ``DIR/{val,validation,valid,eval,evaluation,test}`` as the held-out split, read
  with timm's ``create_dataset`` and preprocessed with timm's ``create_transform``.
* ``--demo`` (or no ``--data-dir``): scikit-learn's bundled handwritten digits (1797 real 8x8
  scans, 10 classes, no download), split 80/20 stratified with a fixed seed, upscaled to a small
  RGB image. By default it trains a shrunk DiNAT (``dinat_mini`` with :data:`DEMO_KWARGS`).

The loop is AdamW (any ``timm.optim.create_optimizer_v2`` name) with a cosine schedule and
warmup stepped per iteration (``timm.scheduler.create_scheduler_v2``), label-smoothing
cross-entropy, optional AMP, top-1/top-5 on the held-out split after every epoch, and an atomic
checkpoint (``last.pth.tar``) after every epoch holding everything needed to continue exactly:
model, optimizer, scheduler, grad scaler, epoch, update count and every RNG state (python,
numpy, torch, CUDA, and the generator that orders the training data). ``--resume auto``
continues from ``OUTPUT/last.pth.tar``; on CPU with a fixed seed and ``--workers 0`` a resumed
run reproduces the uninterrupted run bit for bit.

Outputs in ``--output``: ``last.pth.tar``, ``log.csv`` (one row per epoch), ``model.safetensors``
and ``config.json`` (timm's ``save_for_hf`` format, loadable with ``timm.create_model(...,
pretrained=True, pretrained_cfg_overlay=dict(file=".../model.safetensors", num_classes=N))``)
and ``summary.json``. The saved weights are reloaded through timm and re-evaluated as a check.

Examples::

    python tools/train.py --demo --output runs/demo --overwrite
    python tools/train.py --model dinat_mini --data-dir /data/imagenet --img-size 224 \\
        --epochs 300 --batch-size 128 --lr 1e-3 --weight-decay 0.05 --warmup-epochs 20 --amp
    python tools/train.py --resume auto --output runs/dinat_mini   # continue an interrupted run
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from tqdm import tqdm

import timm
import timm.models
from timm.data import create_dataset, create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import accuracy, random_seed

import visionattn  # noqa: F401  (registers the zoo's models with timm)

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------
DEMO_MODEL = "dinat_mini"
#: Constructor kwargs that shrink ``dinat_mini`` to a model that trains in minutes on 2 CPU cores.
DEMO_KWARGS: Dict[str, Any] = dict(
    embed_dim=32,
    depths=(2, 2, 2, 2),
    num_heads=(1, 2, 4, 8),
    kernel_size=3,
    dilations=((1, 2), (1, 1), (1, 1), (1, 1)),
    mlp_ratio=2.0,
)
DEMO_NUM_CLASSES = 10
DEMO_NUM_SAMPLES = 1797
DEMO_SPLIT_SEED = 0  # the train/held-out split never depends on --seed
DEMO_HELD_OUT_FRACTION = 0.2

CHECKPOINT_NAME = "last.pth.tar"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
LOG_NAME = "log.csv"
SUMMARY_NAME = "summary.json"
ARTEFACTS = (CHECKPOINT_NAME, WEIGHTS_NAME, CONFIG_NAME, LOG_NAME, SUMMARY_NAME)
EVAL_SPLIT_NAMES = ("val", "validation", "valid", "eval", "evaluation", "test")
CHECKPOINT_VERSION = 1
_UMASK = os.umask(0o022)  # read the process umask (there is no getter) and put it back
os.umask(_UMASK)

# Defaults that depend on the data source; every flag not given falls back to these.
COMMON_DEFAULTS: Dict[str, Any] = dict(
    model_kwargs={}, opt="adamw", warmup_lr=1e-6, min_lr=1e-6, smoothing=0.1, clip_grad=None,
    drop_path=None, amp=False, amp_dtype="auto", device=None, workers=0, seed=0, demo=False,
    data_dir=None, train_split="train", val_split=None, max_train_samples=None, max_val_samples=None,
    crop_pct=None, no_aug=False, scale=(0.08, 1.0), hflip=0.5, color_jitter=0.4, no_progress=False,
    num_classes=None, img_size=None, output=None, demo_shift=None, threads=None,
)
DEMO_DEFAULTS: Dict[str, Any] = dict(
    model=DEMO_MODEL, num_classes=DEMO_NUM_CLASSES, img_size=32, epochs=20, batch_size=32, lr=2e-3,
    weight_decay=0.05, warmup_epochs=1, demo_shift=2, threads=1,
)
GENERIC_DEFAULTS: Dict[str, Any] = dict(epochs=100, batch_size=128, lr=1e-3, weight_decay=0.05, warmup_epochs=5)
# Arguments whose change between the interrupted run and its resumption breaks reproduction.
_REPRODUCIBILITY_KEYS = (
    "model", "model_kwargs", "num_classes", "drop_path", "demo", "data_dir", "train_split", "val_split",
    "max_train_samples", "max_val_samples", "img_size", "crop_pct", "no_aug", "scale", "hflip",
    "color_jitter", "demo_shift", "epochs", "batch_size", "opt", "lr", "weight_decay", "warmup_epochs",
    "warmup_lr", "min_lr", "smoothing", "clip_grad", "amp", "amp_dtype", "seed", "threads",
)


class UsageError(ValueError):
    """A command-line or setup mistake; the CLI prints it as ``error: ...`` without a traceback."""


# --------------------------------------------------------------------------------------------
# Small utilities: atomic writes, argument parsing
# --------------------------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry to disk (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: os.PathLike, write: Callable[[Any], None]) -> Path:
    """Write a file atomically: ``write(f)`` fills a temp file in the same directory, which is
    flushed, fsync'ed and then ``os.replace``'d onto ``path``.

    A crash at any moment leaves either the previous complete file or the new complete file,
    never a truncated one. ``write`` receives a binary file object. Returns ``path``.
    Raises whatever ``write`` or the file system raises; the temp file is removed then.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: os.PathLike, text: str) -> Path:
    """:func:`atomic_write` for UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)")


def parse_model_kwargs(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """Parse ``key=value`` strings into a kwargs dict, each value with ``yaml.safe_load``.

    ``depths=[2,2,6,2]`` gives a list, ``mlp_ratio=2`` an int, ``layer_scale=1e-5`` a float
    (YAML 1.1 alone would keep ``1e-5`` a string), ``act=gelu`` a string, ``x=null`` None.
    Raises :class:`UsageError` for an item without ``=`` or with invalid YAML.
    """
    out: Dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--model-kwargs expects key=value items, got {item!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise UsageError(f"--model-kwargs {key}: cannot parse {value!r} as YAML ({e})") from None
        if isinstance(parsed, str) and _FLOAT_RE.fullmatch(parsed.strip()):
            parsed = float(parsed)
        out[key] = parsed
    return out


def _jsonable(obj: Any) -> Any:
    """Convert tuples, paths and numpy/torch scalars into JSON-friendly values (recursively)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    return obj


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
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


def balanced_subset(targets: Sequence[int], n: Optional[int], seed: int = 0) -> List[int]:
    """Indices of a deterministic, class-balanced subset of ``n`` samples (sorted).

    Each class's indices are shuffled with ``numpy.random.RandomState(seed)``, then classes are
    taken round-robin, so class counts differ by at most one while a class has samples left.
    ``n=None`` or ``n >= len(targets)`` keeps everything. Raises ``ValueError`` for ``n < 1``.
    """
    targets = np.asarray(targets)
    if n is None or n >= len(targets):
        return list(range(len(targets)))
    if n < 1:
        raise ValueError(f"subset size must be >= 1, got {n}")
    rng = np.random.RandomState(seed)
    per_class = [rng.permutation(np.flatnonzero(targets == c)) for c in np.unique(targets)]
    order = [p[i] for i in range(max(len(p) for p in per_class)) for p in per_class if i < len(p)]
    return sorted(int(i) for i in order[:n])


def dataset_targets(ds) -> List[int]:
    """Targets of a DigitsDataset or a timm folder ImageDataset, without decoding images."""
    if isinstance(ds, DigitsDataset):
        return ds.targets.tolist()
    samples = getattr(getattr(ds, "reader", None), "samples", None)
    if samples is None:
        raise UsageError("--max-*-samples needs a class-folder dataset whose reader lists its samples")
    return [int(t) for _, t in samples]


def resolve_split_dir(data_dir: Path, split: Optional[str], candidates: Sequence[str]) -> str:
    """Name of the split folder under ``data_dir``: ``split`` if given, else the first existing
    of ``candidates``. Raises :class:`UsageError` naming what was looked for."""
    names = [split] if split else list(candidates)
    for name in names:
        if (data_dir / name).is_dir():
            return name
    raise UsageError(f"no split folder {' or '.join(names)} under {data_dir}")


def build_folder_datasets(data_dir: os.PathLike, data_config: Dict[str, Any], *, train_split: str = "train",
                          val_split: Optional[str] = None, augment: bool = True,
                          scale: Sequence[float] = (0.08, 1.0), hflip: float = 0.5, color_jitter: float = 0.4,
                          class_to_idx: Optional[Dict[str, int]] = None):
    """Class-folder train and held-out datasets with timm's transforms.

    ``data_dir/train_split/<class>/*`` (images) is the training split; the held-out split is
    ``val_split`` or the first of ``val, validation, valid, eval, evaluation, test`` present.
    The held-out split reuses the training split's class indices (``class_to_idx`` overrides
    both). Pass ``train_split=None`` for the held-out split alone. Returns
    ``(train_ds or None, val_ds, class_to_idx, val_split_name)``. Raises :class:`UsageError`
    for a missing folder.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir} is not a directory")
    train_ds = None
    if train_split is not None:
        train_name = resolve_split_dir(data_dir, train_split, ())
        tf = create_transform(
            **{k: data_config[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")},
            is_training=augment, scale=tuple(scale), hflip=hflip, color_jitter=color_jitter,
            crop_mode=data_config.get("crop_mode"))
        train_ds = create_dataset("", root=str(data_dir), split=train_name, is_training=True,
                                  class_map=class_to_idx or "", transform=tf)
        class_to_idx = dict(train_ds.reader.class_to_idx)
    val_name = resolve_split_dir(data_dir, val_split, EVAL_SPLIT_NAMES)
    val_tf = create_transform(**{k: data_config[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")},
                              is_training=False, crop_mode=data_config.get("crop_mode"))
    val_ds = create_dataset("", root=str(data_dir), split=val_name, class_map=class_to_idx or "", transform=val_tf)
    if class_to_idx is None:
        class_to_idx = dict(val_ds.reader.class_to_idx)
    return train_ds, val_ds, class_to_idx, val_name


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


def _seed_worker(worker_id: int) -> None:
    """Seed numpy in a loader worker from the torch seed the DataLoader derived for it."""
    np.random.seed(torch.initial_seed() % 2 ** 32)


def make_loader(ds, batch_size: int, *, train: bool, workers: int = 0, generator: Optional[torch.Generator] = None,
                device: torch.device = torch.device("cpu")) -> torch.utils.data.DataLoader:
    """A DataLoader yielding ``(images (B, 3, H, W) float, targets (B,) int64)``.

    Training loaders shuffle with ``generator`` (whose state alone fixes the data order and the
    worker seeds) and drop the last incomplete batch; evaluation loaders keep the dataset
    order and use a private generator so evaluating never consumes the global torch RNG.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=train, drop_last=train and len(ds) > batch_size,
        num_workers=workers, generator=generator, worker_init_fn=_seed_worker,
        pin_memory=device.type == "cuda", persistent_workers=False)


# --------------------------------------------------------------------------------------------
# Model, precision, evaluation
# --------------------------------------------------------------------------------------------
def create_model(name: str, num_classes: int, model_kwargs: Optional[Dict[str, Any]] = None,
                 drop_path: Optional[float] = None, **extra) -> nn.Module:
    """``timm.create_model(name, num_classes=..., **model_kwargs)``; ``drop_path`` becomes
    ``drop_path_rate``. Raises :class:`UsageError` for a name timm does not know."""
    kwargs = dict(model_kwargs or {})
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    if not timm.is_model(name):
        raise UsageError(f"unknown model {name!r}: not registered with timm (nor by visionattn)")
    return timm.create_model(name, num_classes=num_classes, **kwargs, **extra)


def resolve_device(name: Optional[str]) -> torch.device:
    """``torch.device(name)``, defaulting to CUDA when available; a CUDA request on a machine
    without CUDA raises :class:`UsageError`."""
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but CUDA is not available")
    return device


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


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, autocast_dtype: Optional[torch.dtype] = None,
             progress: bool = True, desc: str = "eval") -> Dict[str, float]:
    """Top-1/top-5 accuracy (percent) and mean cross-entropy of ``model`` over ``loader``.

    Uses ``timm.utils.accuracy``; top-5 becomes top-k with ``k = min(5, num_classes)``. Returns
    ``{"top1", "top5", "loss", "correct1", "correct5", "count"}``. The model is left in eval mode.
    """
    model.eval()
    correct1 = correct5 = 0
    loss_sum, count = 0.0, 0
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with _autocast(device, autocast_dtype):
            output = model(images)
        output = output.float()
        k5 = min(5, output.shape[1])
        acc1, acc5 = accuracy(output, targets, topk=(1, k5))
        bs = targets.shape[0]
        correct1 += round(acc1.item() * bs / 100.0)
        correct5 += round(acc5.item() * bs / 100.0)
        loss_sum += F.cross_entropy(output, targets, reduction="sum").item()
        count += bs
    if count == 0:
        raise UsageError("the held-out split is empty")
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count,
            "correct1": correct1, "correct5": correct5, "count": count}


def train_one_epoch(model: nn.Module, loader, optimizer, scheduler, loss_fn, *, device: torch.device, epoch: int,
                    epochs: int, num_updates: int, autocast_dtype: Optional[torch.dtype] = None, scaler=None,
                    clip_grad: Optional[float] = None, progress: bool = True) -> Dict[str, float]:
    """One pass over ``loader``; the LR schedule is stepped after every update
    (``scheduler.step_update(num_updates)``).

    Returns ``{"loss" (mean over samples), "lr" (after the last step), "num_updates",
    "samples"}``. Raises ``FloatingPointError`` when the loss becomes NaN/inf.
    """
    model.train()
    loss_sum, samples = 0.0, 0
    pbar = tqdm(loader, desc=f"train {epoch + 1}/{epochs}", leave=False, disable=not progress, dynamic_ncols=True)
    for step, (images, targets) in enumerate(pbar):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with _autocast(device, autocast_dtype):
            output = model(images)
            loss = loss_fn(output, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                     "lower --lr, add --clip-grad or turn off --amp")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        num_updates += 1
        scheduler.step_update(num_updates=num_updates)
        bs = targets.shape[0]
        loss_sum += loss.item() * bs
        samples += bs
        if progress:
            pbar.set_postfix(loss=f"{loss_sum / samples:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    scheduler.step(epoch + 1)
    return {"loss": loss_sum / max(samples, 1), "lr": optimizer.param_groups[0]["lr"],
            "num_updates": num_updates, "samples": samples}


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def get_rng_state(data_generator: torch.Generator) -> Dict[str, Any]:
    """All RNG states a resumed run needs, as ``torch.load(weights_only=True)``-safe values."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "data": data_generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any], data_generator: torch.Generator) -> None:
    """Restore what :func:`get_rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state({"bit_generator": npst["bit_generator"],
                         "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
                         "has_gauss": npst["has_gauss"], "gauss": npst["gauss"]})
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: os.PathLike, state: Dict[str, Any]) -> Path:
    """``torch.save(state)`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: os.PathLike) -> Dict[str, Any]:
    """Load a training checkpoint with ``torch.load(weights_only=True)`` onto the CPU.
    Raises :class:`UsageError` if it is missing or is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UsageError(f"{path} is not a training checkpoint written by tools/train.py")
    return ckpt


def write_log_csv(path: os.PathLike, history: List[Dict[str, Any]]) -> None:
    """Write the per-epoch history as CSV (atomically, the whole file each time)."""
    buf = io.StringIO()
    if history:
        writer = csv.DictWriter(buf, fieldnames=list(history[0].keys()), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def export_weights(model: nn.Module, out_dir: os.PathLike, model_args: Dict[str, Any], data_config: Dict[str, Any],
                   label_names: Optional[List[str]] = None) -> Tuple[Path, Path]:
    """Save ``model.safetensors`` and ``config.json`` with ``timm.models.save_for_hf``.

    Both are written into a temp folder inside ``out_dir``, fsync'ed, then each ``os.replace``'d
    into place, so neither is ever seen half written. Returns their paths.
    """
    out_dir = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".export-"))
    try:
        timm.models.save_for_hf(
            model, tmp, model_args=_jsonable(model_args), safe_serialization=True,
            data_config={k: data_config[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")},
            model_config=dict(label_names=list(label_names)) if label_names else None)
        paths = []
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp / name, out_dir / name)
            paths.append(out_dir / name)
        _fsync_dir(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths[0], paths[1]


def load_exported_model(name: str, weights: os.PathLike, num_classes: int,
                        model_kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    """Create ``name`` through timm's pretrained path from a local safetensors file.

    ``num_classes`` is put in the overlay too: without it timm sees a class count different
    from the default cfg's and silently drops the classifier weights.
    """
    return timm.create_model(name, pretrained=True, num_classes=num_classes,
                             pretrained_cfg_overlay=dict(file=str(weights), num_classes=num_classes),
                             **(model_kwargs or {}))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser. Every default is None here; :func:`resolve_args` fills in the
    defaults (which depend on --demo) and, when resuming, the checkpoint's own arguments."""
    p = argparse.ArgumentParser(
        description="Train a timm/visionattn classifier on class folders or on the embedded digits demo. "
                    "Defaults in parentheses; with --resume, flags not given take the checkpoint's values.")
    g = p.add_argument_group("data")
    g.add_argument("--demo", action="store_true", default=None,
                   help="train on scikit-learn's bundled digits (the default when --data-dir is absent)")
    g.add_argument("--data-dir", type=Path, help="folder with train/ and val/ (or validation/, test/) class folders")
    g.add_argument("--train-split", help="training split folder (default: train)")
    g.add_argument("--val-split", help="held-out split folder (default: first of val, validation, valid, eval, test)")
    g.add_argument("--max-train-samples", type=int, help="deterministic class-balanced training subset")
    g.add_argument("--max-val-samples", type=int, help="deterministic class-balanced held-out subset")
    g.add_argument("--img-size", type=int, help="input size (default: demo 32, else the model's pretrained cfg)")
    g.add_argument("--crop-pct", type=float, help="eval center-crop fraction (default: the model's pretrained cfg)")
    g.add_argument("--no-aug", action="store_true", default=None, help="train with the eval transform")
    g.add_argument("--scale", type=float, nargs=2, metavar=("MIN", "MAX"), help="RandomResizedCrop scale (0.08 1.0)")
    g.add_argument("--hflip", type=float, help="horizontal flip probability (0.5)")
    g.add_argument("--color-jitter", type=float, help="color jitter strength (0.4)")
    g.add_argument("--demo-shift", type=int, help="demo augmentation: random shift in pixels (2)")
    g.add_argument("--workers", type=int, help="data loader worker processes (0)")
    g = p.add_argument_group("model")
    g.add_argument("--model", help=f"timm model name (demo: {DEMO_MODEL} shrunk by DEMO_KWARGS)")
    g.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE",
                   help="constructor kwargs for timm.create_model, values parsed as YAML (depths=[2,2,2,2])")
    g.add_argument("--num-classes", type=int, help="classifier size (default: classes found in the training split)")
    g.add_argument("--drop-path", type=float, help="stochastic depth rate (drop_path_rate)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="epochs (demo 20, else 100)")
    g.add_argument("-b", "--batch-size", type=int, help="batch size (demo 32, else 128)")
    g.add_argument("--opt", help="timm optimizer name (adamw)")
    g.add_argument("--lr", type=float, help="peak learning rate, used as is, never rescaled (demo 2e-3, else 1e-3)")
    g.add_argument("--weight-decay", type=float, help="weight decay, not applied to 1-D params/no_weight_decay() (0.05)")
    g.add_argument("--warmup-epochs", type=float, help="linear warmup length in epochs (demo 1, else 5)")
    g.add_argument("--warmup-lr", type=float, help="LR at the start of warmup (1e-6)")
    g.add_argument("--min-lr", type=float, help="LR at the end of the cosine (1e-6)")
    g.add_argument("--smoothing", type=float, help="label smoothing (0.1)")
    g.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value (off)")
    g.add_argument("--amp", action="store_true", default=None,
                   help="mixed precision: bf16 autocast on CPU; on CUDA bf16 if supported, else fp16 + GradScaler")
    g.add_argument("--amp-dtype", choices=("auto", "bfloat16", "float16"), help="AMP dtype (auto)")
    g = p.add_argument_group("run")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--seed", type=int, help="seed for init, data order and augmentation (0)")
    g.add_argument("--threads", type=int,
                   help="CPU intra-op threads, torch.set_num_threads (demo 1: the tiny model gains nothing from "
                        "more, and spinning OpenMP threads crawl on a shared machine; else torch's default)")
    g.add_argument("--output", type=Path, help="run folder (default: runs/demo or runs/<model>)")
    g.add_argument("--overwrite", action="store_true", default=None, help="allow reusing a non-empty --output")
    g.add_argument("--resume", metavar="PATH|auto",
                   help="continue from a checkpoint (or a run folder); auto = OUTPUT/last.pth.tar if present")
    g.add_argument("--no-progress", action="store_true", default=None, help="no tqdm progress bars")
    return p


def _default_output(cfg: Dict[str, Any]) -> Path:
    demo = cfg.get("demo") or cfg.get("data_dir") is None
    return Path("runs") / ("demo" if demo else str(cfg.get("model") or "train").replace("/", "_"))


def resolve_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Optional[Dict[str, Any]]]:
    """Parse ``argv`` and fill defaults. Returns ``(args, checkpoint or None)``.

    Precedence: flags given on the command line > the checkpoint's arguments (when resuming) >
    data-source defaults (:data:`DEMO_DEFAULTS` or :data:`GENERIC_DEFAULTS`) > :data:`COMMON_DEFAULTS`.
    Raises :class:`UsageError` for inconsistent flags or a missing checkpoint.
    """
    raw = build_parser().parse_args(argv)
    explicit = {k: v for k, v in vars(raw).items() if v is not None}
    resume = explicit.pop("resume", None)
    overwrite = bool(explicit.pop("overwrite", False))
    if "model_kwargs" in explicit:
        explicit["model_kwargs"] = parse_model_kwargs(explicit["model_kwargs"])
    if explicit.get("demo") and explicit.get("data_dir") is not None:
        raise UsageError("--demo and --data-dir are exclusive")

    ckpt, ckpt_path = None, None
    if resume:
        if resume == "auto":
            out = Path(explicit.get("output") or _default_output(explicit))
            if (out / CHECKPOINT_NAME).is_file():
                ckpt_path = out / CHECKPOINT_NAME
        else:
            ckpt_path = Path(resume)
            if ckpt_path.is_dir():
                ckpt_path = ckpt_path / CHECKPOINT_NAME
            if not ckpt_path.is_file():
                raise UsageError(f"--resume {resume}: no checkpoint at {ckpt_path}")
        if ckpt_path is not None:
            ckpt = load_checkpoint(ckpt_path)

    base = dict(ckpt["args"]) if ckpt else {}
    base.pop("resume", None)
    base.pop("overwrite", None)
    base.pop("resume_requested", None)
    if "model_kwargs" in explicit and "model_kwargs" in base:
        explicit["model_kwargs"] = {**base["model_kwargs"], **explicit["model_kwargs"]}
    merged = {**base, **explicit}
    demo = bool(merged.get("demo")) or merged.get("data_dir") is None
    cfg = {**COMMON_DEFAULTS, **(DEMO_DEFAULTS if demo else GENERIC_DEFAULTS), **merged}
    cfg["demo"] = demo
    if cfg.get("model") is None:
        raise UsageError("--model is required with --data-dir")
    if not timm.is_model(cfg["model"]):
        raise UsageError(f"unknown model {cfg['model']!r}: not registered with timm (nor by visionattn)")
    if demo and cfg["model"] == DEMO_MODEL and not base:
        cfg["model_kwargs"] = {**DEMO_KWARGS, **explicit.get("model_kwargs", {})}
    if cfg.get("output") is None:
        cfg["output"] = _default_output(cfg)
    cfg["output"] = Path(cfg["output"])
    if cfg.get("data_dir") is not None:
        cfg["data_dir"] = Path(cfg["data_dir"])
    cfg["scale"] = tuple(cfg["scale"])
    for key, low in (("epochs", 1), ("batch_size", 1), ("workers", 0), ("max_train_samples", 1), ("threads", 1),
                     ("max_val_samples", 1), ("num_classes", 1), ("img_size", 1)):
        if cfg.get(key) is not None and cfg[key] < low:
            raise UsageError(f"--{key.replace('_', '-')} must be >= {low}, got {cfg[key]}")
    if cfg["lr"] <= 0:
        raise UsageError(f"--lr must be > 0, got {cfg['lr']}")
    if not 0 <= cfg["warmup_epochs"] <= cfg["epochs"]:
        raise UsageError(f"--warmup-epochs must be in [0, --epochs], got {cfg['warmup_epochs']}")
    if ckpt is not None:
        changed = [k for k in _REPRODUCIBILITY_KEYS if k in base and _jsonable(base[k]) != _jsonable(cfg.get(k))]
        if changed:
            print("warning: resuming with changed arguments (the run will not reproduce an uninterrupted one): "
                  + ", ".join(f"{k}: {base[k]!r} -> {cfg.get(k)!r}" for k in changed), file=sys.stderr)
    cfg["resume"] = str(ckpt_path) if ckpt_path else None
    cfg["resume_requested"] = bool(resume)
    cfg["overwrite"] = overwrite
    return argparse.Namespace(**cfg), ckpt


def prepare_output_dir(out: Path, overwrite: bool, resuming: bool, resume_requested: bool = False) -> None:
    """Create ``out``; refuse a non-empty one unless ``overwrite`` or resuming.

    With ``overwrite`` on a fresh run, the artefacts of an earlier run (checkpoint, weights,
    logs) are deleted so none can be mistaken for this run's; other files are left alone.
    Raises ``FileExistsError`` with the remedy in the message.
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if resuming:
        return
    existing = sorted(p.name for p in out.iterdir())
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (" ..." if len(existing) > 5 else "")
        hint = (f"it holds no {CHECKPOINT_NAME} to resume from" if resume_requested
                else "--resume auto continues a run it holds")
        raise FileExistsError(f"output directory {out} is not empty ({shown}); pass --overwrite to reuse it "
                              f"or choose another --output ({hint})")
    if overwrite:
        for name in ARTEFACTS:
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run a training job; returns the summary dict also written to ``OUTPUT/summary.json``.

    Raises :class:`UsageError` / ``FileExistsError`` for bad arguments or an output folder that
    may not be reused, ``FloatingPointError`` when training diverges, ``RuntimeError`` when the
    exported weights do not reproduce the trained model's accuracy.
    """
    args, ckpt = resolve_args(argv)
    out: Path = args.output
    prepare_output_dir(out, args.overwrite, resuming=ckpt is not None, resume_requested=args.resume_requested)
    progress = not args.no_progress
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    autocast_dtype, need_scaler = resolve_amp(device, args.amp, args.amp_dtype)

    random_seed(args.seed)
    data_generator = torch.Generator().manual_seed(args.seed)

    # The data config needs the model's pretrained cfg, the model needs the class count from the
    # data: resolve the data config from the (cheap to query) pretrained cfg of the architecture.
    pretrained_cfg = timm.models.get_pretrained_cfg(args.model, allow_unregistered=True)
    pretrained_cfg = pretrained_cfg.to_dict() if pretrained_cfg is not None else {}
    data_config = resolve_data_config(dict(img_size=args.img_size, crop_pct=args.crop_pct),
                                      pretrained_cfg=pretrained_cfg or {"input_size": (3, 224, 224)})
    data_config["input_size"] = tuple(data_config["input_size"])

    if args.demo:
        train_ds, val_ds, class_to_idx = build_demo_datasets(data_config, shift=0 if args.no_aug else args.demo_shift)
        data_desc = "sklearn digits (1797 8x8 scans, stratified 80/20 split)"
    else:
        train_ds, val_ds, class_to_idx, val_name = build_folder_datasets(
            args.data_dir, data_config, train_split=args.train_split, val_split=args.val_split,
            augment=not args.no_aug, scale=args.scale, hflip=args.hflip, color_jitter=args.color_jitter)
        args.val_split = val_name
        data_desc = f"{args.data_dir} ({args.train_split}/ and {val_name}/)"
    label_names = [name for name, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
    if args.num_classes is None:
        args.num_classes = len(class_to_idx)
    elif args.num_classes < len(class_to_idx):
        raise UsageError(f"--num-classes {args.num_classes} is smaller than the {len(class_to_idx)} classes found")
    if args.max_train_samples:
        train_ds = torch.utils.data.Subset(train_ds, balanced_subset(dataset_targets(train_ds), args.max_train_samples))
    if args.max_val_samples:
        val_ds = torch.utils.data.Subset(val_ds, balanced_subset(dataset_targets(val_ds), args.max_val_samples))

    model = create_model(args.model, args.num_classes, args.model_kwargs, args.drop_path).to(device)
    param_count = sum(p.numel() for p in model.parameters())
    train_loader = make_loader(train_ds, args.batch_size, train=True, workers=args.workers,
                               generator=data_generator, device=device)
    val_loader = make_loader(val_ds, args.batch_size, train=False, workers=args.workers, device=device)
    updates_per_epoch = len(train_loader)
    if updates_per_epoch == 0:
        raise UsageError("the training split is empty")

    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
        warmup_lr=args.warmup_lr, min_lr=args.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if need_scaler else None
    loss_fn = LabelSmoothingCrossEntropy(args.smoothing) if args.smoothing > 0 else nn.CrossEntropyLoss()

    start_epoch, num_updates, history = 0, 0, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, num_updates = int(ckpt["epoch"]), int(ckpt["num_updates"])
        history = list(ckpt.get("history", []))
        set_rng_state(ckpt["rng"], data_generator)
        tqdm.write(f"resumed from {args.resume}: {start_epoch}/{args.epochs} epochs done, "
                   f"{num_updates} updates, lr {optimizer.param_groups[0]['lr']:.3e}")
        del ckpt

    args_record = {k: _jsonable(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    tqdm.write(f"model {args.model} ({param_count / 1e6:.3f}M params) kwargs {args.model_kwargs}")
    tqdm.write(f"data {data_desc}: {len(train_ds)} train / {len(val_ds)} held-out, input {data_config['input_size']}, "
               f"{args.num_classes} classes; device {device}{', amp ' + str(autocast_dtype) if autocast_dtype else ''}"
               f"{f', {torch.get_num_threads()} CPU threads' if device.type == 'cpu' else ''}")
    tqdm.write(f"output {out}")

    for epoch in range(start_epoch, args.epochs):
        t0 = time.perf_counter()
        tr = train_one_epoch(model, train_loader, optimizer, scheduler, loss_fn, device=device, epoch=epoch,
                             epochs=args.epochs, num_updates=num_updates, autocast_dtype=autocast_dtype,
                             scaler=scaler, clip_grad=args.clip_grad, progress=progress)
        num_updates = tr["num_updates"]
        t1 = time.perf_counter()
        ev = evaluate(model, val_loader, device, autocast_dtype, progress=progress, desc=f"eval {epoch + 1}")
        t2 = time.perf_counter()
        row = {"epoch": epoch + 1, "num_updates": num_updates, "lr": tr["lr"], "train_loss": round(tr["loss"], 6),
               "val_loss": round(ev["loss"], 6), "top1": ev["top1"], "top5": ev["top5"],
               "train_time_s": round(t1 - t0, 3), "eval_time_s": round(t2 - t1, 3)}
        history.append(row)
        tqdm.write(f"epoch {epoch + 1:>3}/{args.epochs}  lr {tr['lr']:.2e}  train loss {tr['loss']:.4f}  "
                   f"held-out loss {ev['loss']:.4f}  top1 {ev['top1']:.2f}  top5 {ev['top5']:.2f}  ({t1 - t0:.1f}s)")
        state = {
            "version": CHECKPOINT_VERSION, "arch": args.model, "args": args_record, "epoch": epoch + 1,
            "num_updates": num_updates, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": get_rng_state(data_generator), "history": history, "data_config": dict(data_config),
            "class_to_idx": class_to_idx, "metric": {"top1": ev["top1"], "top5": ev["top5"]},
        }
        save_checkpoint(out / CHECKPOINT_NAME, state)
        write_log_csv(out / LOG_NAME, history)
        del state

    # Final evaluation of the final weights, export, and a reload through timm as a check.
    final = evaluate(model, val_loader, device, autocast_dtype, progress=progress, desc="final eval")
    weights_path, config_path = export_weights(model, out, args.model_kwargs, data_config,
                                               label_names if len(label_names) == args.num_classes else None)
    reloaded = load_exported_model(args.model, weights_path, args.num_classes, args.model_kwargs).to(device)
    same_weights = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    re_eval = evaluate(reloaded, val_loader, device, autocast_dtype, progress=progress, desc="reload eval")
    identical = same_weights and re_eval["correct1"] == final["correct1"] and re_eval["correct5"] == final["correct5"]
    tqdm.write(f"reloaded {weights_path} through timm.create_model(pretrained=True): top1 {re_eval['top1']:.2f} "
               f"top5 {re_eval['top5']:.2f} ({'identical' if identical else 'DIFFERENT'})")
    if not identical and device.type == "cpu":
        raise RuntimeError(f"the exported weights {weights_path} do not reproduce the trained model "
                           f"(top1 {final['top1']} vs {re_eval['top1']}, identical weights: {same_weights})")

    predictions = None
    if args.demo:
        predictions = _demo_predictions(reloaded, val_ds, device, label_names)

    best = max(history, key=lambda r: r["top1"]) if history else None
    summary = {
        "model": args.model, "model_kwargs": _jsonable(args.model_kwargs), "param_count": param_count,
        "data": data_desc, "num_classes": args.num_classes, "train_samples": len(train_ds),
        "held_out_samples": len(val_ds), "data_config": _jsonable(data_config), "epochs": args.epochs,
        "num_updates": num_updates, "seed": args.seed, "device": str(device), "threads": torch.get_num_threads(),
        "amp": str(autocast_dtype) if autocast_dtype else None,
        "final": {k: final[k] for k in ("top1", "top5", "loss", "count")},
        "best": {"epoch": best["epoch"], "top1": best["top1"], "top5": best["top5"]} if best else None,
        "reload_check": {"top1": re_eval["top1"], "top5": re_eval["top5"], "identical": identical},
        "train_time_s": round(sum(r["train_time_s"] for r in history), 3),
        "files": {"checkpoint": str(out / CHECKPOINT_NAME), "weights": str(weights_path),
                  "config": str(config_path), "log": str(out / LOG_NAME), "summary": str(out / SUMMARY_NAME)},
        "predictions": predictions,
        "args": _jsonable(args_record),
    }
    atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    tqdm.write(f"final held-out top1 {final['top1']:.2f}%  top5 {final['top5']:.2f}%  "
               f"({final['count']} samples, chance {100.0 / args.num_classes:.1f}%); wrote {out / SUMMARY_NAME}")
    return summary


def _demo_predictions(model: nn.Module, val_ds, device: torch.device, label_names: List[str],
                      n: int = 12) -> List[Dict[str, Any]]:
    """Predict the first ``n`` held-out digits, print them next to their labels, return them."""
    model.eval()
    items = [val_ds[i] for i in range(min(n, len(val_ds)))]
    with torch.no_grad():
        logits = model(torch.stack([x for x, _ in items]).to(device)).float()
    probs = logits.softmax(-1).cpu()
    rows = []
    for i, (_, target) in enumerate(items):
        pred = int(probs[i].argmax())
        rows.append({"index": i, "true": label_names[target], "pred": label_names[pred],
                     "confidence": round(float(probs[i, pred]), 4)})
    tqdm.write("held-out predictions (reloaded weights):  " + "  ".join(
        f"{r['true']}->{r['pred']}{'' if r['true'] == r['pred'] else '(x)'}" for r in rows))
    return rows


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: run :func:`main`, print user errors without a traceback."""
    try:
        main(argv)
    except (UsageError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the last completed epoch is in OUTPUT/last.pth.tar, continue with --resume auto",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
