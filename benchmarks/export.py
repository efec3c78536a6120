"""ONNX export of the whole zoo: every registered model through ``visionattn-export``, one table.

For each model (smallest first, by parameter count), a separate process runs
``python -m visionattn.tools.export --model NAME --output WORKDIR/NAME.onnx --threads T --repeats R``
(the tool's defaults otherwise: classifier, export size = the model's ``input_size``, dynamic
batch + height/width where the model allows, dynamo path with TorchScript fallback, checks at the
export size, at :func:`visionattn.tools.export.odd_check_size` where height/width are dynamic and
at batch 3) and its JSON report becomes one row:

``model``, ``params_m``, ``exporter`` (dynamo / torchscript), ``dynamic`` (the dynamic axes),
``export_s``, ``onnx_mb``, ``diff_export`` / ``diff_odd`` / ``diff_batch3`` (max abs difference
of the logits, ONNX Runtime vs PyTorch eager, at the export size, at the odd size, at batch 3;
``fixed H/W`` where the graph takes the export size only), ``ort_ms`` / ``eager_ms`` (median
latency at batch 1, ``--threads`` threads), ``eager_over_ort`` (> 1: ONNX Runtime is faster),
``custom_ops`` (``none`` when every node is a standard ONNX operator), ``status`` (``ok``, or
what failed) and ``note`` (why height/width are fixed, why TorchScript was used).

When the first (smallest) model of a family ends up with a fixed height/width, the rest of that
family is exported with ``--dynamic batch`` (their note says so; ``--no-family-shortcut`` tries
dynamic height/width for every model): the op that prevents it is the same, and the failed
dynamic trace of a large model costs minutes.

Rows are appended to ``OUT.csv`` after every model and ``OUT.md`` (command, machine, versions,
table, models not yet run) is rewritten; a model already in the CSV is skipped, so an
interrupted run continues where it stopped. The ``.onnx`` files are deleted after each model
(``--keep`` keeps them). Two processes can share the work (one core each): the second is started
with ``--reverse`` (largest model first) and the same ``--out`` and ``--workdir``; each takes a
model by creating ``WORKDIR/NAME.claim`` and re-reads the table (under a file lock) before each
model and before writing its row. ``--jobs N`` runs N such workers in one process (threads, each
running one export process at a time). Usage::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/export.py [--models 'dinat_*' ...] [--mixernet]
        [--threads 1] [--jobs 1] [--repeats 3] [--timeout 3600] [--out benchmarks/results/export] [--reverse]
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import fnmatch
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("model", "params_m", "exporter", "dynamic", "export_s", "onnx_mb", "diff_export", "diff_odd", "diff_batch3",
           "ort_ms", "eager_ms", "eager_over_ort", "custom_ops", "status", "note")


def model_list(patterns: Optional[List[str]], mixernet: bool) -> List[str]:
    """Zoo models (and MixerNet presets with ``mixernet``) matching ``patterns``, smallest first."""
    import timm
    import torch

    import visionattn

    names = visionattn.list_models() + (visionattn.list_mixer_models() if mixernet else [])
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    # Official parameter counts (millions) of the paper models, as tests/test_model_contract.py
    # checks them; the others are counted on the meta device.
    known = json.loads((ROOT / "tests" / "data" / "param_counts.json").read_text())
    sizes = {}
    for n in names:
        if n in known and not n.startswith("_"):
            sizes[n] = known[n][0] * 1e6
            continue
        with torch.device("meta"):
            sizes[n] = sum(p.numel() for p in timm.create_model(n).parameters())
    return sorted(names, key=lambda n: (sizes[n], n)), sizes


def brief_note(note: str) -> str:
    """A table-sized version of the tool's reasons (fixed height/width, TorchScript fallback;
    parts separated by `` | ``); the CSV keeps them whole."""
    parts = [p for p in (note or "").split(" | ") if p]
    return "; ".join(_brief(p) for p in parts)


def _brief(note: str) -> str:
    if note.startswith("fixed H/W as"):
        return note
    if "torch.onnx.export(dynamo=True)" in note and "ConversionError" in note:
        return "dynamo: torch.onnx could not decompose the graph (ConversionError), TorchScript used"
    if "non-nested SymInt" in note:
        return "fixed H/W: a plan cached per map size (lru_cache keyed by the size)"
    m = re.search(r"\(\((\d+) \+ \(-1\)\*\(L\['x'\]\.size\(\)\[2\] % \1\)\) % \1\) <= 0", note)
    if m:
        return f"fixed H/W: padding to a multiple of {m.group(1)} is a Python branch (guard H % {m.group(1)} == 0)"
    if "Cannot create Dim with inconsistent" in note:
        return "fixed H/W: guards contradict each other (size-dependent region/padding branches)"
    guards = re.findall(r"satisfy the generated guard (.+?)(?: - Not all| Suggested|$)", note)
    if guards:
        return "fixed H/W: guard " + guards[0].replace("L['x'].size()[2]", "H").replace("L['x'].size()[3]", "W")[:120]
    return note[:150]


def _cell(col: str, v) -> str:
    """Markdown cell: differences in scientific notation, notes shortened, the rest as in the CSV."""
    if col == "note":
        return brief_note(str(v)).replace("|", "/")
    if col.startswith("diff_"):
        try:
            return f"{float(v):.1e}"
        except (TypeError, ValueError):
            return str(v)
    return str(v)


def row_from_report(name: str, params_m: float, rep: Dict, rc: int) -> Dict:
    """One table row from the tool's JSON report (``rc``: its exit status)."""
    size = rep["img_size"]
    by = {(c["batch"], tuple(c["size"])): c for c in rep.get("checks", [])}

    def diff(key):
        c = by.get(key)
        if c is None:
            return "fixed H/W"
        return c.get("error", "")[:60] if "error" in c else c["max_abs_diff"]

    odd = [tuple(c["size"]) for c in rep.get("checks", []) if tuple(c["size"]) != tuple(size)]
    lat = rep.get("latency", {})
    notes = [n for n in (rep.get("dynamic_hw_note"), rep.get("exporter_note")) if n]
    return dict(
        model=name, params_m=round(params_m, 2), exporter=rep.get("exporter"),
        dynamic="+".join(rep.get("dynamic_axes") or []) or "none",
        export_s=round(rep.get("export_s", 0.0), 1), onnx_mb=round(rep.get("onnx_mb", 0.0), 1),
        diff_export=diff((1, tuple(size))), diff_odd=diff((1, odd[0])) if odd else "fixed H/W",
        diff_batch3=diff((3, tuple(size))),
        ort_ms=round(lat["ort_ms"], 1) if lat else "", eager_ms=round(lat["eager_ms"], 1) if lat else "",
        eager_over_ort=round(lat["ort_vs_eager"], 2) if lat else "",
        custom_ops=", ".join(rep.get("custom_ops") or []) or "none",
        status="ok" if rc == 0 and rep.get("ok") else "check failed",
        note=" | ".join(notes)[:300],
    )


def read_rows(path: Path) -> List[Dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: List[Dict]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})
    os.replace(tmp, path)


def write_md(path: Path, rows: List[Dict], pending: List[str], command: str, header: Dict[str, str]) -> None:
    lines = ["# ONNX export of the zoo", "", "Command:", "", "```bash", command, "```", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += [
        "",
        "Columns: `exporter` dynamo = `torch.export` + `torch.onnx.export(dynamo=True)`, torchscript = the fallback; "
        "`dynamic` = dynamic axes of the ONNX input; `diff_*` = max abs difference of the logits, ONNX Runtime (CPU) "
        "vs PyTorch eager (float32, random weights and inputs), at the export size (batch 1), at a size no window "
        "divides (batch 1; only where height/width are dynamic) and at batch 3; `ort_ms`/`eager_ms` = median latency "
        "at batch 1 and the export size; `eager_over_ort` > 1 means ONNX Runtime is faster; `custom_ops` = operators "
        "outside the standard ONNX domain. The machine was shared with other jobs while this ran, so the times are "
        "indicative only.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        lines.append("| " + " | ".join(_cell(k, r.get(k, "")) for k in COLUMNS) + " |")
    if pending:
        lines += ["", f"Not yet run ({len(pending)}): " + ", ".join(f"`{n}`" for n in pending)]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(csv_path: Path):
    """An exclusive ``flock`` on ``OUT.csv.lock`` while rows are read or written, so that two
    processes (one with ``--reverse``) can share a table."""
    with open(csv_path.with_suffix(".csv.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _claim(workdir: Path, name: str) -> bool:
    """Take ``name`` for this process (``WORKDIR/NAME.claim``, created exclusively); False when
    another process has it. A claim left by a killed run is removed by hand."""
    try:
        os.close(os.open(workdir / f"{name}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def read_command(md_path: Path) -> str:
    """The command recorded in an existing ``OUT.md`` (the line after the opening bash fence)."""
    if not md_path.exists():
        return ""
    lines = md_path.read_text().splitlines()
    return lines[lines.index("```bash") + 1] if "```bash" in lines else ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="*", help="name patterns (default: every registered paper model)")
    p.add_argument("--mixernet", action="store_true", help="include the MixerNet presets")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per model")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export"))
    p.add_argument("--workdir", help="folder of the .onnx files (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the .onnx files")
    p.add_argument("--md-only", action="store_true", help="rewrite OUT.md from OUT.csv (keeping its command) and stop")
    p.add_argument("--jobs", type=int, default=1,
                   help="models exported at once (each a process with --threads threads; e.g. cores / threads)")
    p.add_argument("--reverse", action="store_true",
                   help="largest model first (a second process with --reverse shares the work with a first one)")
    p.add_argument("--no-family-shortcut", action="store_true",
                   help="try dynamic height/width for every model, not only for the first of each family")
    args = p.parse_args(argv)

    import onnx
    import onnxruntime
    import torch

    names, sizes = model_list(args.models, args.mixernet)
    if args.reverse:
        names = names[::-1]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out.with_suffix(".csv"), out.with_suffix(".md")
    rows = read_rows(csv_path)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="visionattn_export_"))
    workdir.mkdir(parents=True, exist_ok=True)
    # The table's command: a --reverse process shares the work of the same command.
    command = "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/export.py " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:]) if a != "--reverse")
    header = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores ({platform.processor() or platform.platform()})",
        "versions": f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, "
                    f"python {platform.python_version()}",
        "settings": f"threads {args.threads} (torch and ONNX Runtime intra-op), repeats {args.repeats}, batch 1, "
                    f"tool defaults otherwise (atol 1e-4)",
    }

    def pending(rows):
        have = {r["model"] for r in rows}
        return [n for n in names if n not in have]

    if args.md_only:
        command = rows and read_command(md_path) or command
        write_md(md_path, rows, pending(rows), command, header)
        return 0
    write_md(md_path, rows, pending(rows), command, header)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    from visionattn.tools.benchmark import family_of

    def family(n):
        f = family_of(n)
        if "mixernet" in n:
            return n  # a MixerNet preset is its own family (maxvit_mixernet_tiny is not MaxViT's body)
        if n.startswith("vitrpb"):
            return "ViT-rpb"  # listed with NAT-iso (the same plain body) but no NA mixer: its own size logic
        return n if f == "timm" else f

    # A family whose smallest model could not get a dynamic height/width (an op's shape logic is
    # specialised to the export size) exports the rest with --dynamic batch: the same result
    # without tracing each large model a second time.
    # Filled from the table before each model (rows other workers added count too).
    fixed_hw: Dict[str, str] = {}

    def worker():
        """Export the models in order, each one not yet in the table and not claimed by another
        worker (a thread of this run or another process on the same ``--out`` and ``--workdir``)."""
        for name in names:
            # Rows that other workers added since.
            with _locked(csv_path):
                rows = read_rows(csv_path)
            for r in rows:
                if "height" not in r.get("dynamic", "") and r.get("exporter"):
                    fixed_hw.setdefault(family(r["model"]), r["model"])
            if name in {r["model"] for r in rows} or not _claim(workdir, name):
                continue
            run_one(name)

    def run_one(name):
        onnx_path = workdir / f"{name}.onnx"
        cmd = [sys.executable, "-m", "visionattn.tools.export", "--model", name, "--output", str(onnx_path),
               "--threads", str(args.threads), "--repeats", str(args.repeats)]
        if family(name) in fixed_hw and not args.no_family_shortcut:
            cmd += ["--dynamic", "batch"]
        print(f"[{time.strftime('%H:%M:%S')}] {name} ({sizes[name] / 1e6:.1f} M params)", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
        except subprocess.TimeoutExpired:
            rc, tail = None, ""
        report_path = onnx_path.with_suffix(".json")
        if rc is not None and report_path.exists():
            row = row_from_report(name, sizes[name] / 1e6, json.loads(report_path.read_text()), rc)
        else:
            last = [ln for ln in tail.splitlines() if ln.strip()][-1:] or [""]
            status = f"timeout after {args.timeout:.0f} s" if rc is None else f"export failed (exit {rc})"
            row = dict(model=name, params_m=round(sizes[name] / 1e6, 2), status=status, note=last[0][:300])
        if "--dynamic" in cmd and row.get("exporter"):
            short = f"fixed H/W as {fixed_hw[family(name)]} (same family; run with --dynamic batch)"
            row["note"] = " | ".join(n for n in (short, row.get("note")) if n)
        if row.get("exporter") and "height" not in row.get("dynamic", ""):
            fixed_hw.setdefault(family(name), name)
        with _locked(csv_path):
            rows = [r for r in read_rows(csv_path) if r["model"] != name] + [row]
            write_rows(csv_path, rows)
            write_md(md_path, rows, pending(rows), command, header)
        (workdir / f"{name}.claim").unlink(missing_ok=True)
        print(f"    {name}: {row['status']} in {time.perf_counter() - t0:.0f} s: "
              + ", ".join(f"{k} {row.get(k)}" for k in ("exporter", "dynamic", "diff_export", "diff_odd", "ort_ms", "eager_ms")),
              flush=True)
        if not args.keep:
            for f in workdir.glob(f"{name}.onnx*"):
                f.unlink()

    threads = [threading.Thread(target=worker, name=f"worker{i}") for i in range(max(1, args.jobs))]
    for t in threads:
        t.start()
        time.sleep(1)  # stagger the claims
    for t in threads:
        t.join()
    if not args.workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
