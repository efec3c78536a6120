#!/usr/bin/env python3
"""COCO detection / instance segmentation with any visionattn backbone: ``train`` and ``eval``.

Detectors: torchvision's Mask R-CNN, Faster R-CNN and RetinaNet on a
:class:`~visionattn.detection.DetectionBackbone` (FPN over strides 4-32 of any registered model);
data in the official COCO instances format; COCOeval (pycocotools) for bbox and segm AP. The
papers' recipes are in ``configs/coco/*.yaml`` (AdamW lr 1e-4, wd 0.05 without decay on norms
and position biases, 1x = 12 epochs with LR steps [8, 11], 3x = 36 epochs with [27, 33], 500-iter
linear warmup, multi-scale training 480-800 / max 1333, 2 images per GPU x 8 GPUs).

Data: ``--data-dir ROOT`` with ``ROOT/<split>/*.jpg`` and ``ROOT/annotations/instances_<split>.json``
(``--train-split train2017``, ``--val-split val2017``), or explicit ``--train-images/--train-ann``
and ``--val-images/--val-ann``.

Distributed: launch with ``torchrun --nproc_per_node=G``; nccl on CUDA, gloo on CPU
(``device_ids=None``). Each rank gets a shard of the data (training: epoch-seeded permutation,
aspect-ratio grouped batches; eval: disjoint shards, results gathered to rank 0 and deduplicated
by image id).

Outputs in ``--output``: ``last.pth.tar`` after every epoch (model, optimizer, scheduler, grad
scaler, epoch, step, RNG states, arguments, category mapping; atomic), ``iterations.jsonl`` (one
record per iteration: losses, lr), ``log.csv`` (one row per epoch), ``eval_epoch<N>.json`` /
``eval.json`` (the 12 COCOeval numbers per IoU type), ``detections_<type>.json`` (COCO results)
and ``summary.json``. ``--resume auto`` continues from ``last.pth.tar``; on CPU with a fixed seed
and ``--workers 0`` a resumed run ends with the same weights as an uninterrupted one.

Examples::

    torchrun --nproc_per_node=8 tools/coco.py train --config configs/coco/mask_rcnn_dinat_tiny_3x.yaml \\
        --data-dir /data/coco --output runs/mask_rcnn_dinat_tiny_3x
    python tools/coco.py eval --checkpoint runs/mask_rcnn_dinat_tiny_3x/last.pth.tar --data-dir /data/coco
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader

from visionattn.detection import (CocoDetection, GroupedBatchSampler, ShardedSampler, aspect_ratio_groups,
                                  build_detector, build_transforms, collate_fn)
from visionattn.detection.builders import DETECTORS
from visionattn.detection.engine import (NO_DECAY_KEYWORDS, SCHEDULES, WarmupMultiStep, evaluate, init_distributed,
                                         is_main, param_groups, train_one_epoch, unwrap)
from visionattn.engine.checkpoint import find_resume_checkpoint, get_rng_state, load_checkpoint, set_rng_state
from visionattn.engine.cli import RESUME_HINT, UsageError, run_cli
from visionattn.engine.config import parse_model_kwargs
from visionattn.engine.evaluation import resolve_amp
from visionattn.engine.files import atomic_write, atomic_write_text, jsonable
from visionattn.engine.console import default_workers, show_progress

CHECKPOINT_NAME = "last.pth.tar"

DEFAULTS: Dict[str, Any] = dict(
    detector="mask_rcnn", model=None, model_kwargs={}, pretrained=False, pretrained_file=None, drop_path=None,
    data_dir=None, train_split="train2017", val_split="val2017", train_images=None, train_ann=None,
    val_images=None, val_ann=None, keep_empty_train=False, max_train_images=None, max_val_images=None,
    augment="multiscale", train_min_sizes=[480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800], max_size=1333,
    test_min_size=800, lsj_size=1024, schedule="1x", epochs=None, lr_steps=None, lr=1e-4, weight_decay=0.05,
    warmup_iters=500, warmup_ratio=0.001, layer_decay=None, no_decay_keywords=list(NO_DECAY_KEYWORDS), no_decay_1d=True,
    clip_grad=None, batch_size=2, eval_batch_size=1, workers=None, aspect_ratio_group_factor=3, amp=False,
    amp_dtype="auto", device=None, seed=42, output=None, eval_every=1, frozen_bn=True, sync_bn=False,
    fpn_channels=256, representation_size=1024, mask_head_channels=256, detector_kwargs={}, threads=None,
    stop_after_epoch=None, progress=None, paper=None, source=None,
)
# keys whose change makes a resumed run differ from an uninterrupted one
_REPRO_KEYS = ("detector", "model", "model_kwargs", "augment", "train_min_sizes", "max_size", "epochs", "lr_steps",
               "lr", "weight_decay", "warmup_iters", "batch_size", "seed", "layer_decay")


def _add_common(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--config", "-c", help="YAML file of defaults (keys = these flags with '_'); CLI flags override it")
    a("--detector", choices=DETECTORS)
    a("--model", help="backbone name registered with timm (visionattn.list_models())")
    a("--model-kwargs", nargs="*", metavar="KEY=VALUE", help="backbone constructor kwargs (YAML values)")
    a("--pretrained", action=argparse.BooleanOptionalAction, default=None, help="load ImageNet weights into the backbone")
    a("--pretrained-file", help="local ImageNet checkpoint for the backbone (implies --pretrained)")
    a("--data-dir", help="COCO root: <split>/ images and annotations/instances_<split>.json")
    a("--val-split")
    a("--val-images")
    a("--val-ann")
    a("--max-val-images", type=int, help="evaluate on the first N images only")
    a("--test-min-size", type=int, help="eval short side (800)")
    a("--max-size", type=int, help="long-side cap (1333)")
    a("--eval-batch-size", type=int)
    a("--workers", type=int, help="data-loader workers per process (default: min(4, CPUs / processes on the node))")
    a("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (bf16 or fp16+GradScaler)")
    a("--amp-dtype", choices=("auto", "bfloat16", "float16"))
    a("--device", choices=("cpu", "cuda"))
    a("--threads", type=int, help="torch.set_num_threads per process")
    a("--output", help="output folder")
    a("--progress", action=argparse.BooleanOptionalAction, default=None,
      help="tqdm progress bars (default: only when stderr is a terminal)")


def build_parser() -> argparse.ArgumentParser:
    """``train`` and ``eval`` sub-commands (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="visionattn-coco", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a detector (DDP with torchrun)")
    _add_common(t)
    a = t.add_argument
    a("--drop-path", type=float, help="backbone stochastic depth (drop_path_rate)")
    a("--train-split")
    a("--train-images")
    a("--train-ann")
    a("--keep-empty-train", action=argparse.BooleanOptionalAction, default=None,
      help="keep training images without usable annotations (default: drop them)")
    a("--max-train-images", type=int, help="train on the first N images only")
    a("--augment", choices=("multiscale", "detr", "lsj", "single", "none"))
    a("--train-min-sizes", type=int, nargs="+", help="short-side choices for multi-scale training")
    a("--lsj-size", type=int)
    a("--schedule", choices=tuple(SCHEDULES), help="1x: 12 epochs, steps [8, 11]; 3x: 36, [27, 33]")
    a("--epochs", type=int, help="override the schedule's epochs")
    a("--lr-steps", type=int, nargs="*", help="epochs after which LR x 0.1 (override the schedule)")
    a("--lr", type=float)
    a("--weight-decay", type=float)
    a("--warmup-iters", type=int)
    a("--warmup-ratio", type=float)
    a("--layer-decay", type=float, help="layer-wise LR decay over the backbone (off by default)")
    a("--clip-grad", type=float)
    a("--batch-size", type=int, help="images per process")
    a("--aspect-ratio-group-factor", type=int, help="k for aspect-ratio bins (-1: no grouping)")
    a("--seed", type=int)
    a("--eval-every", type=int, help="evaluate every N epochs (0: only after the last)")
    a("--frozen-bn", action=argparse.BooleanOptionalAction, default=None, help="freeze backbone BatchNorm (default on)")
    a("--sync-bn", action=argparse.BooleanOptionalAction, default=None, help="SyncBatchNorm under DDP")
    a("--resume", help="'auto' (OUTPUT/last.pth.tar if present) or a checkpoint path")
    a("--overwrite", action="store_true", help="reuse a non-empty --output for a fresh run")
    a("--stop-after-epoch", type=int, help="exit after saving this epoch (simulates an interruption)")
    e = sub.add_parser("eval", help="evaluate a checkpoint with COCOeval")
    _add_common(e)
    e.add_argument("--checkpoint", required=True, help="last.pth.tar written by train (or a dict with 'model')")
    return parser


def _load_config(path: Optional[str]) -> Dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config {path} does not exist")
    cfg = yaml.safe_load(p.read_text()) or {}
    if not isinstance(cfg, dict):
        raise UsageError(f"--config {path} must hold a mapping of option names to values")
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise UsageError(f"--config {path}: unknown keys {unknown}; accepted: {sorted(DEFAULTS)}")
    return cfg


def resolve_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, Optional[Dict[str, Any]]]:
    """Merge: CLI flags > --config > the checkpoint's arguments (resume/eval) > :data:`DEFAULTS`.
    Returns ``(args, checkpoint or None)``. Raises :class:`UsageError` for bad combinations."""
    raw = build_parser().parse_args(argv)
    explicit = {k: v for k, v in vars(raw).items() if v is not None}
    command = explicit.pop("command")
    config = _load_config(explicit.pop("config", None))
    if "model_kwargs" in explicit:
        explicit["model_kwargs"] = parse_model_kwargs(explicit["model_kwargs"])
    resume = explicit.pop("resume", None)
    overwrite = bool(explicit.pop("overwrite", False))
    ckpt, ckpt_path = None, None
    if command == "eval":
        ckpt_path = Path(explicit.pop("checkpoint"))
        ckpt = load_checkpoint(ckpt_path, program="tools/coco.py train")
    elif resume:
        ckpt_path = find_resume_checkpoint(resume, explicit.get("output") or config.get("output"), CHECKPOINT_NAME)
        if ckpt_path is not None:
            ckpt = load_checkpoint(ckpt_path, program="tools/coco.py train")
    base = dict(ckpt.get("args", {})) if ckpt else {}
    base = {k: v for k, v in base.items() if k in DEFAULTS and k != "progress"}  # bars: this terminal's business
    if command == "eval":  # the data/device of the evaluation come from this call, not the training run
        for k in ("workers", "device", "threads", "output", "amp", "progress", "stop_after_epoch", "max_val_images"):
            base.pop(k, None)
    cfg = {**DEFAULTS, **base, **config, **explicit}
    if command == "eval" and "output" not in explicit:
        cfg["output"] = str(ckpt_path.parent)
    if cfg["model"] is None:
        raise UsageError("--model is required (or --config with a 'model' key)")
    import timm
    if not timm.is_model(cfg["model"]):
        raise UsageError(f"unknown model {cfg['model']!r}: not registered with timm (nor by visionattn)")
    if cfg["detector"] not in DETECTORS:
        raise UsageError(f"detector must be one of {DETECTORS}, got {cfg['detector']!r}")
    if cfg["schedule"] not in SCHEDULES:
        raise UsageError(f"schedule must be one of {tuple(SCHEDULES)}, got {cfg['schedule']!r}")
    epochs, steps = SCHEDULES[cfg["schedule"]]
    cfg["epochs"] = epochs if cfg.get("epochs") is None else int(cfg["epochs"])
    cfg["lr_steps"] = list(steps) if cfg.get("lr_steps") is None else [int(s) for s in cfg["lr_steps"]]
    if cfg.get("workers") is None:
        cfg["workers"] = default_workers()
    for key, low in (("epochs", 1), ("batch_size", 1), ("eval_batch_size", 1), ("workers", 0), ("warmup_iters", 0),
                     ("max_size", 32), ("test_min_size", 32)):
        if cfg.get(key) is not None and int(cfg[key]) < low:
            raise UsageError(f"--{key.replace('_', '-')} must be >= {low}, got {cfg[key]}")
    if cfg["lr"] <= 0:
        raise UsageError(f"--lr must be > 0, got {cfg['lr']}")
    if cfg.get("drop_path") is not None:
        cfg["model_kwargs"] = {**cfg["model_kwargs"], "drop_path_rate": float(cfg["drop_path"])}
    if cfg["output"] is None:
        cfg["output"] = str(Path("runs") / f"{cfg['detector']}_{cfg['model']}_{cfg['schedule']}")
    if ckpt is not None and command == "train":
        changed = [k for k in _REPRO_KEYS if k in base and base[k] != cfg.get(k)]
        if changed and is_main():
            print("warning: resuming with changed arguments: " + ", ".join(
                f"{k}: {base[k]!r} -> {cfg.get(k)!r}" for k in changed), file=sys.stderr)
    cfg.update(command=command, resume=str(ckpt_path) if ckpt_path else None, overwrite=overwrite)
    return argparse.Namespace(**cfg), ckpt


def _split_paths(args, which: str) -> Tuple[str, str]:
    images, ann = getattr(args, f"{which}_images"), getattr(args, f"{which}_ann")
    if images and ann:
        return images, ann
    if not args.data_dir:
        raise UsageError(f"give --data-dir or both --{which}-images and --{which}-ann")
    split = getattr(args, f"{which}_split")
    root = Path(args.data_dir)
    return images or str(root / split), ann or str(root / "annotations" / f"instances_{split}.json")


def _dataset(args, which: str, train: bool) -> CocoDetection:
    images, ann = _split_paths(args, which)
    try:
        tf = build_transforms(train, args.augment, args.train_min_sizes, args.max_size, args.lsj_size)
        ds = CocoDetection(images, ann, tf, with_masks=args.detector == "mask_rcnn",
                           remove_images_without_annotations=train and not args.keep_empty_train)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    limit = args.max_train_images if train else args.max_val_images
    if limit is not None:
        ds.ids = ds.ids[: int(limit)]
    if not len(ds):
        raise UsageError(f"the {which} set ({ann}) has no images to use")
    return ds


def _build_model(args, num_classes: int, pretrained: bool) -> torch.nn.Module:
    try:
        return build_detector(
            args.detector, args.model, num_classes + 1, pretrained=pretrained,
            pretrained_file=args.pretrained_file if pretrained else None, model_kwargs=args.model_kwargs,
            min_size=args.test_min_size, max_size=args.max_size, resize_in_train=False, frozen_bn=args.frozen_bn,
            fpn_channels=args.fpn_channels, representation_size=args.representation_size,
            mask_head_channels=args.mask_head_channels, **dict(args.detector_kwargs or {}))
    except ValueError as e:
        raise UsageError(str(e)) from None


def _eval_loader(ds, args, info) -> DataLoader:
    sampler = ShardedSampler(len(ds), info["rank"], info["world_size"], shuffle=False, pad=False)
    return DataLoader(ds, batch_size=args.eval_batch_size, sampler=sampler, num_workers=args.workers,
                      collate_fn=collate_fn)


def _iou_types(args) -> List[str]:
    return ["bbox", "segm"] if args.detector == "mask_rcnn" else ["bbox"]


def _write_eval(out: Path, name: str, res: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    stats = {t: res[t] for t in ("bbox", "segm") if t in res}
    payload = {**extra, "num_images": res["num_images"], **stats}
    atomic_write_text(out / name, json.dumps(payload, indent=2) + "\n")
    for t, results in res["results"].items():
        atomic_write_text(out / f"detections_{t}.json", json.dumps(results))
    return payload


def _write_log_csv(path: Path, history: List[Dict[str, Any]]) -> None:
    keys: List[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for row in history:
        w.writerow(row)
    atomic_write_text(path, buf.getvalue())


def _prepare_output(out: Path, overwrite: bool, resuming: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if resuming:
        return
    existing = sorted(p.name for p in out.iterdir())
    if existing and not overwrite:
        raise UsageError(f"output directory {out} is not empty ({', '.join(existing[:5])}); pass --overwrite "
                         "or --resume auto")
    if overwrite:
        for p in out.iterdir():
            if p.name in (CHECKPOINT_NAME, "iterations.jsonl", "log.csv", "summary.json", "eval.json") or \
                    p.name.startswith(("eval_epoch", "detections_")):
                p.unlink()


def startup_summary(args, train_ds, val_ds, iters_per_epoch: int, info: Dict[str, Any], start_epoch: int = 0,
                    global_step: int = 0) -> str:
    """The lines ``train`` prints before its first step: detector and backbone, data, schedule,
    optimisation, device/processes/workers, output (and where a resumed run continues)."""
    world = info["world_size"]
    weights = (f"ImageNet weights from {args.pretrained_file}" if args.pretrained_file else
               "ImageNet pretrained" if args.pretrained else "random init")
    if start_epoch:
        weights = f"resumed from {args.resume}"
    kwargs = f" {args.model_kwargs}" if args.model_kwargs else ""
    val = f"{len(val_ds)} val images (eval every {args.eval_every or args.epochs} epoch(s))" if val_ds is not None \
        else "no val set"
    lines = [
        f"coco train: {args.detector} on {args.model}{kwargs} ({weights}), {train_ds.num_classes} classes",
        f"  data: {len(train_ds)} train images, {val}; augment {args.augment}, "
        f"{args.batch_size} images/process x {world} process(es) = {args.batch_size * world} per step, "
        f"{iters_per_epoch} steps/epoch",
        f"  schedule: {args.epochs} epochs ({args.schedule if args.lr_steps == list(SCHEDULES[args.schedule][1]) else 'custom'}),"
        f" LR x0.1 after epochs {args.lr_steps}, {args.warmup_iters} warm-up steps; AdamW lr {args.lr:g} "
        f"wd {args.weight_decay:g}" + (f", layer decay {args.layer_decay:g}" if args.layer_decay else "")
        + (f", clip {args.clip_grad:g}" if args.clip_grad else ""),
        f"  device {info['device']}, {args.workers} loader workers/process, amp {'on' if args.amp else 'off'}, "
        f"seed {args.seed}; output {args.output}",
    ]
    if start_epoch:
        lines.append(f"  continuing at epoch {start_epoch + 1} of {args.epochs} (step {global_step})")
    return "\n".join(lines)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def train(args, ckpt: Optional[Dict[str, Any]], info: Dict[str, Any]) -> Dict[str, Any]:
    """The ``train`` command (see module docstring); returns the summary dict (rank 0)."""
    device, rank, world = info["device"], info["rank"], info["world_size"]
    out = Path(args.output)
    if is_main():
        _prepare_output(out, args.overwrite, resuming=ckpt is not None)
    if info["distributed"]:
        dist.barrier()
    _seed_all(args.seed + rank)
    train_ds = _dataset(args, "train", train=True)
    val_ds = _dataset(args, "val", train=False) if (args.val_ann or args.data_dir) else None
    model = _build_model(args, train_ds.num_classes, pretrained=bool(args.pretrained) and ckpt is None)
    model.to(device)
    if args.sync_bn and info["distributed"]:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    groups = param_groups(model, args.lr, args.weight_decay, args.no_decay_keywords, args.layer_decay,
                          no_decay_1d=args.no_decay_1d)
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    autocast_dtype, need_scaler = resolve_amp(device, bool(args.amp), args.amp_dtype)
    scaler = torch.amp.GradScaler(device.type) if need_scaler else None

    sampler = ShardedSampler(len(train_ds), rank, world, shuffle=True, seed=args.seed)
    if args.aspect_ratio_group_factor >= 0:
        ratios = [w / h for h, w in (train_ds.image_size(i) for i in range(len(train_ds)))]
        batch_sampler = GroupedBatchSampler(sampler, aspect_ratio_groups(ratios, args.aspect_ratio_group_factor),
                                            args.batch_size)
    else:
        batch_sampler = torch.utils.data.BatchSampler(sampler, args.batch_size, drop_last=False)
    loader = DataLoader(train_ds, batch_sampler=batch_sampler, num_workers=args.workers, collate_fn=collate_fn,
                        persistent_workers=False)
    iters_per_epoch = len(batch_sampler)
    schedule = WarmupMultiStep(iters_per_epoch, args.lr_steps, 0.1, args.warmup_iters, args.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    dummy_gen = torch.Generator()

    start_epoch, global_step, history = 0, 0, []
    if ckpt is not None:
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        history = list(ckpt.get("history", []))
        rng = ckpt["rng"][rank] if isinstance(ckpt["rng"], list) and rank < len(ckpt["rng"]) else None
        if rng is not None:
            set_rng_state(rng, dummy_gen)
        if is_main() and (out / "iterations.jsonl").is_file():  # drop records of iterations after the checkpoint
            lines = [ln for ln in (out / "iterations.jsonl").read_text().splitlines()
                     if ln.strip() and json.loads(ln)["step"] <= global_step]
            atomic_write_text(out / "iterations.jsonl", "".join(ln + "\n" for ln in lines))
    if is_main():
        print(startup_summary(args, train_ds, val_ds, iters_per_epoch, info, start_epoch, global_step), flush=True)
    ddp_model = model
    if info["distributed"]:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    log_file = open(out / "iterations.jsonl", "a") if is_main() else None

    def log_fn(rec: Dict[str, Any]) -> None:
        log_file.write(json.dumps(rec) + "\n")
        log_file.flush()

    args_dict = jsonable({k: v for k, v in vars(args).items() if k in DEFAULTS})
    mapping = {"label_to_cat_id": {str(k): v for k, v in train_ds.label_to_cat_id.items()},
               "class_names": train_ds.class_names}
    last_eval: Dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, args.epochs):
            sampler.set_epoch(epoch)
            stats = train_one_epoch(ddp_model, loader, optimizer, scheduler, device=device, epoch=epoch,
                                    global_step=global_step, autocast_dtype=autocast_dtype, scaler=scaler,
                                    clip_grad=args.clip_grad, log_fn=log_fn, progress=show_progress(args.progress))
            global_step = stats.pop("global_step")
            row = {"epoch": epoch + 1, **{k: round(v, 6) for k, v in stats.items()},
                   "lr": optimizer.param_groups[0]["lr"]}
            final = epoch + 1 == args.epochs
            if val_ds is not None and (final or (args.eval_every and (epoch + 1) % args.eval_every == 0)):
                res = evaluate(model, _eval_loader(val_ds, args, info), val_ds.coco, val_ds.label_to_cat_id,
                               device=device, iou_types=_iou_types(args), autocast_dtype=autocast_dtype,
                               progress=show_progress(args.progress))
                if is_main():
                    last_eval = _write_eval(out, f"eval_epoch{epoch + 1}.json", res, {"epoch": epoch + 1})
                    for t in _iou_types(args):
                        row[f"{t}_AP"] = round(last_eval[t]["AP"], 6)
            history.append(row)
            rngs = [None] * world
            local_rng = get_rng_state(dummy_gen)
            if info["distributed"]:
                dist.all_gather_object(rngs, local_rng)
            else:
                rngs = [local_rng]
            if is_main():
                state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else {},
                         "epoch": epoch + 1, "global_step": global_step, "rng": rngs, "args": args_dict,
                         "history": history, **mapping}
                atomic_write(out / CHECKPOINT_NAME, lambda f: torch.save(state, f))
                _write_log_csv(out / "log.csv", history)
            if info["distributed"]:
                dist.barrier()
            if args.stop_after_epoch is not None and epoch + 1 >= args.stop_after_epoch and not final:
                if is_main():
                    print(f"stopping after epoch {epoch + 1} as asked; continue with --resume auto")
                break
    finally:
        if log_file is not None:
            log_file.close()
    summary = {"command": "train", "output": str(out), "epochs_done": history[-1]["epoch"] if history else start_epoch,
               "global_step": global_step, "history": history, "eval": last_eval, "args": args_dict}
    if is_main():
        if last_eval:
            atomic_write_text(out / "eval.json", json.dumps(last_eval, indent=2) + "\n")
        atomic_write_text(out / "summary.json", json.dumps(jsonable(summary), indent=2) + "\n")
    return summary


def evaluate_command(args, ckpt: Dict[str, Any], info: Dict[str, Any]) -> Dict[str, Any]:
    """The ``eval`` command: load the checkpoint's detector, COCOeval it on the val set."""
    device = info["device"]
    out = Path(args.output)
    val_ds = _dataset(args, "val", train=False)
    num_classes = len(ckpt.get("label_to_cat_id", {})) or val_ds.num_classes
    trained_map = {int(k): int(v) for k, v in ckpt.get("label_to_cat_id", {}).items()} or val_ds.label_to_cat_id
    if set(trained_map.values()) - set(val_ds.cat_ids):
        raise UsageError("the checkpoint's categories are not all in the evaluation set's annotation file")
    model = _build_model(args, num_classes, pretrained=False)
    model.load_state_dict(ckpt["model"])
    model.to(device)
    autocast_dtype, _ = resolve_amp(device, bool(args.amp), args.amp_dtype)
    res = evaluate(model, _eval_loader(val_ds, args, info), val_ds.coco, trained_map, device=device,
                   iou_types=_iou_types(args), autocast_dtype=autocast_dtype, progress=show_progress(args.progress))
    if not is_main():
        return {}
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
    payload = _write_eval(out, "eval.json", res, {"checkpoint": args.resume, "epoch": ckpt.get("epoch")})
    return {"command": "eval", "output": str(out), **payload}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run ``train`` or ``eval``; returns the summary dict (``{}`` on ranks other than 0)."""
    args, ckpt = resolve_args(argv)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    try:
        info = init_distributed(args.device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        if args.command == "train":
            result = train(args, ckpt, info)
        else:
            result = evaluate_command(args, ckpt, info)
    finally:
        if info["distributed"] and dist.is_initialized():
            dist.destroy_process_group()
    return result if is_main() or not info["distributed"] else {}


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: run :func:`main`, print user errors without a traceback."""
    return run_cli(main, argv, interrupted=RESUME_HINT)


if __name__ == "__main__":
    sys.exit(cli())
