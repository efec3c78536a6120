"""Every registered model built once per test session on the meta device (shared by the contract
test modules, which split their cases into the quick and slow sets by these sizes)."""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, Tuple

import timm
import torch
from torch import nn

import visionattn


@lru_cache(maxsize=None)
def meta_models() -> Dict[str, Tuple[nn.Module, int]]:
    """``{name: (model, parameter count)}`` for every zoo model, built on the meta device with 1000
    classes (as the official tables count). The modules are shared: read them, do not change them."""
    out = {}
    for name in visionattn.list_models():
        with torch.device("meta"):
            m = timm.create_model(name, num_classes=1000)
        out[name] = (m, sum(p.numel() for p in m.parameters()))
    return out


def family(name: str) -> str:
    """The module that registers ``name`` (one family or sub-family)."""
    return timm.models._registry._model_to_module[name]


@lru_cache(maxsize=None)
def smallest_per_family() -> Dict[str, str]:
    """``{family: name}`` of the model with the fewest parameters in each family."""
    best: Dict[str, str] = {}
    sizes = meta_models()
    for n, (_, size) in sizes.items():
        f = family(n)
        if f not in best or size < sizes[best[f]][1]:
            best[f] = n
    return best
