"""The pretrained-checkpoint manifest and the timm pretrained cfgs generated from it.

One entry per pretrained tag of every family (``"<arch>.<tag>"``, or the bare ``"<arch>"`` for
an architecture without released weights) records: the family, the Hub repo id we publish under
(org ``visionattn``; MaxViT / DaViT entries name timm's own live repos), the official source
URL(s), the URL timm can download directly (if any), every known download source in the order
``pretrained=True`` tries them (``sources``: official URL, Hugging Face ``transformers`` copies,
mirrors named in the official READMEs, timm's Hub ports; each URL with the explicit
``file_name`` it is cached under; see :func:`visionattn.models._hub.pretrained_sources`), the licence, the key the official file wraps
its weights under, the metrics the authors report, the timm pretrained-cfg fields that differ
from the family's defaults, notes, and once converted: the sha256 of our ``model.safetensors``
and the metrics we measured.

Where the manifest lives (the wheel constraint). The runtime must work from an installed wheel,
where nothing outside the ``visionattn`` package exists, so the one source of truth is package
data: ``visionattn/models/pretrained.yaml``. The top-level ``pretrained/`` folder of the
repository only documents it (``pretrained/README.md``). This was chosen over a top-level YAML plus
a generated, committed JSON copy because it needs no generator step and no sync test: the file
the maintainers edit (by hand or with ``visionattn-convert --update-manifest``) is the file the
package reads. Packaging needs one line (``[tool.setuptools.package-data]``
``"visionattn.models" = ["pretrained.yaml"]``).

How a cfg is generated (:func:`manifest_cfgs`): ``base(**overrides)``, where ``base`` is the
family file's ``_cfg`` (:func:`family_cfg`: the shared fields, then the family's first conv,
crop, mean/std, paper, origin) and
the overrides are the entry's ``cfg`` fields plus

* ``url``: the entry's ``download_url`` (official file, converted on load by the family's
  ``checkpoint_filter_fn``), or ``""``;
* ``hf_hub_id``: set when the entry is *published* (``converted.sha256`` recorded: our
  safetensors is on the Hub) or when ``hub_id`` names a repo outside our org (timm's live
  ``timm/maxvit_*`` / ``timm/davit_*`` repos); otherwise absent, so ``pretrained=True`` keeps
  working from the official URL. timm's loader prefers ``hf_hub_id`` over ``url``
  (``timm.models._builder.load_pretrained``);
* ``license``; ``notes`` = the family's default notes followed by the entry's.

Raises :class:`ManifestError` for a malformed manifest (every problem listed).
"""
from __future__ import annotations

import copy
import functools
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

import yaml
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = [
    "HUB_ORG",
    "FAMILIES",
    "ManifestError",
    "manifest_path",
    "load_manifest",
    "manifest_entries",
    "get_entry",
    "is_published",
    "family_cfg",
    "cfg_for_entry",
    "manifest_cfgs",
    "dump_manifest",
    "write_manifest",
    "update_converted",
]

HUB_ORG = "visionattn"
FAMILIES = ("nat", "biformer", "cswin", "maxvit", "davit", "agent", "inline", "van", "crossformer")
_MANIFEST_FILE = "pretrained.yaml"

_ENTRY_FIELDS = {
    "family": str,
    "hub_id": (str, type(None)),
    "official_urls": list,
    "download_url": (str, type(None)),
    "sources": list,
    "license": str,
    "wrapping_key": (str, type(None)),
    "reported": dict,
    "cfg": dict,
    "notes": list,
    "converted": dict,
}
_REPORTED_FIELDS = ("top1", "resolution", "crop_pct", "params_m", "gmacs", "source")
_CONVERTED_FIELDS = ("sha256", "top1", "top5", "resolution", "dataset")
_SOURCE_KEYS = ("url", "hf_hub_id", "file", "state_dict", "hf_hub_filename", "license", "notes")
#: Kinds of a download source: the authors' own file, a Hugging Face ``transformers`` copy (HF key
#: layout, converted on load), another mirror the official README names, timm's live Hub port.
SOURCE_KINDS = ("official", "hf-transformers", "mirror", "timm-hub")
_SOURCE_FIELDS = ("url", "file_name", "hf_hub_id", "hf_hub_filename", "kind", "note")


class ManifestError(ValueError):
    """The manifest is malformed (all problems listed) or has no entry for a name."""


def manifest_path() -> Path:
    """Path of the packaged manifest ``visionattn/models/pretrained.yaml`` (works from a wheel)."""
    return Path(str(resources.files(__package__).joinpath(_MANIFEST_FILE)))


def _validate(data: Any, source: str) -> Dict[str, Any]:
    problems: List[str] = []
    file_names: Dict[str, str] = {}
    if not isinstance(data, Mapping) or not isinstance(data.get("entries"), Mapping):
        raise ManifestError(f"{source}: expected a mapping with 'version', 'hub_org' and 'entries'; got {type(data).__name__}")
    for key, e in data["entries"].items():
        if not isinstance(e, Mapping):
            problems.append(f"{key}: entry is {type(e).__name__}, not a mapping")
            continue
        missing = sorted(set(_ENTRY_FIELDS) - set(e))
        unknown = sorted(set(e) - set(_ENTRY_FIELDS))
        if missing:
            problems.append(f"{key}: missing fields {missing}")
        if unknown:
            problems.append(f"{key}: unknown fields {unknown} (accepted: {sorted(_ENTRY_FIELDS)})")
        for f, typ in _ENTRY_FIELDS.items():
            if f in e and not isinstance(e[f], typ):
                problems.append(f"{key}: {f} has type {type(e[f]).__name__}")
        if e.get("family") not in FAMILIES:
            problems.append(f"{key}: family {e.get('family')!r} is not one of {FAMILIES}")
        if isinstance(e.get("converted"), Mapping):
            bad = sorted(set(e["converted"]) - set(_CONVERTED_FIELDS))
            if bad:
                problems.append(f"{key}: unknown converted fields {bad} (accepted: {list(_CONVERTED_FIELDS)})")
            sha = e["converted"].get("sha256")
            if sha is not None and (not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
                problems.append(f"{key}: converted.sha256 must be 64 lower-case hex digits or null; got {sha!r}")
            if sha is not None and not e.get("hub_id"):
                problems.append(f"{key}: converted.sha256 is set but hub_id is empty")
        if isinstance(e.get("reported"), Mapping):
            bad = sorted(set(e["reported"]) - set(_REPORTED_FIELDS))
            if bad:
                problems.append(f"{key}: unknown reported fields {bad} (accepted: {list(_REPORTED_FIELDS)})")
        if isinstance(e.get("sources"), list):
            problems += _source_problems(key, e["sources"], file_names)
        if isinstance(e.get("cfg"), Mapping):
            bad = sorted(set(e["cfg"]) & set(_SOURCE_KEYS))
            if bad:
                problems.append(f"{key}: cfg may not set {bad} (they are generated from the entry's own fields)")
    if problems:
        raise ManifestError(f"{source} is malformed:\n  " + "\n  ".join(problems))
    return dict(data)


def _source_problems(key: str, sources: List[Any], file_names: Dict[str, str]) -> List[str]:
    """Problems of one entry's ``sources`` list; ``file_names`` (name -> entry) spans the manifest,
    since every URL is cached under its own explicit ``file_name``."""
    out = []
    for i, src in enumerate(sources):
        where = f"{key}: sources[{i}]"
        if not isinstance(src, Mapping):
            out.append(f"{where} is {type(src).__name__}, not a mapping")
            continue
        bad = sorted(set(src) - set(_SOURCE_FIELDS))
        if bad:
            out.append(f"{where} has unknown fields {bad} (accepted: {list(_SOURCE_FIELDS)})")
        if bool(src.get("url")) == bool(src.get("hf_hub_id")):
            out.append(f"{where} must have exactly one of url / hf_hub_id")
        if src.get("kind") not in SOURCE_KINDS:
            out.append(f"{where} kind {src.get('kind')!r} is not one of {SOURCE_KINDS}")
        if src.get("url"):
            name = src.get("file_name")
            if not isinstance(name, str) or not name or "/" in name:
                out.append(f"{where} needs a file_name (the name the download is cached under); got {name!r}")
            elif name in file_names:
                out.append(f"{where} file_name {name!r} is already used by {file_names[name]}")
            else:
                file_names[name] = key
    return out


def load_manifest(path: Optional[Union[str, os.PathLike]] = None) -> Dict[str, Any]:
    """Read and validate a manifest (default: the packaged one, read once and cached).

    Returns ``{'version': int, 'hub_org': str, 'entries': {name: entry}}`` in file order; callers
    get a deep copy, so editing it never changes the cached manifest.

    Raises:
        ManifestError: malformed file (every problem listed).
        FileNotFoundError: ``path`` does not exist.
    """
    if path is None:
        return copy.deepcopy(_load_default())
    return _read(Path(path))


def _read(path: Path) -> Dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, "r", encoding="utf-8") as f:
        data = yaml.load(f, Loader=loader)
    return _validate(data, str(path))


@functools.lru_cache(maxsize=1)
def _load_default() -> Dict[str, Any]:
    return _read(manifest_path())


def manifest_entries(family: Optional[str] = None, manifest: Optional[Mapping] = None) -> Dict[str, Dict[str, Any]]:
    """``{name: entry}`` of one family (or all), in manifest order."""
    data = manifest if manifest is not None else _load_default()
    if family is not None and family not in FAMILIES:
        raise ManifestError(f"unknown family {family!r}; families: {FAMILIES}")
    return {k: copy.deepcopy(e) for k, e in data["entries"].items() if family is None or e["family"] == family}


def get_entry(name: str, manifest: Optional[Mapping] = None) -> Dict[str, Any]:
    """The entry of ``"arch.tag"`` (or a bare ``"arch"``: its first entry).

    Raises:
        ManifestError: no entry of that name.
    """
    entries = (manifest if manifest is not None else _load_default())["entries"]
    if name in entries:
        return copy.deepcopy(entries[name])
    if "." not in name:
        for k, e in entries.items():
            if k.split(".", 1)[0] == name:
                return copy.deepcopy(e)
    close = [k for k in entries if k.split(".", 1)[0] == name.split(".", 1)[0]]
    raise ManifestError(f"no manifest entry {name!r}" + (f"; entries of that architecture: {close}" if close else ""))


def is_published(entry: Mapping[str, Any]) -> bool:
    """True when timm should load this entry from the Hub: our safetensors is published (sha256
    recorded) or ``hub_id`` is another org's live repo (timm's MaxViT / DaViT ports)."""
    hub = entry.get("hub_id") or ""
    if not hub:
        return False
    if entry.get("converted", {}).get("sha256"):
        return True
    return not hub.startswith(HUB_ORG + "/")


def family_cfg(**family: Any) -> Callable[..., Dict[str, Any]]:
    """The ``_cfg(**overrides) -> dict`` base of one family's pretrained cfgs.

    Starts from the fields every family of the zoo shares (ImageNet-1k head, 224x224 input,
    7x7 pooled map, bicubic resize, ImageNet mean/std, classifier ``head.fc``, no URL), then the
    family's structural fields (``first_conv``, ``crop_pct``, paper, origin, licence, notes, ...)
    given here, then the per-tag overrides of :func:`cfg_for_entry`. Field names are timm's
    pretrained-cfg keys (``timm.models.PretrainedCfg``).
    """
    common: Dict[str, Any] = {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "classifier": "head.fc",
    }

    def _cfg(**overrides: Any) -> Dict[str, Any]:
        return {**common, **family, **overrides}

    return _cfg


def cfg_for_entry(entry: Mapping[str, Any], base: Callable[..., Dict[str, Any]]) -> Dict[str, Any]:
    """The timm pretrained cfg dict of one manifest entry (rules in the module docstring)."""
    kw: Dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in entry["cfg"].items()}
    kw["url"] = entry.get("download_url") or ""
    if is_published(entry):
        kw["hf_hub_id"] = entry["hub_id"]
    kw["license"] = entry["license"]
    notes = tuple(base().get("notes", ()) or ()) + tuple(entry.get("notes") or ())
    if notes:
        kw["notes"] = notes
    return base(**kw)


def manifest_cfgs(family: str, base: Callable[..., Dict[str, Any]], manifest: Optional[Mapping] = None) -> Dict[str, Dict[str, Any]]:
    """``{"arch.tag": cfg}`` for ``timm.models.generate_default_cfgs`` from the family's entries.

    Args:
        family: one of :data:`FAMILIES`.
        base: the family file's ``_cfg(**overrides) -> dict``.
        manifest: a loaded manifest (default: the packaged one).

    Raises:
        ManifestError: the family has no entries.
    """
    entries = manifest_entries(family, manifest)
    if not entries:
        raise ManifestError(f"the manifest has no entries for family {family!r}")
    return {name: cfg_for_entry(e, base) for name, e in entries.items()}


def dump_manifest(data: Mapping[str, Any]) -> str:
    """Canonical YAML text of a manifest (file order kept, block style, no aliases)."""

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, _data):
            return True

    def _flow_list(dumper, value):
        flow = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and len(value) > 0
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)

    _Dumper.add_representer(list, _flow_list)
    _Dumper.add_representer(tuple, _flow_list)
    header = (
        "# visionattn pretrained-checkpoint manifest: the one source of the models' pretrained cfgs.\n"
        "# Schema and rules: visionattn/models/_manifest.py and pretrained/README.md.\n"
        "# Written by visionattn-convert --update-manifest; hand edits keep this layout.\n"
    )
    body = yaml.dump(dict(data), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120, default_flow_style=False)
    return header + body


def write_manifest(data: Mapping[str, Any], path: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Validate ``data`` and write it atomically (temp file + rename) to ``path`` (default: the packaged manifest)."""
    _validate(data, "manifest to write")
    path = Path(path) if path is not None else manifest_path()
    # temp file + rename, so a crash never leaves half a manifest (models/ may not import the
    # engine layer's atomic_write: the import graph runs models -> engine -> tools)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dump_manifest(data))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    if path == manifest_path():
        _load_default.cache_clear()
    return path


def update_converted(name: str, values: Mapping[str, Any], path: Optional[Union[str, os.PathLike]] = None) -> Dict[str, Any]:
    """Set ``converted`` fields (``sha256``, measured ``top1``...) of entry ``name`` and rewrite the manifest.

    Returns the updated entry.

    Raises:
        ManifestError: unknown entry or field, or an invalid sha256.
    """
    data = load_manifest(path)
    if name not in data["entries"]:
        get_entry(name, data)  # raises with the close matches
    bad = sorted(set(values) - set(_CONVERTED_FIELDS))
    if bad:
        raise ManifestError(f"unknown converted fields {bad}; accepted: {list(_CONVERTED_FIELDS)}")
    data["entries"][name]["converted"].update(values)
    write_manifest(data, path)
    return copy.deepcopy(data["entries"][name])


def iter_names(manifest: Optional[Mapping] = None) -> Iterable[str]:
    """All entry names in manifest order."""
    return list((manifest if manifest is not None else _load_default())["entries"])
