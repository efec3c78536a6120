#!/usr/bin/env python3
"""Convert an official checkpoint into a Hub-ready folder in timm's layout, verified.

Pipeline for ``--model <arch>.<tag>`` (an entry of the manifest,
:mod:`visionattn.models._manifest`):

1. read the official file without executing code (:func:`visionattn.models._hub.read_checkpoint`:
   ``torch.load(weights_only=True)``, safetensors; pickles that need other globals are refused
   with :class:`~visionattn.models._hub.UnsafeCheckpointError`);
2. check the wrapping key the manifest records (``model``, ``state_dict_ema``, flat ...);
3. convert with the family's ``checkpoint_filter_fn`` (any official layout the family accepts)
   and load with ``strict=True`` into the model built from the tag's pretrained cfg;
4. verify: (a) against an independent implementation of the unconverted layout where one
   exists: timm's own ``maxvit_*_tf_*`` / ``davit_*`` models for MaxViT / DaViT, and for NAT /
   DiNAT the test-side re-statement of the official module tree ``tests/_official_nat.py`` when
   running from a checkout; the logits must agree to ``1e-4`` relative; (b) always: the written
   folder reloads through ``timm.create_model('local-dir:...', pretrained=True)`` to identical
   logits;
5. write, atomically (a temp folder renamed into place), ``model.safetensors``, ``config.json``
   (timm's ``save_for_hf``: architecture, num_classes, pretrained cfg) and a model card
   ``README.md`` (architecture, params, metrics, licence, citation, sources);
6. print the sha256 of ``model.safetensors``; ``--update-manifest`` records it (and measured
   metrics given with ``--top1``/``--top5``) in the manifest, which makes the tag load from the
   Hub id once the folder is pushed (``visionattn-push``).

Examples::

    visionattn-convert dinat_tiny_in1k_224.pth --model dinat_tiny.in1k --output hub/dinat_tiny.in1k
    visionattn-convert cswin_base_384.pth --model cswin_base_384.in1k --update-manifest
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch

from ..models import _manifest
from ..models._hub import CheckpointFileError, check_finite, read_checkpoint, set_default_mode, sha256_file
from visionattn.engine.checkpoint import run_tag
from visionattn.engine.cli import UsageError, run_cli

__all__ = ["build_parser", "main", "cli", "convert", "ConversionError", "model_card"]


class ConversionError(RuntimeError):
    """The converted model disagrees with the reference implementation, or its folder does not reload."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Convert an official checkpoint to a verified Hub folder (safetensors + config.json + model card).")
    p.add_argument("source", type=Path, help="official checkpoint file (.pth, .pth.tar, .bin, .safetensors)")
    p.add_argument("--model", required=True, help="manifest entry, <arch>.<tag> (e.g. dinat_tiny.in1k)")
    p.add_argument("--output", type=Path, help="folder to write (default: hub/<arch>.<tag>, a run's own tag for a run)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--manifest", type=Path, help="manifest file (default: the packaged visionattn/models/pretrained.yaml)")
    p.add_argument("--update-manifest", action="store_true", help="record the sha256 (and --top1/--top5) in the manifest entry")
    p.add_argument("--top1", type=float, help="top-1 (%%) measured with the converted weights at the tag's input size, recorded with --update-manifest")
    p.add_argument("--top5", type=float, help="top-5 (%%) measured with the converted weights")
    p.add_argument("--dataset", help="evaluation set of --top1/--top5 (e.g. imagenet-1k val)")
    p.add_argument("--no-ema", action="store_true", help="CSWin / Agent checkpoints: take 'state_dict'/'model' rather than 'state_dict_ema'")
    p.add_argument("--verify-size", type=int, help="image side for the logit checks (default: the tag's input size)")
    p.add_argument("--no-reference", action="store_true", help="skip the check against the reference implementation")
    p.add_argument("--model-kwargs", type=json.loads, default=None, help="JSON dict of extra constructor kwargs (tests shrink models)")
    p.add_argument("--tag", help="tag of your own run's weights (default: the run folder's name); never an official tag")
    p.add_argument("--repo-id", help="your own run: the Hub repo named in its card (default: <your-name>/<arch>.<tag>)")
    return p


# ------------------------------------------------------------------------------------------------
# A user's own training run (visionattn's trainer), as opposed to an official release


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except ValueError:
        return None


def user_run(source: Path, ckpt: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """What is known about ``source`` when it comes from a user's own training run, else None.

    A run is recognised by the trainer's checkpoint (``args`` recorded beside ``model``, with
    ``arch`` / ``version``) or by the ``summary.json`` the trainer writes beside its weights (a
    folder this tool converted from an official release records ``visionattn.origin:
    official`` in its ``config.json`` and is not a run). Returns ``{'folder', 'args',
    'summary', 'config'}`` (missing parts None): the data, classes, image size and metrics of the
    card come from them; official releases carry none of these.
    """
    source = Path(source)
    folder = source.parent
    summary = _read_json(folder / "summary.json")
    config = _read_json(folder / "config.json")
    args = ckpt.get("args") if isinstance(ckpt.get("args"), Mapping) else None
    ours = args is not None and isinstance(ckpt.get("model"), Mapping) and ("arch" in ckpt or "version" in ckpt)
    official = isinstance((config or {}).get("visionattn"), Mapping) and config["visionattn"].get("origin") == "official"
    if not ours and (summary is None or official):
        return None
    return dict(folder=folder, args=dict(args) if args else None, summary=summary, config=config)


def _run_tag(run: Mapping[str, Any], tag: Optional[str]) -> str:
    return run_tag(tag or Path(run["folder"]).resolve().name)


def run_card(name: str, run: Mapping[str, Any], model, params: int, sha256: str, repo_id: str, roundtrip: float) -> str:
    """The ``README.md`` of a user's run: what it is (data, classes, input, metrics of its
    ``summary.json``), never a claim about official weights."""
    arch, _, tag = name.partition(".")
    summary = run.get("summary") or {}
    args = run.get("args") or summary.get("args") or {}
    cfg = model.pretrained_cfg
    final, best = summary.get("final") or {}, summary.get("best") or {}
    labels = (run.get("config") or {}).get("label_names")
    size = cfg.get("input_size", (3, 224, 224))
    start = args.get("pretrained")
    init = (f"the pretrained weights of `{args.get('model') or arch}`" if start is True else
            f"`{start}`" if start else f"`{args['initial_checkpoint']}`" if args.get("initial_checkpoint") else
            "random initialisation" if start is False else "not recorded")

    def fmt(v, unit=""):
        return "–" if v is None else f"{v}{unit}"

    lines = [
        "---", "tags:", "- image-classification", "- timm", "- visionattn", "library_name: timm", "---",
        f"# {name}", "",
        f"`{arch}` (visionattn) trained by its user with `visionattn.tools.train` (tag `{tag}`). These are not the "
        "authors' weights and no published result applies to them.", "",
        "## Model details", "",
        f"- **Architecture:** `{type(model).__name__}` (`{arch}`)",
        f"- **Params (M):** {params / 1e6:.2f}",
        f"- **Data:** {summary.get('data') or args.get('data_dir') or args.get('dataset') or 'not recorded'}",
        f"- **Classes:** {model.num_classes}" + (f" ({', '.join(map(str, labels[:20]))}{', ...' if len(labels) > 20 else ''})" if labels else ""),
        f"- **Input size:** {size[-2]}x{size[-1]} (crop_pct {cfg.get('crop_pct')}, {cfg.get('interpolation')})",
        f"- **Initialised from:** {init}",
        f"- **Epochs:** {fmt(summary.get('epochs'))}, training samples {fmt(summary.get('train_samples'))}",
        f"- **model.safetensors sha256:** `{sha256}`", "",
        "## Metrics (held-out split of the run, from its summary.json)", "",
        "| | top-1 (%) | top-5 (%) | samples |", "|---|---|---|---|",
        f"| final | {fmt(final.get('top1'))} | {fmt(final.get('top5'))} | {fmt(summary.get('held_out_samples'))} |",
        f"| best epoch {fmt(best.get('epoch'))} | {fmt(best.get('top1'))} | {fmt(best.get('top5'))} | |", "",
        f"Reload round trip (`local-dir:`), max abs logit difference: {roundtrip}", "",
        "## Usage", "", "```python", "import timm", "import visionattn  # registers the architectures with timm", "",
        f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()', "```", "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# References: independent implementations of the unconverted layouts


def _max_rel_err(want: torch.Tensor, got: torch.Tensor) -> float:
    return float((want - got).abs().max() / max(1.0, float(want.abs().max())))


def _nat_reference(model, raw_sd: Mapping[str, torch.Tensor]) -> Optional[torch.nn.Module]:
    """The official NAT / DiNAT tree of ``tests/_official_nat.py`` (checkout only) holding ``raw_sd``."""
    tests_dir = Path(__file__).resolve().parents[2] / "tests"
    if not (tests_dir / "_official_nat.py").is_file():
        return None
    if str(tests_dir) not in sys.path:
        sys.path.insert(0, str(tests_dir))
    off = importlib.import_module("_official_nat")
    from ..models.nat import NATIsotropic

    if any(k.startswith(("stages.", "nat.", "dinat.", "embeddings.", "encoder.")) for k in raw_sd):
        return None  # not the official layout
    nc = model.num_classes
    if isinstance(model, NATIsotropic):
        blocks = [s.blocks[0] for s in model.stages]
        a0, a1 = blocks[0].attn, blocks[1].attn
        kw = dict(embed_dim=model.num_features, num_heads=a0.num_heads, depth=len(blocks), num_classes=nc)
        if model.attention == "mhsa":
            kw["attention"] = "mhsa"
            ref = off.OfficialIsotropic(**kw)
            for b, layer in zip(blocks, ref.layers):  # official MHSARPB fixes its grid: this model's img_size // 16
                layer.attn = off.MHSARPB(model.num_features, a0.num_heads, b.attn.window_size[0])
        else:
            kw.update(kernel_size=a0.kernel_size, dilation=a1.dilation)
            ref = off.OfficialIsotropic(**kw)
    else:
        blocks0 = [st.blocks for st in model.stages]
        embed = blocks0[0][0].norm1.normalized_shape[0]
        kw = dict(
            embed_dim=embed,
            depths=[len(b) for b in blocks0],
            num_heads=[b[0].attn.num_heads for b in blocks0],
            mlp_ratio=blocks0[0][0].mlp.fc1.out_features / embed,
            kernel_size=blocks0[0][0].attn.kernel_size,
            dilations=[[blk.attn.dilation for blk in b] for b in blocks0],
            layer_scale=1e-5 if any(k.endswith(".gamma1") for k in raw_sd) else None,
            layout=model.layout,
            num_classes=nc,
        )
        ref = off.OfficialNAT(**kw)
    ref.load_state_dict(dict(raw_sd), strict=True)
    return ref.eval()


def _timm_reference(model, family: str, arch: str, raw_sd: Mapping[str, torch.Tensor], kwargs: Mapping[str, Any]) -> Optional[torch.nn.Module]:
    """timm's own MaxViT (``maxvit_<size>_tf_<res>``) or DaViT (``davit_<size>``) holding ``raw_sd``.

    ``kwargs`` (the converter's ``--model-kwargs``) are passed on: the constructor argument names
    coincide (``embed_dim``/``depths``/``stem_width`` for MaxViT, ``embed_dims``/``depths``/``num_heads`` for DaViT).
    """
    import timm

    if family == "maxvit":
        parts = arch.split("_")
        res = parts[2] if len(parts) > 2 else "224"
        name = f"maxvit_{parts[1]}_tf_{res}"
        ref = timm.create_model(name, num_classes=model.num_classes, pretrained=False, **kwargs)
        ref.load_state_dict(dict(raw_sd), strict=True)
    else:
        from timm.models.davit import checkpoint_filter_fn as timm_davit_filter

        name = arch[: -len("_va")]
        ref = timm.create_model(name, num_classes=model.num_classes, pretrained=False, **kwargs)
        ref.load_state_dict(timm_davit_filter(dict(raw_sd), ref), strict=True)
    return ref.eval()


def _reference(model, family: str, arch: str, raw_sd, kwargs: Mapping[str, Any]) -> tuple:
    """``(module or None, description)``."""
    if family == "nat":
        ref = _nat_reference(model, raw_sd)
        return ref, ("tests/_official_nat.py (official NAT/DiNAT module tree)" if ref is not None else
                     "skipped: needs a checkout with tests/_official_nat.py and an official-layout file")
    if family in ("maxvit", "davit"):
        return _timm_reference(model, family, arch, raw_sd, kwargs), f"timm's own {family} model"
    return None, ("none: no independent implementation of the official layout ships with the package; "
                  "conversion is checked by strict key/shape accounting and the reload round trip")


# ------------------------------------------------------------------------------------------------
# Model card


def _citation(module) -> str:
    doc = module.__doc__ or ""
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("@")), None)
    return "\n".join(lines[start:]).strip() if start is not None else ""


def model_card(name: str, entry: Mapping[str, Any], model, params: int, sha256: str, verification: Mapping[str, Any]) -> str:
    """The ``README.md`` of a converted folder (Hugging Face model card with YAML front matter)."""
    arch, _, tag = name.partition(".")
    module = sys.modules[type(model).__module__]
    cfg = model.pretrained_cfg
    rep, conv = entry["reported"], entry["converted"]
    lic = entry["license"] if entry["license"] not in ("unknown", "") else "other"
    hub = entry.get("hub_id") or f"{_manifest.HUB_ORG}/{name}"

    def fmt(v, unit=""):
        return "–" if v is None else f"{v}{unit}"

    lines = [
        "---",
        "tags:",
        "- image-classification",
        "- timm",
        "- visionattn",
        "library_name: timm",
        f"license: {lic}",
        "---",
        f"# {name}",
        "",
        f"{cfg.get('paper_name', arch)} ({cfg.get('paper_ids', '')}): `{arch}` from "
        "visionattn, weights converted from the official release "
        f"(tag `{tag or 'none'}`) with `visionattn-convert`"
        + (", verified against an independent implementation of the official layout."
           if verification.get("reference_max_rel_err") is not None else
           "; checked by strict key/shape accounting and a reload round trip only (no reference comparison).")
        ,
        "",
        "## Model details",
        "",
        f"- **Architecture:** `{type(model).__name__}` (`{arch}`, family `{entry['family']}`)",
        f"- **Params (M):** {params / 1e6:.2f}",
        f"- **GMACs (reported):** {fmt(rep.get('gmacs'))}",
        f"- **Image size:** {cfg.get('input_size', (3, 224, 224))[-1]} (crop_pct {cfg.get('crop_pct')}, {cfg.get('interpolation')})",
        f"- **Classes:** {model.num_classes}",
        f"- **Licence:** {entry['license']}",
        f"- **Paper:** {cfg.get('paper_name', '')} ({cfg.get('paper_ids', '')})",
        f"- **Original code:** {cfg.get('origin_url', '')}",
        "- **Official weights:** " + ", ".join(entry["official_urls"] or ["–"]),
        f"- **Official file wrapping key:** `{entry.get('wrapping_key') or 'none (flat state dict)'}`",
        f"- **model.safetensors sha256:** `{sha256}`",
        "",
        "## Metrics",
        "",
        "| | top-1 (%) | top-5 (%) | resolution | source |",
        "|---|---|---|---|---|",
        f"| reported | {fmt(rep.get('top1'))} | – | {fmt(rep.get('resolution'))} | {rep.get('source') or '–'} |",
        f"| measured | {fmt(conv.get('top1'))} | {fmt(conv.get('top5'))} | {fmt(conv.get('resolution'))} | {conv.get('dataset') or 'not measured yet'} |",
        "",
        "## Verification",
        "",
        f"- Reference: {verification.get('reference')}",
        f"- Max relative logit error against the reference: {fmt(verification.get('reference_max_rel_err'))}",
        f"- Reload round trip (`local-dir:`), max abs logit difference: {fmt(verification.get('roundtrip_max_abs'))}",
        "",
        "## Usage",
        "",
        "```python",
        "import timm",
        "import visionattn  # registers the architectures with timm",
        "",
        f'model = timm.create_model("hf-hub:{hub}", pretrained=True).eval()',
        "data_cfg = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**data_cfg)",
        "```",
        "",
    ]
    notes = list(cfg.get("notes") or ())
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    cite = _citation(module)
    if cite:
        lines += ["## Citation", "", "```bibtex", cite, "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------


def _logits(model, x):
    with torch.no_grad():
        return model(x)


def convert(
    source: Path,
    name: str,
    output: Optional[Path] = None,
    overwrite: bool = False,
    manifest: Optional[Path] = None,
    prefer_ema: Optional[bool] = None,
    verify_size: Optional[int] = None,
    reference: bool = True,
    model_kwargs: Optional[Dict[str, Any]] = None,
    log: Callable[[str], None] = print,
    tag: Optional[str] = None,
    repo_id: Optional[str] = None,
    official_only: bool = False,
) -> Dict[str, Any]:
    """Convert ``source`` for manifest entry ``name`` into ``output`` (see the module docstring).

    Returns a dict: ``model``, ``output``, ``sha256``, ``params``, ``files`` (name -> bytes),
    ``reference``, ``reference_max_rel_err``, ``roundtrip_max_abs``, ``wrapping_key_found``,
    ``origin`` (``official`` or ``run``).

    A user's own run (:func:`user_run`) is converted under its own tag (``tag``, default the run
    folder's name) with a card describing the run (:func:`run_card`); ``name`` then only chooses
    the architecture. Its ``config.json`` records ``visionattn.origin = "run"``, an official
    conversion ``"official"``: ``visionattn-push`` sends only the latter to our repos.
    ``official_only`` (``--update-manifest``) refuses a run before anything is written.

    Raises:
        UsageError: unknown entry, output exists without ``overwrite``.
        FileNotFoundError, CheckpointFileError, UnsafeCheckpointError: unreadable source.
        CheckpointKeyError: the file does not match the architecture (keys listed; a classifier
            of another class count names the ``--model-kwargs`` to pass).
        CheckpointFileError: the weights hold NaN/Inf.
        ConversionError: logits disagree with the reference or after reloading.
    """
    import timm

    from ..models._registry import CheckpointKeyError

    data = _manifest.load_manifest(manifest)
    try:
        entry = _manifest.get_entry(name, data)
    except _manifest.ManifestError as e:
        raise UsageError(str(e)) from None
    if "." not in name and name not in data["entries"]:
        name = next(k for k in data["entries"] if k.split(".", 1)[0] == name)
    arch = name.split(".", 1)[0]

    ckpt = read_checkpoint(source)
    run = user_run(Path(source), ckpt)
    if run is not None:
        name = f"{arch}.{_run_tag(run, tag)}"
        if name in data["entries"]:
            raise UsageError(f"{name} is an official tag; give your run's weights their own --tag")
        if official_only:
            raise UsageError(f"{source} is your own training run, not an official release: the manifest records only "
                             "official weights (drop --update-manifest)")
        log(f"{source} is a user's training run, not an official release: converting it as {name}")
    elif tag is not None:
        raise UsageError("--tag names a user's run; official releases keep their manifest tag")
    output = Path(output) if output is not None else Path("hub") / name
    if output.exists() and not overwrite:
        raise UsageError(f"output folder {output} exists; pass --overwrite to replace it")
    wrap = entry.get("wrapping_key") if run is None else None
    found = None
    if wrap:
        found = wrap in ckpt and isinstance(ckpt[wrap], Mapping)
        if not found:
            log(f"note: the manifest says the official file wraps its weights under {wrap!r}, but {source} has "
                f"top-level keys {sorted(ckpt)[:8]}; converting what the family's filter finds")

    kwargs = dict(model_kwargs or {})
    if prefer_ema is not None and entry["family"] in ("cswin", "agent"):
        kwargs["prefer_ema"] = prefer_ema
    model = timm.create_model(arch if run is not None else name, pretrained=False, **kwargs).eval()
    module = sys.modules[type(model).__module__]
    sd = module.checkpoint_filter_fn(ckpt, model)
    missing_head = [k for k in ("head.fc.weight", "head.fc.bias") if k in model.state_dict() and k not in sd]
    if missing_head:
        raise CheckpointFileError(f"{source} has no classifier ({missing_head}); a Hub checkpoint must carry the tag's head")
    own = model.state_dict()
    heads = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in ("head.fc.weight", "head.fc.bias") if k in sd and k in own and sd[k].shape != own[k].shape]
    if heads:
        n = int(sd["head.fc.weight"].shape[0]) if "head.fc.weight" in sd else None
        raise CheckpointKeyError(
            f"{source} does not match {type(model).__name__} built for {name}: the classifier differs ({'; '.join(heads)}). "
            + (f"Pass --model-kwargs '{json.dumps({**(model_kwargs or {}), 'num_classes': n})}' (and any other constructor "
               "arguments the run used)." if n else "")
        )
    check_finite(sd, str(source))
    model.load_state_dict(sd, strict=True)
    data_config = None
    if run is not None:  # the run's own preprocessing and tag; no official source fields
        run_data = (run.get("summary") or {}).get("data_config") or ((run.get("config") or {}).get("pretrained_cfg"))
        if run_data:
            data_config = {k: (tuple(v) if isinstance(v, list) else v) for k, v in run_data.items()
                           if k in ("input_size", "interpolation", "mean", "std", "crop_pct")}
        resized = data_config and tuple(data_config.get("input_size", ())) != tuple(model.pretrained_cfg.get("input_size", ()))
        model.pretrained_cfg = {**model.pretrained_cfg, **(data_config or {}), "tag": name.split(".", 1)[1], "url": "", "hf_hub_id": None,
                                **({"pool_size": None} if resized else {})}
    params = sum(p.numel() for p in model.parameters())

    side = verify_size or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    got = _logits(model, x)
    result: Dict[str, Any] = dict(
        model=name, output=str(output), params=params, wrapping_key_found=found,
        resolution=model.pretrained_cfg.get("input_size", (3, 224, 224))[-1],
    )

    raw_sd = None
    ref_desc = "skipped (--no-reference)"
    ref_err = None
    if reference and run is not None:
        ref_desc = "not applicable: a user's training run (no official file to compare against)"
    elif reference:
        from ..models._registry import unwrap_state_dict

        key = getattr(model, "pretrained_state_key", None)
        raw_sd, _ = unwrap_state_dict(ckpt, prefer=key) if key else unwrap_state_dict(ckpt)
        ref_kwargs = {k: v for k, v in kwargs.items() if k != "prefer_ema"}
        ref, ref_desc = _reference(model, entry["family"], arch, raw_sd, ref_kwargs)
        if ref is not None:
            ref_err = _max_rel_err(_logits(ref, x), got)
            if ref_err > 1e-4:
                raise ConversionError(f"{name}: converted logits differ from the reference ({ref_desc}) by {ref_err:.3g} (relative)")
    result.update(reference=ref_desc, reference_max_rel_err=ref_err)

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"))
    tmp.chmod(0o755)
    try:
        record: Dict[str, Any] = {"origin": "run" if run is not None else "official", "name": name}
        model_config: Dict[str, Any] = {"visionattn": record}
        if run is not None:
            model_config["pretrained_cfg"] = {"tag": name.split(".", 1)[1]}
            labels = (run.get("config") or {}).get("label_names")
            if labels and len(labels) == model.num_classes:
                model_config["label_names"] = list(labels)
        else:
            record["source_sha256"] = sha256_file(source)
        timm.models.save_for_hf(model, tmp, model_config=model_config, model_args=kwargs or None, safe_serialization=True,
                                data_config=data_config)
        set_default_mode(tmp / "model.safetensors")  # safetensors writes 0600
        sha = sha256_file(tmp / "model.safetensors")
        back = timm.create_model("local-dir:" + str(tmp), pretrained=True).eval()
        rt = float((_logits(back, x) - got).abs().max())
        if rt != 0.0:
            raise ConversionError(f"{name}: the written folder reloads to different logits (max abs {rt:.3g})")
        result.update(sha256=sha, roundtrip_max_abs=rt)
        if run is not None:
            card = run_card(name, run, model, params, sha, repo_id or f"<your-name>/{name}", rt)
        else:
            card = model_card(name, dict(entry), model, params, sha, result)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if output.exists():
            old = output.with_name(f".{output.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(output, old)
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["files"] = {p.name: p.stat().st_size for p in sorted(output.iterdir())}
    result["origin"] = "run" if run is not None else "official"
    result["model"] = name
    return result


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the conversion; returns :func:`convert`'s dict plus ``manifest_updated`` (path or None)."""
    args = build_parser().parse_args(argv)
    if (args.top1 is not None or args.top5 is not None) and not args.update_manifest:
        raise UsageError("--top1/--top5 are recorded in the manifest: add --update-manifest")
    if args.repo_id and "/" not in args.repo_id:
        raise UsageError(f"--repo-id must be <owner>/<name>; got {args.repo_id!r}")
    result = convert(
        args.source,
        args.model,
        args.output,
        overwrite=args.overwrite,
        manifest=args.manifest,
        prefer_ema=False if args.no_ema else None,
        verify_size=args.verify_size,
        reference=not args.no_reference,
        model_kwargs=args.model_kwargs,
        tag=args.tag,
        repo_id=args.repo_id,
        official_only=args.update_manifest,
    )
    print(f"{result['model']}: wrote {result['output']} ({', '.join(f'{k} {v} B' for k, v in result['files'].items())})")
    print(f"reference: {result['reference']}" + (f"; max relative logit error {result['reference_max_rel_err']:.3g}"
                                                   if result["reference_max_rel_err"] is not None else ""))
    print(f"sha256 model.safetensors: {result['sha256']}")
    result["manifest_updated"] = None
    if args.update_manifest:
        values: Dict[str, Any] = {"sha256": result["sha256"]}
        if args.top1 is not None:
            values["top1"] = args.top1
        if args.top5 is not None:
            values["top5"] = args.top5
        if args.top1 is not None or args.top5 is not None:
            values["dataset"] = args.dataset
            values["resolution"] = result["resolution"]
        _manifest.update_converted(result["model"], values, args.manifest)
        path = args.manifest or _manifest.manifest_path()
        result["manifest_updated"] = str(path)
        print(f"manifest entry {result['model']} updated in {path}")
    return result


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: print user and file errors without a traceback."""
    from ..models._registry import CheckpointKeyError

    return run_cli(main, argv, errors=(UsageError, CheckpointFileError, CheckpointKeyError, ConversionError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(cli())
