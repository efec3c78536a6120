"""Thin glue to timm: registration without clobbering, building (every pretrained load read by
:mod:`visionattn.models._hub`), ``checkpoint_path=`` through the same reader, and strict checkpoint remapping."""
from __future__ import annotations

import inspect
import logging
from contextlib import nullcontext
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from timm.models import build_model_with_cfg, get_pretrained_cfg, is_model
from timm.models import register_model as _timm_register_model

__all__ = [
    "register_model",
    "list_models",
    "build_model",
    "unwrap_state_dict",
    "check_state_dict",
    "CheckpointKeyError",
    "load_checkpoint",
]

_OUR_MODELS: List[str] = []


def register_model(fn: Callable) -> Callable:
    """Register ``fn`` with timm under ``fn.__name__``, refusing names timm already has.

    timm silently replaces an existing model (and drops all its pretrained tags) when a name is
    registered twice; this wrapper raises instead.

    Raises:
        RuntimeError: when the name is already registered (by timm or by visionattn).
    """
    name = fn.__name__
    if is_model(name):
        raise RuntimeError(
            f"visionattn: refusing to register {name!r}: timm already has a model of that name "
            "(registering it again would overwrite timm's model and its pretrained tags)"
        )
    _OUR_MODELS.append(name)
    return _timm_register_model(fn)


def list_models(pattern: str = "") -> List[str]:
    """Names of the models visionattn registers with timm (sorted); ``pattern`` is an fnmatch filter."""
    import fnmatch

    names = sorted(_OUR_MODELS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def build_model(
    model_cls,
    variant: str,
    pretrained: bool,
    filter_fn: Callable,
    defaults: Optional[Mapping] = None,
    kwargs: Optional[Mapping] = None,
    out_indices: Tuple[int, ...] = (0, 1, 2, 3),
):
    """Build a registered variant: ``defaults`` (the paper's config) overridden by the user's
    ``kwargs``, through timm's ``build_model_with_cfg`` with our strict ``filter_fn`` and
    ``features_only`` served by ``forward_intermediates`` (``feature_cls='getter'``; the user may
    pass ``out_indices``, default ``out_indices``). With ``pretrained=True`` the weights are read
    by :mod:`visionattn.models._hub` whatever their source (see :func:`_build_pretrained`).
    timm's ``device=`` / ``dtype=`` kwargs: the model is built inside ``with torch.device(device)``
    and then swept onto ``device`` / cast to ``dtype`` by :func:`place_model` (float tensors only).

    ``img_size`` (int or ``(H, W)``) is accepted by every model: models built for a resolution
    (tables, windows, position embeddings) take it as an argument; the others run at any size and
    ignore it. Either way the returned model's pretrained cfg records it as ``input_size`` (and
    ``pool_size`` scaled alike), so timm's ``resolve_data_config(model=model)`` follows it.

    Raises:
        PretrainedDownloadError: every source of the tag's weights failed (each listed).
        CheckpointFileError: an unreadable, corrupted, unsafe or non-finite checkpoint (named).
        CheckpointKeyError: the checkpoint does not fit the architecture (keys listed).
    """
    user_size = (kwargs or {}).get("img_size")
    kwargs = {**(defaults or {}), **(kwargs or {})}
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    with torch.device(device) if device is not None else nullcontext():
        model = _build(model_cls, variant, pretrained, filter_fn, kwargs, out_indices, user_size)
    return place_model(model, device, dtype)


def place_model(model: torch.nn.Module, device=None, dtype=None) -> torch.nn.Module:
    """Put every parameter and buffer of ``model`` on ``device`` and every floating-point one in
    ``dtype`` (timm's ``device=`` / ``dtype=`` factory kwargs; None leaves that property alone).

    The model is built inside ``with torch.device(device)``, so most tensors are created there;
    this final sweep also moves tensors made another way (e.g. index buffers computed on the CPU).
    Integer and bool buffers (relative-position indices, masks) keep their dtype.

    Raises:
        TypeError: ``dtype`` is not a floating-point or complex dtype.
    """
    if dtype is not None:
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None) if not dtype.startswith("torch.") else getattr(torch, dtype[6:], None)
        if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype.is_complex):
            raise TypeError(f"dtype must be a floating-point torch.dtype (e.g. torch.float32, torch.bfloat16); got {dtype!r}")
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def _build(model_cls, variant: str, pretrained: bool, filter_fn: Callable, kwargs: Dict, out_indices, user_size=None):
    taps = kwargs.pop("out_indices", out_indices)
    size = kwargs.get("img_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        # timm's save_for_hf records img_size as (H, W); our square-size models take one int
        kwargs["img_size"] = int(size[0])
    if user_size is not None:
        _check_img_size(variant, user_size)
    if "img_size" in kwargs and not _takes_kwarg(model_cls, "img_size"):
        kwargs.pop("img_size")  # any-size model: img_size only sets the pretrained cfg's input_size (below)
    if not pretrained:
        model = build_model_with_cfg(
            model_cls,
            variant,
            pretrained,
            pretrained_filter_fn=filter_fn,
            feature_cfg=dict(flatten_sequential=True, out_indices=taps, feature_cls="getter"),
            **kwargs,
        )
    else:
        model = _build_pretrained(model_cls, variant, filter_fn, taps, kwargs)
    if user_size is not None:
        _set_cfg_input_size(model, user_size)
    return model


#: Logger that names the source of every pretrained load (timm's own logger only sees the stand-in below).
LOAD_LOGGER = "visionattn.models.pretrained"

#: Stands in for the state dict in the cfg handed to timm, so timm's own file / URL / Hub readers
#: never run: the checkpoint was already read by ``visionattn.models._hub`` (non-empty: timm tests truthiness).
_SENTINEL_KEY = "__visionattn_checkpoint_read_by_visionattn__"


def _build_pretrained(model_cls, variant: str, filter_fn: Callable, taps, kwargs: Dict):
    """``pretrained=True``: read the checkpoint through ``visionattn.models._hub`` (one reader for
    every source: overlay file or state dict, ``local-dir:``, ``hf-hub:``, Hub id, tag URL and its
    mirrors), then let timm build the model and load it (first-conv / classifier adaptation,
    ``features_only``) from an in-memory state dict, the raw checkpoint going to ``filter_fn``."""
    from timm.models._builder import resolve_pretrained_cfg

    from ._hub import check_finite, load_pretrained_checkpoint, pretrained_sources

    cfg = resolve_pretrained_cfg(variant, kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None)).to_dict()
    sources = pretrained_sources(cfg)
    checkpoint, label = load_pretrained_checkpoint(sources, name=f"{cfg.get('architecture') or variant}"
                                                   + (f".{cfg['tag']}" if cfg.get("tag") else ""), cache_dir=kwargs.get("cache_dir"))
    # timm's loader only sees the in-memory stand-in ("from state dict"): say where the weights came from
    logging.getLogger(LOAD_LOGGER).info("Loading pretrained weights from %s", label)

    def read_filter(_sentinel, model):
        sd = filter_fn(checkpoint, model)
        check_finite(sd, label)
        return sd

    original = {k: cfg.get(k) for k in ("source", "state_dict")}
    cfg.update(state_dict={_SENTINEL_KEY: torch.zeros(())}, source="")
    model = build_model_with_cfg(
        model_cls,
        variant,
        True,
        pretrained_cfg=cfg,
        pretrained_filter_fn=read_filter,
        feature_cfg=dict(flatten_sequential=True, out_indices=taps, feature_cls="getter"),
        **kwargs,
    )
    for m in (model, getattr(model, "model", None)):
        pc = getattr(m, "pretrained_cfg", None)
        if isinstance(pc, dict):
            pc.update(original)
    return model


def load_checkpoint(model: torch.nn.Module, checkpoint_path, *args, **kwargs):
    """``timm.create_model(..., checkpoint_path=...)`` for visionattn models: the file is read by
    :func:`visionattn.models._hub.read_checkpoint` (errors name the file), converted by the
    family's ``checkpoint_filter_fn`` (official layouts accepted; the filter picks ``model`` or
    ``state_dict_ema`` as for ``pretrained=True``), checked for NaN/Inf and loaded strictly.
    Other models go to timm's own ``load_checkpoint`` unchanged (installed in
    ``timm.models._factory`` at import, the only place ``create_model`` looks it up).

    Raises:
        CheckpointFileError: unreadable, truncated or non-finite file.
        CheckpointKeyError: the weights do not fit the model (keys listed; a classifier of another
            class count says which ``num_classes`` to pass).
    """
    import sys

    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if not type(model).__module__.startswith("visionattn.") or filter_fn is None or str(checkpoint_path).lower().endswith((".npz", ".npy")):
        return _timm_load_checkpoint(model, checkpoint_path, *args, **kwargs)
    from ._hub import check_finite, read_checkpoint

    label = str(checkpoint_path)
    sd = filter_fn(read_checkpoint(checkpoint_path), model)
    check_finite(sd, label)
    own = model.state_dict()
    heads = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)
    )
    missing = sorted(k for k in own if k not in sd)
    if heads or missing:
        hint = ""
        fc = sd.get("head.fc.weight")
        if fc is not None and "head.fc.weight" in own and fc.shape[0] != own["head.fc.weight"].shape[0]:
            hint = f"\n  the checkpoint's classifier has {fc.shape[0]} classes: pass num_classes={fc.shape[0]}"
        raise CheckpointKeyError(
            f"{label} does not match {type(model).__name__}:"
            + (f"\n  shape mismatches: {', '.join(heads)}" if heads else "")
            + (f"\n  model keys missing from the checkpoint: {', '.join(missing[:12])}" if missing else "")
            + hint
        )
    return model.load_state_dict(sd, strict=True)


def _install_checkpoint_path_hook() -> None:
    from timm.models import _factory

    if not callable(getattr(_factory, "load_checkpoint", None)):  # another timm layout: leave checkpoint_path= to timm
        return
    if getattr(_factory.load_checkpoint, "__wrapped_by_visionattn__", False):
        return
    global _timm_load_checkpoint
    _timm_load_checkpoint = _factory.load_checkpoint
    load_checkpoint.__wrapped_by_visionattn__ = True
    _factory.load_checkpoint = load_checkpoint


_timm_load_checkpoint = None
_install_checkpoint_path_hook()


def _check_img_size(variant: str, img_size) -> None:
    """Refuse an ``img_size`` below the variant's ``min_input_size`` (its pretrained cfg), by name."""
    cfg = get_pretrained_cfg(variant, allow_unregistered=True)
    least = getattr(cfg, "min_input_size", None) if cfg is not None else None
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)[-2:]
    if least and (int(size[0]) < least[-2] or int(size[-1]) < least[-1]):
        raise ValueError(f"{variant}: img_size {img_size} is smaller than its min_input_size {least[-2]}x{least[-1]} pixels")


def _takes_kwarg(model_cls, name: str) -> bool:
    """Whether ``model_cls(...)`` accepts ``name`` (named, or passed on through ``**kwargs``)."""
    params = inspect.signature(model_cls).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _set_cfg_input_size(model, img_size) -> None:
    """Record a user's ``img_size=`` in the model's pretrained cfg (``input_size``, and ``pool_size``
    scaled by the cfg's own ``input_size / pool_size`` stride), so that
    ``timm.data.resolve_data_config(model=model)`` preprocesses at that size."""
    h, w = (int(img_size), int(img_size)) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[-1]))
    for obj in (model, getattr(model, "model", None)):
        cfg = getattr(obj, "pretrained_cfg", None)
        if not isinstance(cfg, Mapping) or not cfg.get("input_size"):
            continue
        cfg = dict(cfg)
        old = cfg["input_size"]
        pool = cfg.get("pool_size")
        if pool:
            rh, rw = old[-2] // pool[0], old[-1] // pool[1]
            cfg["pool_size"] = (-(-h // rh), -(-w // rw))
        cfg["input_size"] = (old[0], h, w)
        obj.pretrained_cfg = obj.default_cfg = cfg


class CheckpointKeyError(KeyError):
    """A checkpoint does not match the model: unknown, missing or mis-shaped keys (all listed)."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")


def unwrap_state_dict(checkpoint: Mapping, prefer: Optional[str] = None) -> Tuple[Dict[str, torch.Tensor], Optional[str]]:
    """Return ``(state_dict, wrapper_key)`` from a checkpoint that may wrap its weights.

    Wrappers tried in order: ``prefer`` (if given), ``model``, ``state_dict``, ``module``
    (``state_dict_ema`` / ``model_ema`` only when asked for via ``prefer``). A leading ``module.``
    prefix (DataParallel/DDP) is removed.

    Raises:
        KeyError: ``prefer`` is given but absent from the checkpoint.
        TypeError: the checkpoint holds no tensors at the top level or under a known wrapper.
    """
    if prefer is not None:
        if prefer not in checkpoint:
            raise KeyError(f"checkpoint has no {prefer!r} entry; top-level keys: {sorted(checkpoint)[:20]}")
        sd, key = checkpoint[prefer], prefer
    else:
        sd, key = checkpoint, None
        for k in ("model", "state_dict", "module"):
            if k in checkpoint and isinstance(checkpoint[k], Mapping):
                sd, key = checkpoint[k], k
                break
    if not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise TypeError(f"checkpoint holds no tensors at {key or 'top level'}; top-level keys: {sorted(checkpoint)[:20]}")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd), key


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: torch.nn.Module,
    unknown: Iterable[str] = (),
    classifier: Iterable[str] = ("head.fc.weight", "head.fc.bias"),
    source: str = "checkpoint",
) -> None:
    """Verify that a converted state dict accounts for every key of ``model``.

    Classifier keys may be absent, extra (``num_classes=0``) or differ in shape (timm drops the
    classifier when ``num_classes`` differs); the input convolution(s) named by the model's ``first_conv``
    (timm's traits / ``pretrained_cfg``, set by the factory before loading) may differ in their
    input-channel dimension only, which timm's ``load_pretrained`` then adapts with
    ``adapt_input_conv`` (``in_chans != 3``); every other key must be present with the model's shape.

    Raises:
        CheckpointKeyError: listing unconvertible source keys (``unknown``), keys the model does
            not have, model keys the checkpoint lacks, and shape mismatches.
    """
    model_sd = model.state_dict()
    classifier = set(classifier)
    unknown = sorted(unknown)
    extra = sorted(k for k in state_dict if k not in model_sd and k not in classifier)
    missing = sorted(k for k in model_sd if k not in state_dict and k not in classifier)
    stems = _input_conv_weights(model)

    def fits(k: str) -> bool:
        a, b = tuple(state_dict[k].shape), tuple(model_sd[k].shape)
        if a == b:
            return True
        # an input conv for another channel count: only dim 1 (input channels) may differ
        return k in stems and len(a) == len(b) >= 2 and a[:1] + a[2:] == b[:1] + b[2:]

    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(model_sd[k].shape)}"
        for k in state_dict
        if k in model_sd and k not in classifier and not fits(k)
    )
    if unknown or extra or missing or shapes:
        parts = [f"{source} does not match {type(model).__name__}:"]
        for title, items in (
            ("unknown keys (no mapping)", unknown),
            ("keys the model does not have", extra),
            ("model keys missing from the checkpoint", missing),
            ("shape mismatches", shapes),
        ):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
                parts.append(f"  {title}: {shown}")
        raise CheckpointKeyError("\n".join(parts))


def _input_conv_weights(model: torch.nn.Module) -> set:
    """``'<first_conv>.weight'`` names of ``model`` (timm's traits, else its ``pretrained_cfg``)."""
    names = getattr(model, "_traits", {}).get("first_conv")
    if names is None:
        names = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if not names:
        return set()
    return {f"{n}.weight" for n in ((names,) if isinstance(names, str) else names)}
