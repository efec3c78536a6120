#!/usr/bin/env python3
"""Benchmark models of the zoo (and any timm model): params, GMACs, throughput, peak memory.

For every selected model and every ``--img-size`` x ``--batch-size`` it reports

* ``params_m``: parameters (millions, with the classifier head),
* ``gmacs``: multiply-accumulates of one image (10^9), counted with fvcore **including
  attention** (:mod:`visionattn.engine.flops`: handles for fused SDPA and neighborhood attention;
  ``uncounted`` lists what fvcore skipped, all element-wise/softmax-like when the count is
  complete), and ``gmacs_paper``, the figure the paper / official README reports where known,
* ``infer_img_s`` / ``infer_ms``: forward throughput (``torch.no_grad``, eval mode),
* ``train_img_s`` / ``train_ms``: training-step throughput (forward, cross-entropy on random
  labels, backward, SGD step; train mode, so drop path and dropout are active),
* ``infer_peak_mb`` / ``train_peak_mb``: peak memory of one step. On CUDA it is
  ``torch.cuda.max_memory_allocated`` during the step minus the memory allocated before it
  (``mem_method=cuda_max_allocated``); on CPU it is the peak of the running sum of the
  allocations and frees that ``torch.profiler(profile_memory=True)`` records during one extra
  step (``mem_method=cpu_profiler_alloc``), i.e. the memory the step adds on top of the
  weights (and, for training, the gradients/optimizer state allocated in earlier steps).

Options follow timm's ``benchmark.py`` (``--bench``, ``--model`` with wildcards, ``-b``,
``--img-size``, ``--precision``, ``--channels-last``, ``--torchcompile``, ``--num-warm-iter``,
``--num-bench-iter``, ``--device``). Globs are matched against :func:`visionattn.list_models`
first and timm's registry second (``--model 'dinat_*' davit_tiny``).

``--compare-timm`` runs, for every selected model of the zoo that timm also implements
(MaxViT: ``maxvit_tiny`` vs ``maxvit_tiny_tf_224``; DaViT: ``davit_tiny_va`` vs ``davit_tiny``;
see :data:`TIMM_EQUIVALENTS`), both implementations in the same process, interleaved over
``--repeats`` rounds, and reports the median times and their ratio (``speed_ratio`` = ours
img/s / timm img/s, > 1 means ours is faster; ``mem_ratio`` = ours peak / timm peak).

Outputs (``--output PREFIX``): ``PREFIX.csv`` (one row per model/size/batch), ``PREFIX.md``
(command, machine, versions, settings and the table) and ``PREFIX.png`` (throughput vs GMACs,
one marker/colour per family, matplotlib Agg); with ``--compare-timm`` also ``PREFIX_vs_timm.csv``
(the side-by-side rows), unless PREFIX already ends in ``vs_timm``: then the side-by-side rows are
``PREFIX.csv`` and the per-model rows ``PREFIX_models.csv`` (:func:`output_paths`). Runs on CPU
and CUDA, fp32 / bf16 / fp16. On CPU, kineto's start-up log (``ERROR: gpuGetDeviceCount failed``
on machines without a GPU, ``profiler_start/stop`` lines) is silenced unless ``KINETO_LOG_LEVEL``
is set.

Examples::

    python tools/benchmark.py --model 'nat_*' dinat_tiny --bench inference -b 1 --output runs/bench/nat
    python tools/benchmark.py --model maxvit_tiny davit_tiny_va --compare-timm -b 8 --repeats 5 --output runs/bench/vs_timm  # vs_timm.csv + vs_timm_models.csv
    python tools/benchmark.py --model '*' --bench inference -b 1 --num-bench-iter 2 --output benchmarks/results/zoo
    python tools/benchmark.py --model biformer_tiny --device cuda --precision amp_bfloat16 --channels-last --torchcompile -b 64
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import fnmatch
import io
import math
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import timm

from visionattn.engine.flops import count_gmacs, unexpected_uncounted
from visionattn.engine.cli import check_output_file, run_cli

__all__ = [
    "PAPER_GMACS",
    "TIMM_EQUIVALENTS",
    "FAMILIES",
    "family_of",
    "resolve_models",
    "make_step",
    "time_step",
    "peak_memory_mb",
    "interleaved",
    "machine_info",
    "write_csv",
    "read_csv",
    "write_markdown",
    "plot_throughput",
    "build_parser",
    "main",
    "cli",
]

#: GMACs (fvcore-style multiply-accumulates) reported by the papers / official READMEs at each
#: model's default resolution, with the source. NAT/DiNAT: SHI-Labs/Neighborhood-Attention-
#: Transformer ``classification/{NAT,DiNAT}.md``; BiFormer, CSWin, Agent-Attention, InLine: the repos'
#: README tables; MaxViT: google-research/maxvit ``README.md``; DaViT: dingmyu/davit README
#: (T/S/B) and timm's benchmark CSV for the unreleased L/H/G configs.
PAPER_GMACS: Dict[str, Tuple[float, str]] = {
    **{k: (v, "NAT/DiNAT README") for k, v in {
        "nat_mini": 2.7, "nat_tiny": 4.3, "nat_small": 7.8, "nat_base": 13.7,
        "dinat_mini": 2.7, "dinat_tiny": 4.3, "dinat_small": 7.8, "dinat_base": 13.7,
        "dinat_large": 30.6, "dinat_large_384": 89.7, "dinat_large_384_11x11": 92.4,
        "dinat_s_tiny": 4.5, "dinat_s_small": 8.7, "dinat_s_base": 15.4, "dinat_s_large": 34.5,
        "dinat_s_large_384": 101.5,
        "nat_isotropic_small": 4.3, "dinat_isotropic_small": 4.3, "vitrpb_small": 4.6,
        "nat_isotropic_base": 16.9, "dinat_isotropic_base": 16.9, "vitrpb_base": 17.5,
    }.items()},
    **{k: (v, "BiFormer README") for k, v in {
        "biformer_tiny": 2.2, "biformer_small": 4.5, "biformer_base": 9.8, "biformer_stl": 4.6,
    }.items()},
    **{k: (v, "CSWin README") for k, v in {
        "cswin_tiny": 4.3, "cswin_small": 6.9, "cswin_base": 15.0, "cswin_large": 31.5,
        "cswin_base_384": 47.0, "cswin_large_384": 96.8,
    }.items()},
    **{k: (v, "Agent-Attention README") for k, v in {
        "agent_deit_tiny": 1.2, "agent_deit_small": 4.4, "agent_deit_small_448": 17.7, "agent_deit_base": 17.6,
        "agent_pvt_tiny": 2.0, "agent_pvt_small": 4.0, "agent_pvt_medium": 7.0, "agent_pvt_medium_256": 9.2,
        "agent_pvt_large": 10.4, "agent_swin_tiny": 4.5, "agent_swin_small": 8.7, "agent_swin_small_288": 14.6,
        "agent_swin_base": 15.4, "agent_swin_base_384": 46.3, "agent_cswin_tiny": 4.3, "agent_cswin_small": 6.8,
        "agent_cswin_base": 14.9, "agent_cswin_base_384": 46.3,
    }.items()},
    **{k: (v, "InLine README") for k, v in {
        "inline_deit_tiny": 1.1, "inline_deit_small": 5.0, "inline_deit_base": 17.2, "inline_pvt_tiny": 2.0,
        "inline_pvt_small": 3.9, "inline_pvt_medium": 6.9, "inline_pvt_large": 10.2, "inline_swin_tiny": 4.5,
        "inline_swin_small": 8.7, "inline_swin_base": 15.4, "inline_cswin_tiny": 4.3, "inline_cswin_small": 6.8,
        "inline_cswin_base": 14.9,
    }.items()},
    **{k: (v, "CrossFormer README") for k, v in {
        "crossformer_tiny": 2.9, "crossformer_small": 4.9, "crossformer_base": 9.2, "crossformer_large": 16.1,
        "crossformerpp_small": 4.9, "crossformerpp_base": 9.5, "crossformerpp_large": 16.6, "crossformerpp_huge": 21.8,
    }.items()},
    **{k: (v, "MaxViT README") for k, v in {
        "maxvit_tiny": 5.6, "maxvit_tiny_384": 17.7, "maxvit_tiny_512": 33.7,
        "maxvit_small": 11.7, "maxvit_small_384": 36.1, "maxvit_small_512": 67.6,
        "maxvit_base": 24.2, "maxvit_base_384": 74.2, "maxvit_base_512": 138.5,
        "maxvit_large": 43.9, "maxvit_large_384": 133.1, "maxvit_large_512": 245.4,
        "maxvit_xlarge": 97.8, "maxvit_xlarge_384": 293.7, "maxvit_xlarge_512": 535.2,
    }.items()},
    "davit_tiny_va": (4.54, "DaViT README (4.5G) / timm davit.py comment 4540244736"),
    "davit_small_va": (8.8, "DaViT README"),
    "davit_base_va": (15.51, "DaViT README (15.5G) / timm davit.py comment 15510430720"),
    "davit_large_va": (34.6, "timm benchmark CSV (no official 224 number)"),
    "davit_huge_va": (61.23, "timm benchmark CSV (no official 224 number)"),
    "davit_giant_va": (192.92, "timm benchmark CSV (no official 224 number)"),
    **{k: (v, "VAN-Classification README") for k, v in {"van_b0": 0.9, "van_b1": 2.5, "van_b2": 5.0, "van_b3": 9.0}.items()},
    "van_b4": (12.22, "mmclassification 0.x VAN README (official B4 weights converted)"),
}

#: Zoo models that timm implements too (same architecture, same weights layout up to renaming).
TIMM_EQUIVALENTS: Dict[str, str] = {
    **{f"maxvit_{s}{r}": f"maxvit_{s}_tf_{r[1:] or '224'}" for s in ("tiny", "small", "base", "large", "xlarge")
       for r in ("", "_384", "_512")},
    **{f"davit_{s}_va": f"davit_{s}" for s in ("tiny", "small", "base", "large", "huge", "giant")},
}

#: Family of a model name: the first matching prefix (order matters: ``dinat_s_`` before ``dinat``).
FAMILIES: Tuple[Tuple[str, str], ...] = (
    ("agent_deit", "Agent-DeiT"), ("agent_pvt", "Agent-PVT"), ("agent_swin", "Agent-Swin"),
    ("agent_cswin", "Agent-CSwin"), ("inline_deit", "InLine-DeiT"), ("inline_pvt", "InLine-PVT"), ("inline_swin", "InLine-Swin"),
    ("inline_cswin", "InLine-CSwin"), ("biformer", "BiFormer"), ("cswin", "CSWin"), ("davit", "DaViT"),
    ("nat_isotropic", "NAT-iso"), ("dinat_isotropic", "NAT-iso"), ("vitrpb", "NAT-iso"),
    ("dinat_s_", "DiNAT-s"), ("dinat", "DiNAT"), ("nat", "NAT"), ("maxvit", "MaxViT"), ("van_", "VAN"),
    ("crossformerpp", "CrossFormer++"), ("crossformer", "CrossFormer"),
)

PRECISIONS = ("float32", "amp", "amp_float16", "amp_bfloat16", "float16", "bfloat16")


def family_of(name: str) -> str:
    """Family label of a model name (:data:`FAMILIES`); a timm model not in the zoo gives ``"timm"``."""
    for prefix, fam in FAMILIES:
        if name.startswith(prefix):
            return fam
    return "timm"


def resolve_models(patterns: Sequence[str]) -> List[str]:
    """Expand names and glob patterns into model names, in order, without duplicates.

    A pattern with ``*?[`` is matched against :func:`visionattn.list_models` first, then
    against timm's registry; a plain name must be a registered timm model (the zoo registers
    into timm).

    Raises:
        ValueError: a pattern that matches nothing, or an unknown name.
    """
    import visionattn

    zoo = visionattn.list_models()
    out: List[str] = []
    for pat in patterns:
        if any(c in pat for c in "*?["):
            hits = fnmatch.filter(zoo, pat) or timm.list_models(pat)
            if not hits:
                raise ValueError(f"model pattern {pat!r} matches no visionattn or timm model")
        else:
            if not timm.is_model(pat):
                raise ValueError(f"unknown model {pat!r}: not in visionattn.list_models() nor in timm's registry")
            hits = [pat]
        out.extend(h for h in hits if h not in out)
    return out


def _amp_dtype(precision: str) -> Tuple[Optional[torch.dtype], torch.dtype]:
    """(autocast dtype or None, model/input dtype) for a ``--precision`` value."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    return {
        "float32": (None, torch.float32),
        "amp": (torch.float16, torch.float32),
        "amp_float16": (torch.float16, torch.float32),
        "amp_bfloat16": (torch.bfloat16, torch.float32),
        "float16": (None, torch.float16),
        "bfloat16": (None, torch.bfloat16),
    }[precision]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(
    model: nn.Module,
    mode: str,
    batch_size: int,
    img_size: Tuple[int, int],
    device: torch.device,
    precision: str = "float32",
    channels_last: bool = False,
    num_classes: Optional[int] = None,
    lr: float = 1e-4,
    in_chans: int = 3,
) -> Callable[[], None]:
    """A closure running one inference forward (``mode="inference"``) or one training step
    (``mode="train"``: forward, cross-entropy on fixed random labels, backward, SGD step) of
    ``model`` on a fixed random batch ``(batch_size, in_chans, *img_size)``.

    The model is put in eval / train mode accordingly. Works on any device; ``precision`` is
    one of :data:`PRECISIONS` (``amp*`` = autocast with fp32 weights; ``float16``/``bfloat16`` =
    the caller has cast the model). The model's outputs are reduced to a scalar only in training.

    Raises:
        ValueError: unknown ``mode`` or ``precision``.
    """
    if mode not in ("inference", "train"):
        raise ValueError(f"mode must be 'inference' or 'train', got {mode!r}")
    amp_dtype, dtype = _amp_dtype(precision)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch_size, in_chans, *img_size, device=device, dtype=dtype).contiguous(memory_format=fmt)
    autocast = (
        (lambda: torch.autocast(device_type=device.type, dtype=amp_dtype)) if amp_dtype is not None else contextlib.nullcontext
    )
    if mode == "inference":
        model.eval()

        def step() -> None:
            with torch.no_grad(), autocast():
                model(x)

        return step
    model.train()
    n_cls = num_classes or getattr(model, "num_classes", 1000) or 1000
    y = torch.randint(0, n_cls, (batch_size,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step() -> None:
        with autocast():
            out = model(x)
            loss = F.cross_entropy(out.float(), y) if out.dim() == 2 else out.float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_step(step: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of ``step()`` over ``iters`` calls after ``warmup`` calls (CUDA synced)."""
    for _ in range(warmup):
        step()
    _sync(device)
    ts = []
    for _ in range(max(1, iters)):
        t = time.perf_counter()
        step()
        _sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def peak_memory_mb(step: Callable[[], None], device: torch.device) -> Tuple[float, str]:
    """Peak extra memory (MiB) of one ``step()`` and how it was measured.

    CUDA: ``torch.cuda.max_memory_allocated`` during the step minus ``memory_allocated`` before
    it (``"cuda_max_allocated"``). CPU: the peak of the running sum of allocations and frees
    recorded by ``torch.profiler`` with ``profile_memory=True`` (``"cpu_profiler_alloc"``); RSS is
    not used because the allocator and other threads make it coarse and sticky.
    """
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, "cuda_max_allocated"
    # kineto reads its log level once, at its first use: without a GPU it would print
    # "ERROR ... gpuGetDeviceCount failed" and a USDT line per start/stop (6: none of its log)
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    cur = best = 0
    for _, b in events:
        cur += b
        best = max(best, cur)
    return best / 2**20, "cpu_profiler_alloc"


def interleaved(steps: Dict[str, Callable[[], None]], device: torch.device, repeats: int, iters: int = 1, warmup: int = 1) -> Dict[str, List[float]]:
    """Time several step closures side by side: ``warmup`` rounds, then ``repeats`` rounds in
    which each closure runs ``iters`` times in turn (A, B, A, B, ...). Returns per-closure lists
    of seconds per step (one entry per round); compare medians. Interleaving makes the ratio
    robust to load changes on a shared machine."""
    for _ in range(warmup):
        for s in steps.values():
            s()
    _sync(device)
    out: Dict[str, List[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for k, s in steps.items():
            t = time.perf_counter()
            for _ in range(iters):
                s()
            _sync(device)
            out[k].append((time.perf_counter() - t) / iters)
    return out


def machine_info(device: torch.device) -> Dict[str, str]:
    """CPU model, cores, torch threads, accelerator, OS and library versions (for result files)."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": str(device),
    }
    try:
        from importlib.metadata import version

        info["fvcore"] = version("fvcore")
    except Exception:  # fvcore not installed: leave the key out
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_avg"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        pass
    return info


def _fmt(v: Any) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.4g}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def write_csv(path: str, rows: List[Dict[str, Any]]) -> str:
    """Write ``rows`` (dicts; union of keys in first-seen order) as CSV, atomically."""
    from visionattn.engine.files import atomic_write_text

    keys: List[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    atomic_write_text(path, buf.getvalue())
    return path


def read_csv(path: str) -> List[Dict[str, Any]]:
    """Rows of a CSV written by :func:`write_csv`, numbers parsed back (empty cells -> None)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in list(r.items()):
            if v is None or v == "":
                r[k] = None
                continue
            try:
                r[k] = int(v)
            except ValueError:
                try:
                    r[k] = float(v)
                except ValueError:
                    r[k] = {"True": True, "False": False}.get(v, v)
    return rows


def markdown_table(rows: List[Dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub Markdown table of ``rows`` restricted to ``columns`` (missing cells empty)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_markdown(path: str, title: str, header: Dict[str, str], tables: Sequence[Tuple[str, str]], notes: Sequence[str] = ()) -> str:
    """Write a result page: title, ``header`` as a bullet list (command, machine, versions,
    settings), then ``(heading, markdown table)`` sections and free-text ``notes``; atomic."""
    from visionattn.engine.files import atomic_write_text

    out = [f"# {title}", ""]
    out += [f"- {k}: {v}" for k, v in header.items()]
    for head, table in tables:
        out += ["", f"## {head}" if head else "", "", table]
    if notes:
        out += ["", "## Notes", ""] + [n if n.startswith(("-", "|", " ")) or not n else f"- {n}" for n in notes]
    atomic_write_text(path, "\n".join(out).replace("\n\n\n", "\n\n") + "\n")
    return path


def plot_throughput(path: str, rows: List[Dict[str, Any]], y: str = "infer_img_s", title: str = "") -> Optional[str]:
    """Scatter ``y`` (img/s) against ``gmacs``, one marker and colour per family, log axes, each
    point labelled with its model name; saved as PNG with matplotlib's Agg backend (atomic).
    Returns the path, or None when no row has both values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if isinstance(r.get("gmacs"), (int, float)) and isinstance(r.get(y), (int, float)) and r[y] > 0]
    if not pts:
        return None
    fams = sorted({family_of(r["model"]) for r in pts})
    markers = "osD^v<>pP*Xhd8"
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(11, 7))
    for i, fam in enumerate(fams):
        sel = [r for r in pts if family_of(r["model"]) == fam]
        ax.scatter([r["gmacs"] for r in sel], [r[y] for r in sel], marker=markers[i % len(markers)],
                   color=cmap(i % 20), s=46, label=fam, edgecolors="black", linewidths=0.4)
        for r in sel:
            ax.annotate(r["model"], (r["gmacs"], r[y]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("GMACs per image (fvcore, attention counted)")
    ax.set_ylabel(y.replace("_img_s", " throughput (images/s)"))
    ax.set_title(title or f"{y} vs GMACs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    from visionattn.engine.files import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def output_paths(prefix: str, compare: bool = False) -> Dict[str, str]:
    """The files ``--output PREFIX`` writes: ``csv`` (per-model rows), ``compare_csv``, ``md``, ``png``.

    A trailing ``.csv``/``.png``/``.md`` is dropped from ``prefix``. The side-by-side rows of
    ``--compare-timm`` go to ``PREFIX_vs_timm.csv``; a prefix that already ends in ``vs_timm``
    (``--output runs/bench/vs_timm``) is not suffixed twice: its side-by-side rows are
    ``PREFIX.csv`` and the per-model rows ``PREFIX_models.csv``.
    """
    if prefix.endswith((".csv", ".png", ".md")):
        prefix = prefix.rsplit(".", 1)[0]
    named_for_comparison = compare and os.path.basename(prefix).endswith("vs_timm")
    return {
        "csv": prefix + ("_models.csv" if named_for_comparison else ".csv"),
        "compare_csv": prefix + (".csv" if named_for_comparison else "_vs_timm.csv"),
        "md": prefix + ".md",
        "png": prefix + ".png",
    }


def _input_size(model: nn.Module, img: Optional[int]) -> Tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    c, h, w = cfg.get("input_size", (3, 224, 224))
    return (c, img, img) if img else (c, h, w)


def _prepare(model: nn.Module, device: torch.device, precision: str, channels_last: bool, compile_backend: Optional[str]) -> nn.Module:
    _, dtype = _amp_dtype(precision)
    model = model.to(device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_backend:
        model = torch.compile(model, backend=compile_backend)
    return model


def _bench_one(name: str, args: argparse.Namespace, device: torch.device) -> List[Dict[str, Any]]:
    rows = []
    model = timm.create_model(name)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    default = _input_size(model, None)
    counts = {}
    for img in args.img_size or [None]:
        size = _input_size(model, img)
        counts[size] = (None, {}) if args.no_gmacs else count_gmacs(model, size, device=torch.device("cpu"))
    if args.bench != "flops":
        model = _prepare(model, device, args.precision, args.channels_last, args.torchcompile)
    for (c, h, w), (gmacs, uncounted) in counts.items():
        paper = PAPER_GMACS.get(name) if (c, h, w) == default else None
        for bs in args.batch_size:
            row: Dict[str, Any] = {
                "model": name, "family": family_of(name), "img_size": h if h == w else f"{h}x{w}",
                "batch_size": bs, "precision": args.precision, "device": str(device),
                "channels_last": args.channels_last, "torchcompile": args.torchcompile or "",
                "params_m": round(n_params, 3),
                "gmacs": None if gmacs is None else round(gmacs, 4),
                "gmacs_paper": None if paper is None else paper[0],
                "gmacs_diff_pct": None if (paper is None or gmacs is None) else round(100 * (gmacs - paper[0]) / paper[0], 2),
                "gmacs_paper_source": None if paper is None else paper[1],
                "uncounted": " ".join(sorted(uncounted)),
                "uncounted_unexpected": " ".join(unexpected_uncounted(uncounted)),
                "warm_iters": args.num_warm_iter, "bench_iters": args.num_bench_iter,
            }
            if args.bench != "flops":
                for mode, key in (("inference", "infer"), ("train", "train")):
                    if args.bench not in (mode, "both"):
                        continue
                    step = make_step(model, mode, bs, (h, w), device, args.precision, args.channels_last, in_chans=c)
                    sec = time_step(step, device, args.num_warm_iter, args.num_bench_iter)
                    row[f"{key}_ms"] = round(1000 * sec, 3)
                    row[f"{key}_img_s"] = round(bs / sec, 3)
                    if not args.no_memory:
                        mb, how = peak_memory_mb(step, device)
                        row[f"{key}_peak_mb"] = round(mb, 1)
                        row["mem_method"] = how
                    del step
            rows.append(row)
            print(" ".join(f"{k}={_fmt(v)}" for k, v in row.items() if v not in (None, "")), flush=True)
    del model
    return rows


def _compare_timm(name: str, args: argparse.Namespace, device: torch.device) -> List[Dict[str, Any]]:
    other = TIMM_EQUIVALENTS[name]
    rows = []
    models = {name: timm.create_model(name), other: timm.create_model(other)}
    models = {k: _prepare(m, device, args.precision, args.channels_last, args.torchcompile) for k, m in models.items()}
    c = 3
    for img in args.img_size or [None]:
        _, h, w = _input_size(models[name], img)
        for bs in args.batch_size:
            for mode in ("inference", "train"):
                if args.bench not in (mode, "both"):
                    continue
                steps = {k: make_step(m, mode, bs, (h, w), device, args.precision, args.channels_last, in_chans=c) for k, m in models.items()}
                times = interleaved(steps, device, args.repeats, iters=args.num_bench_iter, warmup=max(1, args.num_warm_iter))
                med = {k: statistics.median(v) for k, v in times.items()}
                mem = {k: (None if args.no_memory else peak_memory_mb(s, device)[0]) for k, s in steps.items()}
                row = {
                    "model": name, "baseline": f"timm:{other}", "mode": mode, "img_size": h, "batch_size": bs,
                    "precision": args.precision, "device": str(device), "ours_ms": round(1000 * med[name], 3),
                    "baseline_ms": round(1000 * med[other], 3), "ours_img_s": round(bs / med[name], 3),
                    "baseline_img_s": round(bs / med[other], 3), "speed_ratio": round(med[other] / med[name], 3),
                    "ours_peak_mb": None if mem[name] is None else round(mem[name], 1),
                    "baseline_peak_mb": None if mem[other] is None else round(mem[other], 1),
                    "mem_ratio": None if not mem[other] else round(mem[name] / mem[other], 3),
                    "repeats": args.repeats,
                }
                rows.append(row)
                print(" ".join(f"{k}={_fmt(v)}" for k, v in row.items() if v is not None), flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Params, GMACs (fvcore, attention counted), throughput and peak memory of zoo/timm models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", "-m", nargs="+", default=None, help="model names or globs (zoo first, then timm)")
    p.add_argument("--model-list", default=None, help="text file with one model name or glob per line")
    p.add_argument("--bench", default="both", choices=("inference", "train", "both", "flops"),
                   help="what to time ('flops': params and GMACs only)")
    p.add_argument("--batch-size", "-b", type=int, nargs="+", default=[1], help="one or more batch sizes")
    p.add_argument("--img-size", type=int, nargs="+", default=None, help="square input sizes (default: each model's own)")
    p.add_argument("--precision", default="float32", choices=PRECISIONS)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--channels-last", action="store_true", help="model and input in channels_last memory format")
    p.add_argument("--torchcompile", nargs="?", const="inductor", default=None, help="torch.compile backend (default inductor)")
    p.add_argument("--num-warm-iter", type=int, default=1)
    p.add_argument("--num-bench-iter", type=int, default=3, help="timed iterations (median); per round with --compare-timm")
    p.add_argument("--no-gmacs", action="store_true", help="skip fvcore counting")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    p.add_argument("--compare-timm", action="store_true", help="also time timm's implementation side by side (interleaved)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds for --compare-timm")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--output", default=None, help="prefix of PREFIX.csv / .md / .png, and PREFIX_vs_timm.csv with --compare-timm "
                   "(default: print only)")
    p.add_argument("--plot-metric", default="infer_img_s", help="column plotted against gmacs")
    p.add_argument("--notes", default=None, help="Markdown file whose lines are appended to PREFIX.md (Notes section)")
    p.add_argument("--append", action="store_true",
                   help="merge into an existing PREFIX.csv: keep its rows except those re-measured now (same model, "
                        "img_size, batch_size, precision, device); the .md/.png then show all rows")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the benchmark; returns ``{"rows", "compare_rows", "files", "machine"}``.

    Raises:
        ValueError: no model given, an unknown model/pattern, ``--compare-timm`` with no model
            that timm implements, non-positive batch/img sizes or an unavailable device.
    """
    args = build_parser().parse_args(argv)
    if args.output:  # before any model runs: a long benchmark must not die at write time
        for path in output_paths(args.output, compare=args.compare_timm).values():
            check_output_file(path, "--output")
    import visionattn  # noqa: F401  registers the zoo's models with timm

    patterns = list(args.model or [])
    if args.model_list:
        with open(args.model_list) as f:
            patterns += [l.strip() for l in f if l.strip() and not l.lstrip().startswith("#")]
    if not patterns:
        raise ValueError("no model given: pass --model NAME/GLOB ... or --model-list FILE")
    if any(b < 1 for b in args.batch_size) or any(s < 1 for s in args.img_size or []):
        raise ValueError(f"batch and image sizes must be positive, got -b {args.batch_size} --img-size {args.img_size}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, argv, patterns, device)
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, argv: Optional[Sequence[str]], patterns: List[str], device: torch.device) -> Dict[str, Any]:
    names = resolve_models(patterns)
    pairs = [n for n in names if n in TIMM_EQUIVALENTS]
    if args.compare_timm and not pairs:
        raise ValueError(f"--compare-timm: none of {names} has a timm implementation; known: {sorted(TIMM_EQUIVALENTS)}")
    rows: List[Dict[str, Any]] = []
    compare_rows: List[Dict[str, Any]] = []
    for name in names:
        rows.extend(_bench_one(name, args, device))
    if args.compare_timm:
        for name in pairs:
            compare_rows.extend(_compare_timm(name, args, device))
    info = machine_info(device)
    files: Dict[str, str] = {}
    if args.output:
        paths = output_paths(args.output, compare=args.compare_timm)
        kept: List[Dict[str, Any]] = []
        if args.append and os.path.isfile(paths["csv"]):
            key = lambda r: (str(r["model"]), str(r["img_size"]), str(r["batch_size"]), str(r["precision"]), str(r["device"]))
            new_keys = {key(r) for r in rows}
            kept = [r for r in read_csv(paths["csv"]) if key(r) not in new_keys]
        rows_out = kept + rows
        files["csv"] = write_csv(paths["csv"], rows_out)
        cmd = "python tools/benchmark.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        header = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": f"`{cmd}`",
            "machine": f"{info['cpu']}, {info['logical_cpus']} logical CPUs, torch threads {info['torch_threads']}"
            + (f", GPU {info['gpu']}" if "gpu" in info else "") + f", load avg {info.get('load_avg', '?')}",
            "versions": f"python {info['python']}, torch {info['torch']}, timm {info['timm']}, fvcore {info.get('fvcore', '?')}",
            "settings": f"device {device}, precision {args.precision}, channels_last {args.channels_last}, "
            f"torchcompile {args.torchcompile or 'off'}, warm-up {args.num_warm_iter}, timed iterations {args.num_bench_iter} (median)",
            "GMACs": "fvcore MACs per image with handles for SDPA and neighborhood attention (visionattn.engine.flops)",
        }
        cols = [c for c in ("model", "family", "img_size", "batch_size", "params_m", "gmacs", "gmacs_paper", "gmacs_diff_pct",
                            "infer_img_s", "infer_ms", "infer_peak_mb", "train_img_s", "train_ms", "train_peak_mb")
                if any(r.get(c) not in (None, "") for r in rows_out)]
        tables = [("Results", markdown_table(rows_out, cols))]
        if compare_rows:
            files["compare_csv"] = write_csv(paths["compare_csv"], compare_rows)
            tables.append(("Side by side with timm (interleaved, medians; speed_ratio = ours img/s / timm img/s)",
                           markdown_table(compare_rows, ["model", "baseline", "mode", "img_size", "batch_size", "ours_img_s",
                                                         "baseline_img_s", "speed_ratio", "ours_peak_mb", "baseline_peak_mb", "mem_ratio"])))
        notes = []
        if kept:
            notes.append(f"{len(kept)} rows were kept from an earlier run (--append); warm_iters/bench_iters in the CSV say how each row was timed")
        bad = [r["model"] for r in rows_out if r.get("uncounted_unexpected")]
        if bad:
            notes.append(f"uncounted ops beyond element-wise/softmax in: {', '.join(sorted(set(bad)))} (see the CSV)")
        if args.notes:
            with open(args.notes) as f:
                notes += f.read().splitlines()
        files["md"] = write_markdown(paths["md"], "visionattn benchmark", header, tables, notes)
        png = plot_throughput(paths["png"], rows_out, y=args.plot_metric, title=f"{args.plot_metric} vs GMACs ({device}, {args.precision})")
        if png:
            files["png"] = png
    return {"rows": rows, "compare_rows": compare_rows, "files": files, "machine": info}


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (``visionattn-benchmark``); returns the exit status."""
    return run_cli(main, argv, errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(cli())
