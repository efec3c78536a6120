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
* :func:`pretrained_sources` lists where the weights of a pretrained cfg may come from (an overlay
  file, a ``local-dir:``, a Hub repo, the manifest's official URL and every mirror it records);
  :func:`load_pretrained_checkpoint` tries them in order (each URL downloaded under an explicit
  file name, :func:`fetch_source`) and reads the first that works with :func:`read_checkpoint`,
  checking the manifest's sha256 where one is recorded; when every source fails it raises
  :class:`PretrainedDownloadError` listing each source with its failure and how to load a local
  file instead. :func:`check_finite` refuses weights holding NaN/Inf (naming the tensors).

Every loading path of a visionattn model goes through these functions: ``pretrained=True`` (tag
URL, Hub id, ``hf-hub:``, ``local-dir:``, ``pretrained_cfg_overlay=dict(file=...)`` or
``state_dict=...``) via :func:`visionattn.models._registry.build_model`, ``checkpoint_path=`` via
:func:`visionattn.models._registry.load_checkpoint`, and the tools (``visionattn-convert``,
``validate.py --checkpoint``). The raw checkpoint reaches the family's ``checkpoint_filter_fn``
unmodified, so the filter alone decides which weights of a file holding both ``model`` and
``state_dict_ema`` are used (timm's own reader would take ``state_dict_ema`` first).
"""
from __future__ import annotations

import argparse
import collections
import collections.abc
import contextlib
import hashlib
import os
import pickle
import re
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "CheckpointFileError",
    "UnsafeCheckpointError",
    "PretrainedDownloadError",
    "check_finite",
    "verify_sha256",
    "set_default_mode",
    "source_file_name",
    "describe_source",
    "fetch_source",
    "pretrained_sources",
    "load_pretrained_checkpoint",
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


class PretrainedDownloadError(CheckpointFileError):
    """Every known source of a pretrained checkpoint failed; the message lists each source with
    its failure and how to load a local copy instead."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def set_default_mode(path: PathLike) -> None:
    """Give ``path`` the permissions of a normally created file (``0o666 & ~umask``, usually 0644).

    safetensors (>= 0.7) writes through a temp file created with mode 0600, so a
    ``model.safetensors`` would otherwise be unreadable by others on a shared filesystem while
    every file beside it is 0644."""
    os.chmod(path, 0o666 & ~_umask())


def check_finite(state_dict: Mapping[str, Any], source: str) -> None:
    """Refuse weights holding NaN or Inf.

    Raises:
        CheckpointFileError: naming ``source`` and every floating-point tensor with a non-finite
            value (a corrupted file, e.g. altered tensor bytes, or diverged training).
    """
    bad = [
        k for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())
    ]
    if bad:
        shown = ", ".join(bad[:12]) + (f", ... ({len(bad)} in all)" if len(bad) > 12 else "")
        raise CheckpointFileError(
            f"{source} holds non-finite values (NaN or Inf) in {len(bad)} tensor(s): {shown}. The file is corrupted "
            "(altered tensor bytes) or the weights diverged; refusing to load them. Download or convert it again."
        )


def verify_sha256(path: PathLike, expected: Optional[str], source: str) -> None:
    """Compare the sha256 of ``path`` with the one the manifest records (nothing to do when None).

    Raises:
        CheckpointFileError: the digests differ (the file is corrupted or not the published one).
    """
    if not expected:
        return
    got = sha256_file(path)
    if got != expected:
        raise CheckpointFileError(
            f"{source} ({path}) has sha256 {got}, but the manifest records {expected}: the file is corrupted or is "
            "not the published checkpoint. Delete it and download it again."
        )


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


def read_checkpoint(path: PathLike, source: Optional[str] = None) -> Dict[str, Any]:
    """Load a checkpoint file on CPU without executing code from it.

    ``.safetensors`` (by suffix or by its header) -> ``{name: tensor}``; anything else ->
    ``torch.load(path, map_location='cpu', weights_only=True)`` with :data:`SAFE_STANDINS` allowed
    (training configs read as inert data). ``source`` names the file in error messages (default:
    the path; e.g. ``"Hub repo org/name (path)"``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the pickle needs other globals (listed), i.e. arbitrary code.
        CheckpointFileError: the file is truncated, corrupted or not a checkpoint.
        TypeError: the file holds something other than a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist")
    label = source or str(path)
    try:
        if path.suffix == ".safetensors" or _kind(path) == "safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            with torch.serialization.safe_globals(list(SAFE_STANDINS)):
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (re-raised, explained when it is a file problem)
        err = explain_load_error(exc, label, path)
        if err is None:
            raise
        raise err from exc
    if not isinstance(obj, collections.abc.Mapping):
        raise TypeError(f"{label} holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    return obj


# ------------------------------------------------------------------------------------------------
# Where pretrained weights come from, and trying each source in turn

#: File extensions kept when a URL's own basename names the downloaded file.
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pth.tar", ".bin", ".safetensors", ".ckpt")
#: A source that is a local file names it under ``file``; one local-dir: folder under ``local_dir``;
#: a Hub repo under ``hf_hub_id`` (``hf_hub_filename`` optional); a URL under ``url`` with
#: ``file_name`` (the name it is cached under); an in-memory state dict under ``state_dict``.
_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def source_file_name(url: str, name: str = "") -> str:
    """The explicit file name a URL is downloaded and cached under.

    The URL's basename when it looks like a checkpoint file (``nat_mini.pth``); otherwise (a
    share link such as ``https://cloud.tsinghua.edu.cn/f/<id>/?dl=1``, whose basename is empty,
    which makes ``torch.hub.load_state_dict_from_url`` treat the cache folder as the file)
    ``<name>-<8 hex of the URL's sha256>.pth``.
    """
    base = os.path.basename(urllib.parse.urlparse(url).path)
    if base and base.lower().endswith(_CHECKPOINT_SUFFIXES):
        return base
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name or "checkpoint").strip("._") or "checkpoint"
    return f"{stem}-{hashlib.sha256(url.encode()).hexdigest()[:8]}.pth"


def describe_source(src: Mapping[str, Any]) -> str:
    """A one-line human description of a source dict (see :func:`fetch_source`)."""
    kind = f" [{src['kind']}]" if src.get("kind") else ""
    if "file" in src:
        return f"file {src['file']}"
    if "local_dir" in src:
        return f"local folder {src['local_dir']}"
    if "state_dict" in src:
        return "the state dict given in pretrained_cfg"
    if "hf_hub_id" in src:
        fname = f" ({src['hf_hub_filename']})" if src.get("hf_hub_filename") else ""
        return f"Hub repo {src['hf_hub_id']}{fname}{kind}"
    return f"{src['url']}{kind}"


def _hub_download(repo_id: str, filename: Optional[str], cache_dir: Optional[PathLike]) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    names = [filename] if filename else list(_HUB_WEIGHT_FILES)
    first: Optional[BaseException] = None
    for n in names:
        try:
            return Path(hf_hub_download(repo_id, n, cache_dir=cache_dir))
        except EntryNotFoundError as exc:  # try timm's next file name
            first = first or exc
        except Exception as exc:  # noqa: BLE001  (offline, network, missing repo: no other name will do better)
            if first is None or isinstance(first, EntryNotFoundError):
                first = exc
            break
    assert first is not None
    raise first


def fetch_source(src: Mapping[str, Any], cache_dir: Optional[PathLike] = None, progress: bool = False) -> Path:
    """The local path of one source, downloading it if needed.

    * ``{'file': path}``: the file itself;
    * ``{'local_dir': folder}``: its ``model.safetensors`` (else ``pytorch_model.bin``), as timm's
      ``local-dir:``;
    * ``{'hf_hub_id': repo, 'hf_hub_filename': name?}``: ``huggingface_hub.hf_hub_download``
      (``model.safetensors``, else ``pytorch_model.bin``, as timm), honouring ``HF_HUB_OFFLINE``;
    * ``{'url': url, 'file_name': name}``: ``torch.hub.download_url_to_file`` into
      ``cache_dir`` (default ``<torch.hub.get_dir()>/checkpoints``) under ``file_name`` (default
      :func:`source_file_name`), reused when already there.

    Raises:
        FileNotFoundError: a local file or folder that does not exist.
        Exception: whatever the download raises (``urllib.error.URLError``, huggingface_hub's errors).
    """
    if "file" in src:
        path = Path(src["file"])
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist")
        return path
    if "local_dir" in src:
        folder = Path(src["local_dir"])
        for n in _HUB_WEIGHT_FILES:
            if (folder / n).is_file():
                return folder / n
        raise FileNotFoundError(f"{folder} holds neither of {list(_HUB_WEIGHT_FILES)}")
    if "hf_hub_id" in src:
        return _hub_download(src["hf_hub_id"], src.get("hf_hub_filename"), cache_dir)
    url = src["url"]
    folder = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / (src.get("file_name") or source_file_name(url))
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=progress)  # temp file, renamed when complete
        set_default_mode(path)
    return path


def pretrained_sources(cfg: Mapping[str, Any], manifest: Optional[Mapping] = None) -> List[Dict[str, Any]]:
    """Where the weights of a resolved pretrained cfg (timm's ``PretrainedCfg.to_dict()``) may come
    from, in the order they are tried.

    An explicit location is the only source: ``state_dict``, ``source='local-dir'``,
    ``source='hf-hub'`` (``hf-hub:`` model names) or ``file``. Otherwise: the cfg's ``hf_hub_id``
    (carrying the manifest's sha256 when it is our published repo), then, when the cfg's ``url``
    is the manifest entry's own, every source the entry records (official URL, Hugging Face
    copies, mirrors, each URL with its explicit ``file_name``), else the cfg's ``url`` alone:
    cached under the name of timm's ``(url, file_name)`` form when given, else
    :func:`source_file_name`. (The generated cfgs keep ``url`` a plain string, as timm's own
    consumers and the family tests expect; the file names live in the manifest.)
    """
    if cfg.get("state_dict"):
        return [dict(state_dict=cfg["state_dict"])]
    if cfg.get("source") == "local-dir":
        return [dict(local_dir=cfg.get("file"))]
    if cfg.get("source") == "hf-hub":
        return [dict(hf_hub_id=cfg["hf_hub_id"], hf_hub_filename=cfg.get("hf_hub_filename"))]
    if cfg.get("file"):
        return [dict(file=cfg["file"])]
    from . import _manifest

    arch, tag = cfg.get("architecture") or "", cfg.get("tag") or ""
    name = f"{arch}.{tag}" if tag else arch
    try:  # a cfg without a tag (a dict passed as pretrained_cfg) is the architecture's default (first) tag
        entry = _manifest.get_entry(name, manifest if manifest is not None else _manifest.load_manifest())
    except _manifest.ManifestError:
        entry = None
    out: List[Dict[str, Any]] = []
    if cfg.get("hf_hub_id"):
        hub = dict(hf_hub_id=cfg["hf_hub_id"], hf_hub_filename=cfg.get("hf_hub_filename"), kind="hub")
        if entry and entry.get("hub_id") == cfg["hf_hub_id"] and entry["converted"].get("sha256"):
            hub.update(hf_hub_filename="model.safetensors", sha256=entry["converted"]["sha256"], kind="published")
        out.append(hub)
    url, file_name = cfg.get("url") or "", None
    if isinstance(url, (list, tuple)):  # timm's (url, file_name) form of a cfg url
        url, file_name = url
    if entry is not None and url == (entry.get("download_url") or "") and not file_name:
        for s in entry.get("sources") or ():
            out.append(dict(s))
    elif url:
        out.append(dict(url=url, file_name=file_name or source_file_name(url, name), kind="url"))
    seen, unique = set(), []
    for s in out:
        key = (s.get("url"), s.get("hf_hub_id"), s.get("hf_hub_filename"))
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


def load_pretrained_checkpoint(
    sources: Sequence[Mapping[str, Any]], name: str = "the model", cache_dir: Optional[PathLike] = None
) -> Tuple[Mapping[str, Any], str]:
    """Read the first source of ``sources`` that can be fetched and read; returns ``(checkpoint, label)``.

    A download that is not a readable checkpoint (an HTML page served for a dead link, a truncated
    file) is deleted from the cache and the next source tried; a sha256 the source carries is
    checked. One explicit local source (a file, a ``local-dir:`` folder, an ``hf-hub:`` repo) raises
    its own error unchanged; a pickle needing code (:class:`UnsafeCheckpointError`) is never
    skipped silently.

    Raises:
        PretrainedDownloadError: every source failed (each listed with its failure, and how to
            load a local file instead).
        CheckpointFileError, FileNotFoundError: the single explicit source is unreadable.
    """
    if not sources:
        raise PretrainedDownloadError(
            f"{name} has no pretrained weights (no file, Hub repo or URL in its pretrained cfg); use pretrained=False, "
            "or load a local file with pretrained_cfg_overlay=dict(file='/path/to/weights.pth')"
        )
    failures: List[str] = []
    # an explicit location (file, local-dir:, hf-hub:, state dict: no ``kind``) is the user's own choice: its error as is
    single = len(sources) == 1 and sources[0].get("kind") is None
    for src in sources:
        if "state_dict" in src:
            return src["state_dict"], "the state dict given in pretrained_cfg"
        desc = describe_source(src)
        try:
            path = fetch_source(src, cache_dir)
        except Exception as exc:  # noqa: BLE001  (collected; all listed if every source fails)
            if single:
                raise
            failures.append(f"{desc}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        label = desc if "file" in src else f"{desc} ({path})"
        try:
            verify_sha256(path, src.get("sha256"), label)
            return read_checkpoint(path, source=label), label
        except UnsafeCheckpointError:
            raise
        except (CheckpointFileError, TypeError) as exc:
            if single:
                raise
            if "url" in src:
                with contextlib.suppress(OSError):
                    path.unlink()
            failures.append(f"{desc}: {exc}")
    raise PretrainedDownloadError(
        f"could not get the pretrained weights of {name}: every known source failed\n  "
        + "\n  ".join(f"{i + 1}. {f}" for i, f in enumerate(failures))
        + "\nTo load a copy you already have: timm.create_model(..., pretrained=True, "
        "pretrained_cfg_overlay=dict(file='/path/to/file.pth')) or timm.create_model(..., checkpoint_path='/path/to/file.pth'); "
        "an official file is converted on load."
    )
