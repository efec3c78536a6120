"""NAT / DiNAT whole models: our default NA backend vs the dense reference path vs flex attention.

One model instance per architecture; the backends are switched on its
:class:`~visionattn.layers.NeighborhoodAttention2d` modules, so every variant has the *same
parameters* (outputs are checked equal before timing):

* ``default``: ``backend="auto"`` (:func:`visionattn.ops.neighborhood.choose_backend`: the tiled
  pure-PyTorch path on CPU; NATTEN without rpb / compiled flex on CUDA);
* ``dense``: ``backend="reference"``, dense masked attention over all tokens (O(N^2)), i.e. what
  a NA model costs without a neighborhood kernel. Skipped where stage 1 would need more than
  ``--dense-max-gib`` for its N x N buffers;
* ``flex``: ``backend="flex"``, ``torch.compile(flex_attention)`` with the block-sparse NA mask
  and the rpb ``score_mod`` (the stand-in for "official NAT without NATTEN": the official
  classification code imports ``natten.NeighborhoodAttention2D``; NATTEN >= 0.20 has no rpb and its
  only CPU backend is eager flex, which materialises N^2 scores). Inference only on CPU (torch has
  no CPU flex backward); the one-off compile time is excluded from the medians (warm-up).

Measured (CPU fp32 unless CUDA is present): median wall time of ``--repeats`` interleaved rounds of
the inference forward (``torch.no_grad``, eval mode) and of a training step (train mode, forward,
cross-entropy, backward; no optimizer update), and the peak extra memory of one call
(``torch.profiler`` allocation events on CPU; the allocator peak on CUDA).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/nat_models.py [--repeats 3] [--out benchmarks/results/nat_models]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Dict, List

import timm
import torch
import torch.nn.functional as F

import visionattn  # noqa: F401 - registers the models with timm
from visionattn.layers.neighborhood import NeighborhoodAttention2d
from visionattn.engine.files import atomic_write_text

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from na2d import md_table, peak_bytes, read_rows, sync  # noqa: E402

warnings.filterwarnings("ignore", message=".*flex_attention.*")

# (model, batch, H, W, modes)
CASES = [
    ("dinat_tiny", 1, 224, 224, ("infer", "train")),
    ("nat_tiny", 1, 224, 224, ("infer", "train")),
    ("dinat_tiny", 8, 224, 224, ("infer", "train")),
    ("nat_tiny", 8, 224, 224, ("infer",)),
    ("dinat_tiny", 1, 800, 1216, ("infer",)),
]


def set_backend(model: torch.nn.Module, backend: str) -> None:
    for m in model.modules():
        if isinstance(m, NeighborhoodAttention2d):
            m.backend = backend


def stage1_dense_gib(model_name: str, batch: int, H: int, W: int) -> float:
    n = (H // 4) * (W // 4)
    heads = 2
    return 4 * batch * heads * n * n * 4 / 2**30


def run_case(name, batch, H, W, modes, args, device) -> List[Dict]:
    torch.manual_seed(0)
    model = timm.create_model(name).to(device)
    x = torch.randn(batch, 3, H, W, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    variants = ["default", "flex"]
    if stage1_dense_gib(name, batch, H, W) <= args.dense_max_gib:
        variants.insert(1, "dense")
    backend_of = {"default": "auto", "dense": "reference", "flex": "flex"}
    model.eval()
    outs, first = {}, {}
    for vname in variants:
        set_backend(model, backend_of[vname])
        t = time.perf_counter()
        with torch.no_grad():
            outs[vname] = model(x)
        sync(device)
        first[vname] = time.perf_counter() - t
    err = {v: (outs[v] - outs["default"]).abs().max().item() for v in variants}
    for v, e in err.items():
        if e > 1e-3:
            raise AssertionError(f"{name}: backend {v} output differs from default by {e:.3g}")

    def infer(vname):
        def fn():
            set_backend(model, backend_of[vname])
            model.eval()
            with torch.no_grad():
                model(x)
        return fn

    def train(vname):
        def fn():
            set_backend(model, backend_of[vname])
            model.train()
            F.cross_entropy(model(x), y).backward()
            model.zero_grad(set_to_none=True)
        return fn

    fns = {}
    for vname in variants:
        for mode in modes:
            if mode == "train" and vname == "flex" and device.type == "cpu":
                continue
            fns[(vname, mode)] = infer(vname) if mode == "infer" else train(vname)
    for fn in fns.values():
        fn()  # warm-up (compiles flex graphs)
    times: Dict[tuple, List[float]] = {key: [] for key in fns}
    for _ in range(args.repeats):
        for key, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - t)
    rows = []
    for (vname, mode), fn in fns.items():
        rows.append(dict(
            model=name, batch=batch, size=f"{H}x{W}", mode=mode, backend=vname,
            ms=round(1e3 * statistics.median(times[(vname, mode)]), 1),
            peak_mib=round(peak_bytes(fn, device) / 2**20, 1),
            max_abs_diff=f"{err[vname]:.1e}", first_call_s=round(first[vname], 1),
        ))
    for mode in modes:
        base = next((r for r in rows if r["mode"] == mode and r["backend"] == "default"), None)
        for r in rows:
            if r["mode"] == mode and base:
                r["time_vs_default"] = round(r["ms"] / base["ms"], 2)
                r["mem_vs_default"] = round(r["peak_mib"] / max(base["peak_mib"], 1e-6), 2)
    for r in rows:
        print(r, flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dense-max-gib", type=float, default=4.0)
    p.add_argument("--cases", type=int, nargs="*", default=None, help="indices into CASES (default: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="benchmarks/results/nat_models")
    p.add_argument("--from-csv", default=None, help="re-write the .md from an earlier run's .csv (no measuring)")
    return p


NOTES = [
    "## Notes",
    "",
    "- `default` is what `timm.create_model(...)` runs: on CPU the tiled pure-PyTorch NA path. `dense` is the same model"
    " on `backend=\"reference\"` (NA as N x N masked attention), i.e. the cost of the NA pattern without a neighborhood"
    " kernel. `flex` is the same model on `backend=\"flex\"` (compiled `flex_attention`, block-sparse mask + rpb"
    " `score_mod`), forward only on CPU.",
    "- The official NAT/DiNAT code (`classification/nat.py`, `dinat.py`) imports `natten.NeighborhoodAttention2D`"
    " and cannot run without NATTEN. With today's NATTEN (>= 0.20) it cannot load the released weights either (no"
    " rpb), and a CPU-only NATTEN has only its Flex backend, which runs uncompiled (PyTorch's dense flex fallback,"
    " N^2 scores; see `na2d_natten.md`: about 97x slower than the tiled path and 10x its memory at 56x56, without"
    " rpb). Compiled flex with an rpb `score_mod` (`flex` here) is the best case of that fallback.",
    "- Shared 2-core machine (load ~10 during the run): absolute times are noisy; the variants are interleaved"
    " round by round, so the `*_vs_default` ratios are the numbers to read. No GPU was available: CUDA rows are not"
    " included (the script runs there unchanged).",
    "",
]


def write(rows: List[Dict], args, device, argv) -> None:
    cols = list(dict.fromkeys(c for r in rows for c in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    atomic_write_text(args.out + ".csv", buf.getvalue())
    cmd = "OMP_NUM_THREADS=%s python benchmarks/nat_models.py %s" % (os.environ.get("OMP_NUM_THREADS", "?"), " ".join(sys.argv[1:] if argv is None else argv))
    md = [
        "# NAT / DiNAT whole models: default backend vs dense reference vs flex",
        "",
        f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} by `benchmarks/nat_models.py`.",
        "",
        "```",
        cmd,
        "```",
        "",
        f"- torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}, device `{device}`, threads {torch.get_num_threads()}",
        f"- times: median of {args.repeats} interleaved rounds after a warm-up; peak = extra memory of one call",
        f"- dense skipped where stage 1's N x N buffers would exceed {args.dense_max_gib} GiB",
        "",
        *NOTES,
        md_table(rows, cols),
        "",
    ]
    atomic_write_text(args.out + ".md", "\n".join(md))


def main(argv=None) -> Dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows: List[Dict] = []
    if args.from_csv:
        rows = read_rows(args.from_csv)
        argl = list(sys.argv[1:] if argv is None else argv)
        i = argl.index("--from-csv")
        write(rows, args, device, argl[:i] + argl[i + 2 :])
        return dict(rows=rows)
    for i, case in enumerate(CASES):
        if args.cases is None or i in args.cases:
            rows.extend(run_case(*case, args, device))
            write(rows, args, device, argv)  # after every case: partial results survive an interrupted run
    return dict(rows=rows)


if __name__ == "__main__":
    main()
