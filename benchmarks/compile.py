"""``torch.compile`` per family: graph breaks, compile and recompile times, compiled vs eager speed.

For each model (default: the smallest of every family and sub-family), in eval mode under
``torch.no_grad`` with fp32 inputs of batch 1 on the CPU:

* ``eager_ms``: median wall time of the eager forward at the first size (after one warm-up call);
* ``graph_breaks``: graph breaks dynamo reported while compiling (``torch._dynamo.utils.counters``);
  0 means one graph per size, i.e. ``fullgraph=True`` would succeed too;
* ``compile_s``: wall time of the first call of ``torch.compile(model)`` (default inductor
  backend) at the first size: tracing, graph compilation and the call itself;
* ``compiled_ms`` and ``speedup``: median wall time of later calls at that size, and
  ``eager_ms / compiled_ms``;
* ``recompile_s``: wall time of the first call at the second size (what a user waits when an
  image of a new size arrives), and ``graphs``: the number of distinct graphs dynamo compiled
  over the sizes given (1: one graph served them all);
* ``third_s``: wall time of the first call at a third size (``--size3``; off by default).

Compile times are *cold* by default: the script points inductor's on-disk cache
(``TORCHINDUCTOR_CACHE_DIR``) at a fresh temporary folder, as on a machine that never compiled
the model. ``--warm-cache`` keeps the user's cache (what a second run of a program sees).

``--mode`` chooses how the model is compiled:

* ``default``: ``torch.compile(model)``. At the second size dynamo's *automatic dynamic* shapes
  retrace the model with symbolic H and W; where a model's shape logic specialises sizes, that
  retrace is slow and still ends in a size-specialised graph.
* ``static``: ``torch.compile(model, dynamic=False)``: every new size is one static compile, as
  cheap as the first.
* ``dynamic``: ``torch.compile(model)`` with H and W of the first input marked dynamic
  (``torch._dynamo.mark_dynamic``), so that one symbolic-shape graph can serve other sizes where the
  model's padding logic allows it.

``--backend eager`` skips inductor (dynamo capture only): graph counts and capture times without
code generation, for a quick look at which families keep sizes symbolic.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/compile.py [--models nat_mini ...] [--size 64 64]
        [--size2 64 48] [--size3 96 80] [--warm-cache] [--repeats 5] [--threads 1] [--mode default|static|dynamic]
        [--backend inductor|eager] [--out benchmarks/results/compile]

writes ``<out>.csv`` and ``<out>.md`` (command, machine, versions, table). CPU compilation is
slow; the defaults keep the whole run within minutes on a laptop-class CPU.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Dict, List

if __name__ == "__main__" and "--warm-cache" not in sys.argv:
    # Cold compiles: inductor's on-disk caches (FX graphs, generated C++ kernels) would otherwise
    # turn a second run of this script into cache hits. Must be set before torch is imported.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="visionattn_compile_cache_")

import timm
import torch

import visionattn  # noqa: F401  (registers the models)

SMALLEST = [
    "nat_mini", "dinat_mini", "dinat_s_tiny", "nat_isotropic_small", "vitrpb_small", "biformer_tiny",
    "maxvit_tiny", "cswin_tiny", "davit_tiny_va", "agent_pvt_tiny", "agent_deit_tiny", "agent_swin_tiny",
    "agent_cswin_tiny",
]


def _median_ms(fn, x, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def measure(name: str, size, size2, size3, repeats: int, mode: str = "default", backend: str = "inductor") -> Dict:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, *size)
    x2 = torch.randn(1, 3, *size2)
    row: Dict = dict(model=name)
    with torch.no_grad():
        ref = model(x)
        row["eager_ms"] = _median_ms(model, x, repeats)
        compiled = torch.compile(model, backend=backend, dynamic=False if mode == "static" else None)
        xc = x.clone()
        if mode == "dynamic":
            torch._dynamo.mark_dynamic(xc, 2)
            torch._dynamo.mark_dynamic(xc, 3)
        t = time.perf_counter()
        out = compiled(xc)
        row["compile_s"] = time.perf_counter() - t
        row["max_abs_diff"] = (out - ref).abs().max().item()
        row["compiled_ms"] = _median_ms(compiled, x, repeats)
        row["speedup"] = row["eager_ms"] / row["compiled_ms"]
        t = time.perf_counter()
        out2 = compiled(x2)
        row["recompile_s"] = time.perf_counter() - t
        row["max_abs_diff2"] = (out2 - model(x2)).abs().max().item()
        if size3:
            x3 = torch.randn(1, 3, *size3)
            t = time.perf_counter()
            out3 = compiled(x3)
            row["third_s"] = time.perf_counter() - t
            row["max_abs_diff2"] = max(row["max_abs_diff2"], (out3 - model(x3)).abs().max().item())
    row["graphs"] = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    row["graph_breaks"] = int(sum(torch._dynamo.utils.counters["graph_break"].values()))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=SMALLEST)
    p.add_argument("--size", nargs=2, type=int, default=[64, 64], help="first input size H W")
    p.add_argument("--size2", nargs=2, type=int, default=[64, 48], help="second input size H W (recompile)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size3", nargs=2, type=int, default=None, help="third input size H W (default: none)")
    p.add_argument("--warm-cache", action="store_true", help="keep inductor's on-disk cache (default: a fresh, empty one)")
    p.add_argument("--mode", choices=["default", "static", "dynamic"], default="default",
                   help="default: torch.compile(model); static: dynamic=False; dynamic: mark H, W of the first input dynamic")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (inductor; eager = dynamo capture only)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "compile"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: List[Dict] = []
    for name in args.models:
        try:
            row = measure(name, args.size, args.size2, args.size3, args.repeats, args.mode, args.backend)
        except Exception as e:  # a failure is a result too
            row = dict(model=name, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
        rows.append(row)
        print(row, flush=True)
        write(rows, args, argv)  # after every model, so an interrupted run keeps its results
    return 0 if all("error" not in r for r in rows) else 1


def write(rows: List[Dict], args, argv) -> None:
    cols = ["model", "graph_breaks", "graphs", "compile_s", "recompile_s", "third_s", "eager_ms", "compiled_ms", "speedup",
            "max_abs_diff", "max_abs_diff2", "error"]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    cmd = "OMP_NUM_THREADS=1 python benchmarks/compile.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# torch.compile per family",
        "",
        f"Command: `{cmd}`",
        "",
        f"Date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs (shared with other jobs; {args.threads} thread(s) used); "
        f"Python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}.",
        "",
        f"Measured: batch 1, fp32, CPU, eval + no_grad; first size {args.size[0]}x{args.size[1]}, second size "
        f"{args.size2[0]}x{args.size2[1]}" + (f", third {args.size3[0]}x{args.size3[1]}" if args.size3 else "")
        + f"; mode {args.mode}, backend {args.backend}, {'warm' if args.warm_cache else 'cold (empty)'} inductor cache; "
        f"medians of {args.repeats} calls. compile_s / recompile_s: wall time of the first call at the first / "
        "second size, third_s at the third. graphs: distinct graphs over the sizes; graph_breaks: dynamo's count "
        "(0: fullgraph=True works). max_abs_diff2: worst difference to eager at the second and third size. "
        "Wall times on a shared machine are indicative only.",
        "",
        "| " + " | ".join(cols[:-1]) + " |",
        "|" + "---|" * (len(cols) - 1),
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error']} |" + " |" * (len(cols) - 3))
        else:
            lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in cols[:-1]) + " |")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
