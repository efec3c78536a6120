"""Distributed setup and reductions: the device, the ``torchrun`` process group, sums over
ranks, barriers, unwrapping DDP/compile wrappers, FSDP2 sharding and full state dicts, and
skipping the gradient all-reduce on accumulation micro-steps."""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from .cli import UsageError


def resolve_device(name: Optional[str]) -> torch.device:
    """``torch.device(name)``, defaulting to CUDA when available; a CUDA request on a machine
    without CUDA raises :class:`UsageError`."""
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but CUDA is not available")
    return device


def init_distributed(device_name: Optional[str] = None, timeout_s: float = 1800.0) -> Tuple[int, int, torch.device]:
    """Join the process group that ``torchrun`` describes (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR/PORT`` in the environment); a no-op for a plain process.

    Backend: NCCL for CUDA devices (each rank on ``cuda:LOCAL_RANK``), gloo otherwise. Returns
    ``(rank, world_size, device)``. Raises :class:`UsageError` for a CUDA request without CUDA.
    """
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return dist.get_rank(), dist.get_world_size(), device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: Sequence[float], device: torch.device) -> List[float]:
    """Sum ``values`` over all ranks (float64); returns them unchanged for a single process."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def apply_fsdp(model: nn.Module, device: torch.device) -> nn.Module:
    """Shard ``model`` with FSDP2 (``torch.distributed.fsdp.fully_shard``) over all ranks.

    Each block of each stage (``model.stages[i].blocks[j]``, or ``model.blocks[j]`` for the
    isotropic models) is sharded, then every stage, then the root, so parameters are gathered
    one block at a time. The optimizer must be built after this (parameters become DTensors).
    Needs an initialised process group. Source: torch FSDP2 docs / reference training_coco_flops.md §5.1.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    stages = getattr(model, "stages", None)
    containers = list(stages) if stages is not None else [model]
    for container in containers:
        blocks = getattr(container, "blocks", None)
        for block in (blocks if blocks is not None else []):
            fully_shard(block, mesh=mesh)
        if container is not model:
            fully_shard(container, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A plain (unsharded, CPU) state dict of ``model`` without wrapper prefixes; under FSDP2 a
    collective (``get_model_state_dict(full_state_dict=True, cpu_offload=True)``) every rank must call."""
    if getattr(model, "_va_fsdp", False):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap_model(model).state_dict()


def no_grad_sync(model: nn.Module, sync: bool):
    """Context that skips the gradient all-reduce of a non-final accumulation micro-step:
    DDP's ``no_sync()``; FSDP2's ``set_requires_gradient_sync``; nothing for a plain module."""
    if sync:
        return contextlib.nullcontext()
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        @contextlib.contextmanager
        def _fsdp_no_sync():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        return _fsdp_no_sync()
    return contextlib.nullcontext()
