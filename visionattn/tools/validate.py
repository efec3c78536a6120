#!/usr/bin/env python3
"""Top-1/top-5 accuracy of a classifier on a held-out split.

The model comes from ``--model`` (any name registered with timm or by visionattn) plus
``--checkpoint``:

* a training checkpoint (``.pth.tar``/``.pth``/``.pt``) written by ``tools/train.py`` (or timm's
  ``train.py``), read with ``torch.load(weights_only=True)``; its recorded arguments supply the
  defaults (model, kwargs, classes, data source, input size, batch size), so
  ``validate.py --checkpoint runs/demo/last.pth.tar`` needs nothing else;
* a ``.safetensors`` file; a timm ``config.json`` beside it (as ``save_for_hf`` writes it)
  supplies the architecture, constructor args, class names and preprocessing.

The data are class folders (``--data-dir DIR``, split ``--split`` or the first of ``val``,
``validation``, ``valid``, ``eval``, ``evaluation``, ``test``) or ``--demo``, the held-out part
of scikit-learn's digits exactly as ``tools/train.py`` splits it. Preprocessing follows the
model's pretrained cfg (the checkpoint's own data config when it has one), overridable by
``--img-size``, ``--crop-pct``, ``--interpolation``, ``--mean``, ``--std``.

Prints the results as JSON and writes them to ``--results-file`` when given::

    python tools/validate.py --checkpoint runs/demo/last.pth.tar
    python tools/validate.py --model dinat_mini --checkpoint run/model.safetensors --data-dir /data/imagenet
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import timm
import torch
from safetensors.torch import load_file
from timm.data import resolve_data_config

import visionattn  # noqa: F401  (registers the zoo's models with timm)
from visionattn.tools.train import (
    DEMO_NUM_CLASSES, UsageError, _jsonable, atomic_write_text, balanced_subset, build_demo_datasets,
    build_folder_datasets, create_model, dataset_targets, evaluate, make_loader, parse_model_kwargs, resolve_amp,
    resolve_device,
)

DEFAULT_BATCH_SIZE = 128


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (defaults None where the checkpoint may supply them)."""
    p = argparse.ArgumentParser(description="Top-1/top-5 of a timm/visionattn classifier on a held-out split.")
    p.add_argument("--model", help="timm model name (default: the one recorded with the checkpoint)")
    p.add_argument("--checkpoint", type=Path, help="training checkpoint (.pth.tar) or weights (.safetensors)")
    p.add_argument("--pretrained", action="store_true", help="no checkpoint: use timm's pretrained weights")
    p.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", default=None,
                   help="constructor kwargs (YAML values), on top of the recorded ones")
    p.add_argument("--num-classes", type=int, help="classifier size (default: recorded, else classes in the split)")
    p.add_argument("--demo", action="store_true", default=None, help="the digits demo's held-out split")
    p.add_argument("--data-dir", type=Path, help="folder holding the split's class folders")
    p.add_argument("--split", help="split folder (default: first of val, validation, valid, eval, evaluation, test)")
    p.add_argument("--max-val-samples", type=int, help="deterministic class-balanced subset (as in train.py)")
    p.add_argument("--img-size", type=int, help="input size override")
    p.add_argument("--crop-pct", type=float, help="center-crop fraction override")
    p.add_argument("--interpolation", help="resize interpolation override (bilinear, bicubic, ...)")
    p.add_argument("--mean", type=float, nargs="+", help="normalisation mean override")
    p.add_argument("--std", type=float, nargs="+", help="normalisation std override")
    p.add_argument("-b", "--batch-size", type=int, help=f"batch size (default: recorded, else {DEFAULT_BATCH_SIZE})")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--threads", type=int, help="CPU intra-op threads, torch.set_num_threads (default: torch's)")
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU; bf16 or fp16 on CUDA)")
    p.add_argument("--amp-dtype", default="auto", choices=("auto", "bfloat16", "float16"))
    p.add_argument("--results-file", type=Path, help="write the results JSON here (atomically)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def _strip_prefix(state_dict: Dict[str, torch.Tensor], prefix: str = "module.") -> Dict[str, torch.Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def read_checkpoint(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Weights and recorded metadata of a checkpoint.

    Returns ``(state_dict, meta)``; ``meta`` may hold ``model``, ``model_kwargs``,
    ``num_classes``, ``data_config``, ``class_to_idx`` and ``train_args`` (whatever the file
    records). ``.safetensors`` files are read with safetensors (metadata from a ``config.json``
    beside them); anything else with ``torch.load(weights_only=True)``, taking the ``model``
    or ``state_dict`` entry, or the whole file if it is a plain state dict.
    Raises :class:`UsageError` if the file is missing or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    meta: Dict[str, Any] = {}
    if path.suffix == ".safetensors":
        state_dict = load_file(str(path))
        config_path = path.with_name("config.json")
        if config_path.is_file():
            cfg = json.loads(config_path.read_text())
            model_args = dict(cfg.get("model_args") or {})
            meta["model"] = cfg.get("architecture")
            meta["num_classes"] = model_args.pop("num_classes", cfg.get("num_classes"))
            meta["model_kwargs"] = model_args
            if cfg.get("pretrained_cfg"):
                meta["data_config"] = cfg["pretrained_cfg"]
            if cfg.get("label_names"):
                names = cfg["label_names"]
                meta["class_to_idx"] = ({str(n): i for i, n in enumerate(names)} if isinstance(names, list)
                                        else {str(n): int(i) for i, n in names.items()})
        return state_dict, meta
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        state_dict = ckpt["model"]
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        state_dict = ckpt["state_dict"]
    elif isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state_dict = ckpt
    else:
        raise UsageError(f"{path} holds no state dict (expected a 'model' or 'state_dict' entry)")
    if isinstance(ckpt.get("args"), dict) and "model" in ckpt:  # ours
        args = ckpt["args"]
        meta.update(model=args.get("model"), model_kwargs=dict(args.get("model_kwargs") or {}),
                    num_classes=args.get("num_classes"), train_args=args)
    elif ckpt.get("arch"):  # timm's train.py
        meta["model"] = ckpt["arch"]
    if ckpt.get("data_config"):
        meta["data_config"] = ckpt["data_config"]
    if ckpt.get("class_to_idx"):
        meta["class_to_idx"] = dict(ckpt["class_to_idx"])
    return _strip_prefix(state_dict), meta


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Evaluate; returns the results dict (top1/top5 in percent, their errors, loss, count,
    model, checkpoint, split, data config, param count).

    Raises :class:`UsageError` for missing or contradictory inputs, and torch's ``RuntimeError``
    (listing missing/unexpected keys) when the checkpoint does not fit the model.
    """
    args = build_parser().parse_args(argv)
    if args.checkpoint is None and not args.pretrained:
        raise UsageError("give --checkpoint (a .pth.tar or .safetensors file) or --pretrained")
    if args.demo and args.data_dir is not None:
        raise UsageError("--demo and --data-dir are exclusive")
    state_dict, meta = read_checkpoint(args.checkpoint) if args.checkpoint else (None, {})
    train_args = meta.get("train_args", {})

    model_name = args.model or meta.get("model")
    if not model_name:
        raise UsageError("--model is required: the checkpoint does not record its architecture")
    model_kwargs = {**(meta.get("model_kwargs") or {}), **parse_model_kwargs(args.model_kwargs)}

    # Data source: flags, else what the training run used.
    demo, data_dir = bool(args.demo), args.data_dir
    split, max_val = args.split, args.max_val_samples
    if not demo and data_dir is None:
        if train_args.get("demo"):
            demo = True
        elif train_args.get("data_dir"):
            data_dir = Path(train_args["data_dir"])
            split = split or train_args.get("val_split")
        else:
            raise UsageError("give --data-dir DIR (class folders) or --demo")
        if max_val is None:
            max_val = train_args.get("max_val_samples")
    batch_size = args.batch_size or train_args.get("batch_size") or DEFAULT_BATCH_SIZE
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    autocast_dtype, _ = resolve_amp(device, args.amp, args.amp_dtype)

    class_to_idx = meta.get("class_to_idx")
    num_classes = args.num_classes or meta.get("num_classes")
    if num_classes is None and class_to_idx:
        num_classes = len(class_to_idx)
    if num_classes is None and demo:
        num_classes = DEMO_NUM_CLASSES

    # Preprocessing: the recorded data config (or the model's pretrained cfg), then overrides.
    overrides = dict(img_size=args.img_size, crop_pct=args.crop_pct, interpolation=args.interpolation,
                     mean=args.mean, std=args.std)
    pretrained_cfg = meta.get("data_config")

    if num_classes is None:  # learn the class count from the split before building the model
        _, probe, class_to_idx, _ = build_folder_datasets(
            data_dir, {"input_size": (3, 224, 224), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                       "interpolation": "bilinear", "crop_pct": 1.0}, train_split=None, val_split=split)
        num_classes = len(class_to_idx)
    if args.pretrained and state_dict is None:
        model = timm.create_model(model_name, pretrained=True, num_classes=num_classes, **model_kwargs)
    else:
        model = create_model(model_name, num_classes, model_kwargs)
        model.load_state_dict(state_dict, strict=True)
    model.to(device)
    data_config = resolve_data_config(overrides, pretrained_cfg=pretrained_cfg, model=model)
    data_config["input_size"] = tuple(data_config["input_size"])

    if demo:
        _, val_ds, class_to_idx = build_demo_datasets(data_config)
        split_desc = "demo digits held-out split"
    else:
        _, val_ds, class_to_idx, split_name = build_folder_datasets(
            data_dir, data_config, train_split=None, val_split=split, class_to_idx=class_to_idx)
        split_desc = str(Path(data_dir) / split_name)
    if len(class_to_idx) > num_classes:
        raise UsageError(f"the split has {len(class_to_idx)} classes but the model only {num_classes}")
    if max_val:
        val_ds = torch.utils.data.Subset(val_ds, balanced_subset(dataset_targets(val_ds), max_val))
    loader = make_loader(val_ds, batch_size, train=False, workers=args.workers, device=device)
    metrics = evaluate(model, loader, device, autocast_dtype, progress=not args.no_progress, desc="validate")

    results = {
        "model": model_name, "checkpoint": str(args.checkpoint) if args.checkpoint else "pretrained",
        "split": split_desc, "top1": metrics["top1"], "top1_err": 100.0 - metrics["top1"],
        "top5": metrics["top5"], "top5_err": 100.0 - metrics["top5"], "loss": metrics["loss"],
        "count": metrics["count"], "num_classes": num_classes,
        "param_count": sum(p.numel() for p in model.parameters()), "batch_size": batch_size,
        "img_size": data_config["input_size"][-1], "crop_pct": data_config["crop_pct"],
        "interpolation": data_config["interpolation"], "model_kwargs": _jsonable(model_kwargs),
        "device": str(device), "amp": str(autocast_dtype) if autocast_dtype else None,
    }
    text = json.dumps(_jsonable(results), indent=2)
    print(text)
    if args.results_file:
        atomic_write_text(args.results_file, text + "\n")
    return results


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: run :func:`main`, print user errors without a traceback."""
    try:
        main(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
