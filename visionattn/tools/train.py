#!/usr/bin/env python3
"""Train an image classifier registered with timm (the visionattn zoo included), on one process
or many (``torchrun``), from scratch or fine-tuning.

Data sources:

* ``--data-dir DIR`` with ``--dataset ''`` (default): ImageNet-style class folders,
  ``DIR/train/<class>/*.jpg`` for training and the first of
  ``DIR/{val,validation,valid,eval,evaluation,test}`` as the held-out split (or a ``.tar`` of
  them). Any other ``--dataset`` goes to timm's dataset factory (``timm.data.create_dataset``)
  with its prefixes: ``torch/<name>`` (torchvision), ``hfds/<hub id>`` (Hugging Face datasets),
  ``hfids/``, ``tfds/``, ``wds/`` (tar shards), with ``--train-split`` / ``--val-split``.
* ``--demo`` (or no ``--data-dir``): scikit-learn's bundled handwritten digits (1797 real 8x8
  scans, 10 classes, no download), split 80/20 stratified with a fixed seed, upscaled to a small
  RGB image. By default it trains a shrunk DiNAT (``dinat_mini`` with :data:`DEMO_KWARGS`).

Preprocessing is timm's ``create_transform`` with the model's data config (input size,
crop_pct, interpolation, mean/std from its pretrained cfg, overridable), RandAugment /
AutoAugment (``--aa``), random erasing (``--reprob/--remode/--recount``), repeated
augmentation (``--aug-repeats``, timm's ``RepeatAugSampler``) and Mixup/CutMix
(``timm.data.Mixup``; the loss becomes ``SoftTargetCrossEntropy`` while it is active).

Optimisation: any ``timm.optim.create_optimizer_v2`` name (AdamW by default) with no weight
decay on 1-D parameters and ``model.no_weight_decay()``, layer-wise LR decay from the model's
``group_matcher`` (``--layer-decay``), a timm scheduler (``--sched cosine|step|multistep|poly|...``)
with warmup stepped per update, gradient accumulation (``--grad-accum-steps``; ``no_sync`` on
the non-final micro-steps under DDP), clipping, an EMA of the weights (``timm.utils.ModelEmaV3``;
evaluated and exported separately), AMP (bf16 / fp16 + GradScaler), ``--channels-last``,
``--torchcompile`` and ``--grad-checkpointing``.

Distributed: run under ``torchrun``; NCCL on CUDA, gloo on CPU (DDP with ``device_ids=None``,
which timm's own train.py gets wrong). Every rank reads a disjoint shard of each epoch's
permutation (``DistributedSampler(seed=--seed)`` + ``set_epoch``; the single-process run uses
the same sampler with one replica, so ``-b 2B`` on one process sees the same global batches as
``-b B`` on two). Evaluation shards the held-out set without counting any padding sample. Only
rank 0 logs and writes files. ``--fsdp`` shards the model with FSDP2 (``fully_shard`` per
stage, then the root) for the largest variants.

Every flag may come from a YAML file (``-c configs/imagenet/<model>.yaml``; command-line flags
win; unknown keys are an error). Checkpoints (``last.pth.tar``, atomic) hold the model,
optimizer, scheduler, EMA, grad scaler, epoch, update count and every RNG state of every rank;
``--resume auto`` continues a run, bit for bit on CPU with a fixed seed and ``--workers 0``.

Outputs in ``--output``: ``last.pth.tar``, ``log.csv`` and ``log.json`` (one row per epoch),
``model.safetensors`` + ``config.json`` (timm's ``save_for_hf`` format; the EMA weights in
``ema/`` when ``--model-ema``), ``summary.json``, ``summary.txt`` and ``curves.png`` (loss,
top-1 and LR against epoch). The saved weights are reloaded through timm and re-evaluated as a check.

Examples::

    python tools/train.py --demo --output runs/demo --overwrite
    torchrun --nproc_per_node=8 tools/train.py -c configs/imagenet/dinat_tiny.yaml --data-dir /data/imagenet
    python tools/train.py --resume auto --output runs/dinat_mini   # continue an interrupted run
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import difflib
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
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import yaml
from tqdm import tqdm

import timm
import timm.models
from timm.data import Mixup, create_dataset, create_transform, resolve_data_config
from timm.data.distributed_sampler import RepeatAugSampler
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, accuracy, dispatch_clip_grad, random_seed

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
LOG_JSON_NAME = "log.json"
SUMMARY_NAME = "summary.json"
SUMMARY_TEXT_NAME = "summary.txt"
CURVES_NAME = "curves.png"
EMA_DIR = "ema"
ARTEFACTS = (CHECKPOINT_NAME, WEIGHTS_NAME, CONFIG_NAME, LOG_NAME, LOG_JSON_NAME, SUMMARY_NAME, SUMMARY_TEXT_NAME,
             CURVES_NAME)
EVAL_SPLIT_NAMES = ("val", "validation", "valid", "eval", "evaluation", "test")
CHECKPOINT_VERSION = 2
_UMASK = os.umask(0o022)  # read the process umask (there is no getter) and put it back
os.umask(_UMASK)

# Defaults that depend on the data source; every flag not given falls back to these.
COMMON_DEFAULTS: Dict[str, Any] = dict(
    model_kwargs={}, opt="adamw", opt_eps=None, opt_betas=None, momentum=0.9, warmup_lr=1e-6, min_lr=1e-6,
    smoothing=0.1, clip_grad=None, clip_mode="norm", drop_path=None, drop=None, amp=False, amp_dtype="auto",
    device=None, workers=0, seed=0, demo=False, data_dir=None, dataset="", dataset_download=False,
    train_split="train", val_split=None, max_train_samples=None, max_val_samples=None, crop_pct=None,
    interpolation=None, train_interpolation=None, mean=None, std=None, no_aug=False, scale=(0.08, 1.0),
    ratio=(3.0 / 4.0, 4.0 / 3.0), hflip=0.5, color_jitter=0.4, aa=None, reprob=0.0, remode="pixel", recount=1,
    aug_repeats=0, mixup=0.0, cutmix=0.0, cutmix_minmax=None, mixup_prob=1.0, mixup_switch_prob=0.5,
    mixup_mode="batch", mixup_off_epoch=0, no_progress=False, num_classes=None, img_size=None, output=None,
    demo_shift=None, threads=None, sched="cosine", sched_on_updates=True, cooldown_epochs=0, decay_epochs=90.0,
    decay_milestones=(90, 180, 270), decay_rate=0.1, warmup_prefix=False, layer_decay=None,
    layer_decay_min_scale=0.0, grad_accum_steps=1, model_ema=False, model_ema_decay=0.9998,
    model_ema_warmup=False, model_ema_force_cpu=False, channels_last=False, torchcompile=None,
    grad_checkpointing=False, fsdp=False, pretrained=None, pretrained_path=None, initial_checkpoint=None,
    initial_checkpoint_ema=False,
    recipe_gpus=None, config=None,
)
DEMO_DEFAULTS: Dict[str, Any] = dict(
    model=DEMO_MODEL, num_classes=DEMO_NUM_CLASSES, img_size=32, epochs=20, batch_size=32, lr=2e-3,
    weight_decay=0.05, warmup_epochs=1, demo_shift=2, threads=1,
)
GENERIC_DEFAULTS: Dict[str, Any] = dict(epochs=100, batch_size=128, lr=1e-3, weight_decay=0.05, warmup_epochs=5)
# Arguments whose change between the interrupted run and its resumption breaks reproduction.
_REPRODUCIBILITY_KEYS = (
    "model", "model_kwargs", "num_classes", "drop_path", "drop", "demo", "data_dir", "dataset", "train_split",
    "val_split", "max_train_samples", "max_val_samples", "img_size", "crop_pct", "no_aug", "scale", "ratio", "hflip",
    "color_jitter", "aa", "reprob", "remode", "recount", "aug_repeats", "mixup", "cutmix", "cutmix_minmax",
    "mixup_prob", "mixup_switch_prob", "mixup_mode", "mixup_off_epoch", "demo_shift", "epochs", "batch_size", "opt",
    "lr", "weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "sched", "cooldown_epochs", "decay_epochs",
    "decay_rate", "layer_decay", "grad_accum_steps", "smoothing", "clip_grad", "clip_mode", "model_ema",
    "model_ema_decay", "amp", "amp_dtype", "seed", "threads",
)
# Flags that make no sense inside a config file (they name a particular run, not a recipe).
_NOT_IN_CONFIG = ("config", "resume", "overwrite", "help")


class UsageError(ValueError):
    """A command-line or setup mistake; the CLI prints it as ``error: ...`` without a traceback."""


RESUME_HINT = "the last completed epoch is in OUTPUT/last.pth.tar, continue with --resume auto"


def run_cli(main: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None, *,
            errors: Tuple[type, ...] = (UsageError,), interrupted: Optional[str] = None,
            status: Callable[[Any], int] = lambda result: 0) -> int:
    """The console entry of every tool: run ``main(argv)`` and turn the outcome into an exit status.

    Returns ``status(result)`` (0 by default); 2 after printing ``error: <message>`` (no
    traceback) for an exception of a type in ``errors``; 130 on Ctrl-C when ``interrupted`` (a
    hint printed then) is given, otherwise the interrupt propagates. Other exceptions propagate.
    """
    try:
        result = main(argv)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(f"\ninterrupted; {interrupted}", file=sys.stderr)
        return 130
    return status(result)


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
    """Targets of a DigitsDataset, a timm folder ImageDataset or a torchvision dataset with a
    ``targets`` list, without decoding images. Raises :class:`UsageError` for other datasets."""
    if isinstance(ds, DigitsDataset):
        return ds.targets.tolist()
    samples = getattr(getattr(ds, "reader", None), "samples", None)
    if samples is None and isinstance(getattr(ds, "targets", None), (list, tuple)):
        return [int(t) for t in ds.targets]
    if samples is None:
        raise UsageError("--max-*-samples needs a dataset that lists its targets (class folders, torchvision)")
    return [int(t) for _, t in samples]


def resolve_split_dir(data_dir: Path, split: Optional[str], candidates: Sequence[str]) -> str:
    """Name of the split folder under ``data_dir``: ``split`` if given, else the first existing
    of ``candidates``. Raises :class:`UsageError` naming what was looked for."""
    names = [split] if split else list(candidates)
    for name in names:
        if (data_dir / name).is_dir():
            return name
    raise UsageError(f"no split folder {' or '.join(names)} under {data_dir}")




def build_transforms(data_config: Dict[str, Any], *, augment: bool = True, scale: Sequence[float] = (0.08, 1.0),
                     ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0), hflip: float = 0.5, color_jitter: float = 0.4,
                     aa: Optional[str] = None, reprob: float = 0.0, remode: str = "pixel", recount: int = 1,
                     train_interpolation: Optional[str] = None):
    """``(train_transform, eval_transform)`` from timm's ``create_transform``.

    ``data_config`` holds ``input_size`` (C, H, W), ``mean``/``std`` (per channel, for inputs in
    [0, 1]), ``interpolation`` and ``crop_pct`` (eval resize = size / crop_pct, then center crop).
    The training transform is RandomResizedCrop(``scale``, ``ratio``) + flip + (``aa``: a timm
    auto-augment string such as ``rand-m9-mstd0.5-inc1``; else color jitter) + normalise +
    random erasing (probability ``reprob``, mode ``remode``, ``recount`` boxes); with
    ``augment=False`` it is the eval transform.
    """
    common = {k: data_config[k] for k in ("input_size", "mean", "std")}
    eval_tf = create_transform(**common, interpolation=data_config["interpolation"], crop_pct=data_config["crop_pct"],
                               is_training=False, crop_mode=data_config.get("crop_mode"))
    if not augment:
        return eval_tf, eval_tf
    train_tf = create_transform(
        **common, is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip, color_jitter=color_jitter,
        auto_augment=aa or None, interpolation=train_interpolation or data_config["interpolation"],
        re_prob=reprob, re_mode=remode, re_count=recount)
    return train_tf, eval_tf


def build_folder_datasets(data_dir: os.PathLike, data_config: Dict[str, Any], *, train_split: Optional[str] = "train",
                          val_split: Optional[str] = None, augment: bool = True,
                          scale: Sequence[float] = (0.08, 1.0), hflip: float = 0.5, color_jitter: float = 0.4,
                          class_to_idx: Optional[Dict[str, int]] = None, dataset: str = "",
                          download: bool = False, **aug):
    """Train and held-out datasets through ``timm.data.create_dataset`` with timm's transforms.

    ``dataset=''`` (class folders): ``data_dir/train_split/<class>/*`` is the training split and
    the held-out split is ``val_split`` or the first of ``val, validation, valid, eval,
    evaluation, test`` present; it reuses the training split's class indices
    (``class_to_idx`` overrides both). Any other ``dataset`` (``torch/cifar10``, ``hfds/<id>``,
    ``wds/...``, a ``.tar`` path ...) is passed to timm's factory with ``root=data_dir`` and the
    split names as given (held-out default ``validation``). ``aug`` takes the extra keywords of
    :func:`build_transforms`. Pass ``train_split=None`` for the held-out split alone. Returns
    ``(train_ds or None, val_ds, class_to_idx or None, val_split_name)``. Raises
    :class:`UsageError` for a missing folder.
    """
    train_tf, val_tf = build_transforms(data_config, augment=augment, scale=scale, hflip=hflip,
                                        color_jitter=color_jitter, **aug)
    data_dir = Path(data_dir) if data_dir is not None else None
    if dataset:
        kw = dict(root=str(data_dir) if data_dir else None, download=download, class_map=class_to_idx or "")
        train_ds = None
        if train_split is not None:
            train_ds = create_dataset(dataset, split=train_split, is_training=True, transform=train_tf, **kw)
        val_name = val_split or "validation"
        val_ds = create_dataset(dataset, split=val_name, is_training=False, transform=val_tf, **kw)
        for ds in (train_ds, val_ds):
            found = getattr(getattr(ds, "reader", None), "class_to_idx", None) or getattr(ds, "class_to_idx", None)
            if class_to_idx is None and found:
                class_to_idx = dict(found)
        return train_ds, val_ds, class_to_idx, val_name
    if data_dir is None or not data_dir.exists():
        raise UsageError(f"--data-dir {data_dir} does not exist")
    if data_dir.is_file():  # a tar of class folders, read by timm's ReaderImageInTar
        raise UsageError(f"--data-dir {data_dir} is a file; class folders need the folder holding train/ and val/ "
                         "(tar shards: --dataset wds/...)")
    train_ds = None
    if train_split is not None:
        train_name = resolve_split_dir(data_dir, train_split, ())
        train_ds = create_dataset("", root=str(data_dir), split=train_name, is_training=True,
                                  class_map=class_to_idx or "", transform=train_tf)
        class_to_idx = dict(train_ds.reader.class_to_idx)
    val_name = resolve_split_dir(data_dir, val_split, EVAL_SPLIT_NAMES)
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


def eval_shard_indices(n: int, rank: int, world_size: int) -> Tuple[List[int], int]:
    """Indices of the held-out samples rank ``rank`` evaluates, and how many of them count.

    Rank ``r`` takes ``r, r + world, r + 2 world, ...``; shards are padded (by repeating their
    own first index) to the common length ``ceil(n / world)`` so every rank runs the same number
    of forward passes (FSDP needs that), and only the first ``num_valid`` results of a rank are
    counted, so each sample is counted exactly once (unlike ``DistributedSampler``'s padding).
    Returns ``(indices, num_valid)``.
    """
    own = list(range(rank, n, world_size))
    length = -(-n // world_size)
    pad = (own[:1] or [0]) * (length - len(own))
    return own + pad, len(own)


def make_train_sampler(ds, *, rank: int = 0, world_size: int = 1, seed: int = 0, aug_repeats: float = 0):
    """The training sampler: ``DistributedSampler(shuffle=True, seed=seed, drop_last=True)`` (also
    for a single process, so the order depends on ``seed`` and the epoch only), or timm's
    ``RepeatAugSampler`` with ``aug_repeats`` repeats of each sample (DeiT's RASampler).
    Call ``sampler.set_epoch(epoch)`` before every epoch."""
    if aug_repeats:
        # timm keeps len // 256 * 256 / world samples per epoch (DeiT); tiny data sets keep all
        selected_round = 256 if len(ds) >= 256 else 0
        return RepeatAugSampler(ds, num_replicas=world_size, rank=rank, shuffle=True, num_repeats=aug_repeats,
                                selected_round=selected_round)
    return torch.utils.data.DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                               drop_last=len(ds) >= world_size)


def make_loader(ds, batch_size: int, *, train: bool, workers: int = 0, generator: Optional[torch.Generator] = None,
                device: torch.device = torch.device("cpu"), sampler=None,
                collate_fn=None) -> torch.utils.data.DataLoader:
    """A DataLoader yielding ``(images (B, 3, H, W) float, targets (B,) int64)``.

    Training loaders draw from ``sampler`` (see :func:`make_train_sampler`; without one they
    shuffle with ``generator``) and drop the last incomplete batch; evaluation loaders keep the
    dataset order. ``generator`` fixes the worker seeds; evaluation loaders use a private one so
    evaluating never consumes the global torch RNG.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    n = len(sampler) if sampler is not None else len(ds)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
        drop_last=train and n > batch_size, num_workers=workers, generator=generator, worker_init_fn=_seed_worker,
        pin_memory=device.type == "cuda", persistent_workers=False, collate_fn=collate_fn)


# --------------------------------------------------------------------------------------------
# Distributed setup
# --------------------------------------------------------------------------------------------
def init_distributed(device_name: Optional[str] = None, timeout_s: float = 1800.0) -> Tuple[int, int, torch.device]:
    """Join the process group that ``torchrun`` describes (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR/PORT`` in the environment); a no-op for a plain process.

    Backend: NCCL for CUDA devices (each rank on ``cuda:LOCAL_RANK``), gloo otherwise. Returns
    ``(rank, world_size, device)``. Raises :class:`UsageError` for a CUDA request without CUDA.
    """
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return dist.get_rank(), dist.get_world_size(), device


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _barrier() -> None:
    if _dist():
        dist.barrier()


def all_reduce_sum(values: Sequence[float], device: torch.device) -> List[float]:
    """Sum ``values`` over all ranks (float64); returns them unchanged for a single process."""
    if not _dist():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def apply_fsdp(model: nn.Module, device: torch.device) -> nn.Module:
    """Shard ``model`` with FSDP2 (``torch.distributed.fsdp.fully_shard``) over all ranks.

    Each block of each stage (``model.stages[i].blocks[j]``, or ``model.blocks[j]`` for the
    isotropic models) is sharded, then every stage, then the root, so parameters are gathered
    one block at a time. The optimizer must be built after this (parameters become DTensors).
    Needs an initialised process group. Source: torch FSDP2 docs / reference training_coco_flops.md §5.1.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    stages = getattr(model, "stages", None)
    containers = list(stages) if stages is not None else [model]
    for container in containers:
        blocks = getattr(container, "blocks", None)
        for block in (blocks if blocks is not None else []):
            fully_shard(block, mesh=mesh)
        if container is not model:
            fully_shard(container, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A plain (unsharded, CPU) state dict of ``model`` without wrapper prefixes; under FSDP2 a
    collective (``get_model_state_dict(full_state_dict=True, cpu_offload=True)``) every rank must call."""
    if getattr(model, "_va_fsdp", False):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap_model(model).state_dict()


# --------------------------------------------------------------------------------------------
# Model, precision, evaluation
# --------------------------------------------------------------------------------------------
def _safetensors_classes(path: os.PathLike, classifier: Optional[str]) -> Optional[int]:
    """Rows of ``<classifier>.weight`` in a safetensors file (read from its header only)."""
    if not classifier:
        return None
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        key = f"{classifier}.weight"
        return int(f.get_slice(key).get_shape()[0]) if key in f.keys() else None


def create_model(name: str, num_classes: int, model_kwargs: Optional[Dict[str, Any]] = None,
                 drop_path: Optional[float] = None, *, img_size: Optional[int] = None, drop: Optional[float] = None,
                 pretrained: Any = None, pretrained_path: Optional[os.PathLike] = None, **extra) -> nn.Module:
    """``timm.create_model(name, num_classes=..., **model_kwargs)``.

    ``drop_path`` becomes ``drop_path_rate`` and ``drop`` ``drop_rate``. ``img_size`` is passed
    to constructors that take it (fixed-resolution models: CSWin, Agent, MaxViT, isotropic NAT);
    the others run at any size. Pretrained weights: ``pretrained=True`` (the default tag) or a
    tag string (``in22k``), an ``hf-hub:org/repo`` / ``local-dir:PATH`` name, or
    ``pretrained_path`` (a local ``.safetensors``/``.pth`` through
    ``pretrained_cfg_overlay=dict(file=...)``). timm then drops a classifier of another size
    (head reset) and the model's ``checkpoint_filter_fn`` resizes position tables for another
    ``img_size``. Raises :class:`UsageError` for a name timm does not know.
    """
    kwargs = dict(model_kwargs or {})
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    if drop is not None:
        kwargs["drop_rate"] = drop
    hub = ":" in name
    if not hub and not timm.is_model(name.split(".")[0]):
        raise UsageError(f"unknown model {name!r}: not registered with timm (nor by visionattn)")
    if isinstance(pretrained, str) and pretrained and not hub:
        name = f"{name.split('.')[0]}.{pretrained}"
    load = bool(pretrained) or pretrained_path is not None or hub
    if pretrained_path is not None:
        path = Path(pretrained_path)
        if not path.is_file():
            raise UsageError(f"--pretrained-path {path} does not exist")
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
        classifier = cfg.classifier if cfg is not None else "head.fc"
        if path.suffix == ".safetensors":
            overlay: Dict[str, Any] = dict(file=str(path))
            file_classes = _safetensors_classes(path, classifier)
        else:  # read it ourselves: timm's file loader unpickles without weights_only and prefers an EMA
            from visionattn.models._registry import unwrap_state_dict
            state_dict, _ = unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            overlay = dict(state_dict=state_dict)
            w = state_dict.get(f"{classifier}.weight") if classifier else None
            file_classes = int(w.shape[0]) if w is not None else None
        if file_classes is not None:
            overlay["num_classes"] = file_classes  # timm drops the head only when this differs
        extra["pretrained_cfg_overlay"] = {**overlay, **extra.get("pretrained_cfg_overlay", {})}
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        return timm.create_model(name, pretrained=load, num_classes=num_classes, **kwargs, **extra)
    except TypeError as e:
        if img_size is None or "img_size" not in str(e):
            raise
        kwargs.pop("img_size")  # this architecture takes any input size
        return timm.create_model(name, pretrained=load, num_classes=num_classes, **kwargs, **extra)


def load_initial_checkpoint(model: nn.Module, path: os.PathLike, use_ema: bool = False) -> Dict[str, List[str]]:
    """Load a training checkpoint's weights (``model``/``state_dict``, or the EMA with
    ``use_ema``) into ``model`` for fine-tuning; classifier tensors whose shape differs (another
    class count) are skipped and stay freshly initialised. Returns ``{"skipped": [...], "missing": [...]}``.
    Raises :class:`UsageError` when the file holds no state dict or shares no tensor with the model."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    keys = ("model_ema", "state_dict_ema") if use_ema else ("model", "state_dict")
    sd = next((ckpt[k] for k in keys if isinstance(ckpt, dict) and isinstance(ckpt.get(k), dict)), None)
    if sd is None and isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        sd = ckpt
    if sd is None:
        raise UsageError(f"--initial-checkpoint {path} holds no {' or '.join(keys)} state dict")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    own = model.state_dict()
    skipped = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    sd = {k: v for k, v in sd.items() if k in own and k not in skipped}
    if not sd:
        raise UsageError(f"--initial-checkpoint {path} shares no tensor with {type(model).__name__}")
    result = model.load_state_dict(sd, strict=False)
    return {"skipped": skipped, "missing": list(result.missing_keys)}


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
             progress: bool = True, desc: str = "eval", num_valid: Optional[int] = None,
             channels_last: bool = False, reduce: bool = True) -> Dict[str, float]:
    """Top-1/top-5 accuracy (percent) and mean cross-entropy of ``model`` over ``loader``.

    Uses ``timm.utils.accuracy``; top-5 becomes top-k with ``k = min(5, num_classes)``. Only the
    first ``num_valid`` samples are counted (the rest pad a distributed shard, see
    :func:`eval_shard_indices`). With ``reduce`` the counts are summed over all ranks. Returns
    ``{"top1", "top5", "loss", "correct1", "correct5", "count"}``; the model is left in eval mode.
    Raises :class:`UsageError` when nothing was counted.
    """
    model.eval()
    correct1 = correct5 = 0
    loss_sum, count, seen = 0.0, 0, 0
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(device, autocast_dtype):
            output = model(images)
        output = output.float()
        keep = targets.shape[0] if num_valid is None else max(0, min(targets.shape[0], num_valid - seen))
        seen += targets.shape[0]
        if keep == 0:
            continue
        output, targets = output[:keep], targets[:keep]
        k5 = min(5, output.shape[1])
        acc1, acc5 = accuracy(output, targets, topk=(1, k5))
        correct1 += round(acc1.item() * keep / 100.0)
        correct5 += round(acc5.item() * keep / 100.0)
        loss_sum += F.cross_entropy(output, targets, reduction="sum").item()
        count += keep
    if hasattr(model, "reshard"):  # FSDP2 keeps the root unsharded after a forward without backward
        model.reshard()
    if reduce:
        correct1, correct5, loss_sum, count = all_reduce_sum((correct1, correct5, loss_sum, count), device)
        correct1, correct5, count = int(round(correct1)), int(round(correct5)), int(round(count))
    if count == 0:
        raise UsageError("the held-out split is empty")
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count,
            "correct1": correct1, "correct5": correct5, "count": count}


def _no_grad_sync(model: nn.Module, sync: bool):
    """Context that skips the gradient all-reduce of a non-final accumulation micro-step:
    DDP's ``no_sync()``; FSDP2's ``set_requires_gradient_sync``; nothing for a plain module."""
    if sync:
        return contextlib.nullcontext()
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        @contextlib.contextmanager
        def _fsdp_no_sync():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        return _fsdp_no_sync()
    return contextlib.nullcontext()


def train_one_epoch(model: nn.Module, loader, optimizer, scheduler, loss_fn, *, device: torch.device, epoch: int,
                    epochs: int, num_updates: int, autocast_dtype: Optional[torch.dtype] = None, scaler=None,
                    clip_grad: Optional[float] = None, clip_mode: str = "norm", progress: bool = True,
                    mixup_fn: Optional[Callable] = None, model_ema: Optional[ModelEmaV3] = None,
                    grad_accum_steps: int = 1, channels_last: bool = False) -> Dict[str, float]:
    """One pass over ``loader``: ``grad_accum_steps`` micro-batches per optimizer update.

    Each micro-batch's loss is divided by ``grad_accum_steps`` and back-propagated; only the
    last micro-step of an update synchronises gradients across ranks (:func:`_no_grad_sync`).
    Then optional clipping (``timm.utils.dispatch_clip_grad``, after unscaling under a
    GradScaler), the optimizer step, the EMA update (``model_ema.update(model, step=num_updates)``)
    and ``scheduler.step_update(num_updates)``. A trailing incomplete group of micro-batches is
    skipped. ``mixup_fn`` maps ``(images, int targets)`` to ``(mixed images, soft targets (B, C))``.

    Returns ``{"loss" (mean over samples and ranks), "lr" (after the last step), "num_updates",
    "samples" (all ranks)}``. Raises ``FloatingPointError`` when the loss becomes NaN/inf.
    """
    model.train()
    loss_sum, samples = 0.0, 0
    accum = max(1, int(grad_accum_steps))
    n_micro = (len(loader) // accum) * accum
    params = [p for p in model.parameters() if p.requires_grad]
    pbar = tqdm(loader, total=n_micro, desc=f"train {epoch + 1}/{epochs}", leave=False, disable=not progress,
                dynamic_ncols=True)
    optimizer.zero_grad(set_to_none=True)
    for step, (images, targets) in enumerate(pbar):
        if step >= n_micro:
            break
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        last_micro = (step + 1) % accum == 0
        with _no_grad_sync(model, last_micro):
            with _autocast(device, autocast_dtype):
                output = model(images)
                loss = loss_fn(output, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                         "lower --lr, add --clip-grad or turn off --amp")
            scaled = loss / accum
            if scaler is not None:
                scaler.scale(scaled).backward()
            else:
                scaled.backward()
        bs = targets.shape[0]
        loss_sum += loss.item() * bs
        samples += bs
        if not last_micro:
            continue
        if scaler is not None:
            if clip_grad:
                scaler.unscale_(optimizer)
                dispatch_clip_grad(params, clip_grad, mode=clip_mode)
            scaler.step(optimizer)
            scaler.update()
        else:
            if clip_grad:
                dispatch_clip_grad(params, clip_grad, mode=clip_mode)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        num_updates += 1
        if model_ema is not None:
            model_ema.update(unwrap_model(model), step=num_updates)
        scheduler.step_update(num_updates=num_updates)
        if progress:
            pbar.set_postfix(loss=f"{loss_sum / samples:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    pbar.close()
    scheduler.step(epoch + 1)
    loss_sum, samples = all_reduce_sum((loss_sum, samples), device)
    return {"loss": loss_sum / max(samples, 1), "lr": optimizer.param_groups[0]["lr"],
            "num_updates": num_updates, "samples": int(samples)}


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




def write_log_json(path: os.PathLike, history: List[Dict[str, Any]]) -> None:
    """Write the per-epoch history as a JSON list (atomically)."""
    atomic_write_text(path, json.dumps(_jsonable(history), indent=1) + "\n")


def plot_curves(path: os.PathLike, history: List[Dict[str, Any]]) -> Optional[Path]:
    """Render train/held-out loss, top-1 (and the EMA's) and the LR against epoch into one PNG
    with matplotlib's Agg backend (written atomically). Returns the path, or None without history."""
    if not history:
        return None
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["train_loss"] for r in history], marker=".", label="train")
    axes[0].plot(epochs, [r["val_loss"] for r in history], marker=".", label="held-out")
    axes[0].set_ylabel("loss")
    axes[1].plot(epochs, [r["top1"] for r in history], marker=".", label="model")
    if "ema_top1" in history[0]:
        axes[1].plot(epochs, [r["ema_top1"] for r in history], marker=".", label="EMA")
    axes[1].set_ylabel("held-out top-1 (%)")
    axes[2].plot(epochs, [r["lr"] for r in history], marker=".")
    axes[2].set_ylabel("learning rate (end of epoch)")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def summary_text(summary: Dict[str, Any]) -> str:
    """A short human-readable report of a finished run."""
    lines = [f"model        {summary['model']} ({summary['param_count'] / 1e6:.3f}M params)",
             f"data         {summary['data']}",
             f"samples      {summary['train_samples']} train / {summary['held_out_samples']} held-out, "
             f"{summary['num_classes']} classes, input {tuple(summary['data_config']['input_size'])}",
             f"run          {summary['epochs']} epochs, {summary['num_updates']} updates, world size "
             f"{summary['world_size']} x batch {summary['batch_size']} x accum {summary['grad_accum_steps']}, "
             f"device {summary['device']}, amp {summary['amp']}",
             f"final        top1 {summary['final']['top1']:.2f}%  top5 {summary['final']['top5']:.2f}%  "
             f"loss {summary['final']['loss']:.4f}"]
    if summary.get("best"):
        b = summary["best"]
        lines.append(f"best         top1 {b['top1']:.2f}% at epoch {b['epoch']}")
    if summary.get("ema_final"):
        e = summary["ema_final"]
        lines.append(f"EMA final    top1 {e['top1']:.2f}%  top5 {e['top5']:.2f}%")
    lines.append(f"train time   {summary['train_time_s']:.1f} s")
    lines.append("files        " + ", ".join(f"{k}: {v}" for k, v in summary["files"].items()))
    return "\n".join(lines) + "\n"


def get_all_rng_states(data_generator: torch.Generator) -> List[Dict[str, Any]]:
    """:func:`get_rng_state` of every rank (rank order), gathered with ``all_gather_object``."""
    state = get_rng_state(data_generator)
    if not _dist():
        return [state]
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered


def export_weights(model: nn.Module, out_dir: os.PathLike, model_args: Dict[str, Any], data_config: Dict[str, Any],
                   label_names: Optional[List[str]] = None) -> Tuple[Path, Path]:
    """Save ``model.safetensors`` and ``config.json`` with ``timm.models.save_for_hf``.

    Both are written into a temp folder inside ``out_dir``, fsync'ed, then each ``os.replace``'d
    into place, so neither is ever seen half written. Returns their paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".export-"))
    try:
        timm.models.save_for_hf(
            model, tmp, model_args=_jsonable(model_args), safe_serialization=True,
            data_config={k: data_config[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")},
            model_config=dict(label_names=list(label_names)) if label_names else None)
        os.chmod(tmp / WEIGHTS_NAME, 0o666 & ~_UMASK)  # safetensors writes 0600; give the usual permissions
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
                        model_kwargs: Optional[Dict[str, Any]] = None, img_size: Optional[int] = None) -> nn.Module:
    """Create ``name`` through timm's pretrained path from a local safetensors file.

    ``num_classes`` is put in the overlay too: without it timm sees a class count different
    from the default cfg's and silently drops the classifier weights.
    """
    kwargs = dict(model_kwargs or {})
    if img_size is not None:
        kwargs["img_size"] = img_size
    overlay = dict(file=str(weights), num_classes=num_classes)
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay,
                                 **kwargs)
    except TypeError as e:
        if img_size is None or "img_size" not in str(e):
            raise
        kwargs.pop("img_size")
        return timm.create_model(name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay,
                                 **kwargs)




# --------------------------------------------------------------------------------------------
# Command line and config files
# --------------------------------------------------------------------------------------------
def _add_bool(g, flag: str, help: str) -> None:
    g.add_argument(flag, action="store_true", default=None, help=help)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser. Every default is None here; :func:`resolve_args` fills in the
    defaults (which depend on --demo), the config file's values and, when resuming, the
    checkpoint's own arguments."""
    p = argparse.ArgumentParser(
        description="Train a timm/visionattn classifier on class folders, timm datasets or the embedded digits "
                    "demo, on one process or under torchrun. Defaults in parentheses; with --resume, flags not "
                    "given take the checkpoint's values; with -c, the config's values.")
    p.add_argument("-c", "--config", type=Path,
                   help="YAML file of flag values (keys as the long flags, '-' or '_'); command-line flags win")
    g = p.add_argument_group("data")
    _add_bool(g, "--demo", "train on scikit-learn's bundled digits (the default when --data-dir is absent)")
    g.add_argument("--data-dir", type=Path, help="dataset root: train/ and val/ class folders, or the reader's root")
    g.add_argument("--dataset", help="timm dataset name: '' class folders (default), torch/<name>, hfds/<id>, "
                                     "hfids/<id>, tfds/<name>, wds/<name>")
    _add_bool(g, "--dataset-download", "let timm's reader download the dataset (torch/, tfds/)")
    g.add_argument("--train-split", help="training split (default: train)")
    g.add_argument("--val-split", help="held-out split (class folders: first of val, validation, valid, eval, test; "
                                       "other readers: validation)")
    g.add_argument("--max-train-samples", type=int, help="deterministic class-balanced training subset")
    g.add_argument("--max-val-samples", type=int, help="deterministic class-balanced held-out subset")
    g.add_argument("--img-size", type=int, help="input size (default: demo 32, else the model's pretrained cfg); "
                                                "also passed to models with a fixed resolution")
    g.add_argument("--crop-pct", type=float, help="eval center-crop fraction (default: the model's pretrained cfg)")
    g.add_argument("--interpolation", help="eval resize interpolation (default: the model's pretrained cfg)")
    g.add_argument("--train-interpolation", help="training interpolation (default: as eval; 'random' allowed)")
    g.add_argument("--mean", type=float, nargs=3, help="normalisation mean (default: the model's pretrained cfg)")
    g.add_argument("--std", type=float, nargs=3, help="normalisation std (default: the model's pretrained cfg)")
    _add_bool(g, "--no-aug", "train with the eval transform")
    g.add_argument("--scale", type=float, nargs=2, metavar=("MIN", "MAX"), help="RandomResizedCrop scale (0.08 1.0)")
    g.add_argument("--ratio", type=float, nargs=2, metavar=("MIN", "MAX"), help="RandomResizedCrop aspect (3/4 4/3)")
    g.add_argument("--hflip", type=float, help="horizontal flip probability (0.5)")
    g.add_argument("--color-jitter", type=float, help="color jitter strength (0.4; unused with --aa)")
    g.add_argument("--aa", help="timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (RandAugment), original (off)")
    g.add_argument("--reprob", type=float, help="random erasing probability (0)")
    g.add_argument("--remode", help="random erasing mode: pixel, rand or const (pixel)")
    g.add_argument("--recount", type=int, help="random erasing boxes (1)")
    g.add_argument("--aug-repeats", type=float, help="repeated augmentation: RepeatAugSampler repeats (0 = off)")
    g.add_argument("--mixup", type=float, help="mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=float, help="cutmix alpha (0 = off)")
    g.add_argument("--cutmix-minmax", type=float, nargs=2, help="cutmix box ratio range (overrides the alpha)")
    g.add_argument("--mixup-prob", type=float, help="probability of applying mixup or cutmix to a batch (1.0)")
    g.add_argument("--mixup-switch-prob", type=float, help="probability of cutmix instead of mixup when both (0.5)")
    g.add_argument("--mixup-mode", help="batch, pair or elem (batch)")
    g.add_argument("--mixup-off-epoch", type=int, help="turn mixup/cutmix off from this epoch (0 = never)")
    g.add_argument("--demo-shift", type=int, help="demo augmentation: random shift in pixels (2)")
    g.add_argument("--workers", type=int, help="data loader worker processes per rank (0)")
    g = p.add_argument_group("model")
    g.add_argument("--model", help=f"timm model name, hf-hub:org/repo or local-dir:PATH (demo: {DEMO_MODEL} shrunk)")
    g.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE",
                   help="constructor kwargs for timm.create_model, values parsed as YAML (depths=[2,2,2,2])")
    g.add_argument("--num-classes", type=int, help="classifier size (default: classes found in the training split)")
    g.add_argument("--drop-path", type=float, help="stochastic depth rate (drop_path_rate; default: the model's)")
    g.add_argument("--drop", type=float, help="dropout before the classifier (drop_rate)")
    g.add_argument("--pretrained", nargs="?", const=True,
                   help="start from timm pretrained weights: the default tag, or the tag given (e.g. in22k)")
    g.add_argument("--pretrained-path", type=Path, help="start from a local .safetensors/.pth weights file")
    g.add_argument("--initial-checkpoint", type=Path, help="start from a training checkpoint's weights (fine-tune)")
    _add_bool(g, "--initial-checkpoint-ema", "take the --initial-checkpoint's EMA weights (model_ema/state_dict_ema)")
    _add_bool(g, "--grad-checkpointing", "recompute activations in the backward pass (model.set_grad_checkpointing)")
    _add_bool(g, "--channels-last", "channels_last memory format")
    g.add_argument("--torchcompile", nargs="?", const="inductor", help="torch.compile the model (backend: inductor)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="epochs before cooldown (demo 20, else 100)")
    g.add_argument("-b", "--batch-size", type=int, help="batch size per process (demo 32, else 128)")
    g.add_argument("--grad-accum-steps", type=int, help="micro-batches per optimizer update (1)")
    g.add_argument("--opt", help="timm optimizer name (adamw)")
    g.add_argument("--opt-eps", type=float, help="optimizer epsilon (timm's default)")
    g.add_argument("--opt-betas", type=float, nargs="+", help="optimizer betas (timm's default)")
    g.add_argument("--momentum", type=float, help="SGD momentum (0.9)")
    g.add_argument("--lr", type=float, help="peak learning rate, used as is, never rescaled (demo 2e-3, else 1e-3)")
    g.add_argument("--weight-decay", type=float,
                   help="weight decay, not applied to 1-D params/no_weight_decay() (0.05)")
    g.add_argument("--layer-decay", type=float, help="layer-wise LR decay through model.group_matcher (off)")
    g.add_argument("--layer-decay-min-scale", type=float, help="lower bound of the layer-decay LR scale (0)")
    g.add_argument("--sched", help="timm scheduler: cosine, step, multistep, poly, tanh, ... (cosine)")
    g.add_argument("--sched-on-updates", type=lambda s: str(s).lower() in ("1", "true", "yes"),
                   help="step the schedule every update (true) or every epoch (false)")
    g.add_argument("--warmup-epochs", type=float, help="linear warmup length in epochs (demo 1, else 5)")
    _add_bool(g, "--warmup-prefix", "warmup before (not inside) the decay schedule")
    g.add_argument("--warmup-lr", type=float, help="LR at the start of warmup (1e-6)")
    g.add_argument("--min-lr", type=float, help="LR at the end of the decay (1e-6)")
    g.add_argument("--cooldown-epochs", type=int, help="epochs at min-lr after --epochs (0)")
    g.add_argument("--decay-epochs", type=float, help="step schedule: epochs between decays (90)")
    g.add_argument("--decay-milestones", type=int, nargs="+", help="multistep schedule milestones (90 180 270)")
    g.add_argument("--decay-rate", type=float, help="step decay factor; poly: the power (0.1)")
    g.add_argument("--smoothing", type=float, help="label smoothing (0.1)")
    g.add_argument("--clip-grad", type=float, help="clip gradients to this value (off)")
    g.add_argument("--clip-mode", help="norm, value or agc (norm)")
    _add_bool(g, "--model-ema", "keep an exponential moving average of the weights (timm ModelEmaV3)")
    g.add_argument("--model-ema-decay", type=float, help="EMA decay per update (0.9998)")
    _add_bool(g, "--model-ema-warmup", "EMA decay warmup (timm's use_warmup)")
    _add_bool(g, "--model-ema-force-cpu", "keep the EMA on the CPU")
    _add_bool(g, "--amp", "mixed precision: bf16 autocast on CPU; on CUDA bf16 if supported, else fp16 + GradScaler")
    g.add_argument("--amp-dtype", choices=("auto", "bfloat16", "float16"), help="AMP dtype (auto)")
    g = p.add_argument_group("run")
    g.add_argument("--device", help="cpu, cuda (default: cuda if available; under torchrun cuda:LOCAL_RANK)")
    _add_bool(g, "--fsdp", "shard the model with FSDP2 (fully_shard per block and stage) instead of DDP")
    g.add_argument("--recipe-gpus", type=int,
                   help="processes the config's per-process batch and lr were set for; another world size warns")
    g.add_argument("--seed", type=int, help="seed for init, data order and augmentation (0)")
    g.add_argument("--threads", type=int,
                   help="CPU intra-op threads, torch.set_num_threads (demo 1: the tiny model gains nothing from "
                        "more, and spinning OpenMP threads crawl on a shared machine; else torch's default)")
    g.add_argument("--output", type=Path, help="run folder (default: runs/demo or runs/<model>)")
    _add_bool(g, "--overwrite", "allow reusing a non-empty --output")
    g.add_argument("--resume", metavar="PATH|auto",
                   help="continue from a checkpoint (or a run folder); auto = OUTPUT/last.pth.tar if present")
    _add_bool(g, "--no-progress", "no tqdm progress bars")
    return p


def load_config(path: os.PathLike, parser: Optional[argparse.ArgumentParser] = None) -> Dict[str, Any]:
    """Read a YAML config of flag values (``-c FILE``) into ``{dest: value}``.

    Keys are the long flag names with ``-`` or ``_`` (``batch_size``, ``model-ema-decay``); values
    are converted with the flag's type (``1e-3`` written without a dot is a string in YAML 1.1 and
    becomes a float here). ``model_kwargs`` may be a mapping. Raises :class:`UsageError` for a file
    that is not a mapping, an unknown key (with the nearest valid ones), a key that names a run
    rather than a recipe (``resume``, ``overwrite``, ``config``), or a value of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path} must hold a mapping of flag names to values, got {type(data).__name__}")
    parser = parser or build_parser()
    actions = {a.dest: a for a in parser._actions}
    valid = sorted(d for d in actions if d not in _NOT_IN_CONFIG)
    out: Dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in actions or key in _NOT_IN_CONFIG:
            close = difflib.get_close_matches(key, valid, n=3)
            why = "names a run, not a recipe; give it on the command line" if key in _NOT_IN_CONFIG else \
                "is not a train.py flag" + (f" (did you mean {', '.join(close)}?)" if close else "")
            raise UsageError(f"--config {path}: key {raw_key!r} {why}")
        out[key] = _convert_config_value(actions[key], value, path, raw_key)
    return out


def _convert_config_value(action: argparse.Action, value: Any, path: Path, key: Any) -> Any:
    if value is None:
        return None
    if action.dest == "model_kwargs":
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        if isinstance(value, list):
            return parse_model_kwargs([str(v) for v in value])
        raise UsageError(f"--config {path}: {key} must be a mapping or a list of key=value strings")
    if action.dest == "pretrained":
        return value if isinstance(value, (bool, str)) else str(value)
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise UsageError(f"--config {path}: {key} must be true or false, got {value!r}")
        return value
    convert = action.type or (lambda v: v)
    if convert is Path:
        convert = lambda v: Path(str(v))  # noqa: E731
    try:
        if action.nargs in ("+", "*") or isinstance(action.nargs, int):
            items = value if isinstance(value, (list, tuple)) else [value]
            if isinstance(action.nargs, int) and len(items) != action.nargs:
                raise ValueError(f"expected {action.nargs} values")
            return [convert(v) for v in items]
        if action.dest == "sched_on_updates":
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        return convert(value)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--config {path}: bad value {value!r} for {key} ({e})") from None


def _default_output(cfg: Dict[str, Any]) -> Path:
    demo = cfg.get("demo") or cfg.get("data_dir") is None and not cfg.get("dataset")
    return Path("runs") / ("demo" if demo else str(cfg.get("model") or "train").replace("/", "_").replace(":", "_"))


def resolve_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Optional[Dict[str, Any]]]:
    """Parse ``argv`` and fill defaults. Returns ``(args, checkpoint or None)``.

    Precedence: flags given on the command line > the ``-c`` config file > the checkpoint's
    arguments (when resuming) > data-source defaults (:data:`DEMO_DEFAULTS` or
    :data:`GENERIC_DEFAULTS`) > :data:`COMMON_DEFAULTS`.
    Raises :class:`UsageError` for inconsistent flags, a bad config or a missing checkpoint.
    """
    parser = build_parser()
    raw = parser.parse_args(argv)
    explicit = {k: v for k, v in vars(raw).items() if v is not None}
    config_path = explicit.pop("config", None)
    resume = explicit.pop("resume", None)
    overwrite = bool(explicit.pop("overwrite", False))
    if "model_kwargs" in explicit:
        explicit["model_kwargs"] = parse_model_kwargs(explicit["model_kwargs"])
    from_config = load_config(config_path, parser) if config_path else {}
    from_config = {k: v for k, v in from_config.items() if v is not None}
    if "model_kwargs" in explicit and "model_kwargs" in from_config:
        explicit["model_kwargs"] = {**from_config["model_kwargs"], **explicit["model_kwargs"]}
    explicit = {**from_config, **explicit}
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
    for key in ("resume", "overwrite", "resume_requested", "rank", "world_size"):
        base.pop(key, None)
    if "model_kwargs" in explicit and "model_kwargs" in base:
        explicit["model_kwargs"] = {**base["model_kwargs"], **explicit["model_kwargs"]}
    merged = {**base, **explicit}
    demo = bool(merged.get("demo")) or (merged.get("data_dir") is None and not merged.get("dataset"))
    cfg = {**COMMON_DEFAULTS, **(DEMO_DEFAULTS if demo else GENERIC_DEFAULTS), **merged}
    cfg["demo"] = demo
    if cfg.get("model") is None:
        raise UsageError("--model is required with --data-dir")
    if ":" not in cfg["model"] and not timm.is_model(cfg["model"].split(".")[0]):
        raise UsageError(f"unknown model {cfg['model']!r}: not registered with timm (nor by visionattn)")
    if demo and cfg["model"] == DEMO_MODEL and not base and "model_kwargs" not in from_config:
        cfg["model_kwargs"] = {**DEMO_KWARGS, **explicit.get("model_kwargs", {})}
    if cfg.get("output") is None:
        cfg["output"] = _default_output(cfg)
    for key in ("output", "data_dir", "pretrained_path", "initial_checkpoint", "config"):
        if cfg.get(key) is not None:
            cfg[key] = Path(cfg[key])
    if config_path:
        cfg["config"] = Path(config_path)
    for key in ("scale", "ratio", "decay_milestones"):
        cfg[key] = tuple(cfg[key])
    for key, low in (("epochs", 1), ("batch_size", 1), ("workers", 0), ("max_train_samples", 1), ("threads", 1),
                     ("max_val_samples", 1), ("num_classes", 1), ("img_size", 1), ("grad_accum_steps", 1),
                     ("cooldown_epochs", 0), ("recount", 1), ("recipe_gpus", 1)):
        if cfg.get(key) is not None and cfg[key] < low:
            raise UsageError(f"--{key.replace('_', '-')} must be >= {low}, got {cfg[key]}")
    if cfg["lr"] <= 0:
        raise UsageError(f"--lr must be > 0, got {cfg['lr']}")
    if not 0 <= cfg["warmup_epochs"] <= cfg["epochs"]:
        raise UsageError(f"--warmup-epochs must be in [0, --epochs], got {cfg['warmup_epochs']}")
    if cfg["model_ema"] and not 0.0 < cfg["model_ema_decay"] < 1.0:
        raise UsageError(f"--model-ema-decay must be in (0, 1), got {cfg['model_ema_decay']}")
    if cfg["layer_decay"] is not None and not 0.0 < cfg["layer_decay"] <= 1.0:
        raise UsageError(f"--layer-decay must be in (0, 1], got {cfg['layer_decay']}")
    if cfg["mixup_mode"] not in ("batch", "pair", "elem"):
        raise UsageError(f"--mixup-mode must be batch, pair or elem, got {cfg['mixup_mode']!r}")
    if cfg["remode"] not in ("pixel", "rand", "const"):
        raise UsageError(f"--remode must be pixel, rand or const, got {cfg['remode']!r}")
    if _mixup_active(cfg) and cfg["batch_size"] % 2:
        raise UsageError(f"--mixup/--cutmix need an even --batch-size, got {cfg['batch_size']}")
    if cfg["fsdp"] and cfg["model_ema"]:
        raise UsageError("--model-ema is not supported with --fsdp (the EMA copy would be a full replica); use DDP")
    if ckpt is not None:
        changed = [k for k in _REPRODUCIBILITY_KEYS if k in base and _jsonable(base[k]) != _jsonable(cfg.get(k))]
        if changed and os.environ.get("RANK", "0") == "0":
            print("warning: resuming with changed arguments (the run will not reproduce an uninterrupted one): "
                  + ", ".join(f"{k}: {base[k]!r} -> {cfg.get(k)!r}" for k in changed), file=sys.stderr)
    cfg["resume"] = str(ckpt_path) if ckpt_path else None
    cfg["resume_requested"] = bool(resume)
    cfg["overwrite"] = overwrite
    return argparse.Namespace(**cfg), ckpt


def _mixup_active(cfg: Dict[str, Any]) -> bool:
    return bool(cfg.get("mixup") or cfg.get("cutmix") or cfg.get("cutmix_minmax"))


def build_mixup(args: argparse.Namespace, num_classes: int) -> Optional[Mixup]:
    """``timm.data.Mixup`` from the flags (label smoothing folded into its soft targets), or
    None when mixup and cutmix are off."""
    if not _mixup_active(vars(args)):
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix,
                 cutmix_minmax=tuple(args.cutmix_minmax) if args.cutmix_minmax else None, prob=args.mixup_prob,
                 switch_prob=args.mixup_switch_prob, mode=args.mixup_mode, label_smoothing=args.smoothing,
                 num_classes=num_classes)


def build_loss(smoothing: float, mixup: bool) -> nn.Module:
    """The training loss: ``SoftTargetCrossEntropy`` while Mixup/CutMix is active (its soft
    targets already carry the label smoothing), else ``LabelSmoothingCrossEntropy(smoothing)``,
    or plain cross-entropy for ``smoothing == 0``. Inputs: logits (B, C) and targets (B,) int64
    or (B, C) probabilities."""
    if mixup:
        return SoftTargetCrossEntropy()
    return LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else nn.CrossEntropyLoss()


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2`` from the flags: ``opt`` (adamw, sgd, lamb, ...), ``lr``,
    ``weight_decay`` (skipping 1-D parameters and ``model.no_weight_decay()``), ``momentum``,
    ``opt_eps``/``opt_betas`` when given, and ``layer_decay``: parameter group ``i`` of the model's
    ``group_matcher`` (stem first, head last) gets ``lr_scale = layer_decay ** (last - i)``, which
    the scheduler multiplies into every LR it sets. Build it after FSDP sharding."""
    kwargs: Dict[str, Any] = {}
    if getattr(args, "opt_eps", None) is not None:
        kwargs["eps"] = args.opt_eps
    if getattr(args, "opt_betas", None) is not None:
        kwargs["betas"] = tuple(args.opt_betas)
    return create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                               momentum=getattr(args, "momentum", 0.9), layer_decay=args.layer_decay,
                               layer_decay_min_scale=getattr(args, "layer_decay_min_scale", 0.0), **kwargs)


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
        shutil.rmtree(out / EMA_DIR, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run a training job; returns the summary dict also written to ``OUTPUT/summary.json``
    (on ranks other than 0 a dict with the rank and the final metrics).

    Raises :class:`UsageError` / ``FileExistsError`` for bad arguments or an output folder that
    may not be reused, ``FloatingPointError`` when training diverges, ``RuntimeError`` when the
    exported weights do not reproduce the trained model's accuracy.
    """
    args, ckpt = resolve_args(argv)
    started_dist = not dist.is_initialized()
    rank, world_size, device = init_distributed(args.device)
    try:
        return _train(args, ckpt, rank, world_size, device)
    finally:
        if started_dist and dist.is_initialized():
            dist.destroy_process_group()


def _train(args: argparse.Namespace, ckpt: Optional[Dict[str, Any]], rank: int, world_size: int,
           device: torch.device) -> Dict[str, Any]:
    out: Path = args.output
    main_rank = rank == 0
    error: List[Optional[str]] = [None]
    if main_rank:
        try:
            prepare_output_dir(out, args.overwrite, resuming=ckpt is not None, resume_requested=args.resume_requested)
        except FileExistsError as e:
            error[0] = str(e)
    if _dist():
        dist.broadcast_object_list(error, src=0)
    if error[0]:
        raise FileExistsError(error[0])
    progress = not args.no_progress and main_rank
    log = tqdm.write if main_rank else (lambda *a, **k: None)
    if args.threads:
        torch.set_num_threads(args.threads)
    autocast_dtype, need_scaler = resolve_amp(device, args.amp, args.amp_dtype)
    if args.recipe_gpus and args.recipe_gpus != world_size:
        log(f"warning: the config's recipe is for {args.recipe_gpus} processes x batch {args.batch_size}; this run "
            f"has {world_size} (global batch {world_size * args.batch_size * args.grad_accum_steps}). --lr "
            f"{args.lr:g} is used as given: rescale it by the recipe's rule (see the config's header)")

    # Every rank initialises the model from the same seed (FSDP2 shards each rank's own copy, it
    # broadcasts nothing); the per-rank seeds (augmentation, drop path) are set after the model.
    random_seed(args.seed, 0)
    data_generator = torch.Generator().manual_seed(args.seed + rank)

    # The data config needs the model's pretrained cfg, the model needs the class count from the
    # data: resolve the data config from the (cheap to query) pretrained cfg of the architecture.
    pretrained_cfg = {}
    if ":" not in args.model:
        cfg_obj = timm.models.get_pretrained_cfg(
            args.model if "." in args.model or not isinstance(args.pretrained, str)
            else f"{args.model}.{args.pretrained}", allow_unregistered=True)
        pretrained_cfg = cfg_obj.to_dict() if cfg_obj is not None else {}
    overrides = dict(img_size=args.img_size, crop_pct=args.crop_pct, interpolation=args.interpolation,
                     mean=args.mean, std=args.std)
    data_config = resolve_data_config(overrides, pretrained_cfg=pretrained_cfg or {"input_size": (3, 224, 224)})
    data_config["input_size"] = tuple(data_config["input_size"])

    if args.demo:
        train_ds, val_ds, class_to_idx = build_demo_datasets(data_config, shift=0 if args.no_aug else args.demo_shift)
        data_desc = "sklearn digits (1797 8x8 scans, stratified 80/20 split)"
    else:
        train_ds, val_ds, class_to_idx, val_name = build_folder_datasets(
            args.data_dir, data_config, train_split=args.train_split, val_split=args.val_split,
            augment=not args.no_aug, scale=args.scale, hflip=args.hflip, color_jitter=args.color_jitter,
            dataset=args.dataset, download=args.dataset_download, ratio=args.ratio, aa=args.aa, reprob=args.reprob,
            remode=args.remode, recount=args.recount, train_interpolation=args.train_interpolation)
        args.val_split = val_name
        data_desc = (f"{args.dataset or 'class folders'} at {args.data_dir} "
                     f"({args.train_split} and {val_name})")
    label_names = ([name for name, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
                   if class_to_idx else [])
    if args.num_classes is None:
        if not class_to_idx:
            raise UsageError(f"the {args.dataset} reader does not list its classes; give --num-classes")
        args.num_classes = len(class_to_idx)
    elif class_to_idx and args.num_classes < len(class_to_idx):
        raise UsageError(f"--num-classes {args.num_classes} is smaller than the {len(class_to_idx)} classes found")
    if args.max_train_samples:
        train_ds = torch.utils.data.Subset(train_ds, balanced_subset(dataset_targets(train_ds), args.max_train_samples))
    if args.max_val_samples:
        val_ds = torch.utils.data.Subset(val_ds, balanced_subset(dataset_targets(val_ds), args.max_val_samples))

    model = create_model(args.model, args.num_classes, args.model_kwargs, args.drop_path, drop=args.drop,
                         img_size=args.img_size if not args.demo else None,
                         pretrained=args.pretrained if ckpt is None else None,
                         pretrained_path=args.pretrained_path if ckpt is None else None)
    if rank:
        random_seed(args.seed, rank)
    if args.initial_checkpoint is not None and ckpt is None:
        info = load_initial_checkpoint(model, args.initial_checkpoint, use_ema=args.initial_checkpoint_ema)
        log(f"initial weights from {args.initial_checkpoint}; re-initialised (shape differs): {info['skipped']}")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    param_count = sum(p.numel() for p in model.parameters())
    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                               device=torch.device("cpu") if args.model_ema_force_cpu else None)
        if ckpt is not None and ckpt.get("model_ema") is not None:
            model_ema.module.load_state_dict(ckpt["model_ema"])
    train_model: nn.Module = model
    if args.fsdp:  # shard first, compile the sharded model
        if not _dist():
            raise UsageError("--fsdp needs several processes (run under torchrun)")
        train_model = apply_fsdp(model, device)
        model._va_fsdp = True
        if args.torchcompile:
            train_model = torch.compile(train_model, backend=args.torchcompile)
    else:  # compile, then wrap (timm's order); CPU DDP must get device_ids=None
        if args.torchcompile:
            train_model = torch.compile(train_model, backend=args.torchcompile)
        if _dist():
            train_model = nn.parallel.DistributedDataParallel(
                train_model, device_ids=[device.index] if device.type == "cuda" else None)

    train_sampler = make_train_sampler(train_ds, rank=rank, world_size=world_size, seed=args.seed,
                                       aug_repeats=args.aug_repeats)
    train_loader = make_loader(train_ds, args.batch_size, train=True, workers=args.workers,
                               generator=data_generator, device=device, sampler=train_sampler)
    val_indices, val_valid = eval_shard_indices(len(val_ds), rank, world_size)
    val_shard = val_ds if world_size == 1 else torch.utils.data.Subset(val_ds, val_indices)
    val_loader = make_loader(val_shard, args.batch_size, train=False, workers=args.workers, device=device)
    updates_per_epoch = len(train_loader) // args.grad_accum_steps
    if updates_per_epoch == 0:
        raise UsageError(f"the training split ({len(train_ds)} samples over {world_size} processes) holds fewer than "
                         f"--batch-size x --grad-accum-steps = {args.batch_size * args.grad_accum_steps} per process")

    optimizer = build_optimizer(model, args)
    scheduler, total_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        decay_milestones=list(args.decay_milestones), cooldown_epochs=args.cooldown_epochs,
        decay_rate=args.decay_rate, min_lr=args.min_lr, warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs,
        warmup_prefix=args.warmup_prefix, step_on_epochs=not args.sched_on_updates,
        updates_per_epoch=updates_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if need_scaler else None
    mixup_fn = build_mixup(args, args.num_classes)
    loss_fn = build_loss(args.smoothing, mixup=mixup_fn is not None)
    plain_loss_fn = build_loss(args.smoothing, mixup=False)

    start_epoch, num_updates, history = 0, 0, []
    if ckpt is not None:
        if args.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
            set_optimizer_state_dict(model, optimizer, ckpt["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, num_updates = int(ckpt["epoch"]), int(ckpt["num_updates"])
        history = list(ckpt.get("history", []))
        rng_states = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        if len(rng_states) == world_size:
            set_rng_state(rng_states[rank], data_generator)
        else:
            log(f"warning: the checkpoint holds RNG states of {len(rng_states)} processes, this run has "
                f"{world_size}; continuing with fresh seeds (the run will not reproduce an uninterrupted one)")
        log(f"resumed from {args.resume}: {start_epoch}/{total_epochs} epochs done, "
            f"{num_updates} updates, lr {optimizer.param_groups[0]['lr']:.3e}")
        del ckpt

    args_record = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args_record.update(world_size=world_size)
    log(f"model {args.model} ({param_count / 1e6:.3f}M params) kwargs {args.model_kwargs}")
    log(f"data {data_desc}: {len(train_ds)} train / {len(val_ds)} held-out, input {data_config['input_size']}, "
        f"{args.num_classes} classes; device {device} x {world_size} process(es)"
        f"{' (FSDP2)' if args.fsdp else ' (DDP)' if world_size > 1 else ''}"
        f"{', amp ' + str(autocast_dtype) if autocast_dtype else ''}"
        f"{f', {torch.get_num_threads()} CPU threads' if device.type == 'cpu' else ''}")
    log(f"global batch {world_size} x {args.batch_size} x {args.grad_accum_steps} = "
        f"{world_size * args.batch_size * args.grad_accum_steps}, {updates_per_epoch} updates/epoch, "
        f"{total_epochs} epochs; output {out}")

    eval_kw = dict(num_valid=val_valid, channels_last=args.channels_last)
    for epoch in range(start_epoch, total_epochs):
        t0 = time.perf_counter()
        if hasattr(train_sampler, "set_epoch"):
            train_sampler.set_epoch(epoch)
        mix_on = mixup_fn is not None and not (args.mixup_off_epoch and epoch >= args.mixup_off_epoch)
        tr = train_one_epoch(train_model, train_loader, optimizer, scheduler, loss_fn if mix_on else plain_loss_fn,
                             device=device, epoch=epoch, epochs=total_epochs, num_updates=num_updates,
                             autocast_dtype=autocast_dtype, scaler=scaler, clip_grad=args.clip_grad,
                             clip_mode=args.clip_mode, progress=progress, mixup_fn=mixup_fn if mix_on else None,
                             model_ema=model_ema, grad_accum_steps=args.grad_accum_steps,
                             channels_last=args.channels_last)
        num_updates = tr["num_updates"]
        t1 = time.perf_counter()
        ev = evaluate(train_model if args.fsdp else model, val_loader, device, autocast_dtype, progress=progress,
                      desc=f"eval {epoch + 1}", **eval_kw)
        row = {"epoch": epoch + 1, "num_updates": num_updates, "lr": tr["lr"], "train_loss": round(tr["loss"], 6),
               "val_loss": round(ev["loss"], 6), "top1": ev["top1"], "top5": ev["top5"]}
        if model_ema is not None:
            ev_ema = evaluate(model_ema.module, val_loader, device, autocast_dtype, progress=progress,
                              desc=f"EMA eval {epoch + 1}", **eval_kw)
            row.update(ema_val_loss=round(ev_ema["loss"], 6), ema_top1=ev_ema["top1"], ema_top5=ev_ema["top5"])
        t2 = time.perf_counter()
        row.update(train_time_s=round(t1 - t0, 3), eval_time_s=round(t2 - t1, 3))
        history.append(row)
        log(f"epoch {epoch + 1:>3}/{total_epochs}  lr {tr['lr']:.2e}  train loss {tr['loss']:.4f}  "
            f"held-out loss {ev['loss']:.4f}  top1 {ev['top1']:.2f}  top5 {ev['top5']:.2f}"
            + (f"  EMA top1 {row['ema_top1']:.2f}" if model_ema is not None else "") + f"  ({t1 - t0:.1f}s)")
        rng_states = get_all_rng_states(data_generator)
        if args.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
            opt_state = get_optimizer_state_dict(model, optimizer,
                                                 options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            opt_state = optimizer.state_dict()
        model_state = full_state_dict(model)
        if main_rank:
            state = {
                "version": CHECKPOINT_VERSION, "arch": args.model, "args": args_record, "epoch": epoch + 1,
                "num_updates": num_updates, "model": model_state, "optimizer": opt_state,
                "model_ema": model_ema.module.state_dict() if model_ema is not None else None,
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_states[0], "rng_per_rank": rng_states, "history": history,
                "data_config": dict(data_config), "class_to_idx": class_to_idx,
                "metric": {"top1": ev["top1"], "top5": ev["top5"]},
            }
            save_checkpoint(out / CHECKPOINT_NAME, state)
            write_log_csv(out / LOG_NAME, history)
            write_log_json(out / LOG_JSON_NAME, history)
            del state
        del model_state, opt_state
        _barrier()

    # Final evaluation of the final weights (all ranks), then export and reload check (rank 0).
    final = evaluate(train_model if args.fsdp else model, val_loader, device, autocast_dtype, progress=progress,
                     desc="final eval", **eval_kw)
    ema_final = None
    if model_ema is not None:
        ema_final = evaluate(model_ema.module, val_loader, device, autocast_dtype, progress=progress,
                             desc="EMA final eval", **eval_kw)
    model_state = full_state_dict(model)
    if not main_rank:
        _barrier()
        return {"rank": rank, "final": {k: final[k] for k in ("top1", "top5", "loss", "count")}}
    try:
        summary = _finish(args, out, model_state, model_ema, final, ema_final, history, data_config, label_names,
                          val_ds, device, autocast_dtype, progress, param_count, train_ds, data_desc, num_updates,
                          world_size, args_record)
    finally:
        _barrier()
    return summary


def _finish(args, out, model_state, model_ema, final, ema_final, history, data_config, label_names, val_ds, device,
            autocast_dtype, progress, param_count, train_ds, data_desc, num_updates, world_size, args_record):
    """Rank 0's epilogue: export the weights (and the EMA's), reload them through timm and
    re-evaluate on the whole held-out split, write summary.json/summary.txt/curves.png."""
    plain = create_model(args.model.split(".")[0] if ":" not in args.model else args.model, args.num_classes,
                         args.model_kwargs, img_size=args.img_size if not args.demo else None)
    plain.load_state_dict(model_state)
    names = label_names if len(label_names) == args.num_classes else None
    weights_path, config_path = export_weights(plain, out, args.model_kwargs, data_config, names)
    files = {"checkpoint": str(out / CHECKPOINT_NAME), "weights": str(weights_path), "config": str(config_path)}
    if model_ema is not None:
        ema_weights, _ = export_weights(unwrap_model(model_ema.module), out / EMA_DIR, args.model_kwargs,
                                        data_config, names)
        files["ema_weights"] = str(ema_weights)
    arch = args.model.split(".")[0] if ":" not in args.model else plain.pretrained_cfg.get("architecture", args.model)
    reloaded = load_exported_model(arch, weights_path, args.num_classes, args.model_kwargs,
                                   img_size=args.img_size if not args.demo else None).to(device)
    same_weights = all(torch.equal(a, b.cpu()) for a, b in zip(model_state.values(), reloaded.state_dict().values()))
    full_loader = make_loader(val_ds, args.batch_size, train=False, workers=args.workers, device=device)
    re_eval = evaluate(reloaded, full_loader, device, autocast_dtype, progress=progress, desc="reload eval",
                       reduce=False)
    identical = same_weights and re_eval["correct1"] == final["correct1"] and re_eval["correct5"] == final["correct5"]
    tqdm.write(f"reloaded {weights_path} through timm.create_model(pretrained=True): top1 {re_eval['top1']:.2f} "
               f"top5 {re_eval['top5']:.2f} ({'identical' if identical else 'DIFFERENT'})")
    if not identical and device.type == "cpu" and not args.channels_last:
        raise RuntimeError(f"the exported weights {weights_path} do not reproduce the trained model "
                           f"(top1 {final['top1']} vs {re_eval['top1']}, identical weights: {same_weights})")

    predictions = None
    if args.demo:
        predictions = _demo_predictions(reloaded, val_ds, device, label_names)
    curves = plot_curves(out / CURVES_NAME, history)
    files.update(log=str(out / LOG_NAME), log_json=str(out / LOG_JSON_NAME), summary=str(out / SUMMARY_NAME),
                 summary_text=str(out / SUMMARY_TEXT_NAME))
    if curves is not None:
        files["curves"] = str(curves)

    best = max(history, key=lambda r: r["top1"]) if history else None
    summary = {
        "model": args.model, "model_kwargs": _jsonable(args.model_kwargs), "param_count": param_count,
        "data": data_desc, "num_classes": args.num_classes, "train_samples": len(train_ds),
        "held_out_samples": len(val_ds), "data_config": _jsonable(data_config),
        "epochs": args.epochs + args.cooldown_epochs, "num_updates": num_updates, "seed": args.seed,
        "device": str(device),
        "world_size": world_size, "batch_size": args.batch_size, "grad_accum_steps": args.grad_accum_steps,
        "threads": torch.get_num_threads(), "amp": str(autocast_dtype) if autocast_dtype else None,
        "final": {k: final[k] for k in ("top1", "top5", "loss", "count")},
        "ema_final": {k: ema_final[k] for k in ("top1", "top5", "loss", "count")} if ema_final else None,
        "best": {"epoch": best["epoch"], "top1": best["top1"], "top5": best["top5"]} if best else None,
        "reload_check": {"top1": re_eval["top1"], "top5": re_eval["top5"], "identical": identical},
        "train_time_s": round(sum(r["train_time_s"] for r in history), 3),
        "history": _jsonable(history),
        "files": files, "predictions": predictions, "args": _jsonable(args_record),
    }
    atomic_write_text(out / SUMMARY_NAME, json.dumps(_jsonable(summary), indent=2) + "\n")
    atomic_write_text(out / SUMMARY_TEXT_NAME, summary_text(summary))
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
    return run_cli(main, argv, errors=(UsageError, FileExistsError), interrupted=RESUME_HINT)


if __name__ == "__main__":
    sys.exit(cli())
