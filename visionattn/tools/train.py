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
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

import timm
import timm.models
from timm.data import resolve_data_config
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad, random_seed

import visionattn  # noqa: F401  (registers the zoo's models with timm)
from visionattn.engine.checkpoint import (CHECKPOINT_NAME, CHECKPOINT_VERSION, CONFIG_NAME, WEIGHTS_NAME, run_tag,
                                          export_weights, get_all_rng_states, load_checkpoint, load_exported_model,
                                          load_initial_checkpoint, save_checkpoint, set_rng_state)
from visionattn.engine.cli import RESUME_HINT, UsageError, check_output_dir, run_cli
from visionattn.engine.config import add_bool, load_config as _load_config, parse_model_kwargs
from visionattn.engine.data import (BAD_DATA_CHOICES, balanced_subset, build_folder_datasets, dataset_targets,
                                    data_problems, eval_shard_indices, make_loader, make_train_sampler)
from visionattn.engine.digits import DEMO_NUM_CLASSES, build_demo_datasets
from visionattn.engine.distributed import (all_reduce_sum, apply_fsdp, barrier, full_state_dict, init_distributed,
                                           is_distributed, no_grad_sync, unwrap_model)
from visionattn.engine.evaluation import autocast, evaluate, precision_name, resolve_amp
from visionattn.engine.files import atomic_write_text, jsonable
from visionattn.engine.model import create_model
from visionattn.engine.optim import build_loss, build_mixup, build_optimizer, mixup_active
from visionattn.engine.reports import (CURVES_NAME, LOG_JSON_NAME, LOG_NAME, SUMMARY_NAME, SUMMARY_TEXT_NAME,
                                       plot_curves, summary_text, write_log_csv, write_log_json)
from visionattn.engine.console import describe_initial_checkpoint, show_progress, with_load_report

# --------------------------------------------------------------------------------------------
# Constants and defaults
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
EMA_DIR = "ema"
#: Files of a run folder that --overwrite deletes before a fresh run.
ARTEFACTS = (CHECKPOINT_NAME, WEIGHTS_NAME, CONFIG_NAME, LOG_NAME, LOG_JSON_NAME, SUMMARY_NAME, SUMMARY_TEXT_NAME,
             CURVES_NAME)
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
    recipe_gpus=None, config=None, bad_data="fail",
)
DEMO_DEFAULTS: Dict[str, Any] = dict(
    model=DEMO_MODEL, num_classes=DEMO_NUM_CLASSES, img_size=32, epochs=20, batch_size=32, lr=2e-3,
    weight_decay=0.05, warmup_epochs=1, demo_shift=2, threads=1,
)
GENERIC_DEFAULTS: Dict[str, Any] = dict(epochs=100, batch_size=128, lr=1e-3, weight_decay=0.05, warmup_epochs=5)
# Arguments that define the LR schedule: when one differs on resumption the schedule is rebuilt.
_SCHEDULE_KEYS = ("sched", "epochs", "cooldown_epochs", "warmup_epochs", "warmup_lr", "warmup_prefix", "min_lr", "lr",
                  "decay_epochs", "decay_milestones", "decay_rate", "sched_on_updates")
# Arguments whose change between the interrupted run and its resumption breaks reproduction.
_REPRODUCIBILITY_KEYS = (
    "model", "model_kwargs", "num_classes", "drop_path", "drop", "demo", "data_dir", "dataset", "train_split",
    "val_split", "max_train_samples", "max_val_samples", "img_size", "crop_pct", "no_aug", "scale", "ratio", "hflip",
    "color_jitter", "aa", "reprob", "remode", "recount", "aug_repeats", "mixup", "cutmix", "cutmix_minmax",
    "mixup_prob", "mixup_switch_prob", "mixup_mode", "mixup_off_epoch", "demo_shift", "epochs", "batch_size", "opt",
    "lr", "weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "sched", "cooldown_epochs", "decay_epochs",
    "decay_rate", "layer_decay", "grad_accum_steps", "smoothing", "clip_grad", "clip_mode", "model_ema",
    "model_ema_decay", "amp", "amp_dtype", "seed", "threads", "bad_data",
)


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------
def train_one_epoch(model: nn.Module, loader, optimizer, scheduler, loss_fn, *, device: torch.device, epoch: int,
                    epochs: int, num_updates: int, autocast_dtype: Optional[torch.dtype] = None, scaler=None,
                    clip_grad: Optional[float] = None, clip_mode: str = "norm", progress: bool = True,
                    mixup_fn: Optional[Callable] = None, model_ema: Optional[ModelEmaV3] = None,
                    grad_accum_steps: int = 1, channels_last: bool = False) -> Dict[str, float]:
    """One pass over ``loader``: ``grad_accum_steps`` micro-batches per optimizer update.

    Each micro-batch's loss is divided by ``grad_accum_steps`` and back-propagated; only the
    last micro-step of an update synchronises gradients across ranks (:func:`no_grad_sync`).
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
    for step, batch in enumerate(pbar):
        if step >= n_micro:
            break
        if batch is None:  # every sample of the micro-batch was skipped as unreadable (--bad-data skip)
            continue
        images, targets = batch
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        last_micro = (step + 1) % accum == 0
        with no_grad_sync(model, last_micro):
            with autocast(device, autocast_dtype):
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
# Command line and config files
# --------------------------------------------------------------------------------------------
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
    add_bool(g, "--demo", "train on scikit-learn's bundled digits (the default when --data-dir is absent)")
    g.add_argument("--data-dir", type=Path, help="dataset root: train/ and val/ class folders, or the reader's root")
    g.add_argument("--dataset", help="timm dataset name: '' class folders (default), torch/<name>, hfds/<id>, "
                                     "hfids/<id>, tfds/<name>, wds/<name>")
    add_bool(g, "--dataset-download", "let timm's reader download the dataset (torch/, tfds/)")
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
    add_bool(g, "--no-aug", "train with the eval transform")
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
    g.add_argument("--bad-data", choices=BAD_DATA_CHOICES,
                   help="class folders: an empty class folder, held-out images of classes the training split lacks "
                        "or an unreadable image stop the run naming it (fail, the default), or are left out, "
                        "counted and listed (skip)")
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
    add_bool(g, "--initial-checkpoint-ema", "take the --initial-checkpoint's EMA weights (model_ema/state_dict_ema)")
    add_bool(g, "--grad-checkpointing", "recompute activations in the backward pass (model.set_grad_checkpointing)")
    add_bool(g, "--channels-last", "channels_last memory format")
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
    add_bool(g, "--warmup-prefix", "warmup before (not inside) the decay schedule")
    g.add_argument("--warmup-lr", type=float, help="LR at the start of warmup (1e-6)")
    g.add_argument("--min-lr", type=float, help="LR at the end of the decay (1e-6)")
    g.add_argument("--cooldown-epochs", type=int, help="epochs at min-lr after --epochs (0)")
    g.add_argument("--decay-epochs", type=float, help="step schedule: epochs between decays (90)")
    g.add_argument("--decay-milestones", type=int, nargs="+", help="multistep schedule milestones (90 180 270)")
    g.add_argument("--decay-rate", type=float, help="step decay factor; poly: the power (0.1)")
    g.add_argument("--smoothing", type=float, help="label smoothing (0.1)")
    g.add_argument("--clip-grad", type=float, help="clip gradients to this value (off)")
    g.add_argument("--clip-mode", help="norm, value or agc (norm)")
    add_bool(g, "--model-ema", "keep an exponential moving average of the weights (timm ModelEmaV3)")
    g.add_argument("--model-ema-decay", type=float, help="EMA decay per update (0.9998)")
    add_bool(g, "--model-ema-warmup", "EMA decay warmup (timm's use_warmup)")
    add_bool(g, "--model-ema-force-cpu", "keep the EMA on the CPU")
    add_bool(g, "--amp", "mixed precision: bf16 autocast on CPU; on CUDA bf16 if supported, else fp16 + GradScaler")
    g.add_argument("--amp-dtype", choices=("auto", "bfloat16", "float16"), help="AMP dtype (auto)")
    g = p.add_argument_group("run")
    g.add_argument("--device", help="cpu, cuda (default: cuda if available; under torchrun cuda:LOCAL_RANK)")
    add_bool(g, "--fsdp", "shard the model with FSDP2 (fully_shard per block and stage) instead of DDP")
    g.add_argument("--recipe-gpus", type=int,
                   help="processes the config's per-process batch and lr were set for; another world size warns")
    g.add_argument("--seed", type=int, help="seed for init, data order and augmentation (0)")
    g.add_argument("--threads", type=int,
                   help="CPU intra-op threads, torch.set_num_threads (demo 1: the tiny model gains nothing from "
                        "more, and spinning OpenMP threads crawl on a shared machine; else torch's default)")
    g.add_argument("--output", type=Path, help="run folder (default: runs/demo or runs/<model>)")
    add_bool(g, "--overwrite", "allow reusing a non-empty --output")
    g.add_argument("--resume", metavar="PATH|auto",
                   help="continue from a checkpoint (or a run folder); auto = OUTPUT/last.pth.tar if present")
    add_bool(g, "--no-progress", "no tqdm progress bars")
    return p


def load_config(path: os.PathLike, parser: Optional[argparse.ArgumentParser] = None) -> Dict[str, Any]:
    """Read a YAML recipe (``-c FILE``) into ``{dest: value}`` against this program's flags
    (:func:`visionattn.engine.config.load_config` with :func:`build_parser`)."""
    return _load_config(path, parser or build_parser(), program="train.py")


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
    if mixup_active(cfg) and cfg["batch_size"] % 2:
        raise UsageError(f"--mixup/--cutmix need an even --batch-size, got {cfg['batch_size']}")
    if cfg["fsdp"] and cfg["model_ema"]:
        raise UsageError("--model-ema is not supported with --fsdp (the EMA copy would be a full replica); use DDP")
    if ckpt is not None:
        changed = [k for k in _REPRODUCIBILITY_KEYS if k in base and jsonable(base[k]) != jsonable(cfg.get(k))]
        if changed and os.environ.get("RANK", "0") == "0":
            print("warning: resuming with changed arguments (the run will not reproduce an uninterrupted one): "
                  + ", ".join(f"{k}: {base[k]!r} -> {cfg.get(k)!r}" for k in changed), file=sys.stderr)
    cfg["recipe"] = None
    if cfg.get("recipe_gpus"):  # what the recipe was written for: the config file's values, else the run's
        recipe_src = {**cfg, **{k: v for k, v in from_config.items() if k in ("batch_size", "grad_accum_steps", "lr")}}
        if not from_config and isinstance(base.get("recipe"), dict):
            recipe_src = {**recipe_src, **base["recipe"]}
        cfg["recipe"] = {k: recipe_src[k] for k in ("batch_size", "grad_accum_steps", "lr")}
    cfg["resume"] = str(ckpt_path) if ckpt_path else None
    cfg["resume_requested"] = bool(resume)
    cfg["overwrite"] = overwrite
    return argparse.Namespace(**cfg), ckpt


def recipe_warning(args: argparse.Namespace, world_size: int) -> Optional[str]:
    """The warning for a run whose global batch differs from the one its recipe (``-c`` config
    with ``recipe_gpus``) was written for, with the recipe's own numbers (its per-process batch,
    accumulation and LR, not the command line's); None when they agree or there is no recipe."""
    recipe = getattr(args, "recipe", None)
    if not args.recipe_gpus or not recipe:
        return None
    recipe_global = args.recipe_gpus * recipe["batch_size"] * recipe["grad_accum_steps"]
    run_global = world_size * args.batch_size * args.grad_accum_steps
    if recipe_global == run_global and args.recipe_gpus == world_size:
        return None
    return (f"warning: the config's recipe is for {args.recipe_gpus} processes x batch {recipe['batch_size']} x "
            f"accum {recipe['grad_accum_steps']} = global batch {recipe_global} at lr {recipe['lr']:g}; this run has "
            f"{world_size} x {args.batch_size} x {args.grad_accum_steps} = {run_global}. --lr {args.lr:g} is used "
            f"as given: rescale it by the recipe's rule (see the config's header)")


def prepare_output_dir(out: Path, overwrite: bool, resuming: bool, resume_requested: bool = False) -> None:
    """Create ``out``; refuse a non-empty one unless ``overwrite`` or resuming.

    With ``overwrite`` on a fresh run, the artefacts of an earlier run (checkpoint, weights,
    logs) are deleted so none can be mistaken for this run's; other files are left alone.
    Raises ``FileExistsError`` with the remedy in the message, :class:`UsageError` for a place
    where the folder cannot be created or written (checked before any work).
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--output {out} exists and is not a directory")
    check_output_dir(out, "--output")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--output {out}: cannot create it ({e.strerror or e})") from None
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
    error: List[Any] = [None]
    if main_rank:
        try:
            prepare_output_dir(out, args.overwrite, resuming=ckpt is not None, resume_requested=args.resume_requested)
        except (FileExistsError, UsageError) as e:
            error[0] = (type(e).__name__, str(e))
    if is_distributed():
        dist.broadcast_object_list(error, src=0)
    if error[0]:
        raise (FileExistsError if error[0][0] == "FileExistsError" else UsageError)(error[0][1])
    progress = show_progress(False if args.no_progress else None) and main_rank
    log = tqdm.write if main_rank else (lambda *a, **k: None)
    if args.threads:
        torch.set_num_threads(args.threads)
    autocast_dtype, need_scaler = resolve_amp(device, args.amp, args.amp_dtype)
    warning = recipe_warning(args, world_size)
    if warning:
        log(warning)

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
            remode=args.remode, recount=args.recount, train_interpolation=args.train_interpolation,
            bad_data=args.bad_data)
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

    model = with_load_report(create_model, log)(args.model, args.num_classes, args.model_kwargs, args.drop_path, drop=args.drop,
                         img_size=args.img_size if not args.demo else None,
                         pretrained=args.pretrained if ckpt is None else None,
                         pretrained_path=args.pretrained_path if ckpt is None else None)
    if rank:
        random_seed(args.seed, rank)
    if args.initial_checkpoint is not None and ckpt is None:
        info = load_initial_checkpoint(model, args.initial_checkpoint, use_ema=args.initial_checkpoint_ema)
        log(describe_initial_checkpoint(args.initial_checkpoint, info))
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
        if not is_distributed():
            raise UsageError("--fsdp needs several processes (run under torchrun)")
        train_model = apply_fsdp(model, device)
        model._va_fsdp = True
        if args.torchcompile:
            train_model = torch.compile(train_model, backend=args.torchcompile)
    else:  # compile, then wrap (timm's order); CPU DDP must get device_ids=None
        if args.torchcompile:
            train_model = torch.compile(train_model, backend=args.torchcompile)
        if is_distributed():
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
        start_epoch, num_updates = int(ckpt["epoch"]), int(ckpt["num_updates"])
        old_args = ckpt.get("args") or {}
        schedule_changed = [k for k in _SCHEDULE_KEYS
                            if k in old_args and jsonable(old_args[k]) != jsonable(getattr(args, k))]
        if schedule_changed:  # the saved schedule would ignore the new arguments (e.g. stay at min-lr)
            saved_lr = optimizer.param_groups[0]["lr"]
            scheduler.step(start_epoch)
            if args.sched_on_updates:
                scheduler.step_update(num_updates)
            changes = ", ".join(f"{k}: {old_args[k]} -> {getattr(args, k)}" for k in schedule_changed)
            log(f"resuming with a changed LR schedule ({changes}): the schedule is rebuilt from the new arguments "
                f"and continues at epoch {start_epoch}, lr "
                f"{optimizer.param_groups[0]['lr']:.3e} (it was at {saved_lr:.3e} on the checkpoint's schedule)")
        else:
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
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
        f"{total_epochs} epochs; evaluation in {precision_name(autocast_dtype)}; output {out}")
    for name, ds in (("train", train_ds), ("held-out", val_ds)):
        found = data_problems(ds)
        if found:
            log(f"{name} data left out (--bad-data skip): " + "; ".join(
                f"{k.replace('_', ' ')}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in found.items()))

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
                "metric": {"top1": ev["top1"], "top5": ev["top5"]}, "eval_precision": precision_name(autocast_dtype),
            }
            save_checkpoint(out / CHECKPOINT_NAME, state)
            write_log_csv(out / LOG_NAME, history)
            write_log_json(out / LOG_JSON_NAME, history)
            del state
        del model_state, opt_state
        barrier()

    # Final evaluation of the final weights (all ranks), then export and reload check (rank 0).
    final = evaluate(train_model if args.fsdp else model, val_loader, device, autocast_dtype, progress=progress,
                     desc="final eval", **eval_kw)
    ema_final = None
    if model_ema is not None:
        ema_final = evaluate(model_ema.module, val_loader, device, autocast_dtype, progress=progress,
                             desc="EMA final eval", **eval_kw)
    model_state = full_state_dict(model)
    if not main_rank:
        barrier()
        return {"rank": rank, "final": {k: final[k] for k in ("top1", "top5", "loss", "count")}}
    try:
        summary = _finish(args, out, model_state, model_ema, final, ema_final, history, data_config, label_names,
                          val_ds, device, autocast_dtype, progress, param_count, train_ds, data_desc, num_updates,
                          world_size, args_record)
    finally:
        barrier()
    return summary


def _finish(args, out, model_state, model_ema, final, ema_final, history, data_config, label_names, val_ds, device,
            autocast_dtype, progress, param_count, train_ds, data_desc, num_updates, world_size, args_record):
    """Rank 0's epilogue: export the weights (and the EMA's), reload them through timm and
    re-evaluate on the whole held-out split, write summary.json/summary.txt/curves.png."""
    plain = create_model(args.model.split(".")[0] if ":" not in args.model else args.model, args.num_classes,
                         args.model_kwargs, img_size=args.img_size if not args.demo else None)
    plain.load_state_dict(model_state)
    names = label_names if len(label_names) == args.num_classes else None
    arch_name = plain.pretrained_cfg.get("architecture") or args.model.split(".")[0]
    official = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch_name}.*")]
    tag = run_tag(out.resolve().name, official)  # the run's own tag, never an official one
    weights_path, config_path = export_weights(plain, out, args.model_kwargs, data_config, names, tag=tag)
    files = {"checkpoint": str(out / CHECKPOINT_NAME), "weights": str(weights_path), "config": str(config_path)}
    if model_ema is not None:
        ema_weights, _ = export_weights(unwrap_model(model_ema.module), out / EMA_DIR, args.model_kwargs,
                                        data_config, names, tag=f"{tag}_ema")
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
        "model": args.model, "model_kwargs": jsonable(args.model_kwargs), "param_count": param_count,
        "data": data_desc, "num_classes": args.num_classes, "train_samples": len(train_ds),
        "held_out_samples": len(val_ds), "data_config": jsonable(data_config),
        "epochs": args.epochs + args.cooldown_epochs, "num_updates": num_updates, "seed": args.seed,
        "device": str(device),
        "world_size": world_size, "batch_size": args.batch_size, "grad_accum_steps": args.grad_accum_steps,
        "threads": torch.get_num_threads(), "amp": str(autocast_dtype) if autocast_dtype else None,
        "eval_precision": precision_name(autocast_dtype),
        "data_problems": {name: found for name, found in (("train", data_problems(train_ds)),
                                                          ("held_out", data_problems(val_ds))) if found} or None,
        "final": {k: final[k] for k in ("top1", "top5", "loss", "count")},
        "ema_final": {k: ema_final[k] for k in ("top1", "top5", "loss", "count")} if ema_final else None,
        "best": {"epoch": best["epoch"], "top1": best["top1"], "top5": best["top5"]} if best else None,
        "reload_check": {"top1": re_eval["top1"], "top5": re_eval["top5"], "identical": identical},
        "train_time_s": round(sum(r["train_time_s"] for r in history), 3),
        "history": jsonable(history),
        "files": files, "predictions": predictions, "args": jsonable(args_record),
    }
    atomic_write_text(out / SUMMARY_NAME, json.dumps(jsonable(summary), indent=2) + "\n")
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
