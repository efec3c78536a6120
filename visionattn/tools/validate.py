#!/usr/bin/env python3
"""Top-1/top-5 accuracy of a classifier on a held-out split, at one or several resolutions.

The model comes from ``--model`` (any name registered with timm or by visionattn, an
``hf-hub:org/repo`` id or a ``local-dir:PATH`` folder, both through timm) plus, optionally,
``--checkpoint``:

* a training checkpoint (``.pth.tar``/``.pth``/``.pt``) written by ``tools/train.py`` (or timm's
  ``train.py``), read with ``torch.load(weights_only=True)``; its recorded arguments supply the
  defaults (model, kwargs, classes, data source, input size, batch size), so
  ``validate.py --checkpoint runs/demo/last.pth.tar`` needs nothing else; ``--use-ema`` takes
  its EMA weights;
* a ``.safetensors`` file; a timm ``config.json`` beside it (as ``save_for_hf`` writes it)
  supplies the architecture, constructor args, class names and preprocessing.

Without a checkpoint the model's timm pretrained weights are used (``--pretrained [TAG]``).
The weights are always loaded through timm's pretrained path (``pretrained_cfg_overlay``), so
the model's own ``checkpoint_filter_fn`` adapts them to another ``--img-size``.

The data are class folders (``--data-dir DIR``, split ``--split`` or the first of ``val``,
``validation``, ``valid``, ``eval``, ``evaluation``, ``test``), any other timm reader
(``--dataset torch/cifar10``, ``hfds/<id>``, ``wds/...``; ``--split`` default ``validation``),
or ``--demo``, the held-out part of scikit-learn's digits exactly as ``tools/train.py`` splits
it. Preprocessing follows the model's pretrained cfg (the checkpoint's own data config when it
has one), overridable by ``--img-size``, ``--crop-pct``, ``--interpolation``, ``--mean``, ``--std``.
``--img-size 224 256 288`` (or ``--resolutions``) evaluates at each size and prints one table.
On an out-of-memory error the batch size is halved and the evaluation retried (``--no-retry``).

Prints the results as JSON and writes them to ``--results-file`` (JSON, or CSV for a ``.csv``
name) and ``--results-csv`` when given::

    python tools/validate.py --checkpoint runs/demo/last.pth.tar
    python tools/validate.py --model dinat_mini --checkpoint run/model.safetensors --data-dir /data/imagenet
    python tools/validate.py --model hf-hub:timm/maxvit_tiny_tf_224.in1k --data-dir /data/imagenet --img-size 224 288
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from timm.data import resolve_data_config
from tqdm import tqdm

import visionattn  # noqa: F401  (registers the zoo's models with timm)
from visionattn.engine.cli import UsageError, check_output_file, run_cli
from visionattn.engine.config import parse_model_kwargs
from visionattn.engine.data import (BAD_DATA_CHOICES, balanced_subset, build_folder_datasets, data_problems,
                                    dataset_targets, make_loader)
from visionattn.engine.digits import DEMO_NUM_CLASSES, build_demo_datasets
from visionattn.engine.distributed import resolve_device
from visionattn.engine.evaluation import evaluate, precision_name, resolve_amp
from visionattn.engine.files import atomic_write_text, jsonable
from visionattn.engine.console import show_progress, unknown_model_message
from visionattn.engine.model import build_model, read_checkpoint  # noqa: F401  (part of this tool's API)

DEFAULT_BATCH_SIZE = 128
#: Columns of the CSV results and of the printed table.
TABLE_COLUMNS = ("model", "img_size", "crop_pct", "interpolation", "top1", "top5", "loss", "count", "batch_size",
                 "param_count")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (defaults None where the checkpoint may supply them)."""
    p = argparse.ArgumentParser(description="Top-1/top-5 of a timm/visionattn classifier on a held-out split.")
    p.add_argument("--model", help="timm model name, hf-hub:org/repo or local-dir:PATH "
                                   "(default: the one recorded with the checkpoint)")
    p.add_argument("--checkpoint", type=Path, help="training checkpoint (.pth.tar) or weights (.safetensors)")
    p.add_argument("--use-ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    p.add_argument("--pretrained", nargs="?", const=True, default=None,
                   help="no checkpoint: timm's pretrained weights (the default tag, or the tag given)")
    p.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", default=None,
                   help="constructor kwargs (YAML values), on top of the recorded ones")
    p.add_argument("--num-classes", type=int, help="classifier size (default: recorded, else classes in the split)")
    p.add_argument("--demo", action="store_true", default=None, help="the digits demo's held-out split")
    p.add_argument("--data-dir", type=Path, help="dataset root (class folders, or the reader's root)")
    p.add_argument("--dataset", default="", help="timm dataset name ('' = class folders, torch/..., hfds/..., wds/...)")
    p.add_argument("--dataset-download", action="store_true", help="let timm's reader download the dataset")
    p.add_argument("--split", help="split (class folders: first of val, validation, valid, eval, evaluation, test; "
                                   "other readers: validation)")
    p.add_argument("--max-val-samples", type=int, help="deterministic class-balanced subset (as in train.py)")
    p.add_argument("--img-size", "--resolutions", dest="img_size", type=int, nargs="+",
                   help="input size(s); several give one row per size")
    p.add_argument("--crop-pct", type=float, help="center-crop fraction override")
    p.add_argument("--interpolation", help="resize interpolation override (bilinear, bicubic, ...)")
    p.add_argument("--mean", type=float, nargs="+", help="normalisation mean override")
    p.add_argument("--std", type=float, nargs="+", help="normalisation std override")
    p.add_argument("-b", "--batch-size", type=int, help=f"batch size (default: recorded, else {DEFAULT_BATCH_SIZE})")
    p.add_argument("--no-retry", action="store_true", help="do not halve the batch size on out-of-memory")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--bad-data", choices=BAD_DATA_CHOICES, default="fail",
                   help="class folders: held-out images of classes the model does not know, an empty class folder "
                        "or an unreadable image stop with an error naming it (fail, the default), or are left "
                        "out, counted and listed in the results (skip)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--threads", type=int, help="CPU intra-op threads, torch.set_num_threads (default: torch's)")
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU; bf16 or fp16 on CUDA)")
    p.add_argument("--amp-dtype", default="auto", choices=("auto", "bfloat16", "float16"))
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--results-file", type=Path, help="write the results here, JSON (CSV for a .csv name), atomically")
    p.add_argument("--results-csv", type=Path, help="also write the per-resolution table as CSV")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def _recorded_precision(train_args: Dict[str, Any]) -> Optional[str]:
    """The precision a run of tools/train.py evaluated in, from its recorded arguments (checkpoints
    that predate the ``eval_precision`` entry); None when unknown (not ours)."""
    if "amp" not in train_args:
        return None
    if not train_args["amp"]:
        return "float32"
    dtype = train_args.get("amp_dtype") or "auto"
    return f"{dtype} autocast" if dtype != "auto" else "bfloat16 or float16 autocast (--amp-dtype auto)"


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def evaluate_with_retry(model: torch.nn.Module, dataset, batch_size: int, *, device: torch.device, workers: int = 0,
                        retry: bool = True, log=print, **eval_kwargs) -> Tuple[Dict[str, float], int]:
    """:func:`visionattn.engine.evaluation.evaluate` over ``dataset``; on out-of-memory (CUDA's
    ``torch.OutOfMemoryError`` or a RuntimeError saying so) the batch size is halved and the whole
    evaluation restarted, down to 1. Returns ``(metrics, batch size used)``; re-raises the error
    with ``retry=False`` or at batch size 1."""
    while True:
        loader = make_loader(dataset, batch_size, train=False, workers=workers, device=device)
        try:
            return evaluate(model, loader, device, **eval_kwargs), batch_size
        except (RuntimeError, torch.OutOfMemoryError) as e:
            if not _is_oom(e) or not retry or batch_size <= 1:
                raise
            del loader
            if device.type == "cuda":
                torch.cuda.empty_cache()
            log(f"out of memory at batch size {batch_size}; retrying with {batch_size // 2}")
            batch_size //= 2


def format_table(rows: List[Dict[str, Any]]) -> str:
    """The per-resolution results as an aligned text table (columns :data:`TABLE_COLUMNS`)."""
    cells = [[str(c) for c in TABLE_COLUMNS]]
    for r in rows:
        cells.append([f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in TABLE_COLUMNS])
    widths = [max(len(row[i]) for row in cells) for i in range(len(TABLE_COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def results_csv(rows: List[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS) + ["top1_err", "top5_err"], lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Evaluate; returns the results dict: top1/top5 in percent, their errors, loss, count,
    model, checkpoint, split, data config, param count, batch size of the first (or only)
    resolution, and ``by_resolution``, one such dict per ``--img-size``.

    Raises :class:`UsageError` for missing or contradictory inputs, and torch's ``RuntimeError``
    (listing missing/unexpected keys) when the checkpoint does not fit the model.
    """
    args = build_parser().parse_args(argv)
    check_output_file(args.results_file, "--results-file")  # before the work, not after it
    check_output_file(args.results_csv, "--results-csv")
    if unknown_model_message(args.model):
        raise UsageError(unknown_model_message(args.model))
    if args.checkpoint is None and not args.pretrained and not (args.model and ":" in args.model):
        raise UsageError("give --checkpoint (a .pth.tar or .safetensors file), --pretrained, "
                         "or --model hf-hub:org/repo / local-dir:PATH")
    if args.demo and (args.data_dir is not None or args.dataset):
        raise UsageError("--demo and --data-dir/--dataset are exclusive")
    if args.use_ema and args.checkpoint is None:
        raise UsageError("--use-ema needs a --checkpoint")
    state_dict, meta = read_checkpoint(args.checkpoint, use_ema=args.use_ema) if args.checkpoint else (None, {})
    train_args = meta.get("train_args", {})

    model_name = args.model or meta.get("model")
    if not model_name:
        raise UsageError("--model is required: the checkpoint does not record its architecture")
    if ":" not in model_name and not timm.is_model(model_name.split(".")[0]):
        raise UsageError(f"unknown model {model_name!r}: not registered with timm (nor by visionattn)")
    model_kwargs = {**(meta.get("model_kwargs") or {}), **parse_model_kwargs(args.model_kwargs)}

    # Data source: flags, else what the training run used.
    demo, data_dir, dataset = bool(args.demo), args.data_dir, args.dataset
    split, max_val = args.split, args.max_val_samples
    if not demo and data_dir is None and not dataset:
        if train_args.get("demo"):
            demo = True
        elif train_args.get("data_dir") or train_args.get("dataset"):
            data_dir = Path(train_args["data_dir"]) if train_args.get("data_dir") else None
            dataset = train_args.get("dataset") or ""
            split = split or train_args.get("val_split")
        else:
            raise UsageError("give --data-dir DIR (class folders), --dataset NAME or --demo")
        if max_val is None:
            max_val = train_args.get("max_val_samples")
    batch_size = args.batch_size or train_args.get("batch_size") or DEFAULT_BATCH_SIZE
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    autocast_dtype, _ = resolve_amp(device, args.amp, args.amp_dtype)
    progress = show_progress(False if args.no_progress else None)
    train_precision = meta.get("eval_precision") or _recorded_precision(train_args)
    mine = precision_name(autocast_dtype)
    if train_precision and train_precision != mine and not ("auto)" in train_precision and autocast_dtype):
        hint = ("drop --amp" if train_precision == "float32" else "pass --amp" if autocast_dtype is None
                else f"pass --amp-dtype {train_precision.split()[0]}")
        print(f"note: this evaluation runs in {mine}, the training run evaluated in {train_precision}: the "
              f"accuracies can differ in the last digits; {hint} to match", file=sys.stderr)

    class_to_idx = meta.get("class_to_idx")
    num_classes = args.num_classes or meta.get("num_classes")
    if num_classes is None and class_to_idx:
        num_classes = len(class_to_idx)
    if num_classes is None and demo:
        num_classes = DEMO_NUM_CLASSES
    probe_cfg = {"input_size": (3, 224, 224), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
                 "crop_pct": 1.0}
    if num_classes is None and state_dict is None:  # timm weights: the pretrained cfg's class count
        if ":" in model_name:  # hf-hub:/local-dir: -- their config.json says it
            num_classes = timm.create_model(model_name, pretrained=False, **model_kwargs).num_classes
        else:
            cfg = timm.models.get_pretrained_cfg(model_name, allow_unregistered=True)
            num_classes = cfg.num_classes if cfg is not None else None
    if num_classes is None:  # learn the class count from the split before building the model
        _, _, class_to_idx, _ = build_folder_datasets(data_dir, probe_cfg, train_split=None, val_split=split,
                                                      dataset=dataset, download=args.dataset_download,
                                                      bad_data=args.bad_data)
        if not class_to_idx:
            raise UsageError("the dataset does not list its classes; give --num-classes")
        num_classes = len(class_to_idx)

    # Preprocessing: the recorded data config (or the model's pretrained cfg), then overrides.
    sizes = args.img_size or [None]
    rows: List[Dict[str, Any]] = []
    split_desc = None
    for size in sizes:
        model = build_model(model_name, num_classes, model_kwargs, state_dict, pretrained=args.pretrained,
                            img_size=size)
        model.to(device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        overrides = dict(img_size=size, crop_pct=args.crop_pct, interpolation=args.interpolation,
                         mean=args.mean, std=args.std)
        data_config = resolve_data_config(overrides, pretrained_cfg=meta.get("data_config"), model=model)
        data_config["input_size"] = tuple(data_config["input_size"])
        if demo:
            _, val_ds, class_to_idx = build_demo_datasets(data_config)
            split_desc = "demo digits held-out split"
        else:
            _, val_ds, found, split_name = build_folder_datasets(
                data_dir, data_config, train_split=None, val_split=split, class_to_idx=class_to_idx,
                dataset=dataset, download=args.dataset_download, bad_data=args.bad_data)
            class_to_idx = class_to_idx or found
            split_desc = f"{dataset or 'class folders'}: {Path(data_dir) / split_name if data_dir else split_name}"
        if class_to_idx and len(class_to_idx) > num_classes:
            raise UsageError(f"the split has {len(class_to_idx)} classes but the model only {num_classes}")
        if max_val:
            val_ds = torch.utils.data.Subset(val_ds, balanced_subset(dataset_targets(val_ds), max_val))
        metrics, used_bs = evaluate_with_retry(
            model, val_ds, batch_size, device=device, workers=args.workers, retry=not args.no_retry,
            log=lambda m: tqdm.write(m, file=sys.stderr), autocast_dtype=autocast_dtype, progress=progress,
            desc=f"validate {data_config['input_size'][-1]}", channels_last=args.channels_last, reduce=False)
        rows.append({
            "model": model_name, "checkpoint": str(args.checkpoint) if args.checkpoint else "pretrained",
            "use_ema": args.use_ema, "split": split_desc, "top1": metrics["top1"], "top1_err": 100.0 - metrics["top1"],
            "top5": metrics["top5"], "top5_err": 100.0 - metrics["top5"], "loss": metrics["loss"],
            "count": metrics["count"], "num_classes": num_classes,
            "param_count": sum(p.numel() for p in model.parameters()), "batch_size": used_bs,
            "img_size": data_config["input_size"][-1], "input_size": data_config["input_size"],
            "crop_pct": data_config["crop_pct"], "interpolation": data_config["interpolation"],
            "mean": data_config["mean"], "std": data_config["std"], "model_kwargs": jsonable(model_kwargs),
            "device": str(device), "amp": str(autocast_dtype) if autocast_dtype else None,
            "precision": precision_name(autocast_dtype), "train_precision": train_precision,
            "samples": len(val_ds), "skipped_unreadable": len(val_ds) - metrics["count"],
            "data_problems": data_problems(val_ds),
        })
        if rows[-1]["data_problems"]:
            print(f"counted {metrics['count']} of {len(val_ds)} held-out images; left out (--bad-data skip): "
                  f"{json.dumps(rows[-1]['data_problems'])}", file=sys.stderr)
        del model

    results = dict(rows[0])
    results["by_resolution"] = rows
    text = json.dumps(jsonable(results), indent=2)
    print(text)
    if len(rows) > 1 or not progress:
        print(format_table(rows), file=sys.stderr)
    if args.results_file:
        atomic_write_text(args.results_file, results_csv(rows) if args.results_file.suffix == ".csv" else text + "\n")
    if args.results_csv:
        atomic_write_text(args.results_csv, results_csv(rows))
    return results


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: run :func:`main`, print user and checkpoint-file errors without a traceback."""
    from visionattn.models._hub import CheckpointFileError
    from visionattn.models._registry import CheckpointKeyError

    return run_cli(main, argv, errors=(UsageError, CheckpointFileError, CheckpointKeyError))


if __name__ == "__main__":
    sys.exit(cli())
