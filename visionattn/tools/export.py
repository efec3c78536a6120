#!/usr/bin/env python3
"""Export a model of the zoo (or any timm model) to ONNX and check it with ONNX Runtime.

The exporter is torch's own: ``torch.export.export`` (non-strict) of the eval-mode model, then
``torch.onnx.export(..., dynamo=True)`` of that program (translation to ONNX through
onnxscript's torchlib, then its optimizer). Only where that path fails does the tool fall back
to the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, a trace); the JSON
says which path (``exporter``: ``dynamo`` or ``torchscript``) and why.

Dynamic axes (``--dynamic``):

* ``auto`` (default): batch, height and width dynamic where the model's graph allows it, else
  batch only (the reason is printed and recorded: the op whose shape logic is specialised to
  the export size);
* ``hw``: batch, height and width dynamic, an error where the model does not allow it;
* ``batch``: batch only (height and width fixed at ``--img-size``);
* ``none``: every axis fixed.

With fixed height/width the ONNX graph runs at the export size only: padding decisions of
windowed mixers (pad to a multiple of the window, region or stripe and crop back) and the
index plans of neighborhood attention are computed in Python from the map size, so the trace
holds those of the export size. Export once per input size then (``--img-size H W``).

After every export the tool

* checks that every node of the graph (and of its local functions) is a standard ONNX operator
  (domain ``""``/``ai.onnx``): ``custom_ops`` in the JSON lists any other (``[]`` = none);
* runs the file in an ONNX Runtime CPU session and compares its outputs with PyTorch eager
  (``torch.no_grad``, float32) at every ``--check-sizes`` entry (default: the export size and one
  divisible by no window, region or stripe, ``odd_check_size``), at ``--batch`` and, when the batch
  axis is dynamic, also at another batch size: max abs difference per output, failing above
  ``--atol`` (default 1e-4);
* times ONNX Runtime against PyTorch eager on the CPU at the export size and ``--batch``: median
  of ``--repeats`` calls after one warm-up, both with ``--threads`` intra-op threads (default 1;
  ONNX Runtime with one inter-op thread), in milliseconds;

prints a summary and writes everything to ``<output without .onnx>.json`` beside the ``.onnx``
file. The exit status is 0 when the export and every check passed, 1 when a check failed
(difference above the tolerance, custom operators, ONNX Runtime refusing the file), 2 for a
usage error (unknown model, unwritable output, an input size below the model's
``min_input_size``, ``--dynamic hw`` where the model cannot have it).

Classifier export: one output ``logits`` ``(B, num_classes)``. ``--features-only`` exports timm's
feature extractor (``features_only=True``, ``--out-indices``): one NCHW output per tap, named after
the tapped module (``stages_0``, ...).

Examples::

    visionattn-export --model biformer_tiny --output runs/onnx/biformer_tiny.onnx
    visionattn-export --model dinat_tiny --pretrained --img-size 224 --output dinat_tiny.onnx
    visionattn-export --model cswin_tiny --features-only --out-indices 1 2 3 --output cswin_feats.onnx
    visionattn-export --model maxvit_tiny --checkpoint runs/x/model.safetensors --dynamic batch --output m.onnx
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn

import visionattn  # noqa: F401  (registers the zoo's models with timm)
from visionattn.engine.cli import UsageError, check_output_file, run_cli
from visionattn.engine.config import parse_model_kwargs
from visionattn.engine.console import unknown_model_message
from visionattn.engine.files import atomic_write_text, jsonable
from visionattn.engine.model import create_model

__all__ = [
    "DYNAMIC_CHOICES",
    "STANDARD_DOMAINS",
    "odd_check_size",
    "build_model",
    "export_onnx",
    "custom_ops",
    "check_onnx",
    "build_parser",
    "main",
    "cli",
]

DYNAMIC_CHOICES = ("auto", "hw", "batch", "none")
#: ONNX operator domains of the standard operator set (anything else is a custom operator).
STANDARD_DOMAINS = ("", "ai.onnx")
#: Upper bound given to torch.export for the dynamic batch / height / width axes.
MAX_BATCH = 4096
MAX_SIDE = 8192


def odd_check_size(img_size: Tuple[int, int], min_size: int) -> Tuple[int, int]:
    """A second check size near ``img_size`` that no window, region or stripe divides.

    ``(H - 20, W - 44)`` rounded down to a multiple of 4, plus 2, never below ``min_size``: for
    224 it is 206 x 182, whose token maps (52x46 at stride 4, 26x23 at 8, 13x12 at 16) are
    multiples of no 7x7 window nor 8x8 region, and the width at stride 8 is odd (CSWin's
    stage-2 stripes of 2 pad too).
    """
    out = []
    for side, dec in zip(img_size, (20, 44)):
        s = max(side - dec, min_size)
        s = (s // 4) * 4 + 2
        out.append(max(s, min_size))
    return out[0], out[1]


def _versions() -> Dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript

    return dict(torch=torch.__version__, onnx=onnx.__version__, onnxruntime=onnxruntime.__version__,
                onnxscript=onnxscript.__version__, timm=timm.__version__)


def build_model(name: str, *, pretrained: Any = None, checkpoint: Optional[os.PathLike] = None,
                img_size: Optional[Tuple[int, int]] = None, features_only: bool = False,
                out_indices: Optional[Sequence[int]] = None, num_classes: Optional[int] = None,
                model_kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    """The eval-mode model to export, built with :func:`visionattn.engine.model.create_model`.

    A square ``img_size`` (``(H, W)``) is passed to the constructors that take one
    (fixed-resolution models size their tables from it; the others run at any size); a
    non-square one is not (the model is built for its default size and runs at ``H x W``).
    ``features_only`` builds timm's feature extractor with ``out_indices``. Raises :class:`UsageError` for an unknown model or
    arguments its constructor refuses.
    """
    msg = unknown_model_message(name)
    if msg:
        raise UsageError(msg)
    extra: Dict[str, Any] = {}
    if features_only:
        extra["features_only"] = True
        if out_indices is not None:
            extra["out_indices"] = tuple(out_indices)
    # A square size goes to the constructor (the fixed-resolution models size their tables from
    # it; several constructors take an int only); a non-square one does not: the model is built
    # for its default size, and every model of the zoo runs at any size.
    size = img_size[0] if img_size is not None and img_size[0] == img_size[1] else None
    try:
        model = create_model(name, num_classes, model_kwargs, img_size=size, pretrained=pretrained,
                             pretrained_path=checkpoint, **extra)
    except (ValueError, TypeError) as e:  # bad --model-kwargs / --img-size / --out-indices
        raise UsageError(f"cannot build {name}: {e}") from None
    return model.eval()


def _output_names(model: nn.Module, features_only: bool) -> List[str]:
    if not features_only:
        return ["logits"]
    return [m.replace(".", "_") for m in model.feature_info.module_name()]


def _dynamic_shapes(kind: str, ranges: Optional[Dict[str, Tuple[int, int]]] = None):
    """``dynamic_shapes`` for the single image input: ``kind`` in ``hw``, ``batch``, ``none``;
    ``ranges`` gives ``(min, max)`` of ``height`` and ``width`` (default ``[1, MAX_SIDE]``)."""
    Dim = torch.export.Dim
    if kind == "none":
        return None
    spec = {0: Dim("batch", min=1, max=MAX_BATCH)}
    if kind == "hw":
        ranges = ranges or {}
        for axis, name in ((2, "height"), (3, "width")):
            lo, hi = ranges.get(name, (1, MAX_SIDE))
            spec[axis] = Dim(name, min=lo, max=hi)
    return (spec,)


_SUGGESTED = re.compile(r"\b(height|width) = Dim\('\w+', min=(\d+), max=(\d+)\)")
#: A guard of torch's size-1 specialisation in a constraint violation (``... != 1.`` / ``... > 1.``).
_SIZE_ONE_GUARD = re.compile(r"satisfy the generated guard .*(?:!= 1|> 1)\.")


def _suggested_ranges(e: BaseException) -> Dict[str, Tuple[int, int]]:
    """The ``(min, max)`` height/width ranges torch.export suggests in a constraint violation."""
    return {m.group(1): (int(m.group(2)), int(m.group(3))) for m in _SUGGESTED.finditer(str(e))}


def _short(e: BaseException, limit: int = 400) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split())  # no terminal colour codes
    text = re.sub(r" ?For more information, run with TORCH_LOGS=\S+", "", text)
    text = re.sub(r"L\['flat_args'\]\[0\]\.size\(\)\[(\d)\]", lambda m: "HW"[int(m.group(1)) - 2] if m.group(1) in "23" else "B", text)
    return f"{type(e).__name__}: {text[:limit]}"


def _torch_export(model: nn.Module, x: torch.Tensor, kind: str, min_side: int, need: Sequence[Tuple[int, int]] = ()):
    """``torch.export.export`` (non-strict) with the dynamic axes of ``kind``.

    For ``kind="hw"`` height and width first range over ``[min_side, MAX_SIDE]``. When torch
    narrows that range (a guard such as ``H >= 33``: the last stage's map may not be 1x1, since
    torch specialises size-1 axes), the export is retried with torch's suggested ranges (or, where
    torch suggests derived dims only, with the minimum raised to ``min_side + 1``, then
    ``2 * min_side + 1``), provided
    they still contain the export size and every size of ``need``. Returns
    ``(ExportedProgram, ranges)``, ``ranges`` the height/width ``(min, max)`` of the graph.
    """
    ranges = {"height": (min_side, MAX_SIDE), "width": (min_side, MAX_SIDE)} if kind == "hw" else {}
    sizes = [tuple(x.shape[-2:])] + [tuple(n) for n in need]
    for _ in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep = torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(kind, ranges), strict=False)
            return ep, ranges
        except Exception as e:  # noqa: BLE001
            if kind != "hw":
                raise
            sug = _suggested_ranges(e)
            if not sug and _SIZE_ONE_GUARD.search(str(e)):
                # A guard that some stage's map is not 1 wide (``(...) // 32) != 1``), with
                # torch's suggestion given as derived dims (``height = 32*_height``) that
                # _suggested_ranges does not read: start the range above the sizes whose last
                # map would be 1x1: ``min_side + 1`` (a map of 2 at stride ``min_side`` with
                # ceil padding), then ``2 * min_side + 1``.
                lo = next((v for v in (min_side + 1, 2 * min_side + 1) if v > ranges["height"][0]), None)
                if lo is not None:
                    sug = {k: (max(lo, v[0]), v[1]) for k, v in ranges.items()}
            if not sug:
                raise
            new = {k: sug.get(k, v) for k, v in ranges.items()}
            fits = all(new["height"][0] <= h <= new["height"][1] and new["width"][0] <= w <= new["width"][1] for h, w in sizes)
            if new == ranges or not fits:
                raise
            ranges = new
    raise RuntimeError("torch.export kept narrowing the height/width range")


@contextlib.contextmanager
def _time_limit(seconds: float, what: str):
    """Raise :class:`TimeoutError` in the body after ``seconds`` (SIGALRM; no limit for
    ``seconds <= 0``, off the main thread or where SIGALRM does not exist)."""
    usable = seconds > 0 and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"{what} did not finish within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def export_onnx(model: nn.Module, x: torch.Tensor, output: os.PathLike, *, dynamic: str = "auto",
                exporter: str = "auto", opset: Optional[int] = None, output_names: Sequence[str] = ("logits",),
                optimize: bool = True, min_side: int = 32, need_sizes: Sequence[Tuple[int, int]] = (),
                hw_timeout: float = 300.0, log=print) -> Dict[str, Any]:
    """Export ``model`` (eval mode) for inputs like ``x`` ``(B, 3, H, W)`` to the ONNX file ``output``.

    ``dynamic`` is one of :data:`DYNAMIC_CHOICES` (see the module docstring). ``exporter``:
    ``min_side`` is the smallest height/width a dynamic graph should accept (the model's
    ``min_input_size``); where torch narrows it (see :func:`_torch_export`) the graph must still
    take every ``(H, W)`` of ``need_sizes``; the dynamic height/width trace is given up after
    ``hw_timeout`` seconds (0: no limit) and the model exported with a fixed height/width.
    ``exporter``:
    ``"dynamo"`` (``torch.export`` then ``torch.onnx.export(dynamo=True)``), ``"torchscript"``
    (``torch.onnx.export(dynamo=False)``, a trace) or ``"auto"`` (dynamo, TorchScript only where
    dynamo fails). The TorchScript path makes the batch axis dynamic (unless ``dynamic="none"``)
    and never height/width (a trace bakes the padding decisions).

    Returns a dict: ``exporter``, ``exporter_note`` (why TorchScript, if it was used),
    ``dynamic_axes`` (e.g. ``["batch", "height", "width"]``), ``hw_range`` (``[[Hmin, Hmax],
    [Wmin, Wmax]]`` the dynamic graph was exported for), ``dynamic_hw_note`` (why height and
    width are fixed, if they are), ``export_s`` (seconds), ``opset``, ``onnx_mb`` (file plus
    external data). Raises :class:`UsageError` for ``dynamic="hw"`` on a model that cannot have
    it and ``RuntimeError`` when every allowed path failed (with each path's error).
    """
    if dynamic not in DYNAMIC_CHOICES:
        raise UsageError(f"--dynamic must be one of {DYNAMIC_CHOICES}, got {dynamic!r}")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise UsageError(f"--exporter must be auto, dynamo or torchscript, got {exporter!r}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    info: Dict[str, Any] = dict(exporter=None, exporter_note="", dynamic_axes=[], dynamic_hw_note="")
    errors: List[str] = []
    t0 = time.perf_counter()
    if exporter in ("auto", "dynamo"):
        kinds = {"auto": ["hw", "batch"], "hw": ["hw"], "batch": ["batch"], "none": ["none"]}[dynamic]
        ep = None
        for kind in kinds:
            try:
                # a symbolic height/width can send torch's shape reasoning (sympy) into minutes on
                # windowed models whose every size decision has been made traceable; past
                # ``hw_timeout`` seconds the model is exported with a fixed height/width instead
                with _time_limit(hw_timeout if kind == "hw" else 0, "the dynamic height/width trace"):
                    ep, ranges = _torch_export(model, x, kind, min_side, need_sizes)
                break
            except Exception as e:  # noqa: BLE001  (any trace failure: record it, try the next)
                why = _short(e)
                if kind == "hw":
                    info["dynamic_hw_note"] = why
                    log(f"height/width cannot be dynamic for this model ({why}); exporting at {tuple(x.shape[-2:])} with fixed height/width")
                    if dynamic == "hw":
                        raise UsageError(f"--dynamic hw: the model's graph cannot take a dynamic height/width ({why}); "
                                         f"use --dynamic batch and export at each input size with --img-size") from None
                errors.append(f"torch.export ({kind}): {why}")
        if ep is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    prog = torch.onnx.export(ep, (x,), dynamo=True, opset_version=opset, input_names=["input"],
                                             output_names=list(output_names), dynamic_shapes=_dynamic_shapes(kind, ranges),
                                             optimize=optimize, verbose=False)
                prog.save(str(output))
                info["exporter"] = "dynamo"
                info["dynamic_axes"] = {"hw": ["batch", "height", "width"], "batch": ["batch"], "none": []}[kind]
                if kind == "hw":
                    info["hw_range"] = [list(ranges["height"]), list(ranges["width"])]
            except Exception as e:  # noqa: BLE001
                errors.append(f"torch.onnx.export(dynamo=True): {_short(e)}")
    if info["exporter"] is None and exporter in ("auto", "torchscript"):
        if errors:
            info["exporter_note"] = "; ".join(errors)
            log(f"dynamo export failed ({info['exporter_note']}); falling back to the TorchScript exporter")
        axes = {} if dynamic == "none" else {"input": {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), str(output), dynamo=False, opset_version=opset or 17,
                                  input_names=["input"], output_names=list(output_names), dynamic_axes=axes or None)
            info["exporter"] = "torchscript"
            info["dynamic_axes"] = ["batch"] if axes else []
            if dynamic in ("auto", "hw") and not info["dynamic_hw_note"]:
                info["dynamic_hw_note"] = "TorchScript export traces the padding decisions of the export size"
        except Exception as e:  # noqa: BLE001
            errors.append(f"torch.onnx.export(dynamo=False): {_short(e)}")
    if info["exporter"] is None:
        raise RuntimeError("ONNX export failed: " + "; ".join(errors))
    info["export_s"] = time.perf_counter() - t0
    import onnx

    proto = onnx.load(str(output), load_external_data=False)
    info["opset"] = next((o.version for o in proto.opset_import if o.domain in STANDARD_DOMAINS), None)
    info["onnx_mb"] = _onnx_size_mb(output, proto)
    return info


def _onnx_size_mb(path: Path, proto) -> float:
    """Size of the ``.onnx`` file and of the external-data files it references, in MiB (2^20 B)."""
    files = {path}
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                files.add(path.parent / e.value)
    return sum(f.stat().st_size for f in files if f.exists()) / 2**20


def custom_ops(path: os.PathLike) -> List[str]:
    """``domain::op`` of every node of the ONNX file (graph, subgraphs, local functions) that is
    not a standard ONNX operator nor a call of one of the model's local functions; ``[]`` when
    the graph uses standard operators only."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    local = {(f.domain, f.name) for f in proto.functions}
    found = set()

    def walk(nodes):
        for n in nodes:
            if n.domain not in STANDARD_DOMAINS and (n.domain, n.op_type) not in local:
                found.add(f"{n.domain}::{n.op_type}")
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g.node)
                for g in a.graphs:
                    walk(g.node)

    walk(proto.graph.node)
    for f in proto.functions:
        walk(f.node)
    return sorted(found)


def _ort_session(path: os.PathLike, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _eager(model: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def check_onnx(model: nn.Module, path: os.PathLike, checks: Sequence[Tuple[int, int, int]], *, atol: float = 1e-4,
               threads: int = 1, repeats: int = 5, bench: Optional[Tuple[int, int, int]] = None,
               seed: int = 0) -> Dict[str, Any]:
    """Run the ONNX file in an ONNX Runtime CPU session against PyTorch eager.

    ``checks``: ``(batch, H, W)`` inputs (random normal float32, seeded) at which the max abs
    difference of every output is measured. ``bench``: ``(batch, H, W)`` at which ORT and eager
    are timed (median of ``repeats`` calls after one warm-up, ``threads`` intra-op threads on
    both sides); ``None`` skips timing. Returns ``checks`` (one dict per input: ``batch``,
    ``size``, ``max_abs_diff`` overall and ``per_output``, ``ok``, or ``error`` when ORT refused
    the input), ``ok`` (every check within ``atol``) and ``latency`` (``threads``, ``repeats``,
    ``ort_ms``, ``eager_ms``, ``ort_vs_eager`` = eager_ms / ort_ms, > 1 means ORT is faster).
    """
    torch.set_num_threads(threads)
    sess = _ort_session(path, threads)
    in_name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    results = []
    for b, h, w in checks:
        x = torch.randn(b, 3, h, w, generator=gen)
        ref = _eager(model, x)
        row: Dict[str, Any] = dict(batch=b, size=[h, w])
        try:
            outs = sess.run(None, {in_name: x.numpy()})
        except Exception as e:  # noqa: BLE001  (ORT refuses a shape or fails inside: a failed check)
            row.update(ok=False, error=_short(e, 300))
            results.append(row)
            continue
        diffs = []
        for r, o in zip(ref, outs):
            o = torch.from_numpy(o)
            diffs.append(float("inf") if o.shape != r.shape else (o - r).abs().max().item() if r.numel() else 0.0)
        row.update(max_abs_diff=max(diffs), per_output=diffs, ok=len(outs) == len(ref) and max(diffs) <= atol)
        results.append(row)
    out: Dict[str, Any] = dict(checks=results, atol=atol, ok=all(r["ok"] for r in results))
    if bench is not None:
        b, h, w = bench
        x = torch.randn(b, 3, h, w, generator=gen)
        feed = {in_name: x.numpy()}
        ort_ms = _median_ms(lambda: sess.run(None, feed), repeats)
        eager_ms = _median_ms(lambda: _eager(model, x), repeats)
        out["latency"] = dict(batch=b, size=[h, w], threads=threads, repeats=repeats, ort_ms=ort_ms, eager_ms=eager_ms,
                              ort_vs_eager=eager_ms / ort_ms)
    return out


def _size_pair(values: Optional[Sequence[int]], flag: str) -> Optional[Tuple[int, int]]:
    if values is None:
        return None
    if len(values) not in (1, 2):
        raise UsageError(f"{flag} takes one size (square) or two (H W), got {len(values)} values")
    h, w = (values[0], values[0]) if len(values) == 1 else values
    return int(h), int(w)


def _parse_check_sizes(items: Optional[Sequence[str]]) -> Optional[List[Tuple[int, int]]]:
    if items is None:
        return None
    out = []
    for item in items:
        parts = item.lower().split("x")
        try:
            h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
        except (ValueError, IndexError):
            raise UsageError(f"--check-sizes takes HxW (e.g. 224x224 206x182) or one side, got {item!r}") from None
        out.append((h, w))
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``visionattn-export``."""
    p = argparse.ArgumentParser(description="Export a timm/visionattn model to ONNX and check it with ONNX Runtime.",
                                epilog="Writes OUTPUT (.onnx) and OUTPUT with .json (the checks); exit 1 when a check fails.")
    p.add_argument("--model", required=True, help="timm model name (with an optional .tag), hf-hub:org/repo or local-dir:PATH")
    p.add_argument("--pretrained", nargs="?", const=True, default=None,
                   help="load timm's pretrained weights (the default tag, or the tag given)")
    p.add_argument("--checkpoint", type=Path, help="load weights from a local .safetensors/.pth/.pth.tar file")
    p.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", default=None, help="constructor kwargs (YAML values)")
    p.add_argument("--num-classes", type=int, help="classifier size (default: the model's)")
    p.add_argument("--img-size", type=int, nargs="+", metavar="N", help="export size: one side or H W (default: the model's input_size)")
    p.add_argument("--batch", type=int, default=1, help="batch of the checks and of the timing (default 1)")
    p.add_argument("--dynamic", choices=DYNAMIC_CHOICES, default="auto",
                   help="dynamic axes: auto = batch + height/width where the model allows, else batch (default); "
                        "hw = batch + height/width or fail; batch; none")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="auto = torch.onnx dynamo path, TorchScript only where it fails (default)")
    p.add_argument("--features-only", action="store_true", help="export the feature extractor (one NCHW output per tap)")
    p.add_argument("--out-indices", type=int, nargs="+", help="taps of --features-only (default: all stages)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: torch's, 20 for the dynamo path, 17 for TorchScript)")
    p.add_argument("--no-optimize", action="store_true", help="skip onnxscript's graph optimizer (dynamo path)")
    p.add_argument("--output", type=Path, help="the .onnx file (default: <model>.onnx); the checks go to the same name with .json")
    p.add_argument("--check-sizes", nargs="+", metavar="HxW",
                   help="sizes of the ONNX Runtime check (default: the export size and one no window divides)")
    p.add_argument("--atol", type=float, default=1e-4, help="max abs difference allowed against eager (default 1e-4)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of ONNX Runtime and torch for the checks (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls of ORT and of eager, median reported (default 5; 0 = no timing)")
    p.add_argument("--hw-timeout", type=float, default=300.0,
                   help="seconds allowed to the dynamic height/width trace before exporting with a fixed height/width "
                        "(default 300; 0: no limit)")
    p.add_argument("--no-check", action="store_true", help="export only (no ONNX Runtime check, no timing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights (random init) and of the check inputs")
    return p


def _resolve(args: argparse.Namespace) -> Dict[str, Any]:
    """Validate the arguments before any work; returns the derived settings."""
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.out_indices is not None and not args.features_only:
        raise UsageError("--out-indices needs --features-only")
    if args.pretrained and args.checkpoint is not None:
        raise UsageError("give --pretrained or --checkpoint, not both")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise UsageError(f"--checkpoint {args.checkpoint} does not exist")
    msg = unknown_model_message(args.model)
    if msg:
        raise UsageError(msg)
    output = args.output or Path(f"{args.model.split(':')[-1].replace('/', '_')}.onnx")
    if output.suffix != ".onnx":
        raise UsageError(f"--output {output}: give a file name ending in .onnx")
    check_output_file(output, "--output")
    return dict(output=output, json=output.with_suffix(".json"), img_size=_size_pair(args.img_size, "--img-size"),
                check_sizes=_parse_check_sizes(args.check_sizes), model_kwargs=parse_model_kwargs(args.model_kwargs))


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Export, check, print and write the JSON report; returns the report (``ok`` says if it passed)."""
    args = build_parser().parse_args(argv)
    s = _resolve(args)
    pre = None if ":" in args.model else timm.models.get_pretrained_cfg(args.model, allow_unregistered=True)
    least = getattr(pre, "min_input_size", None)
    if least and s["img_size"] and min(s["img_size"]) < least[-1]:
        h, w = s["img_size"]
        raise UsageError(f"input size {h}x{w} is below the model's min_input_size {least[-1]}x{least[-1]}")
    torch.manual_seed(args.seed)
    model = build_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, img_size=s["img_size"],
                        features_only=args.features_only, out_indices=args.out_indices, num_classes=args.num_classes,
                        model_kwargs=s["model_kwargs"])
    cfg = getattr(model, "pretrained_cfg", None) or {}
    min_size = int((cfg.get("min_input_size") or (3, 32, 32))[-1])  # 32: the zoo's smallest side
    img_size = s["img_size"] or tuple(int(v) for v in (cfg.get("input_size") or (3, 224, 224))[1:])
    for h, w in [img_size] + list(s["check_sizes"] or []):
        if min(h, w) < min_size:
            raise UsageError(f"input size {h}x{w} is below the model's min_input_size {min_size}x{min_size}")
    names = _output_names(model, args.features_only)
    dynamic_batch = args.dynamic != "none"
    trace_batch = max(args.batch, 2) if dynamic_batch else args.batch  # torch.export specialises a batch of 1
    x = torch.randn(trace_batch, 3, *img_size, generator=torch.Generator().manual_seed(args.seed))
    print(f"exporting {args.model} ({'features ' + ','.join(names) if args.features_only else 'classifier'}) "
          f"at {img_size[0]}x{img_size[1]}, dynamic={args.dynamic}, exporter={args.exporter} -> {s['output']}", flush=True)
    sizes = s["check_sizes"] or [img_size, odd_check_size(img_size, min_size)]
    info = export_onnx(model, x, s["output"], dynamic=args.dynamic, exporter=args.exporter, opset=args.opset,
                       output_names=names, optimize=not args.no_optimize, min_side=min_size, need_sizes=sizes,
                       hw_timeout=args.hw_timeout)
    info["custom_ops"] = custom_ops(s["output"])
    report: Dict[str, Any] = dict(
        model=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, model_kwargs=s["model_kwargs"],
        features_only=args.features_only, out_indices=args.out_indices, outputs=names, img_size=list(img_size),
        min_input_size=min_size, output=s["output"], **info, versions=_versions())
    rng = info.get("hw_range")
    rng = f" (H {rng[0][0]}..{rng[0][1]}, W {rng[1][0]}..{rng[1][1]})" if rng else ""
    print(f"  exporter {info['exporter']}, opset {info['opset']}, dynamic axes {info['dynamic_axes'] or 'none'}{rng}, "
          f"{info['export_s']:.1f} s, {info['onnx_mb']:.1f} MB, custom ops: {', '.join(info['custom_ops']) or 'none'}")
    ok = not info["custom_ops"]
    if not args.no_check:
        hw_dynamic = "height" in info["dynamic_axes"]
        checks = []
        for i, (h, w) in enumerate(sizes):
            if (h, w) != tuple(img_size) and not hw_dynamic:
                print(f"  check at {h}x{w} skipped: the graph has a fixed {img_size[0]}x{img_size[1]} input "
                      f"(export at that size with --img-size {h} {w})")
                continue
            checks.append((args.batch, h, w))
        if dynamic_batch:
            checks.append((3 if args.batch != 3 else 1, *img_size))
        report["check_sizes_skipped"] = [list(hw) for hw in sizes if (args.batch, *hw) not in checks]
        res = check_onnx(model, s["output"], checks, atol=args.atol, threads=args.threads, repeats=args.repeats,
                         bench=(args.batch, *img_size) if args.repeats > 0 else None, seed=args.seed)
        report.update(res)
        for r in res["checks"]:
            hw = "x".join(map(str, r["size"]))
            state = "ok" if r["ok"] else "FAILED"
            detail = r.get("error") or f"max abs diff {r['max_abs_diff']:.2e}"
            print(f"  ORT vs eager at batch {r['batch']}, {hw}: {detail} (atol {args.atol:g}) {state}")
        if "latency" in res:
            lat = res["latency"]
            print(f"  latency ({lat['threads']} thread(s), median of {lat['repeats']}): ORT {lat['ort_ms']:.1f} ms, "
                  f"eager {lat['eager_ms']:.1f} ms, eager/ORT {lat['ort_vs_eager']:.2f}")
        ok = ok and res["ok"]
    report["ok"] = ok
    atomic_write_text(s["json"], json.dumps(jsonable(report), indent=2) + "\n")
    print(f"wrote {s['output']} and {s['json']}")
    if info["custom_ops"]:
        print(f"error: the graph uses non-standard operators: {', '.join(info['custom_ops'])}", file=sys.stderr)
    failed = [r for r in report.get("checks", []) if not r["ok"]]
    if failed:
        what = "; ".join(f"batch {r['batch']} {r['size'][0]}x{r['size'][1]}: "
                         + (r.get("error") or f"max abs diff {r['max_abs_diff']:.3g} > atol {args.atol:g}") for r in failed)
        print(f"error: ONNX Runtime does not match PyTorch ({what})", file=sys.stderr)
    return report


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry (``visionattn-export``): 0 when export and checks pass, 1 when a check
    fails, 2 for a usage error (printed as ``error: ...`` without a traceback)."""
    from visionattn.models._hub import CheckpointFileError
    from visionattn.models._registry import CheckpointKeyError

    return run_cli(main, argv, errors=(UsageError, CheckpointFileError, CheckpointKeyError),
                   status=lambda report: 0 if report["ok"] else 1)


if __name__ == "__main__":
    sys.exit(cli())
