"""Checkpoint I/O: training checkpoints (``last.pth.tar``, atomic, ``weights_only`` loading)
with every RNG state of every rank, fine-tuning starts from a checkpoint's weights, and the
exported ``model.safetensors`` + ``config.json`` (timm's ``save_for_hf``) and their reload."""
from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import timm.models
import torch
import torch.distributed as dist
import torch.nn as nn

import visionattn  # noqa: F401  (registers the zoo's models with timm)

from .cli import UsageError
from .distributed import is_distributed
from .files import _UMASK, atomic_write, fsync_dir, jsonable


CHECKPOINT_VERSION = 2
CHECKPOINT_NAME = "last.pth.tar"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


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


def get_all_rng_states(data_generator: torch.Generator) -> List[Dict[str, Any]]:
    """:func:`get_rng_state` of every rank (rank order), gathered with ``all_gather_object``."""
    state = get_rng_state(data_generator)
    if not is_distributed():
        return [state]
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered


def save_checkpoint(path: os.PathLike, state: Dict[str, Any]) -> Path:
    """``torch.save(state)`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: os.PathLike, program: str = "tools/train.py") -> Dict[str, Any]:
    """Load a training checkpoint with ``torch.load(weights_only=True)`` onto the CPU.
    Raises :class:`UsageError` if it is missing or is not one of ``program``'s (no ``model`` entry)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UsageError(f"{path} is not a training checkpoint written by {program} (no 'model' entry)")
    return ckpt


def find_resume_checkpoint(resume: str, output: Optional[os.PathLike], name: str = "last.pth.tar") -> Optional[Path]:
    """The checkpoint a ``--resume`` flag names: ``auto`` is ``<output>/<name>`` when it exists
    (None for a fresh start), a folder means ``<folder>/<name>``, anything else is the file itself.

    Raises:
        UsageError: ``--resume auto`` without an output folder.
    """
    if resume == "auto":
        if output is None:
            raise UsageError("--resume auto needs --output")
        path = Path(output) / name
        return path if path.is_file() else None
    path = Path(resume)
    return path / name if path.is_dir() else path


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


def run_tag(name: str, official_tags: Sequence[str] = ()) -> str:
    """The pretrained tag of a user's own run, from a free-form ``name`` (the run folder's name or
    ``--tag``): lower case, ``[a-z0-9_]`` only, never empty (``"run"``), and prefixed ``run_`` when it
    would equal one of ``official_tags`` (a user's CIFAR run must not read as ``in1k`` weights)."""
    out = re.sub(r"[^a-z0-9_]+", "_", str(name).lower()).strip("_") or "run"
    return f"run_{out}" if out in set(official_tags) else out


def export_weights(model: nn.Module, out_dir: os.PathLike, model_args: Dict[str, Any], data_config: Dict[str, Any],
                   label_names: Optional[List[str]] = None, tag: Optional[str] = None) -> Tuple[Path, Path]:
    """Save ``model.safetensors`` and ``config.json`` with ``timm.models.save_for_hf``.

    ``tag`` replaces the pretrained tag the model was created with (e.g. ``in1k`` of the official
    weights it started from): the trainer passes :func:`run_tag` of its output folder, so a
    ``config.json`` never names official weights it does not hold. Both files are written into a
    temp folder inside ``out_dir``, fsync'ed, then each ``os.replace``'d into place, so neither is
    ever seen half written. Returns their paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".export-"))
    try:
        timm.models.save_for_hf(
            model, tmp, model_args=jsonable(model_args), safe_serialization=True,
            data_config={k: data_config[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")},
            model_config=dict(**(dict(label_names=list(label_names)) if label_names else {}),
                              **(dict(pretrained_cfg=dict(tag=tag)) if tag else {})) or None)
        os.chmod(tmp / WEIGHTS_NAME, 0o666 & ~_UMASK)  # safetensors writes 0600; give the usual permissions
        paths = []
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp / name, out_dir / name)
            paths.append(out_dir / name)
        fsync_dir(out_dir)
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
