"""Neighborhood attention (with rpb and dilation): time and peak memory vs resolution, side by side.

Backends of :func:`visionattn.ops.na2d`, all on the same q, k, v, rpb (checked equal before timing):

* ``tiled``      - ``backend="torch"``: the tiled pure-PyTorch path (linear in H*W; autograd).
* ``dense``      - ``backend="reference"``: dense attention with an N x N mask and bias (O(N^2));
  skipped where its estimated N^2 buffers exceed ``--dense-max-gib``.
* ``flex``       - ``backend="flex"``: ``torch.compile(flex_attention)`` with the block-sparse NA
  ``BlockMask`` and the rpb ``score_mod``. On CPU torch (<= 2.14) has no flex backward, so only the
  forward is timed there. The one-off compile time is reported separately (``compile_s``).
* ``flex-eager`` - ``backend="flex-eager"``: uncompiled ``flex_attention`` (PyTorch evaluates it
  densely, O(N^2)); forward only on CPU, same memory cap as ``dense``.
* ``natten``     - ``natten.na2d`` (no rpb: NATTEN >= 0.20 has none) when ``import natten`` works;
  forward on CPU (its CPU backend is eager flex), forward+backward on CUDA.

Measured: median wall time over ``--repeats`` interleaved rounds (each round calls every backend
once, so machine-load drift hits all alike) of the forward (``torch.no_grad``) and of forward +
backward (gradients of q, k, v, rpb). Peak memory: on CPU the peak of the running sum of the
allocation/free events ``torch.profiler(profile_memory=True)`` records during one call (extra memory
on top of the inputs); on CUDA ``torch.cuda.max_memory_allocated`` minus the memory before the call.
Slopes: least-squares fit of log(time) and log(memory) against log(H*W) over the sizes >= 28^2 (the
smallest maps are dominated by fixed per-call costs); ~1 means linear in H*W, ~2 quadratic.

On CUDA (run where a GPU exists; not measured on the CPU-only machine the committed results come
from) the script also times fp32/bf16/fp16 and reports achieved TFLOP/s of the forward,
``4 * B * heads * H * W * K^2 * head_dim / time`` (the q.k and attn.v products of the exact
neighborhood), against a measured dense bf16 matmul rate (``torch.mm`` of two 8192^2 matrices).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/na2d.py [--sizes 14 28 56 84 112] [--kernels 7 11] \
        [--dilations 1 2 4] [--repeats 5] [--out benchmarks/results/na2d]

writes ``<out>.csv``, ``<out>.md`` (command, machine, versions, table, slopes) and ``<out>.png``.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional

import torch
from torch.profiler import ProfilerActivity, profile

from visionattn.ops import na2d
from visionattn.engine.files import atomic_write, atomic_write_text

warnings.filterwarnings("ignore", message=".*flex_attention.*")  # eager flex "use torch.compile" notice


def natten_module():
    """``natten`` when importable with ``natten.na2d`` (else ``None``)."""
    try:
        import natten  # noqa: F401

        return natten if hasattr(natten, "na2d") else None
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Extra memory one call of ``fn`` needs (CPU: profiler allocation events; CUDA: allocator peak)."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    cur = best = 0
    for _, b in events:
        cur += b
        best = max(best, cur)
    return best


def dense_gib(B: int, heads: int, n: int, elem: int) -> float:
    """Rough size of the O(N^2) buffers of the dense paths (logits, mask/bias, softmax, grads)."""
    return 4 * B * heads * n * n * elem / 2**30


def matmul_tflops(device: torch.device, n: int = 8192, dtype=torch.bfloat16) -> float:
    """Measured dense matmul rate (TFLOP/s) of ``torch.mm`` on two ``n x n`` matrices."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    ts = []
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        sync(device)
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(ts) / 1e12


def make_fns(name: str, q, k, v, rpb, K: int, d: int, nat, device):
    """(forward, forward+backward or None) closures for one backend."""
    if name == "natten":
        def fwd():
            with torch.no_grad():
                nat.na2d(q, k, v, kernel_size=K, dilation=d)

        def fb():
            qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
            nat.na2d(qq, kk, vv, kernel_size=K, dilation=d).sum().backward()

        return fwd, (fb if device.type == "cuda" else None)
    backend = {"tiled": "torch", "dense": "reference"}.get(name, name)

    def fwd():
        with torch.no_grad():
            na2d(q, k, v, K, d, rpb, backend=backend)

    def fb():
        ins = [t.detach().requires_grad_() for t in (q, k, v, rpb)]
        na2d(*ins[:3], K, d, ins[3], backend=backend).sum().backward()

    has_bwd = device.type == "cuda" or name in ("tiled", "dense")
    return fwd, (fb if has_bwd else None)


def run_case(S: int, K: int, d: int, dtype, device, args, nat) -> List[Dict]:
    B, heads, hd = args.batch, args.heads, args.head_dim
    g = torch.Generator().manual_seed(S * 100 + K * 10 + d)
    q, k, v = (torch.randn(B, S, S, heads, hd, generator=g).to(device, dtype) for _ in range(3))
    rpb = (0.1 * torch.randn(heads, 2 * K - 1, 2 * K - 1, generator=g)).to(device, dtype)
    n = S * S
    elem = torch.finfo(dtype).bits // 8
    names = ["tiled", "flex"]
    if dense_gib(B, heads, n, elem) <= args.dense_max_gib:
        names.append("dense")
    if device.type == "cpu" and dense_gib(B, heads, n, elem) <= args.eager_max_gib:
        names.append("flex-eager")
    if nat is not None and (device.type == "cuda" or dense_gib(B, heads, n, elem) <= args.eager_max_gib):
        names.append("natten")
    if S > args.max_flex_size:
        names.remove("flex")
    # equal numbers first: every backend against the tiled path (natten: against tiled without rpb)
    want = na2d(q, k, v, K, d, rpb, backend="torch")
    want0 = na2d(q, k, v, K, d, None, backend="torch") if "natten" in names else None
    err, compile_s = {}, {}
    for name in names:
        t0 = time.perf_counter()
        with torch.no_grad():
            if name == "natten":
                out = nat.na2d(q, k, v, kernel_size=K, dilation=d)
                ref = want0
            else:
                out = na2d(q, k, v, K, d, rpb, backend={"tiled": "torch", "dense": "reference"}.get(name, name))
                ref = want
        sync(device)
        compile_s[name] = time.perf_counter() - t0
        err[name] = (out.float() - ref.float()).abs().max().item()
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        if err[name] > tol:
            raise AssertionError(f"{name} differs from the tiled path by {err[name]:.3g} at S={S} K={K} d={d} {dtype}")
    fns = {name: make_fns(name, q, k, v, rpb, K, d, nat, device) for name in names}
    times: Dict[str, Dict[str, List[float]]] = {name: {"fwd": [], "fwd_bwd": []} for name in names}
    for name in names:  # warm-up (compiles backward graphs too)
        for mode, fn in zip(("fwd", "fwd_bwd"), fns[name]):
            if fn is not None:
                fn()
    for _ in range(args.repeats):
        for name in names:
            for mode, fn in zip(("fwd", "fwd_bwd"), fns[name]):
                if fn is None:
                    continue
                sync(device)
                t = time.perf_counter()
                fn()
                sync(device)
                times[name][mode].append(time.perf_counter() - t)
    rows = []
    flops = 4 * B * heads * n * K * K * hd
    for name in names:
        for mode, fn in zip(("fwd", "fwd_bwd"), fns[name]):
            if fn is None:
                continue
            ms = 1e3 * statistics.median(times[name][mode])
            row = dict(
                device=device.type, dtype=str(dtype).replace("torch.", ""), backend=name, mode=mode,
                size=S, tokens=n, kernel=K, dilation=d, batch=B, heads=heads, head_dim=hd,
                rpb=name != "natten", ms=round(ms, 3), peak_mib=round(peak_bytes(fn, device) / 2**20, 2),
                max_abs_err=f"{err[name]:.2e}", first_call_s=round(compile_s[name], 2),
            )
            if device.type == "cuda" and mode == "fwd":
                row["tflops"] = round(flops / (ms * 1e-3) / 1e12, 3)
            rows.append(row)
            print(row, flush=True)
    return rows


def slope(xs: List[float], ys: List[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den if den else float("nan")


def fit_slopes(rows: List[Dict], min_size: int) -> List[Dict]:
    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        groups.setdefault((r["device"], r["dtype"], r["backend"], r["mode"], r["kernel"], r["dilation"]), []).append(r)
    out = []
    for key, rs in sorted(groups.items()):
        rs = [r for r in rs if r["size"] >= min_size]
        if len({r["size"] for r in rs}) < 3:
            continue
        xs = [r["tokens"] for r in rs]
        out.append(dict(zip(("device", "dtype", "backend", "mode", "kernel", "dilation"), key),
                        sizes=f"{min(r['size'] for r in rs)}..{max(r['size'] for r in rs)}",
                        time_slope=round(slope(xs, [r["ms"] for r in rs]), 2),
                        mem_slope=round(slope(xs, [r["peak_mib"] for r in rs]), 2)))
    return out


def ratios(rows: List[Dict]) -> List[Dict]:
    """Time and memory of every backend relative to the tiled path at the same case and mode."""
    base = {(r["device"], r["dtype"], r["size"], r["kernel"], r["dilation"], r["mode"]): r for r in rows if r["backend"] == "tiled"}
    out = []
    for r in rows:
        b = base.get((r["device"], r["dtype"], r["size"], r["kernel"], r["dilation"], r["mode"]))
        if b is None or r["backend"] == "tiled":
            continue
        out.append(dict(dtype=r["dtype"], size=r["size"], kernel=r["kernel"], dilation=r["dilation"], mode=r["mode"],
                        backend=r["backend"], time_vs_tiled=round(r["ms"] / b["ms"], 2),
                        mem_vs_tiled=round(r["peak_mib"] / max(b["peak_mib"], 1e-6), 2)))
    return out


def machine_info() -> str:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except Exception:  # noqa: BLE001
        return platform.platform()


def md_table(rows: List[Dict], cols: List[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: List[Dict], path: str, K: int, d: int) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    sel = [r for r in rows if r["kernel"] == K and r["dilation"] == d and r["dtype"] in ("float32",)]
    for (backend, mode) in sorted({(r["backend"], r["mode"]) for r in sel}):
        rs = sorted((r for r in sel if r["backend"] == backend and r["mode"] == mode), key=lambda r: r["tokens"])
        style = "-o" if mode == "fwd" else "--s"
        for ax, key in zip(axes, ("ms", "peak_mib")):
            ax.plot([r["tokens"] for r in rs], [max(r[key], 1e-3) for r in rs], style, label=f"{backend} {mode}")
    for ax, lab in zip(axes, ("time per call (ms)", "peak extra memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens H*W")
        ax.set_ylabel(lab)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"na2d K={K} d={d}, fp32 (log-log; slope 1 = linear in H*W)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[14, 28, 56, 84, 112])
    p.add_argument("--kernels", type=int, nargs="+", default=[7, 11])
    p.add_argument("--dilations", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=2, help="DiNAT-T stage 1: dim 64 = 2 heads x 32")
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dense-max-gib", type=float, default=2.0, help="skip O(N^2) paths above this estimate")
    p.add_argument("--eager-max-gib", type=float, default=0.3, help="same cap for the (slower) eager flex / NATTEN-on-CPU paths")
    p.add_argument("--max-flex-size", type=int, default=10**9, help="skip compiled flex above this map side")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", nargs="+", default=None, help="default: float32 on CPU; float32 bfloat16 float16 on CUDA")
    p.add_argument("--slope-min-size", type=int, default=28)
    p.add_argument("--out", default="benchmarks/results/na2d")
    p.add_argument("--from-csv", default=None, help="re-write the .md/.png from an earlier run's .csv (no measuring)")
    return p


def read_rows(path: str) -> List[Dict]:
    """Rows of an earlier run's csv with numbers parsed back."""
    def conv(v: str):
        for t in (int, float):
            try:
                return t(v)
            except ValueError:
                pass
        return {"True": True, "False": False}.get(v, v)

    with open(path, newline="") as f:
        return [{k: conv(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


NOTES = [
    "## Notes",
    "",
    "- The machine is shared with other jobs (load average ~10 on 2 cores during these runs): absolute times are noisy,"
    " single 14^2 points especially. Backends are interleaved round by round, so the ratios within one size are the"
    " meaningful numbers; slopes are fitted over 28^2 and up.",
    "- `flex` on CPU is forward only: torch 2.14 raises `FlexAttention does not support backward on CPU`.",
    "  `first_call_s` of `flex` is the one-off compile (inductor CPU flex template) plus the block-mask build.",
    "- `flex-eager` and NATTEN on CPU run PyTorch's unfused flex fallback, which forms the N x N scores (O(N^2) memory).",
    "- CUDA rows (fp32/bf16/fp16, TFLOP/s vs the bf16 matmul rate) are produced by the same command on a GPU"
    " machine; no GPU was available for the committed results.",
    "",
]


def main(argv=None) -> Dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = [getattr(torch, n) for n in (args.dtypes or (["float32", "bfloat16", "float16"] if device.type == "cuda" else ["float32"]))]
    nat = natten_module()
    rows: List[Dict] = []
    if args.from_csv:
        rows = read_rows(args.from_csv)
    else:
        for dtype in dtypes:
            for K in args.kernels:
                for d in args.dilations:
                    for S in args.sizes:
                        if K * d > S:
                            continue
                        rows.extend(run_case(S, K, d, dtype, device, args, nat))
    slopes = fit_slopes(rows, args.slope_min_size)
    mm = matmul_tflops(device) if device.type == "cuda" else None
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    cols = list(dict.fromkeys(c for r in rows for c in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(args.out + ".csv", buf.getvalue())
    png = plot(rows, args.out + ".png", args.kernels[0], 1)
    argl = list(sys.argv[1:] if argv is None else argv)
    if args.from_csv:  # show the measuring command, not the re-write
        i = argl.index("--from-csv")
        del argl[i : i + 2]
    cmd = "OMP_NUM_THREADS=%s python benchmarks/na2d.py %s" % (os.environ.get("OMP_NUM_THREADS", "?"), " ".join(argl))
    lscpu = [ln for ln in machine_info().splitlines() if ln.split(":")[0].strip() in ("Model name", "CPU(s)", "Architecture", "Thread(s) per core")]
    md = [
        "# na2d: tiled vs dense vs flex (vs NATTEN) — time and memory vs resolution",
        "",
        f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} by `benchmarks/na2d.py`.",
        "",
        "```",
        cmd,
        "```",
        "",
        "- machine (`lscpu`): " + "; ".join(" ".join(ln.split()) for ln in lscpu),
        f"- torch {torch.__version__}, Python {platform.python_version()}, device `{device}`"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", threads {torch.get_num_threads()}",
        f"- NATTEN: {'natten ' + getattr(nat, '__version__', '?') if nat is not None else 'not importable (not measured)'}"
        if not args.from_csv else "- NATTEN: measured where a `natten` row appears",
        f"- problem: B={args.batch}, heads={args.heads}, head_dim={args.head_dim} (DiNAT-T stage 1), rpb on (natten: none)",
        f"- times: median of {args.repeats} interleaved rounds after a warm-up; peak = extra memory of one call "
        + ("(CUDA allocator peak)" if device.type == "cuda" else "(sum of torch.profiler allocation events)"),
        f"- dense paths skipped where the O(N^2) estimate exceeds {args.dense_max_gib} GiB (dense) / {args.eager_max_gib} GiB (eager flex, NATTEN on CPU)",
    ]
    if mm is not None:
        md.append(f"- dense bf16 matmul rate (torch.mm 8192^2): {mm:.1f} TFLOP/s")
    md += ["", *NOTES, "## Slopes of log(time), log(memory) vs log(H*W)", "", md_table(slopes, list(slopes[0]) if slopes else []), "",
           "## Ratios to the tiled path (same case, same round)", "",
           md_table(ratios(rows), ["dtype", "size", "kernel", "dilation", "mode", "backend", "time_vs_tiled", "mem_vs_tiled"]), "",
           "## All measurements", "", md_table(rows, cols), ""]
    if png:
        md += [f"![time and memory vs H*W](./{os.path.basename(png)})", ""]
    atomic_write_text(args.out + ".md", "\n".join(md))
    return dict(rows=rows, slopes=slopes, matmul_tflops=mm, machine=machine_info())


if __name__ == "__main__":
    main()
