#!/usr/bin/env python3
"""Generate the README's model table from the manifest and the registry.

One row per manifest entry (every pretrained tag, plus architectures without released weights):

* **Params (M)**: counted on the meta device (no memory, no initialisation) for the tag's
  class count (ImageNet-22k tags include their 21k head);
* **GMACs**: measured, from ``benchmarks/results/zoo.csv`` (columns ``model`` and ``gmacs``;
  ``model`` matched as ``<arch>.<tag>`` or ``<arch>``); where the file or the row is missing,
  the paper's figure from the manifest marked ``*``; otherwise ``–``;
* **Top-1**: as the authors report it (manifest ``reported.top1`` at ``reported.resolution``);
* **Hub id**: where ``pretrained=True`` will load from once published; ``†`` marks ids not
  published yet (``pretrained=True`` then loads the official file and converts it on load);
* **Licence** of the weights.

The table is written between ``<!-- model-table:start -->`` and ``<!-- model-table:end -->``;
a test checks the README holds exactly this output, so it cannot go stale.

Examples::

    python -m visionattn.tools.model_table --write README.md
    python -m visionattn.tools.model_table --check README.md
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from unittest import mock

import torch

from ..models import _manifest
from visionattn.engine.cli import UsageError, run_cli
from visionattn.engine.files import atomic_write_text

__all__ = ["build_parser", "main", "cli", "count_params_meta", "read_zoo_gmacs", "render_table", "replace_between_markers"]

START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"
DEFAULT_ZOO = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "zoo.csv"


def count_params_meta(name: str, num_classes: Optional[int] = None) -> int:
    """Parameters of ``timm.create_model(name)`` built on the meta device.

    Weight initialisation is skipped while counting (timm's truncated-normal init is slow on meta
    tensors and shapes are all that matter).
    """
    import timm
    import timm.layers.weight_init as wi

    kw = {} if num_classes is None else dict(num_classes=num_classes)
    with mock.patch.object(wi, "_trunc_normal_", lambda tensor, *a, **k: tensor), torch.device("meta"):
        model = timm.create_model(name, **kw)
    return sum(p.numel() for p in model.parameters())


def read_zoo_gmacs(path: Optional[Path]) -> Dict[str, float]:
    """``{model: gmacs}`` from a CSV with ``model`` and ``gmacs`` columns; ``{}`` when absent.

    Raises:
        UsageError: the file exists but lacks the columns.
    """
    if path is None or not Path(path).is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "model" not in reader.fieldnames or "gmacs" not in reader.fieldnames:
            raise UsageError(f"{path}: expected columns 'model' and 'gmacs'; got {reader.fieldnames}")
        out = {}
        for row in reader:
            try:
                out[row["model"].strip()] = float(row["gmacs"])
            except (TypeError, ValueError):
                continue
    return out


def _num(v: Optional[float], digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def render_table(manifest: Optional[Mapping] = None, zoo: Optional[Mapping[str, float]] = None) -> str:
    """The Markdown table (with its footnotes) for every manifest entry, in manifest order."""
    data = manifest if manifest is not None else _manifest.load_manifest()
    zoo = zoo or {}
    cache: Dict[Tuple[str, Optional[int]], int] = {}
    rows: List[str] = [
        "| Model | Params (M) | GMACs | Top-1 (%) reported | Hub id | Licence |",
        "|---|---:|---:|---:|---|---|",
    ]
    used_paper_gmacs = used_unpublished = False
    for name, e in data["entries"].items():
        arch = name.split(".", 1)[0]
        nc = e["cfg"].get("num_classes")
        key = (arch, nc)
        if key not in cache:
            cache[key] = count_params_meta(arch, nc)
        params = cache[key] / 1e6
        rep = e["reported"]
        if name in zoo or arch in zoo:
            gmacs = _num(zoo.get(name, zoo.get(arch)), 2)
        elif rep.get("gmacs") is not None:
            gmacs, used_paper_gmacs = f"{rep['gmacs']}*", True
        else:
            gmacs = "–"
        top1 = f"{rep['top1']} @{rep['resolution']}" if rep.get("top1") is not None else "–"
        hub = e.get("hub_id")
        if not hub:
            hub_s = "no weights released"
        elif _manifest.is_published(e):
            hub_s = f"`{hub}`"
        else:
            hub_s, used_unpublished = f"`{hub}`†", True
        rows.append(f"| `{name}` | {params:.2f} | {gmacs} | {top1} | {hub_s} | {e['license']} |")
    notes = []
    if used_paper_gmacs:
        notes.append("\\* GMACs as reported by the authors (no fvcore measurement in `benchmarks/results/zoo.csv` yet).")
    if used_unpublished:
        notes.append("† not published yet: `pretrained=True` downloads the official file and converts it on load.")
    text = "\n".join(rows)
    if notes:
        text += "\n\n" + "\n".join(f"{n}  " if i < len(notes) - 1 else n for i, n in enumerate(notes))
    return text


def replace_between_markers(text: str, table: str) -> str:
    """``text`` with everything between the model-table markers replaced by ``table``.

    Raises:
        UsageError: a marker is missing or they are out of order.
    """
    a, b = text.find(START), text.find(END)
    if a < 0 or b < 0 or b < a:
        raise UsageError(f"the README needs the markers {START} and {END}, in that order")
    return text[: a + len(START)] + "\n" + table + "\n" + text[b:]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Generate the README model table from the manifest and the registry.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", type=Path, metavar="README", help="replace the table between the markers in this file")
    g.add_argument("--check", type=Path, metavar="README", help="exit 1 when this file's table differs from the generated one")
    p.add_argument("--zoo", type=Path, default=DEFAULT_ZOO, help=f"measured GMACs CSV (default: {DEFAULT_ZOO})")
    p.add_argument("--manifest", type=Path, help="manifest file (default: the packaged one)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Render the table; with ``--write`` update the README atomically, with ``--check`` compare.

    Returns ``{'table': str, 'readme': path or None, 'changed': bool, 'up_to_date': bool or None}``.
    """
    import visionattn  # noqa: F401  (registers the models)

    args = build_parser().parse_args(argv)
    table = render_table(_manifest.load_manifest(args.manifest), read_zoo_gmacs(args.zoo))
    target = args.write or args.check
    if target is None:
        print(table)
        return dict(table=table, readme=None, changed=False, up_to_date=None)
    text = Path(target).read_text(encoding="utf-8")
    new = replace_between_markers(text, table)
    if args.check:
        ok = new == text
        print(f"{target}: model table {'up to date' if ok else 'differs from the generated one; run --write'}")
        return dict(table=table, readme=str(target), changed=False, up_to_date=ok)
    if new != text:
        atomic_write_text(target, new)
    print(f"{target}: model table {'updated' if new != text else 'already up to date'}")
    return dict(table=table, readme=str(target), changed=new != text, up_to_date=True)


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: 0 on success, 1 when ``--check`` finds a stale table, 2 on usage errors."""
    return run_cli(main, argv, status=lambda result: 1 if result.get("up_to_date") is False else 0)


if __name__ == "__main__":
    sys.exit(cli())
