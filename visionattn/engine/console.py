"""What the command-line tools tell the user: progress bars, worker counts, loaded weights, model names.

Small helpers shared by ``train``, ``validate`` and ``coco`` (issue #19.11), kept apart from the
programs so each tool calls them in one line:

* :func:`show_progress`: tqdm bars only on a terminal (output redirected to a file or a pipe
  gets no bar frames; the per-epoch lines are still printed), unless asked for explicitly.
* :func:`default_workers`: data-loader workers per process that the machine can run without
  PyTorch's "suggested max number of worker" warning.
* :func:`with_load_report`: wraps a model constructor so that the pretrained weights it loads are
  reported (source, head re-initialised, missing and unexpected keys), which timm only logs at
  INFO level (not shown by default); :func:`describe_initial_checkpoint` does the same for
  ``--initial-checkpoint``.
* :func:`unknown_model_message`: "unknown model" with the closest registered names.
"""
from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO

import timm

__all__ = ["show_progress", "available_cpus", "default_workers", "with_load_report", "describe_pretrained_load",
           "describe_initial_checkpoint", "unknown_model_message"]


def show_progress(requested: Optional[bool] = None, stream: Optional[TextIO] = None) -> bool:
    """Whether to draw tqdm progress bars.

    ``requested=False`` (``--no-progress``): never. ``True`` (an explicit ``--progress``): always.
    ``None`` (not given): only when ``stream`` (default ``sys.stderr``, where tqdm draws) is a
    terminal, as tqdm's own ``disable=None`` does, so a log file does not fill with bar frames.
    """
    if requested is not None:
        return bool(requested)
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or file-less stream
        return False


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(cap: int = 4, processes_per_node: Optional[int] = None) -> int:
    """Data-loader workers per process: ``min(cap, CPUs / processes on this node)``, at least 0.

    ``processes_per_node`` defaults to torchrun's ``LOCAL_WORLD_SIZE`` (1 without torchrun).
    PyTorch's DataLoader warns when one loader asks for more workers than the CPUs available;
    this never does (on 2 CPUs: 2 workers; 1 CPU: 1).
    """
    procs = processes_per_node or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(0, min(int(cap), available_cpus() // max(1, procs)))


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: List[str] = []
        self.warnings: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if record.levelno >= logging.WARNING and not record.getMessage().startswith("Unexpected keys"):
            self.warnings.append(record.getMessage())


def _keys(messages: Sequence[str], kind: str) -> List[str]:
    for m in messages:
        hit = re.match(rf"{kind} keys \((.*)\) (discovered|found) while loading pretrained weights", m)
        if hit:
            return [k.strip() for k in hit.group(1).split(",") if k.strip()]
    return []


def describe_pretrained_load(model: Any, messages: Sequence[str]) -> Optional[str]:
    """One line on the pretrained weights timm just loaded into ``model``, or None if none were.

    ``messages`` are the records of visionattn's load logger (the source) and timm's ``timm.models._builder`` logger during the load
    ("Loading pretrained weights from ...", "Missing keys (...)", "Unexpected keys (...)"). The
    classifier counts as re-initialised when the model's class count differs from the one of its
    pretrained cfg (timm then drops the checkpoint's classifier).
    """
    source = next((m for m in messages if m.startswith("Loading pretrained weights from")), None)
    if source is None:
        return None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    tag = cfg.get("architecture", type(model).__name__) + (f".{cfg['tag']}" if cfg.get("tag") else "")
    where = source[len("Loading pretrained weights from "):]
    if where == "state dict":
        where = "a state dict read from --pretrained-path"
    parts = [f"pretrained weights: {tag} from {where}"]
    missing, unexpected = _keys(messages, "Missing"), _keys(messages, "Unexpected")
    ckpt_classes, classes = cfg.get("num_classes"), getattr(model, "num_classes", None)
    if ckpt_classes is not None and classes is not None and ckpt_classes != classes:
        heads = cfg.get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        reset = [k for k in missing if any(k.startswith(h + ".") for h in heads)]
        missing = [k for k in missing if k not in reset]
        parts.append(f"classifier re-initialised for {classes} classes (checkpoint: {ckpt_classes}): "
                     + (", ".join(reset) or ", ".join(heads) or "head"))
    parts.append("missing keys (left as initialised): " + (", ".join(missing) if missing else "none"))
    parts.append("unexpected keys (ignored): " + (", ".join(unexpected) if unexpected else "none"))
    return "; ".join(parts)


def with_load_report(create_fn: Callable[..., Any], log: Callable[[str], Any]) -> Callable[..., Any]:
    """``create_fn`` (a model constructor that may load pretrained weights through timm) that also
    reports through ``log`` what it loaded (:func:`describe_pretrained_load`); nothing is logged
    when no pretrained weights were loaded. timm's loader logger is raised to INFO and kept from
    propagating only for the duration of the call.

    Example: ``model = with_load_report(create_model, print)("dinat_mini", 10, pretrained=True)``.
    """

    @functools.wraps(create_fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        from visionattn.models._registry import LOAD_LOGGER

        # ours first: it names the file / URL / Hub repo; timm's then reports keys (and "state dict")
        loggers = [logging.getLogger(LOAD_LOGGER), logging.getLogger("timm.models._builder")]
        handler = _Records()
        saved = [(lg.level, lg.propagate) for lg in loggers]
        for lg in loggers:
            lg.addHandler(handler)
            lg.setLevel(logging.INFO)
            lg.propagate = False
        try:
            model = create_fn(*args, **kwargs)
        finally:
            for lg, (level, propagate) in zip(loggers, saved):
                lg.removeHandler(handler)
                lg.setLevel(level)
                lg.propagate = propagate
        for m in handler.warnings:  # what timm would have shown anyway (unexpected keys: in the summary)
            log(f"warning: {m}")
        text = describe_pretrained_load(model, handler.messages)
        if text:
            log(text)
        return model

    return wrapped


def describe_initial_checkpoint(path: Any, info: Dict[str, List[str]]) -> str:
    """One line on ``--initial-checkpoint`` weights: ``info`` is ``load_initial_checkpoint``'s
    ``{"skipped": [...], "missing": [...]}`` (skipped: shape differs, re-initialised)."""
    skipped, missing = list(info.get("skipped", [])), [k for k in info.get("missing", []) if k not in info.get("skipped", [])]
    return (f"initial weights from {path}; re-initialised (shape differs): {', '.join(skipped) or 'none'}; "
            f"missing keys (left as initialised): {', '.join(missing) or 'none'}")


def unknown_model_message(name: Optional[str]) -> Optional[str]:
    """None when ``name`` is empty, a Hub/local-dir name (``prefix:...``) or a model timm knows
    (with or without a ``.tag``); else "unknown model ..." with the closest registered names."""
    if not name or ":" in name:
        return None
    arch = name.split(".")[0]
    if timm.is_model(arch):
        return None
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see visionattn.list_models() or timm.list_models()"
    return f"unknown model {name!r}: not registered with timm (nor by visionattn){hint}"
