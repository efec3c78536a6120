#!/usr/bin/env python3
"""Mixer ablation: the same macro-architecture (MixerNet tiny), the same recipe, every mixer.

Every ``<mixer>_mixernet_tiny`` preset (and the hybrids) of :mod:`visionattn.models.mixernet` is
the same network (conv stem, 4 stages 64-128-256-512, depths 2-2-6-2, pre-norm blocks with MLP
ratio 4, conv downsamplers, head dim 32) with a different token mixer. This script measures, per
preset:

* parameters and fvcore GMACs at the training resolution (the zoo's ``count_gmacs``, attention
  counted);
* CPU inference and training throughput, **interleaved** (every model runs once per round, medians
  over ``--repeats`` rounds) and as a ratio to ``--reference``; peak memory of one training step
  (``torch.profiler`` allocation events on CPU, :func:`visionattn.tools.benchmark.peak_memory_mb`);
* CIFAR-10 top-1 after real training from scratch on a fixed, seeded, class-balanced subset, with
  one seed, one schedule and one augmentation for all (timm's AdamW + cosine schedule with warmup,
  random crop with 4-pixel padding + horizontal flip, label smoothing 0.1, drop path 0.1; bf16
  autocast on CUDA).

Three passes, in any order; each rewrites its raw CSV and then the merged report
``<output>.{csv,md,png}`` from whatever raw results exist:

1. ``--prepare-cache OUT.npz --data-dir ../shared/data/cifar10``: read the class folders
   (``train/<class>/*.jpg``, ``test/<class>/*.jpg``), pick ``--train-per-class`` / ``--test-per-class``
   images per class with ``--seed``, store them as uint8 ``(N, 32, 32, 3)`` arrays (compressed npz,
   about 30 MB for 10k + 2k). The cache is what travels to a machine without the data folder.
2. ``--cache OUT.npz [--device cuda]``: train and evaluate every model (``<output>_train.csv``).
   One failing model is recorded with its error and the others go on.
3. ``--speed``: parameters, GMACs, CPU throughput and memory (``<output>_speed.csv``).

Examples::

    # here (CPU; the data folder is at ../shared/data/cifar10)
    python benchmarks/mixers.py --prepare-cache .cache/cifar10_mixers.npz --data-dir ../shared/data/cifar10
    OMP_NUM_THREADS=1 python benchmarks/mixers.py --speed --threads 1
    # on a GPU machine with the cache copied over (SDPA without cuDNN by default; --sdpa default for torch's choice)
    python benchmarks/mixers.py --cache .cache/cifar10_mixers.npz --device cuda
    # tiny end-to-end check on CPU
    python benchmarks/mixers.py --cache .cache/cifar10_mixers.npz --device cpu --models na_mixernet_tiny pool_mixernet_tiny \\
        --limit-train 200 --limit-test 100 --epochs 1 --output /tmp/mixers_check

What such an ablation can and cannot show is written into the report (``NOTES``).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import statistics
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402

import visionattn  # noqa: E402
from visionattn.models.mixernet import PRESETS  # noqa: E402
from visionattn.engine.flops import count_gmacs, unexpected_uncounted  # noqa: E402  (the zoo's fvcore counter)
from visionattn.tools.benchmark import (  # noqa: E402
    interleaved, machine_info, make_step, markdown_table, peak_memory_mb, read_csv, write_csv, write_markdown,
)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
DEFAULT_OUTPUT = str(ROOT / "benchmarks" / "results" / "mixers")
DEFAULT_REFERENCE = "mhsa_mixernet_tiny"

NOTES = [
    "Same macro-architecture, same recipe, same seed and data order for every model; only the token mixer "
    "differs (presets of `visionattn/models/mixernet.py`).",
    "What this can show: whether a mixer trains at all in this macro, its cost (parameters, MACs, CPU "
    "speed, memory) at this resolution, and large accuracy gaps (e.g. against the identity/pooling floor).",
    "What it cannot show: ImageNet-scale ranking. 10k images and a short schedule favour mixers with "
    "strong locality priors (convolution, pooling, small windows) and penalise data-hungry global "
    "attention; one seed was run (no error bars; a repeat moved some mixers by up to 10 points, see "
    "below); no hyper-parameter was tuned per mixer.",
    "Resolution: CIFAR images (32 px) are upsampled to the training size, so stage maps are 16-8-4-2 "
    "at 64 px. The presets' window/kernel/region sizes are those of the 224 px families (7), so at "
    "this size most windowed mixers see (nearly) the whole map from stage 2 on, and mixers that pad "
    "small maps to their window do extra work: NA pads maps smaller than K*d before qkv (as NATTEN "
    "<= 0.15), which inflates the GMACs of `na`/`dina` (DiNAT's dilations 8-4-2-1 pad stage 1 from 16 "
    "to 56), and Swin/MaxViT windows pad 16 to 21. GMACs count the work actually done.",
    "CPU throughput was measured on a shared machine with interleaved rounds (the ratio to the "
    "reference is the robust number); GPU training time (train_s) includes everything of the run on that device.",
    "Two GPU passes (torch 2.11, one H200, same seed, data order and recipe). The table is the first, with torch's "
    "default SDPA backends, complete for all 15 presets. The second (benchmarks/results/mixers_train_repeat.csv, "
    "SDPA restricted to math/flash/efficient; it reached its --max-minutes budget after 8 presets) gave na 18.1% "
    "(first 13.8), dina 31.1 (21.8), bra 46.6 (49.7), swin 25.2 (24.4), maxvit 36.9 (36.9), cswin 28.6 (24.5), "
    "davit_channel 47.7 (49.4), agent 20.1 (10.0). Its per-model check of one bf16 step at init against SDPA's math "
    "backend found gradient differences of 0.007-0.07 (sdpa_grad_rel; bf16 rounding), and benchmarks/gpu_check.py "
    "found <= 0.012 for the families' smallest models: the fused kernels are not wrong here, so the low numbers are "
    "not a GPU bug. On CPU (fp32 and bf16 autocast, a fixed batch of 32 images at 64 px, AdamW 2e-3, drop path 0) "
    "agent, na, dina, swin and cswin fit the batch like identity (loss 2.2-2.5 -> 0.000-0.03 within 24-40 steps), "
    "so they train. What the passes do show: at this budget (10k images, 12 epochs, one seed) the windowed and agent "
    "mixers generalise far worse than convolution, channel attention or even the identity mixer, and their top-1 "
    "moves by up to 10 points between runs that differ only in floating-point summation order. Differences below "
    "about 10 points among them are noise; a ranking needs several seeds and a longer schedule.",
    "pool (20.1% on the GPU) is a property of PoolFormer's mixer in this macro, not a bug of PoolMixer (it is "
    "timm's Pooling, AvgPool - x, as the paper's Eq. 4): the stem and every downsampler end in a LayerNorm (NAT's), "
    "so at init the first block of each stage gets x = LN(x) and computes x + (pool(LN x) - LN x) = avgpool(x), "
    "measured ||x - LN(x)|| / ||x|| below 1.2e-4 at all four stages: the residual identity path is cancelled and "
    "the block only smooths (at 2x2 maps it replaces every token by the map mean). PoolFormer avoids this with layer "
    "scale 1e-5 and downsamplers without a trailing norm. On the fixed CPU batch pool's loss is still 0.69 after 40 "
    "steps where identity is at 0.000; the same model with layer_scale=1e-5 reaches 0.000 like identity. The "
    "presets keep one macro (no layer scale) for every mixer, so pool is measured in a macro hostile to it; "
    "timm.create_model('pool_mixernet_tiny', layer_scale=1e-5) is the PoolFormer-faithful variant.",
    "dina: the preset's dilations 8-4-2-1 are DiNAT's for 224 px (K*d equals the stage map 56-28-14-7). At 64 px the "
    "maps are 16-8-4-2, so NA pads them to K*d before qkv (NATTEN <= 0.15 behaviour): stage 0 becomes 56x56 with 256 "
    "real tokens, and each dilated query sees at most 2x2 real tokens among its 49 keys, the rest padding that "
    "carries only the qkv bias. A faithful small-image DiNAT would scale the dilation to the map (d = 2-1-1-1 here).",
]


# ----------------------------------------------------------------------------- data
def prepare_cache(data_dir: str, out: str, train_per_class: int, test_per_class: int, seed: int, size: int = 32) -> Dict[str, Any]:
    """Write a compact CIFAR-10 subset: ``x_train (N, size, size, 3) uint8``, ``y_train (N,) int64``,
    ``x_test``, ``y_test``, ``classes``; picks a seeded, class-balanced sample of each split.

    Raises:
        FileNotFoundError: a missing split or class folder; ValueError: a class with too few images.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    arrays: Dict[str, Any] = {"classes": np.array(CIFAR10_CLASSES)}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        xs, ys = [], []
        for label, cls in enumerate(CIFAR10_CLASSES):
            folder = Path(data_dir) / split / cls
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} not found: --data-dir must hold train/<class>/ and test/<class>/ (classes {CIFAR10_CLASSES})")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if len(files) < per_class:
                raise ValueError(f"{folder} has {len(files)} images, fewer than the {per_class} asked for")
            for i in sorted(rng.choice(len(files), per_class, replace=False).tolist()):
                with Image.open(files[i]) as im:
                    im = im.convert("RGB")
                    if im.size != (size, size):
                        im = im.resize((size, size), Image.BICUBIC)
                    xs.append(np.asarray(im, dtype=np.uint8))
                ys.append(label)
        order = rng.permutation(len(xs))
        arrays[f"x_{split}"] = np.stack(xs)[order]
        arrays[f"y_{split}"] = np.asarray(ys, dtype=np.int64)[order]
    arrays["meta"] = np.array(f"cifar10 subset: {train_per_class}/class train, {test_per_class}/class test, seed {seed}, {size}px")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return {k: v.shape for k, v in arrays.items()}


def load_cache(path: str) -> Dict[str, np.ndarray]:
    """The arrays of a cache written by :func:`prepare_cache`.

    Raises:
        FileNotFoundError: no such file (the message says how to make one); KeyError: a malformed cache.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cache {path} not found; make it with --prepare-cache {path} --data-dir ../shared/data/cifar10")
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    for k in ("x_train", "y_train", "x_test", "y_test"):
        if k not in data:
            raise KeyError(f"cache {path} has no {k!r}; it was not written by --prepare-cache")
    return data


class GpuData:
    """The whole subset as uint8 tensors on the device; batches are augmented on the device."""

    def __init__(self, data: Dict[str, np.ndarray], device: torch.device, img_size: int, limit_train: int = 0, limit_test: int = 0):
        def take(x, n):
            return x[:n] if n else x

        self.x_train = torch.from_numpy(take(data["x_train"], limit_train)).to(device).permute(0, 3, 1, 2).contiguous()
        self.y_train = torch.from_numpy(take(data["y_train"], limit_train)).to(device)
        self.x_test = torch.from_numpy(take(data["x_test"], limit_test)).to(device).permute(0, 3, 1, 2).contiguous()
        self.y_test = torch.from_numpy(take(data["y_test"], limit_test)).to(device)
        self.mean = torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1) * 255
        self.img_size = img_size
        self.device = device

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        if x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return x

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random crop (4-pixel reflect padding) and horizontal flip, per sample, from ``gen``."""
        B, _, H, W = x.shape
        p = 4
        xp = F.pad(x.float(), (p, p, p, p), mode="reflect")
        dy = torch.randint(0, 2 * p + 1, (B,), generator=gen, device="cpu").to(x.device)
        dx = torch.randint(0, 2 * p + 1, (B,), generator=gen, device="cpu").to(x.device)
        flip = (torch.rand(B, generator=gen, device="cpu") < 0.5).to(x.device)
        rows = dy[:, None] + torch.arange(H, device=x.device)[None]
        cols = dx[:, None] + torch.arange(W, device=x.device)[None]
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        b = torch.arange(B, device=x.device)[:, None, None]
        out = xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        return out.permute(0, 3, 1, 2)

    def train_batches(self, batch_size: int, gen: torch.Generator):
        n = self.x_train.shape[0]
        order = torch.randperm(n, generator=gen, device="cpu").to(self.device)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = order[i : i + batch_size]
            yield self._finish(self.augment(self.x_train[idx], gen)), self.y_train[idx]

    def test_batches(self, batch_size: int):
        for i in range(0, self.x_test.shape[0], batch_size):
            yield self._finish(self.x_test[i : i + batch_size]), self.y_test[i : i + batch_size]


# ----------------------------------------------------------------------------- training
SDPA_BACKENDS = ("math", "flash", "efficient", "cudnn")


def sdpa_context(spec: str):
    """Context restricting ``F.scaled_dot_product_attention`` to the backends named in ``spec``
    (comma-separated from :data:`SDPA_BACKENDS`; ``""`` or ``"default"``: torch's own choice).

    Raises:
        ValueError: an unknown backend name (lists the accepted ones).
    """
    if spec in ("", "default"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in table]
    if bad or not names:
        raise ValueError(f"--sdpa takes 'default' or a comma-separated list of {SDPA_BACKENDS}, got {spec!r}")
    return sdpa_kernel([table[n] for n in names])


def sdpa_check(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool, spec: str = "default") -> Dict[str, Any]:
    """Compare one forward/backward of ``model`` under the SDPA backends of ``spec`` with the same
    step under the math backend (the plain ``softmax(q k^T * s + mask) v`` of PyTorch).

    The model runs in eval mode (no dropout / drop path) with the recipe's autocast, and its
    gradients are cleared afterwards. A fused kernel that is wrong for some mixer's inputs (e.g. a
    learned float ``attn_mask`` broadcast over the batch, or a padded/odd sequence length) shows up
    as a relative difference of order 1 instead of the bf16 rounding level (about 1e-2).

    Returns:
        ``{"sdpa_logit_rel": ||logits - logits_math|| / ||logits_math||, "sdpa_grad_rel": the largest
        ||grad - grad_math|| / ||grad_math|| over the parameters (those with a gradient above 1e-6 of
        the total), "sdpa_worst": "name rel" of that parameter}``.
    """
    was_training = model.training
    model.eval()
    results = []
    for backends in (spec, "math"):
        model.zero_grad(set_to_none=True)
        with sdpa_context(backends):
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x).float()
            F.cross_entropy(logits, y).backward()
        grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), grads))
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    (l1, g1), (l0, g0) = results

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm().clamp_min(1e-12))

    total = torch.cat([g.flatten() for g in g0.values()]).norm() if g0 else torch.zeros(())
    # parameters whose gradient is not negligible (a relative error of a ~0 gradient is noise)
    per = {n: rel(g1[n], g0[n]) for n in g0 if n in g1 and g0[n].norm() > 1e-6 * total}
    worst = max(per, key=per.get) if per else ""
    return dict(sdpa_logit_rel=rel(l1, l0), sdpa_grad_rel=per[worst] if worst else 0.0,
                sdpa_worst=f"{worst} {per[worst]:.3g}" if worst else "")


def train_one(name: str, data: GpuData, args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """Train ``name`` from scratch with the shared recipe; returns its accuracy row."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    torch.manual_seed(args.seed)
    model = timm.create_model(name, num_classes=10, drop_path_rate=args.drop_path).to(device)
    n_train = data.x_train.shape[0]
    steps_per_epoch = max(1, n_train // args.batch_size) if n_train >= args.batch_size else 1
    opt = create_optimizer_v2(model, "adamw", lr=args.lr, weight_decay=args.weight_decay)
    sched, _ = create_scheduler_v2(
        opt, "cosine", num_epochs=args.epochs, warmup_epochs=args.warmup_epochs, warmup_lr=args.lr * 0.01,
        min_lr=args.lr * 0.01, step_on_epochs=False, updates_per_epoch=steps_per_epoch,
    )
    amp = device.type == "cuda"
    check: Dict[str, Any] = {}
    if args.sdpa_check:
        n_check = min(32, data.x_train.shape[0])
        xc, yc = data._finish(data.x_train[:n_check]), data.y_train[:n_check]
        # torch's own choice (what the first GPU pass of #16 ran) and the backends this run trains with
        for spec, suffix in [("default", "")] + ([(args.sdpa, "_run")] if args.sdpa != "default" else []):
            c = sdpa_check(model, xc, yc, amp, spec)
            check.update({k + suffix: v for k, v in c.items()})
            print(f"  {name} SDPA check ({spec} vs math): logits rel {c['sdpa_logit_rel']:.3g}, worst gradient rel "
                  f"{c['sdpa_grad_rel']:.3g} ({c['sdpa_worst']})", flush=True)
            if c["sdpa_grad_rel"] > 0.1 or c["sdpa_logit_rel"] > 0.1:
                print(f"  WARNING {name}: SDPA backends '{spec}' disagree with the math backend on this model", flush=True)
    if amp:
        torch.cuda.reset_peak_memory_stats(device)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    t0 = time.perf_counter()
    updates, seen, loss_sum, loss_n = 0, 0, 0.0, 0
    with sdpa_context(args.sdpa):  # training and evaluation under the chosen SDPA backends
        for epoch in range(args.epochs):
            model.train()
            loss_sum, loss_n = 0.0, 0
            for x, y in data.train_batches(args.batch_size, gen):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = crit(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if args.clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
                opt.step()
                updates += 1
                sched.step_update(updates)
                loss_sum += loss.detach()
                loss_n += 1
                seen += x.shape[0]
            if args.verbose or epoch == args.epochs - 1:
                avg = float(loss_sum) / max(loss_n, 1)
                print(f"  {name} epoch {epoch + 1}/{args.epochs} loss {avg:.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
            if not math.isfinite(float(loss_sum)):
                raise FloatingPointError(f"non-finite training loss in epoch {epoch + 1}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t0
        model.eval()
        correct, total = 0, 0
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            for x, y in data.test_batches(args.batch_size * 2):
                correct += int((model(x).argmax(-1) == y).sum())
                total += int(y.numel())
    return dict(
        model=name,
        mixers=mixer_label(name),
        top1=100.0 * correct / max(total, 1),
        final_train_loss=float(loss_sum) / max(loss_n, 1),
        train_s=train_s,
        train_img_s_device=seen / train_s if train_s > 0 else None,
        device_peak_mb=torch.cuda.max_memory_allocated(device) / 2**20 if amp else None,
        epochs=args.epochs,
        train_images=n_train,
        test_images=total,
        img_size=args.img_size,
        device=str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        train_versions=f"torch {torch.__version__}, timm {timm.__version__}",
        recipe=(f"AdamW lr {args.lr} wd {args.weight_decay}, cosine, {args.warmup_epochs} warmup epoch(s), batch {args.batch_size}, "
                f"label smoothing 0.1, drop path {args.drop_path}, clip {args.clip_grad}, crop+flip, seed {args.seed}"
                + (", bf16 autocast" if amp else ", fp32") + f", SDPA backends {args.sdpa}"),
        error="",
        **check,
    )


def mixer_label(name: str) -> str:
    if name in PRESETS:
        mix = PRESETS[name][0]
        if isinstance(mix, str):
            return mix
        parts = [m if isinstance(m, str) else "/".join(m) for m in mix]  # per stage; a/b: blocks alternate
        return parts[0] if len(set(parts)) == 1 else ", ".join(parts)
    return ""


def run_training(args: argparse.Namespace, models: List[str]) -> List[Dict[str, Any]]:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    data = GpuData(load_cache(args.cache), device, args.img_size, args.limit_train, args.limit_test)
    print(f"data: {tuple(data.x_train.shape)} train, {tuple(data.x_test.shape)} test on {device}; img {args.img_size}px; "
          f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}", flush=True)
    path = args.output + "_train.csv"
    rows = [r for r in (read_csv(path) if os.path.isfile(path) and args.keep else []) if r["model"] not in models]
    t_all = time.perf_counter()
    done_s: List[float] = []
    for i, name in enumerate(models):
        t = time.perf_counter()
        elapsed = t - t_all
        if args.max_minutes and done_s and elapsed + statistics.mean(done_s) > 60 * args.max_minutes:
            # the same schedule for every model, so a model that would not finish in the budget is skipped, not shortened
            print(f"[{i + 1}/{len(models)}] {name}: skipped (--max-minutes {args.max_minutes}: {elapsed:.0f}s used, "
                  f"a model takes about {statistics.mean(done_s):.0f}s)", flush=True)
            rows.append(dict(model=name, mixers=mixer_label(name), error=f"skipped: --max-minutes {args.max_minutes} reached", command=args.command))
            write_csv(path, rows)
            continue
        print(f"[{i + 1}/{len(models)}] {name}", flush=True)
        try:
            row = train_one(name, data, args, device)
            print(f"  {name}: top-1 {row['top1']:.2f}% in {row['train_s']:.1f}s", flush=True)
        except Exception as exc:  # one failing mixer must not kill the others
            traceback.print_exc()
            row = dict(model=name, mixers=mixer_label(name), error=f"{type(exc).__name__}: {exc}"[:300])
            print(f"  {name}: FAILED ({row['error']})", flush=True)
        row["wall_s"] = time.perf_counter() - t
        done_s.append(row["wall_s"])
        row["command"] = args.command
        rows.append(row)
        write_csv(path, rows)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"training pass: {len(models)} models in {time.perf_counter() - t_all:.0f}s total", flush=True)
    return rows


# ----------------------------------------------------------------------------- speed
def run_speed(args: argparse.Namespace, models: List[str]) -> List[Dict[str, Any]]:
    device = torch.device("cpu")
    torch.manual_seed(0)
    size = (args.img_size, args.img_size)
    built, rows = {}, {}
    for name in models:
        m = timm.create_model(name, num_classes=10)
        gmacs, unsupported = count_gmacs(m, (3, *size))
        rows[name] = dict(
            model=name, mixers=mixer_label(name), params_m=sum(p.numel() for p in m.parameters()) / 1e6, gmacs=gmacs,
            gmacs_224=count_gmacs(m, (3, 224, 224))[0], uncounted=" ".join(unexpected_uncounted(unsupported)),
        )
        built[name] = m
        print(f"{name}: {rows[name]['params_m']:.2f}M params, {gmacs:.3f} GMACs at {args.img_size}px", flush=True)
    for mode, bs, key in (("inference", args.speed_batch, "infer"), ("train", args.speed_batch_train, "train")):
        steps = {n: make_step(built[n], mode, bs, size, device, num_classes=10) for n in models}
        times = interleaved(steps, device, repeats=args.repeats, iters=1, warmup=1)
        for n in models:
            med = statistics.median(times[n])
            rows[n][f"{key}_img_s"] = bs / med
        print(f"{mode}: " + ", ".join(f"{n.replace('_mixernet_tiny', '')} {rows[n][f'{key}_img_s']:.0f}" for n in models), flush=True)
    ref = args.reference if args.reference in rows else None
    for n in models:
        rows[n]["train_peak_mb"], rows[n]["mem_method"] = peak_memory_mb(make_step(built[n], "train", args.speed_batch_train, size, device, num_classes=10), device)
        if ref:
            rows[n]["infer_vs_ref"] = rows[n]["infer_img_s"] / rows[ref]["infer_img_s"]
            rows[n]["train_vs_ref"] = rows[n]["train_img_s"] / rows[ref]["train_img_s"]
    out = list(rows.values())
    for r in out:
        r["speed_command"] = args.command
        r["speed_machine"] = f"{machine_info(device).get('cpu', '?')}, {torch.get_num_threads()} torch thread(s)"
    write_csv(args.output + "_speed.csv", out)
    return out


# ----------------------------------------------------------------------------- report
COLUMNS = [
    "model", "mixers", "params_m", "gmacs", "gmacs_224", "top1", "infer_img_s", "train_img_s", "infer_vs_ref",
    "train_vs_ref", "train_peak_mb", "train_s", "device_peak_mb", "sdpa_grad_rel", "sdpa_grad_rel_run", "error",
]


def merge(output: str) -> List[Dict[str, Any]]:
    """Rows of ``<output>_speed.csv`` and ``<output>_train.csv`` joined on the model name."""
    merged: Dict[str, Dict[str, Any]] = {}
    for suffix in ("_speed.csv", "_train.csv"):
        if os.path.isfile(output + suffix):
            for r in read_csv(output + suffix):
                merged.setdefault(r["model"], {}).update({k: v for k, v in r.items() if v is not None or k not in merged.get(r["model"], {})})
    for name, r in merged.items():
        r["mixers"] = mixer_label(name) or r.get("mixers")
    order = {n: i for i, n in enumerate(PRESETS)}
    return sorted(merged.values(), key=lambda r: order.get(r["model"], len(order)))


def plot(path: str, rows: List[Dict[str, Any]]) -> Optional[str]:
    """Accuracy against GMACs and against CPU training throughput, one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    pts = [r for r in rows if isinstance(r.get("top1"), (int, float))]
    if not pts:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, key, label in ((axes[0], "gmacs", "GMACs per image at the training size (fvcore)"),
                           (axes[1], "train_img_s", "CPU training throughput (images/s)")):
        sel = [r for r in pts if isinstance(r.get(key), (int, float))]
        for r in sel:
            hybrid = not isinstance(PRESETS.get(r["model"], ("",))[0], str) and r["model"] not in (
                "dina_mixernet_tiny", "swin_mixernet_tiny", "maxvit_mixernet_tiny")
            ax.scatter(r[key], r["top1"], color="tab:red" if hybrid else "tab:blue", edgecolors="black", linewidths=0.4, s=40)
            ax.annotate(r["model"].replace("_mixernet_tiny", ""), (r[key], r["top1"]), fontsize=7, xytext=(3, 2), textcoords="offset points")
        if not sel:
            ax.text(0.5, 0.5, f"no {key} yet (run the other pass)", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.set_ylabel("CIFAR-10 top-1 (%)")
        ax.grid(True, alpha=0.3)
        if sel and all(r[key] > 0 for r in sel):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    fig.suptitle("Mixer ablation: MixerNet tiny, same macro and recipe (red: hybrids)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def report(args: argparse.Namespace, argv: Sequence[str]) -> None:
    rows = merge(args.output)
    if not rows:
        return
    write_csv(args.output + ".csv", rows)

    def first(key: str) -> str:
        return next((str(r[key]) for r in rows if r.get(key)), "(not run yet)")

    trained = next((r for r in rows if r.get("epochs")), {})
    header = {
        "training pass": f"`{first('command')}`",
        "speed pass": f"`{first('speed_command')}`",
        "updated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "training data": (f"CIFAR-10 class-balanced subset, {trained.get('train_images')} train / {trained.get('test_images')} test "
                          f"images, {trained.get('img_size')} px, {trained.get('epochs')} epochs on {trained.get('device')}") if trained else "(not run yet)",
        "recipe": first("recipe"),
        "speed machine": first("speed_machine"),
        "versions": f"training: {first('train_versions')}; report: torch {torch.__version__}, timm {timm.__version__}",
        "columns": ("gmacs at the training size (gmacs_224 at 224 px); infer/train_img_s: CPU images/s (median of interleaved "
                    "rounds); *_vs_ref: throughput / that of " + DEFAULT_REFERENCE + "; train_peak_mb: CPU peak of one training "
                    "step; train_s: seconds of the training run on its device; device_peak_mb: CUDA peak of that run (batch "
                    "of the recipe, bf16 autocast); sdpa_grad_rel: largest relative difference of a parameter's gradient of one step at init "
                    "under torch's default SDPA backends and under the math backend (sdpa_grad_rel_run: under the run's --sdpa backends; bf16 rounding: about 1e-2; order 1: a wrong fused kernel); "
                    "top1: CIFAR-10 test top-1 after the last epoch"),
    }
    write_markdown(args.output + ".md", "Mixer ablation (MixerNet tiny)", header, [("Results", markdown_table(rows, COLUMNS))], NOTES)
    try:
        plot(args.output + ".png", rows)
    except Exception as exc:  # matplotlib problems must not lose the tables
        print(f"plot failed: {exc}", file=sys.stderr)
    print(f"wrote {args.output}.csv / .md" + (" / .png" if os.path.isfile(args.output + '.png') else ""), flush=True)


# ----------------------------------------------------------------------------- cli
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare-cache", metavar="OUT.npz", help="write the CIFAR-10 subset cache and exit")
    p.add_argument("--data-dir", default="../shared/data/cifar10", help="CIFAR-10 class folders (only for --prepare-cache)")
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--cache", help="train every model from this cache (the training pass)")
    p.add_argument("--speed", action="store_true", help="the CPU pass: params, GMACs, throughput, memory")
    p.add_argument("--report-only", action="store_true", help="rewrite the merged report from the raw CSVs")
    p.add_argument("--models", nargs="+", default=None, help="presets to run (default: every preset)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-train", type=int, default=0, help="use only the first N training images (checks)")
    p.add_argument("--limit-test", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=0,
                   help="training pass: skip (and record as skipped) the models that would start after this budget (0: none)")
    p.add_argument("--keep", action="store_true", help="keep the other models' rows of an existing train CSV")
    p.add_argument("--verbose", action="store_true", help="print every epoch")
    p.add_argument("--sdpa", default="math,flash,efficient",
                   help="SDPA backends for training and evaluation: 'default' (torch's choice) or a comma-separated "
                        f"subset of {','.join(SDPA_BACKENDS)}; default %(default)s leaves out cuDNN; 'default' is torch's own choice (measured correct on an H200, see NOTES)")
    p.add_argument("--no-sdpa-check", dest="sdpa_check", action="store_false",
                   help="skip the per-model check of the SDPA backends against the math backend (one step, at init)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for the speed pass (0: leave)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--speed-batch", type=int, default=32)
    p.add_argument("--speed-batch-train", type=int, default=16)
    p.add_argument("--reference", default=DEFAULT_REFERENCE, help="model the throughput ratios refer to")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="prefix of the result files")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command = "python benchmarks/mixers.py " + " ".join(shlex.quote(a) for a in argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prepare_cache:
        shapes = prepare_cache(args.data_dir, args.prepare_cache, args.train_per_class, args.test_per_class, args.seed)
        size = os.path.getsize(args.prepare_cache) / 2**20
        print(f"wrote {args.prepare_cache} ({size:.1f} MiB): " + ", ".join(f"{k} {v}" for k, v in shapes.items()))
        return 0
    models = args.models or list(PRESETS)
    unknown = [m for m in models if m not in visionattn.list_mixer_models()]
    if unknown:
        print(f"unknown model(s) {unknown}; choose from {visionattn.list_mixer_models()}", file=sys.stderr)
        return 2
    if not (args.cache or args.speed or args.report_only):
        print("nothing to do: give --prepare-cache, --cache, --speed or --report-only", file=sys.stderr)
        return 2
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if args.speed:
        run_speed(args, models)
    if args.cache:
        run_training(args, models)
    report(args, argv)
    print(f"total {time.perf_counter() - t:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
