"""Building a model by name for a program: ``timm.create_model`` with the zoo registered, drop
rates, a fixed ``img_size`` where the architecture takes one, and pretrained weights from a tag,
the Hub, a local folder or a local ``.safetensors``/``.pth`` file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import timm
import timm.models
import torch
import torch.nn as nn

import visionattn  # noqa: F401  (registers the zoo's models with timm)

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
