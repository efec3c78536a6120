"""When a function may cache tensors: never while torch.export / torch.compile / jit tracing."""
from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor


def is_tracing(x: torch.Tensor) -> bool:
    """True while ``x`` is being traced (dynamo, non-strict export fake tensors, jit tracing).

    Index tables built then are graph constants of that trace and must not enter a cache that
    eager calls later read (they would receive fake tensors).
    """
    return torch.compiler.is_compiling() or isinstance(x, FakeTensor) or torch.jit.is_tracing()
