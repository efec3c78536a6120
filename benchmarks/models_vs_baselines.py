#!/usr/bin/env python3
"""Whole-model speed and memory of visionattn vs timm and the official implementations.

For the tiny variant of every family, at 224x224 (batch 1 and a throughput batch) and at a
dense-prediction size (default 800x1216, batch 1), it times inference (``no_grad`` forward) and a
training step (forward, cross-entropy, backward, SGD step) of our model and of each baseline
**in the same process, interleaved** (A, B, A, B, ...; medians over ``--repeats`` rounds), and
measures the peak memory of one step (CUDA: ``max_memory_allocated``; CPU: peak of the running
sum of ``torch.profiler`` allocation events; see :func:`visionattn.tools.benchmark.peak_memory_mb`).

Baselines:

* timm's own implementations: MaxViT (``maxvit_tiny_tf_224``; MaxViT's official code is
  TensorFlow, so timm is its PyTorch baseline), DaViT (``davit_tiny``).
* official PyTorch repositories, checked out **outside the project** (``--official-dir``, default
  ``/tmp/official``, e.g. ``git clone https://github.com/rayleizhu/BiFormer /tmp/official/BiFormer``):
  ``BiFormer`` (rayleizhu/BiFormer ``models/biformer.py``), ``CSWin-Transformer``
  (microsoft/CSWin-Transformer ``models/cswin.py``), ``Agent-Attention`` (LeapLabTHU/Agent-Attention
  ``agent_transformer/models/agent_{deit,pvt,swin,cswin}.py``), ``InLine`` (LeapLabTHU/InLine
  ``models/inline_{deit,pvt,swin,cswin}.py``), ``davit`` (dingmyu/davit
  ``timm/models/davit.py``), ``VAN-Classification`` (Visual-Attention-Network/VAN-Classification
  ``models/van.py``), ``CrossFormer`` (cheerss/CrossFormer ``models/crossformer.py``). They are imported by
  file with small shims for the old timm APIs
  they expect (``register_model`` made a no-op so they do not overwrite this zoo's timm
  registrations; ``fairscale.nn.checkpoint.checkpoint_wrapper`` as identity; the old fork's
  ``.helpers/.layers/.registry/.vision_transformer`` for DaViT). Their ``einops`` dependency
  is taken from ``--extra-site`` if it is not installed (``pip install --target DIR einops``).
  Nothing of them is copied into this repository.
* NAT/DiNAT: the official models need NATTEN, which has no wheel for this torch; their
  baseline (dense masked attention / flex attention) is measured by the neighborhood-attention
  benchmark (``benchmarks/na2d*``), so here they are timed alone.

A baseline that cannot run a size (the official classification models fix their resolution or
assert divisibility) is reported as ``n/a`` with the reason. Ratios: ``time_ratio`` = ours median time /
baseline median time (< 1: ours faster), ``time_ratio_paired`` = median over rounds of the per-round
ratio, ``mem_ratio`` = ours peak / baseline peak. Runs on CPU or CUDA
(``--device cuda``) in fp32 / bf16 / fp16 (``--precision``, as in ``tools/benchmark.py``).

Results are rewritten after every case (``--output PREFIX`` -> ``.csv``; ``.md`` and ``.png`` at the
end, or with ``--report-only`` from an existing CSV).

Example::

    OMP_NUM_THREADS=1 python benchmarks/models_vs_baselines.py --threads 1 --repeats 3 \\
        --output benchmarks/results/models_vs_baselines
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import importlib.util
import os
import shlex
import statistics
import sys
import traceback
import types
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402

import visionattn  # noqa: E402,F401
from visionattn.tools.benchmark import (  # noqa: E402
    PRECISIONS, _amp_dtype, interleaved, machine_info, make_step, markdown_table, peak_memory_mb, write_csv,
    write_markdown,
)

Factory = Callable[[], torch.nn.Module]


# ----------------------------------------------------------------------------- official imports
@contextlib.contextmanager
def _old_timm_shims():
    """Make ``register_model`` a no-op (the official files register names that this zoo also
    registers, e.g. ``biformer_tiny``) and provide ``fairscale.nn.checkpoint.checkpoint_wrapper``."""
    import timm.models as tm
    import timm.models._registry as treg

    mods = [tm, treg]
    try:
        import timm.models.registry as treg_old

        mods.append(treg_old)
    except ImportError:
        pass
    saved = [(m, m.register_model) for m in mods]
    for m in mods:
        m.register_model = lambda fn: fn
    added = []
    if importlib.util.find_spec("fairscale") is None:
        fs, fsnn, fsck = (types.ModuleType(n) for n in ("fairscale", "fairscale.nn", "fairscale.nn.checkpoint"))
        fsck.checkpoint_wrapper = lambda module, *a, **k: module
        fs.nn, fsnn.checkpoint = fsnn, fsck
        for n, m in (("fairscale", fs), ("fairscale.nn", fsnn), ("fairscale.nn.checkpoint", fsck)):
            sys.modules[n] = m
            added.append(n)
    try:
        yield
    finally:
        for m, fn in saved:
            m.register_model = fn
        for n in added:
            sys.modules.pop(n, None)


def _import_from_repo(root: Path, module: str):
    """Import ``module`` (e.g. ``models.biformer``) with ``root`` first on ``sys.path``; the generic
    top-level names ``models``/``ops`` of earlier repositories are evicted first."""
    if not root.is_dir():
        raise FileNotFoundError(f"official repository not found at {root}")
    for name in list(sys.modules):
        if name.split(".")[0] in ("models", "ops"):
            del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        with _old_timm_shims():
            return importlib.import_module(module)
    finally:
        sys.path.remove(str(root))


def _official_davit(root: Path):
    """dingmyu/davit ``timm/models/davit.py`` loaded as a module of a synthetic package whose
    ``.helpers/.layers/.registry/.vision_transformer`` map onto timm 1.0."""
    path = root / "timm" / "models" / "davit.py"
    if not path.is_file():
        raise FileNotFoundError(f"official DaViT file not found at {path}")
    import timm.layers as tl
    from timm.models.vision_transformer import init_weights_vit_timm

    pkg = types.ModuleType("_official_davit_pkg")
    pkg.__path__ = []
    helpers = types.ModuleType("_official_davit_pkg.helpers")
    helpers.build_model_with_cfg = None
    helpers.overlay_external_default_cfg = None
    registry = types.ModuleType("_official_davit_pkg.registry")
    registry.register_model = lambda fn: fn
    vit = types.ModuleType("_official_davit_pkg.vision_transformer")
    vit.checkpoint_filter_fn = None
    vit._init_vit_weights = lambda m, *a, **k: init_weights_vit_timm(m) if isinstance(m, torch.nn.Module) else None
    for name, mod in (("", pkg), (".helpers", helpers), (".layers", tl), (".registry", registry), (".vision_transformer", vit)):
        sys.modules["_official_davit_pkg" + name] = mod
    spec = importlib.util.spec_from_file_location("_official_davit_pkg.davit", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def official_factories(official_dir: Path) -> Dict[str, Tuple[str, Factory]]:
    """``{family: (label, factory)}`` of the official tiny models that could be imported; a
    family whose repository is missing or fails to import maps to ``(reason, None)``."""
    out: Dict[str, Tuple[str, Any]] = {}

    def add(fam: str, label: str, make: Callable[[], Factory]) -> None:
        try:
            out[fam] = (label, make())
        except Exception as e:  # report, keep going
            out[fam] = (f"{label}: import failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})", None)

    def biformer():
        m = _import_from_repo(official_dir / "BiFormer", "models.biformer")
        return lambda: m.biformer_tiny(drop_path_rate=0.0)

    def cswin():
        m = _import_from_repo(official_dir / "CSWin-Transformer", "models.cswin")
        return lambda: m.CSWin_64_12211_tiny_224(drop_path_rate=0.0)

    agent_root = official_dir / "Agent-Attention" / "agent_transformer"

    def agent(kind):
        def make():
            if kind == "swin":
                m = _import_from_repo(agent_root, "models.agent_swin")
                return lambda: m.AgentSwinTransformer(
                    img_size=224, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=56,
                    drop_path_rate=0.0, agent_num="9-16-49-49".split("-"), attn_type="AAAB")
            if kind == "pvt":
                m = _import_from_repo(agent_root, "models.agent_pvt")
                return lambda: m.agent_pvt_tiny(img_size=224, drop_path_rate=0.0, agent_num="9-16-49-49".split("-"),
                                                attn_type="AAAA", agent_sr_ratios="1111")
            if kind == "deit":
                m = _import_from_repo(agent_root, "models.agent_deit")
                # agent_deit_tiny() goes through timm-0.4's build_model_with_cfg(default_cfg=...), which
                # timm 1.0 rejects; build its VisionTransformer with the same kwargs directly.
                return lambda: m.VisionTransformer(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3,
                                                   drop_path_rate=0.0, agent_num="49-49-49-49".split("-"))
            m = _import_from_repo(agent_root, "models.agent_cswin")
            return lambda: m.Agent_CSWin_64_24181_tiny_224(
                img_size=224, in_chans=3, num_classes=1000, drop_rate=0.0, drop_path_rate=0.0,
                agent_num="9-16-49-49".split("-"), attn_type="AABB", la_split_size="56-28-14-7")
        return make

    inline_root = official_dir / "InLine"

    def inline(kind):
        def make():
            if kind == "swin":
                m = _import_from_repo(inline_root, "models.inline_swin")
                return lambda: m.InLineSwin(img_size=224, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=56,
                                            drop_path_rate=0.0, attn_type="IIIS")
            if kind == "pvt":
                m = _import_from_repo(inline_root, "models.inline_pvt")
                return lambda: m.inline_pvt_tiny(img_size=224, drop_path_rate=0.0, attn_type="IIII", la_sr_ratios="1111")
            if kind == "deit":
                m = _import_from_repo(inline_root, "models.inline_deit")
                # as Agent-DeiT: the factory's timm-0.4 build_model_with_cfg call is bypassed (same kwargs)
                return lambda: m.VisionTransformer(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=6, drop_path_rate=0.0)
            m = _import_from_repo(inline_root, "models.inline_cswin")
            return lambda: m.inline_cswin_tiny(img_size=224, in_chans=3, num_classes=1000, drop_rate=0.0, drop_path_rate=0.0,
                                               attn_type="IISS", la_split_size="56-28-14-7")
        return make

    def davit():
        m = _official_davit(official_dir / "davit")
        return lambda: m.DaViT(img_size=224, num_classes=1000, patch_size=4, window_size=7, embed_dims=(96, 192, 384, 768),
                               num_heads=(3, 6, 12, 24), depths=(1, 1, 3, 1), mlp_ratio=4.0, overlapped_patch=False,
                               drop_path_rate=0.0)

    add("BiFormer", "official:rayleizhu/BiFormer biformer_tiny", biformer)
    add("CSWin", "official:microsoft/CSWin-Transformer CSWin_64_12211_tiny_224", cswin)
    add("Agent-Swin", "official:LeapLabTHU/Agent-Attention agent_swin_tiny", agent("swin"))
    add("Agent-PVT", "official:LeapLabTHU/Agent-Attention agent_pvt_tiny", agent("pvt"))
    add("Agent-DeiT", "official:LeapLabTHU/Agent-Attention agent_deit_tiny", agent("deit"))
    add("Agent-CSwin", "official:LeapLabTHU/Agent-Attention Agent_CSWin_64_24181_tiny_224", agent("cswin"))
    add("InLine-Swin", "official:LeapLabTHU/InLine inline_swin_tiny", inline("swin"))
    add("InLine-PVT", "official:LeapLabTHU/InLine inline_pvt_tiny", inline("pvt"))
    add("InLine-DeiT", "official:LeapLabTHU/InLine inline_deit_tiny", inline("deit"))
    add("InLine-CSwin", "official:LeapLabTHU/InLine inline_cswin_tiny", inline("cswin"))
    add("DaViT", "official:dingmyu/davit DaViT_tiny", davit)

    def van():
        m = _import_from_repo(official_dir / "VAN-Classification", "models.van")
        return lambda: m.van_b0(drop_path_rate=0.0)

    add("VAN", "official:Visual-Attention-Network/VAN-Classification van_b0", van)

    def crossformer():
        m = _import_from_repo(official_dir / "CrossFormer", "models.crossformer")
        # configs/crossformer/tiny_patch4_group7_224.yaml over config.py's defaults
        return lambda: m.CrossFormer(img_size=224, patch_size=[4, 8, 16, 32], embed_dim=64, depths=[1, 1, 8, 6],
                                     num_heads=[2, 4, 8, 16], group_size=[7, 7, 7, 7], crs_interval=[8, 4, 2, 1],
                                     mlp_ratio=[4.0] * 4, merge_size=[[2, 4]] * 3, use_acl=False, drop_path_rate=0.0)

    add("CrossFormer", "official:cheerss/CrossFormer cros_tiny_patch4_group7_224", crossformer)
    return out


#: family -> (our model, [timm baselines])
FAMILY_MODELS: Dict[str, Tuple[str, List[str]]] = {
    "NAT": ("nat_tiny", []),
    "DiNAT": ("dinat_tiny", []),
    "MaxViT": ("maxvit_tiny", ["maxvit_tiny_tf_224"]),
    "DaViT": ("davit_tiny_va", ["davit_tiny"]),
    "BiFormer": ("biformer_tiny", []),
    "CSWin": ("cswin_tiny", []),
    "Agent-Swin": ("agent_swin_tiny", []),
    "Agent-PVT": ("agent_pvt_tiny", []),
    "Agent-DeiT": ("agent_deit_tiny", []),
    "Agent-CSwin": ("agent_cswin_tiny", []),
    "VAN": ("van_b0", []),
    "InLine-Swin": ("inline_swin_tiny", []),
    "InLine-PVT": ("inline_pvt_tiny", []),
    "InLine-DeiT": ("inline_deit_tiny", []),
    "InLine-CSwin": ("inline_cswin_tiny", []),
    "CrossFormer": ("crossformer_tiny", []),
}


def _timm_factory(name: str, size: Tuple[int, int]) -> Factory:
    """timm model as registered. Not rebuilt with ``img_size=size``: timm's MaxViT then derives
    window = grid = size // 32 (25x38 at 800x1216), a different attention pattern from the
    paper's 7x7; at its own window it cannot run maps not divisible by 7 (reported as n/a)."""
    return lambda: timm.create_model(name, drop_path_rate=0.0)


def _ours_factory(name: str) -> Factory:
    return lambda: timm.create_model(name, drop_path_rate=0.0)


def _first_line(e: BaseException) -> str:
    """``Type: first message line``; for a bare ``assert`` the failing source line and place."""
    msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
    if not msg and e.__traceback__ is not None:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        msg = f"{(frame.line or '').strip()[:120]} ({Path(frame.filename).name}:{frame.lineno})"
    return f"{type(e).__name__}: {msg}"


def run_case(family: str, impls: Dict[str, Optional[Factory]], size: Tuple[int, int], batch: int, modes: Sequence[str],
             device: torch.device, precision: str, channels_last: bool, repeats: int) -> List[Dict[str, Any]]:
    """Time ``impls`` (label -> factory; the first is ours) side by side at one size/batch for
    each mode; returns one row per (mode, baseline) with medians and ratios."""
    _, dtype = _amp_dtype(precision)
    built: Dict[str, torch.nn.Module] = {}
    failed: Dict[str, str] = {}
    for label, make in impls.items():
        if make is None:
            failed[label] = "not importable"
            continue
        try:
            m = make().to(device=device, dtype=dtype)
            built[label] = m.to(memory_format=torch.channels_last) if channels_last else m
        except Exception as e:
            failed[label] = "build failed: " + _first_line(e)
    ours = next(iter(impls))
    rows = []
    for mode in modes:
        steps, mem = {}, {}
        for label, m in built.items():
            step = make_step(m, mode, batch, size, device, precision, channels_last)
            try:
                mem[label] = peak_memory_mb(step, device)[0]  # doubles as the warm-up call
                steps[label] = step
            except Exception as e:
                failed[label] = "forward failed at this size: " + _first_line(e)
        times = interleaved(steps, device, repeats, iters=1, warmup=0) if steps else {}
        med = {k: statistics.median(v) for k, v in times.items()}
        base_labels = [l for l in impls if l != ours] or [None]
        for bl in base_labels:
            row: Dict[str, Any] = {
                "family": family, "ours": ours, "baseline": bl or "(none)", "mode": mode,
                "size": f"{size[0]}x{size[1]}", "batch": batch, "device": str(device), "precision": precision,
                "ours_ms": round(1000 * med[ours], 2) if ours in med else None,
                "ours_img_s": round(batch / med[ours], 3) if ours in med else None,
                "ours_peak_mb": round(mem[ours], 1) if ours in mem else None,
                "repeats": repeats,
            }
            if bl is not None:
                row["baseline_ms"] = round(1000 * med[bl], 2) if bl in med else None
                row["baseline_img_s"] = round(batch / med[bl], 3) if bl in med else None
                row["baseline_peak_mb"] = round(mem[bl], 1) if bl in mem else None
                if ours in med and bl in med:
                    row["time_ratio"] = round(med[ours] / med[bl], 3)
                    row["mem_ratio"] = round(mem[ours] / mem[bl], 3) if mem.get(bl) else None
                    row["ours_s_runs"] = " ".join(f"{t:.3f}" for t in times[ours])
                    row["baseline_s_runs"] = " ".join(f"{t:.3f}" for t in times[bl])
                    row["time_ratio_paired"] = paired_ratio(row["ours_s_runs"], row["baseline_s_runs"])
                else:
                    row["note"] = failed.get(bl, "") if bl in failed else failed.get(ours, "")
            elif ours in failed:
                row["note"] = failed[ours]
            rows.append(row)
            print({k: v for k, v in row.items() if v is not None and not k.endswith("_runs")}, flush=True)
    return rows


def plot_ratios(path: str, rows: List[Dict[str, Any]]) -> Optional[str]:
    """Horizontal bar chart of ``time_ratio_paired`` (else ``time_ratio``; ours / baseline) per
    family, baseline, size and mode; green < 0.9, grey within +-10 %, red > 1.1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = lambda r: r.get("time_ratio_paired") if r.get("time_ratio_paired") not in (None, "") else r.get("time_ratio")
    pts = [r for r in rows if key(r) not in (None, "")]
    if not pts:
        return None
    labels = [f"{r['family']} vs {str(r['baseline']).split(':')[0]}:{str(r['baseline']).split()[0].split(':')[-1].split('/')[-1]} "
              f"{r['mode']} {r['size']} b{r['batch']}" for r in pts]
    vals = [float(key(r)) for r in pts]
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(pts) + 1.5))
    colors = ["tab:green" if v < 0.9 else "tab:red" if v > 1.1 else "tab:gray" for v in vals]
    ax.axvspan(0.9, 1.1, color="0.9", zorder=0)
    ax.barh(range(len(pts)), vals, color=colors)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_yticks(range(len(pts)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time ratio ours / baseline, median of per-round ratios (< 1: visionattn faster; grey band: within +-10 %, noise)")
    ax.set_title("visionattn tiny models vs timm / official implementations")
    fig.tight_layout()
    from visionattn.engine.files import atomic_write
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def _read_csv(path: str) -> List[Dict[str, Any]]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in list(r.items()):
            if v == "":
                r[k] = None
            else:
                try:
                    r[k] = float(v) if any(c in v for c in ".e") else int(v)
                except (TypeError, ValueError):
                    pass
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--families", nargs="+", default=list(FAMILY_MODELS), choices=list(FAMILY_MODELS))
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 8],
                   help="batches at 224 (1 and a throughput batch); none: skip 224")
    p.add_argument("--det-size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"), help="dense-prediction size (batch 1)")
    p.add_argument("--no-det", action="store_true", help="skip the dense-prediction size")
    p.add_argument("--modes", nargs="+", default=["inference", "train"], choices=["inference", "train"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="float32", choices=PRECISIONS)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--official-dir", default="/tmp/official")
    p.add_argument("--extra-site", default="/tmp/official/_site", help="extra sys.path entry for einops (official code only)")
    p.add_argument("--no-official", action="store_true")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "models_vs_baselines"))
    p.add_argument("--append", action="store_true", help="keep rows of an existing CSV (other families)")
    p.add_argument("--report-only", action="store_true", help="rebuild .md/.png from the CSV")
    p.add_argument("--notes", default=None, help="Markdown file appended to the .md as its Notes section")
    p.add_argument("--commands", default=None, help="text file listing the commands that produced the CSV (for --report-only)")
    return p


def paired_ratio(ours_runs: Any, base_runs: Any) -> Optional[float]:
    """Median over rounds of ours/baseline seconds (runs as space-separated strings); pairing the
    calls of one interleaved round cancels most of the load changes between rounds."""
    if not ours_runs or not base_runs:
        return None
    o = [float(t) for t in str(ours_runs).split()]
    b = [float(t) for t in str(base_runs).split()]
    return round(statistics.median(x / y for x, y in zip(o, b)), 3)


def write_report(prefix: str, rows: List[Dict[str, Any]], header: Dict[str, str], notes_file: Optional[str] = None) -> None:
    for r in rows:
        if r.get("time_ratio_paired") in (None, ""):
            r["time_ratio_paired"] = paired_ratio(r.get("ours_s_runs"), r.get("baseline_s_runs"))
    cols = ["family", "baseline", "mode", "size", "batch", "ours_img_s", "baseline_img_s", "time_ratio", "time_ratio_paired",
            "ours_peak_mb", "baseline_peak_mb", "mem_ratio", "note"]
    ratio_rows = [r for r in rows if r.get("baseline") not in (None, "(none)")]
    alone = [r for r in rows if r.get("baseline") in (None, "(none)")]
    tables = [("Ours vs baselines (time_ratio = ours time / baseline time; < 1 means visionattn is faster)",
               markdown_table(ratio_rows, cols))]
    if alone:
        tables.append(("Families timed alone (no runnable baseline here)",
                       markdown_table(alone, ["family", "ours", "mode", "size", "batch", "ours_img_s", "ours_ms", "ours_peak_mb", "note"])))
    notes = Path(notes_file).read_text().splitlines() if notes_file else []
    write_markdown(prefix + ".md", "visionattn tiny models vs timm and the official implementations", header, tables, notes)
    plot_ratios(prefix + ".png", rows)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args = build_parser().parse_args(argv)
    prefix = args.output[:-4] if args.output.endswith(".csv") else args.output
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(device)
    cmd = "python benchmarks/models_vs_baselines.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    header = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} {cmd}`",
        "machine": f"{info['cpu']}, {info['logical_cpus']} logical CPUs (shared with other jobs), torch threads {info['torch_threads']}"
        + (f", GPU {info['gpu']}" if "gpu" in info else ""),
        "versions": f"python {info['python']}, torch {info['torch']}, timm {info['timm']}",
        "method": f"device {device}, precision {args.precision}, channels_last {args.channels_last}; per case all implementations "
        "in one process, one warm-up call (which also records the peak memory), then `repeats` interleaved rounds (CSV column); medians. "
        "Peak memory on CPU = peak of the running sum of torch.profiler allocation events during one step (on CUDA: "
        "max_memory_allocated). The machine is shared, so absolute img/s are noisy; the ratios from interleaved runs are what count.",
    }
    if args.commands:
        header["command"] = "; ".join(f"`{l.strip()}`" for l in Path(args.commands).read_text().splitlines() if l.strip())
    if args.report_only:
        write_report(prefix, _read_csv(prefix + ".csv"), header, args.notes)
        return []
    if args.extra_site and os.path.isdir(args.extra_site) and importlib.util.find_spec("einops") is None:
        sys.path.append(args.extra_site)
    official = {} if args.no_official else official_factories(Path(args.official_dir))
    rows: List[Dict[str, Any]] = []
    cases = [((224, 224), b) for b in args.batch_sizes] + ([] if args.no_det else [(tuple(args.det_size), 1)])
    if args.append and os.path.isfile(prefix + ".csv"):
        redo = {(f, f"{s[0]}x{s[1]}", b) for f in args.families for s, b in cases}
        rows = [r for r in _read_csv(prefix + ".csv") if (r["family"], r["size"], r["batch"]) not in redo]
    for fam in args.families:
        ours, timm_names = FAMILY_MODELS[fam]
        for size, batch in cases:
            impls: Dict[str, Optional[Factory]] = {ours: _ours_factory(ours)}
            for t in timm_names:
                impls[f"timm:{t}"] = _timm_factory(t, size)
            if fam in official:
                label, make = official[fam]
                impls[label] = make
            try:
                rows.extend(run_case(fam, impls, size, batch, args.modes, device, args.precision, args.channels_last, args.repeats))
            except Exception:
                traceback.print_exc()
            write_csv(prefix + ".csv", rows)
    write_report(prefix, rows, header, args.notes)
    return rows


if __name__ == "__main__":
    main()
