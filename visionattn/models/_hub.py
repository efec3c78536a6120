"""Reading checkpoint files safely, and errors that say what is wrong with a file.

* :func:`read_checkpoint` opens ``.safetensors`` with safetensors and everything else with
  ``torch.load(weights_only=True)``. Two non-tensor objects that official training scripts pickle
  beside the weights are let through as inert data, never as code: ``argparse.Namespace`` (timm's
  ``CheckpointSaver`` ``args``: CSWin) and yacs ``CfgNode`` (the Swin-style ``config`` of the Agent
  Attention checkpoints, read as a plain ``OrderedDict``). Any other global is refused with
  :class:`UnsafeCheckpointError` naming it.
* :func:`explain_load_error` turns the obscure messages of a truncated / corrupted file
  (safetensors header errors, miniz "central directory", "weights_only blocked" for a file that is
  not a pickle at all) into :class:`CheckpointFileError` naming the file and the problem. The
  model builder (:func:`visionattn.models._registry.build_model`) applies it to every
  ``pretrained=True`` load (``hf_hub_id``, ``local-dir:``, ``pretrained_cfg_overlay=dict(file=...)``).
"""
from __future__ import annotations

import argparse
import collections
import collections.abc
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

__all__ = [
    "CheckpointFileError",
    "UnsafeCheckpointError",
    "read_checkpoint",
    "sha256_file",
    "explain_load_error",
    "SAFE_STANDINS",
]

PathLike = Union[str, os.PathLike]

#: Non-tensor globals accepted by :func:`read_checkpoint`, each mapped to an inert stand-in.
SAFE_STANDINS = (
    argparse.Namespace,
    (collections.OrderedDict, "yacs.config.CfgNode"),
)


class CheckpointFileError(RuntimeError):
    """A checkpoint file cannot be read: truncated, corrupted, or not a checkpoint at all."""


class UnsafeCheckpointError(CheckpointFileError):
    """A pickle checkpoint needs globals (arbitrary code) that ``weights_only`` loading refuses."""


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _kind(path: Path) -> str:
    """What the first bytes say the file is: 'zip' (torch >= 1.6), 'pickle', 'safetensors' or 'unknown'."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def explain_load_error(exc: BaseException, source: str, path: Optional[PathLike] = None) -> Optional[CheckpointFileError]:
    """A :class:`CheckpointFileError` explaining why ``source`` could not be read, or None when
    ``exc`` is not a file-format problem (then re-raise ``exc`` itself).

    Args:
        exc: the exception raised while reading the file.
        source: how to name the weights in the message (a path, ``hf_hub_id`` or URL).
        path: the local file, when known, to inspect its first bytes and size.
    """
    msg = str(exc)
    size = ""
    kind = None
    if path is not None and Path(path).is_file():
        size = f" ({Path(path).stat().st_size} bytes)"
        kind = _kind(Path(path))
    name = type(exc).__name__
    if name == "SafetensorError" or "deserializing header" in msg:
        return CheckpointFileError(
            f"{source}{size} is not a valid safetensors file: it is truncated or corrupted ({msg}). "
            "Delete it and download or convert it again."
        )
    if "PytorchStreamReader" in msg or "central directory" in msg or isinstance(exc, EOFError):
        return CheckpointFileError(
            f"{source}{size} is truncated or corrupted: it is not a complete PyTorch checkpoint ({msg.splitlines()[0]}). "
            "Delete it and download or convert it again."
        )
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in msg or "Weights only load failed" in msg:
        if kind == "unknown":
            return CheckpointFileError(
                f"{source}{size} is not a PyTorch or safetensors checkpoint (its first bytes are neither a zip archive, "
                "a pickle nor a safetensors header): the file is corrupted or of another format."
            )
        blocked = ""
        if path is not None and kind in ("zip", "pickle"):
            try:
                blocked = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
            except Exception:  # noqa: BLE001  (only used to improve the message)
                blocked = ""
        return UnsafeCheckpointError(
            f"{source} is a pickle that needs globals which weights_only loading refuses"
            + (f" ({blocked})" if blocked else "")
            + ": loading it would run arbitrary code. Only plain state dicts (tensors in dicts, plus "
            "argparse.Namespace / yacs CfgNode training configs) are accepted; re-save the weights in a trusted "
            "environment with torch.save(state_dict) or safetensors."
        )
    return None


def read_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Load a checkpoint file on CPU without executing code from it.

    ``.safetensors`` -> ``{name: tensor}``; anything else -> ``torch.load(path, map_location='cpu',
    weights_only=True)`` with :data:`SAFE_STANDINS` allowed (training configs read as inert data).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the pickle needs other globals (listed), i.e. arbitrary code.
        CheckpointFileError: the file is truncated, corrupted or not a checkpoint.
        TypeError: the file holds something other than a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            with torch.serialization.safe_globals(list(SAFE_STANDINS)):
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (re-raised, explained when it is a file problem)
        err = explain_load_error(exc, str(path), path)
        if err is None:
            raise
        raise err from exc
    if not isinstance(obj, collections.abc.Mapping):
        raise TypeError(f"{path} holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    return obj
