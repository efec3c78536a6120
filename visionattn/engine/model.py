"""Building a model by name for a program: ``timm.create_model`` with the zoo registered, drop
rates, a fixed ``img_size`` where the architecture takes one, and pretrained weights from a tag,
the Hub, a local folder or a local ``.safetensors``/``.pth`` file; and reading a checkpoint of any of
our programs (or timm's, or a plain state dict) with the metadata it records (:func:`read_checkpoint`,
:func:`build_model`: shared by validate, visualize and export)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import timm
import timm.models
import torch
import torch.nn as nn

import visionattn  # noqa: F401  (registers the zoo's models with timm)
from visionattn.models._hub import read_checkpoint as read_weights_file

from .cli import UsageError


def _safetensors_classes(path: os.PathLike, classifier: Optional[str]) -> Optional[int]:
    """Rows of ``<classifier>.weight`` in a safetensors file (read from its header only)."""
    if not classifier:
        return None
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        key = f"{classifier}.weight"
        return int(f.get_slice(key).get_shape()[0]) if key in f.keys() else None


def create_model(name: str, num_classes: int, model_kwargs: Optional[Dict[str, Any]] = None,
                 drop_path: Optional[float] = None, *, img_size: Optional[int] = None, drop: Optional[float] = None,
                 pretrained: Any = None, pretrained_path: Optional[os.PathLike] = None, **extra) -> nn.Module:
    """``timm.create_model(name, num_classes=..., **model_kwargs)``.

    ``drop_path`` becomes ``drop_path_rate`` and ``drop`` ``drop_rate``. ``img_size`` is passed
    to constructors that take it (fixed-resolution models: CSWin, Agent, MaxViT, isotropic NAT);
    the others run at any size. Pretrained weights: ``pretrained=True`` (the default tag) or a
    tag string (``in22k``), an ``hf-hub:org/repo`` / ``local-dir:PATH`` name, or
    ``pretrained_path`` (a local ``.safetensors``/``.pth`` through
    ``pretrained_cfg_overlay=dict(file=...)``). timm then drops a classifier of another size
    (head reset) and the model's ``checkpoint_filter_fn`` resizes position tables for another
    ``img_size``. Raises :class:`UsageError` for a name timm does not know.
    """
    kwargs = dict(model_kwargs or {})
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    if drop is not None:
        kwargs["drop_rate"] = drop
    hub = ":" in name
    if not hub and not timm.is_model(name.split(".")[0]):
        raise UsageError(f"unknown model {name!r}: not registered with timm (nor by visionattn)")
    if isinstance(pretrained, str) and pretrained and not hub:
        name = f"{name.split('.')[0]}.{pretrained}"
    load = bool(pretrained) or pretrained_path is not None or hub
    if pretrained_path is not None:
        path = Path(pretrained_path)
        if not path.is_file():
            raise UsageError(f"--pretrained-path {path} does not exist")
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
        classifier = cfg.classifier if cfg is not None else "head.fc"
        if path.suffix == ".safetensors":
            overlay: Dict[str, Any] = dict(file=str(path))
            file_classes = _safetensors_classes(path, classifier)
        else:  # read it ourselves: timm's file loader unpickles without weights_only and prefers an EMA
            from visionattn.models._registry import unwrap_state_dict
            state_dict, _ = unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            overlay = dict(state_dict=state_dict)
            w = state_dict.get(f"{classifier}.weight") if classifier else None
            file_classes = int(w.shape[0]) if w is not None else None
        if file_classes is not None:
            overlay["num_classes"] = file_classes  # timm drops the head only when this differs
        extra["pretrained_cfg_overlay"] = {**overlay, **extra.get("pretrained_cfg_overlay", {})}
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        return timm.create_model(name, pretrained=load, num_classes=num_classes, **kwargs, **extra)
    except TypeError as e:
        if img_size is None or "img_size" not in str(e):
            raise
        kwargs.pop("img_size")  # this architecture takes any input size
        return timm.create_model(name, pretrained=load, num_classes=num_classes, **kwargs, **extra)


def _strip_prefix(state_dict: Dict[str, torch.Tensor], prefix: str = "module.") -> Dict[str, torch.Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def read_checkpoint(path: Path, use_ema: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Weights and recorded metadata of a checkpoint.

    Returns ``(state_dict, meta)``; ``meta`` may hold ``model``, ``model_kwargs``,
    ``num_classes``, ``data_config``, ``class_to_idx``, ``eval_precision`` and ``train_args``
    (whatever the file records). ``.safetensors`` files are read with safetensors (metadata
    from a ``config.json`` beside them); anything else with ``torch.load(weights_only=True)``, taking the ``model``
    or ``state_dict`` entry (``model_ema`` / ``state_dict_ema`` with ``use_ema``), or the whole file
    if it is a plain state dict.
    Raises :class:`UsageError` if the file is missing or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    meta: Dict[str, Any] = {}
    if path.suffix == ".safetensors":
        state_dict = dict(read_weights_file(path))  # errors name the file (truncated, corrupted)
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
    ckpt = read_weights_file(path)
    if use_ema:
        ema = next((ckpt[k] for k in ("model_ema", "state_dict_ema")
                    if isinstance(ckpt, dict) and isinstance(ckpt.get(k), dict)), None)
        if ema is None:
            raise UsageError(f"--use-ema: {path} holds no model_ema or state_dict_ema entry")
        ckpt = {**ckpt, "model": ema}
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
    if ckpt.get("eval_precision"):
        meta["eval_precision"] = ckpt["eval_precision"]
    return _strip_prefix(state_dict), meta


def build_model(name: str, num_classes: int, model_kwargs: Dict[str, Any], state_dict: Optional[Dict[str, Any]],
                pretrained: Any = None, img_size: Optional[int] = None) -> torch.nn.Module:
    """Create ``name`` through timm and load ``state_dict`` (or timm's pretrained weights when it
    is None) with the model's ``checkpoint_filter_fn`` (via ``pretrained_cfg_overlay``), so
    resolution-dependent tensors are adapted to ``img_size``. ``img_size`` is passed only to
    constructors that take it. Loading is strict: a checkpoint that does not fit raises
    ``RuntimeError`` naming the missing/unexpected keys."""
    kwargs = dict(model_kwargs)
    extra: Dict[str, Any] = {}
    if state_dict is not None:
        extra["pretrained_cfg_overlay"] = dict(state_dict=state_dict, num_classes=num_classes)
    elif isinstance(pretrained, str) and ":" not in name:
        name = f"{name.split('.')[0]}.{pretrained}"
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs, **extra)
    except TypeError as e:
        if "img_size" not in str(e) or "img_size" not in kwargs:
            raise
        kwargs.pop("img_size")  # the architecture runs at any input size
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs, **extra)
