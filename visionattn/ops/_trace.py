"""Tracing support: when a function may cache tensors (never while torch.export / torch.compile /
jit tracing), and the padding/cropping leaves that keep shape decisions out of traced graphs."""
from __future__ import annotations

import contextlib
import typing

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch._subclasses.fake_tensor import FakeTensor

__all__ = ["is_tracing", "is_exporting", "has_symbolic_hw", "cache_context", "script_ignore", "pad_nhwc", "pad_nchw", "pad_nhwc_min", "crop_nhwc"]


def cache_context(tracing: bool):
    """Context to build tensors that enter a cross-call cache: outside inference mode (a cached
    index built under ``torch.inference_mode()`` is an inference tensor, which a later training
    call cannot save for backward), unless tracing (then nothing is cached)."""
    return contextlib.nullcontext() if tracing else torch.inference_mode(False)


def script_ignore(**annotations):
    """``torch.jit.ignore`` for an op that TorchScript cannot compile (Python-side plans, caches,
    backend dispatch): a scripted model calls it through the Python interpreter. Such a scripted
    model runs, but ``torch.jit.save`` refuses it (as for any ignored function).

    TorchScript reads an ignored function's signature from ``__annotations__`` without resolving
    the strings of ``from __future__ import annotations``; they are resolved here, and
    ``annotations`` overrides some (a ``Union[int, Sequence[int]]`` argument that models always
    pass as ``int``, for example).
    """

    def deco(fn):
        hints = typing.get_type_hints(fn)
        hints.update(annotations)
        fn.__annotations__ = hints
        return torch.jit.ignore(fn)

    return deco


def is_tracing(x: torch.Tensor) -> bool:
    """True while ``x`` is being traced (dynamo, non-strict export fake tensors, jit tracing).

    Index tables built then are graph constants of that trace and must not enter a cache that
    eager calls later read (they would receive fake tensors).
    """
    return torch.compiler.is_compiling() or isinstance(x, FakeTensor) or torch.jit.is_tracing()


def is_exporting() -> bool:
    """True inside ``torch.export`` (``torch.compiler.is_exporting()``); False in eager mode, under
    TorchScript and under ``torch.compile``. TorchScript compiles only the first branch below (a
    static ``torch.jit.is_scripting()`` condition), so the padding helpers stay scriptable."""
    if torch.jit.is_scripting():
        return False
    else:
        return torch.compiler.is_exporting()


def has_symbolic_hw(x: torch.Tensor, h_dim: int = 1, w_dim: int = 2) -> bool:
    """True inside ``torch.export`` when ``x``'s height or width (dims ``h_dim``, ``w_dim``) is
    symbolic (an export with a dynamic height/width); False in eager mode, under TorchScript, under
    ``torch.compile`` and in an export whose height/width are fixed (there sizes are ints)."""
    if torch.jit.is_scripting():
        return False
    else:
        return torch.compiler.is_exporting() and not (isinstance(x.shape[h_dim], int) and isinstance(x.shape[w_dim], int))


# ------------------------------------------------------------------------------------------------
# Shape-dependent padding and cropping as graph leaves (FX / TorchScript / dynamo).
#
# Under ``torch.fx`` symbolic tracing a tensor's sizes are Proxies, so ``if H % p: pad`` cannot be
# decided while tracing. Every such decision lives in one of the small functions below, which are
# registered with timm's ``register_notrace_function`` (timm's FX feature extraction treats them as
# leaves) and wrapped with ``torch.fx.wrap`` in each module that calls them (so plain torchvision
# ``create_feature_extractor`` keeps them as leaves too): the traced graph calls them at run time,
# so a GraphModule pads and crops correctly at any input size. They are plain TorchScript
# functions (ints and tensors only) and dynamo traces them like any other code. Eager results are
# those of the inline code they replace (bit for bit).
#
# Under ``torch.export`` with dynamic height/width (``visionattn-export``), ``if ph > 0`` on a
# symbolic size would specialise the graph to one residue of the size modulo the multiple; there
# the helpers pad and crop unconditionally (a zero pad and a full slice are exact no-ops), so the
# exported graph pads correctly at any size.


@register_notrace_function
def pad_nhwc(x: torch.Tensor, mh: int, mw: int) -> torch.Tensor:
    """Zero-pad NHWC tokens ``(B, H, W, C)`` bottom/right so that ``H, W`` become multiples of
    ``(mh, mw)``; ``x`` itself when they already are."""
    ph = (mh - x.shape[1] % mh) % mh
    pw = (mw - x.shape[2] % mw) % mw
    if is_exporting() or ph > 0 or pw > 0:
        x = F.pad(x, [0, 0, 0, pw, 0, ph])
    return x


@register_notrace_function
def pad_nchw(x: torch.Tensor, mh: int, mw: int) -> torch.Tensor:
    """Zero-pad NCHW maps ``(B, C, H, W)`` bottom/right so that ``H, W`` become multiples of
    ``(mh, mw)``; ``x`` itself when they already are."""
    ph = (mh - x.shape[-2] % mh) % mh
    pw = (mw - x.shape[-1] % mw) % mw
    if is_exporting() or ph > 0 or pw > 0:
        x = F.pad(x, [0, pw, 0, ph])
    return x


@register_notrace_function
def pad_nhwc_min(x: torch.Tensor, min_h: int, min_w: int) -> torch.Tensor:
    """Zero-pad NHWC tokens bottom/right to at least ``min_h x min_w``; ``x`` itself when large enough."""
    ph = max(min_h - x.shape[1], 0)
    pw = max(min_w - x.shape[2], 0)
    if ph > 0 or pw > 0:
        x = F.pad(x, [0, 0, 0, pw, 0, ph])
    return x


@register_notrace_function
def crop_nhwc(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``x[:, :h, :w]`` of NHWC tokens; ``x`` itself when it is already ``h x w``."""
    if is_exporting() or x.shape[1] != h or x.shape[2] != w:
        x = x[:, :h, :w]
    return x
