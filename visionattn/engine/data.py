"""Datasets, samplers and loaders for classification: class folders (checked: empty class
folders, classes outside the class map and unreadable images are named, then fail or skip) and
timm's dataset factory with timm's transforms, deterministic class-balanced subsets, the
training sampler (distributed or repeated augmentation), rank-sharded evaluation indices and
the DataLoader."""
from __future__ import annotations

import collections
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import ImageDataset, create_dataset, create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import default_collate

from .cli import UsageError


EVAL_SPLIT_NAMES = ("val", "validation", "valid", "eval", "evaluation", "test")
#: What ``--bad-data`` accepts: stop with an error naming the problem, or leave the data out
#: (counted, listed in the dataset's ``data_problems`` and printed as warnings).
BAD_DATA_CHOICES = ("fail", "skip")
_SKIP_HINT = "pass --bad-data skip to leave them out (counted and listed)"


def _shown(names: Sequence[str], n: int = 5) -> str:
    names = list(names)
    return ", ".join(repr(x) for x in names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")


class FolderImages(ImageDataset):
    """timm's class-folder ``ImageDataset`` that names a file it cannot read.

    timm replaces an unreadable image by its neighbour with a warning that names only an index,
    so an evaluation counts the neighbour twice. Here, with ``bad_data='fail'`` reading it raises
    :class:`UsageError` naming the file; with ``'skip'`` the sample becomes ``None`` (which
    :func:`collate_skipping`, the loaders' collate, drops), a warning names the file and it is
    appended to ``data_problems['unreadable']`` (in this process; loader workers keep their own
    list, the warnings still name every file). ``data_problems`` also holds ``empty_classes``
    (class folders without images) and ``unknown_classes`` (``{folder: images}`` left out
    because the class map does not have them), filled by :func:`build_folder_datasets`.
    Items: ``(image after transform, class index)``.
    """

    def __init__(self, root: os.PathLike, *, class_map: Optional[Dict[str, int]] = None, transform=None,
                 bad_data: str = "fail"):
        if bad_data not in BAD_DATA_CHOICES:
            raise UsageError(f"--bad-data must be one of {', '.join(BAD_DATA_CHOICES)}, got {bad_data!r}")
        try:
            super().__init__(str(root), reader="", class_map=class_map or "", transform=transform)
        except RuntimeError as e:  # timm: "Found 0 images in subfolders of ..."
            raise UsageError(f"no images found in the class folders of {root} ({e})") from None
        self.bad_data = bad_data
        self.data_problems: Dict[str, Any] = {"empty_classes": [], "unknown_classes": {}, "unreadable": []}

    def __getitem__(self, index: int):
        path, target = self.reader.samples[index]
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                img = img.convert(self.input_img_mode)  # decodes the pixels: truncated files fail here
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            if self.bad_data == "fail":
                raise UsageError(f"cannot read image {path} ({e}); {_SKIP_HINT}") from None
            self.data_problems["unreadable"].append(str(path))
            print(f"warning: skipped unreadable image {path} ({e})", file=sys.stderr)
            return None
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def data_problems(ds) -> Optional[Dict[str, Any]]:
    """The ``data_problems`` of a :class:`FolderImages` (also inside a ``Subset``) with anything
    to report, as ``{"empty_classes": [...], "unknown_classes": {class: images}, "unreadable":
    [paths]}`` keeping only the non-empty entries; None for other datasets or nothing to report."""
    while isinstance(ds, torch.utils.data.Subset):
        ds = ds.dataset
    found = getattr(ds, "data_problems", None)
    kept = {k: v for k, v in (found or {}).items() if v}
    return kept or None


def collate_skipping(batch):
    """``default_collate`` of the samples that are not ``None`` (images :class:`FolderImages`
    could not read and was told to skip); ``None`` when no sample is left, which the training
    and evaluation loops pass over."""
    kept = [b for b in batch if b is not None]
    return default_collate(kept) if kept else None


def _check_class_folders(ds: FolderImages, split_dir: Path, class_to_idx: Optional[Dict[str, int]],
                         bad_data: str) -> None:
    """Report what timm's folder reader drops without a word, naming the classes.

    Without ``class_to_idx`` the split defines the classes: a class folder holding no image
    would silently shift every later class index and shrink the head. With ``class_to_idx``
    (the training split's, a checkpoint's) images of other classes would silently vanish from
    the count; when no folder name is a known class at all, that is a naming mismatch and always
    an error. ``bad_data='fail'`` raises :class:`UsageError`; ``'skip'`` records the problem in
    ``ds.data_problems``, warns, and (unknown classes) leaves those images out of ``ds``.
    """
    found = dict(ds.reader.class_to_idx)
    if class_to_idx is None:
        folders = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
        empty = [name for name in folders if name not in found]
        if empty:
            msg = (f"{len(empty)} class folder(s) of {split_dir} hold no images: {_shown(empty)}; "
                   f"the split would have {len(found)} classes instead of {len(folders)}")
            if bad_data == "fail":
                raise UsageError(f"{msg}; {_SKIP_HINT}")
            print(f"warning: {msg}; left out (--bad-data skip)", file=sys.stderr)
            ds.data_problems["empty_classes"] = empty
        return
    names = {i: name for name, i in found.items()}
    per_class = collections.Counter(names[t] for _, t in ds.reader.samples)
    unknown = {name: n for name, n in sorted(per_class.items()) if name not in class_to_idx}
    if unknown and len(unknown) == len(per_class):
        raise UsageError(f"none of the {len(per_class)} class folders of {split_dir} ({_shown(sorted(per_class))}) "
                         f"is one of the model's classes ({_shown(sorted(class_to_idx, key=class_to_idx.get))}): "
                         "the folder names must be the training split's class names")
    if unknown:
        msg = (f"{split_dir} has {sum(unknown.values())} images in {len(unknown)} class folder(s) the model does "
               f"not know: " + ", ".join(f"{name!r} ({n})" for name, n in list(unknown.items())[:10])
               + (" ..." if len(unknown) > 10 else ""))
        if bad_data == "fail":
            raise UsageError(f"{msg}; {_SKIP_HINT}")
        print(f"warning: {msg}; left out (--bad-data skip)", file=sys.stderr)
        ds.data_problems["unknown_classes"] = unknown
    ds.reader.samples = [(path, class_to_idx[names[t]]) for path, t in ds.reader.samples if names[t] in class_to_idx]
    ds.reader.class_to_idx = dict(class_to_idx)


def _folder_split(split_dir: Path, class_to_idx: Optional[Dict[str, int]], transform, bad_data: str) -> FolderImages:
    """The class folders of ``split_dir`` as :class:`FolderImages`, checked (:func:`_check_class_folders`)."""
    ds = FolderImages(split_dir, transform=transform, bad_data=bad_data)
    _check_class_folders(ds, split_dir, class_to_idx, bad_data)
    return ds


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
    """Targets of a dataset holding them in a tensor (the demo digits), a timm folder ImageDataset
    or a torchvision dataset with a ``targets`` list, without decoding images. Raises
    :class:`UsageError` for other datasets."""
    if isinstance(getattr(ds, "targets", None), torch.Tensor):
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
                          download: bool = False, bad_data: str = "fail", **aug):
    """Train and held-out datasets through ``timm.data.create_dataset`` with timm's transforms.

    ``dataset=''`` (class folders): ``data_dir/train_split/<class>/*`` is the training split and
    the held-out split is ``val_split`` or the first of ``val, validation, valid, eval,
    evaluation, test`` present; it reuses the training split's class indices
    (``class_to_idx`` overrides both). Any other ``dataset`` (``torch/cifar10``, ``hfds/<id>``,
    ``wds/...``, a ``.tar`` path ...) is passed to timm's factory with ``root=data_dir`` and the
    split names as given (held-out default ``validation``). ``aug`` takes the extra keywords of
    :func:`build_transforms`. Pass ``train_split=None`` for the held-out split alone. Returns
    ``(train_ds or None, val_ds, class_to_idx or None, val_split_name)``.

    Class folders are :class:`FolderImages`: an empty class folder, held-out images of classes
    outside the class map, a folder naming that matches none of the classes, and unreadable
    images are reported by name; ``bad_data`` (``fail`` or ``skip``, see :data:`BAD_DATA_CHOICES`)
    chooses between an error and leaving them out, listed in each dataset's ``data_problems``.
    Raises :class:`UsageError` for a missing folder and for the problems above under ``fail``.
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
    if bad_data not in BAD_DATA_CHOICES:
        raise UsageError(f"--bad-data must be one of {', '.join(BAD_DATA_CHOICES)}, got {bad_data!r}")
    train_ds = None
    if train_split is not None:
        train_name = resolve_split_dir(data_dir, train_split, ())
        train_ds = _folder_split(data_dir / train_name, class_to_idx, train_tf, bad_data)
        class_to_idx = dict(train_ds.reader.class_to_idx)
    val_name = resolve_split_dir(data_dir, val_split, EVAL_SPLIT_NAMES)
    val_ds = _folder_split(data_dir / val_name, class_to_idx, val_tf, bad_data)
    if class_to_idx is None:
        class_to_idx = dict(val_ds.reader.class_to_idx)
    return train_ds, val_ds, class_to_idx, val_name


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
    evaluating never consumes the global torch RNG. The default ``collate_fn`` is
    :func:`collate_skipping` (samples a dataset skipped as unreadable are left out).
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    n = len(sampler) if sampler is not None else len(ds)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
        drop_last=train and n > batch_size, num_workers=workers, generator=generator, worker_init_fn=_seed_worker,
        pin_memory=device.type == "cuda", persistent_workers=False, collate_fn=collate_fn or collate_skipping)
