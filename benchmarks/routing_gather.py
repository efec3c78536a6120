"""Bi-level routing attention: visionattn's index_select + SDPA path vs a straightforward gather.

Both sides are the whole BRA mixer (qkv projection, region routing, key/value gather, attention,
LePE, output projection) with *shared parameters*, so they compute the same function; the script
checks that the outputs and input gradients agree before timing anything.

* ``gather`` (baseline): the algorithm as the official ``ops/bra_legacy.py`` structures it
  (github rayleizhu/BiFormer at 1697bbb), re-written here from its description: regions cut
  from the input before ``qkv``, ``torch.gather`` of the fused key/value tensor expanded over the
  ``p^2`` query regions with an expanded index, two rearrange copies into heads layout, explicit
  ``softmax((q * scale) @ k) @ v``.
* ``visionattn``: :class:`visionattn.layers.BiLevelRoutingAttention` / :func:`visionattn.ops.bra2d`
  (heads-major regions, one ``index_select`` per K and V, fused ``scaled_dot_product_attention``).

Measured (fp32, CPU): median wall time of the forward pass (``torch.no_grad``) and of forward +
backward (sum of the output, gradients for the input and all parameters), and the peak of the
memory allocated during each call, from the allocation events of ``torch.profiler``
(``profile_memory=True``; the peak of the running sum of allocations and frees, i.e. the
additional memory the call needed on top of its inputs and parameters).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/routing_gather.py [--repeats 5] [--threads 1] \
        [--out benchmarks/results/routing_gather]

writes ``<out>.csv`` and ``<out>.md`` (command, machine, versions, table).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from visionattn.layers.routing import BiLevelRoutingAttention


class GatherBRA(nn.Module):
    """Straightforward-gather BRA sharing ``ref``'s parameters (maps divisible by ``n_win`` only)."""

    def __init__(self, ref: BiLevelRoutingAttention):
        super().__init__()
        self.ref = ref

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.ref
        B, H, W, C = x.shape
        n, m, qk, k = r.num_regions, r.num_heads, r.qk_dim, r.topk
        h, w = H // n, W // n
        R, T = n * n, h * w
        # regions before the projection: (B, R, h, w, C)
        xr = x.reshape(B, n, h, n, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, R, h, w, C)
        q, kv = r.qkv(xr).split([qk, qk + C], dim=-1)
        q_pix, kv_pix = q.reshape(B, R, T, qk), kv.reshape(B, R, T, qk + C)
        q_win, k_win = q.mean(dim=(2, 3)), kv[..., :qk].mean(dim=(2, 3))
        v_img = kv[..., qk:].reshape(B, n, n, h, w, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)
        lepe = r.lepe(v_img.contiguous()).permute(0, 2, 3, 1)
        logits = (q_win.detach() * r.scale) @ k_win.detach().transpose(-2, -1)
        idx = torch.topk(logits, k=k, dim=-1).indices  # (B, R, k)
        sel = torch.gather(
            kv_pix.view(B, 1, R, T, qk + C).expand(-1, R, -1, -1, -1),
            dim=2,
            index=idx.view(B, R, k, 1, 1).expand(-1, -1, -1, T, qk + C),
        )  # (B, R, k, T, qk + C)
        ks, vs = sel.split([qk, C], dim=-1)
        ks = ks.reshape(B, R, k, T, m, qk // m).permute(0, 1, 4, 5, 2, 3).reshape(B * R, m, qk // m, k * T)
        vs = vs.reshape(B, R, k, T, m, C // m).permute(0, 1, 4, 2, 3, 5).reshape(B * R, m, k * T, C // m)
        qh = q_pix.reshape(B, R, T, m, qk // m).permute(0, 1, 3, 2, 4).reshape(B * R, m, T, qk // m)
        attn = ((qh * r.scale) @ ks).softmax(dim=-1)
        out = (attn @ vs).reshape(B, n, n, m, h, w, C // m).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, H, W, C)
        return r.proj(out + lepe)


# name, batch, H, W, dim, heads, n_win, topk
CASES = [
    ("BiFormer-T stage 1 @224", 8, 56, 56, 64, 2, 7, 1),
    ("BiFormer-T stage 2 @224", 8, 28, 28, 128, 4, 7, 4),
    ("BiFormer-T stage 3 @224", 8, 14, 14, 256, 8, 7, 16),
    ("BiFormer-B stage 3 @448", 4, 28, 28, 384, 12, 7, 16),
    ("detection stage 2 (n_win 16)", 1, 112, 176, 128, 4, 16, 4),
    ("detection stage 3 (n_win 16)", 1, 64, 96, 256, 8, 16, 16),
]


def peak_bytes(fn: Callable[[], None]) -> int:
    """Peak of the running sum of CPU allocations/frees recorded by the profiler during ``fn()``."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    cur = best = 0
    for _, b in events:
        cur += b
        best = max(best, cur)
    return best


def median_time(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def run_case(case, repeats: int) -> List[Dict]:
    name, B, H, W, C, heads, n, topk = case
    torch.manual_seed(0)
    ours = BiLevelRoutingAttention(C, heads, num_regions=n, topk=topk)
    base = GatherBRA(ours)
    x = torch.randn(B, H, W, C)
    # same function: outputs and gradients
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), base(xb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    err_y = (ya - yb).abs().max().item()
    err_g = (xa.grad - xb.grad).abs().max().item()
    assert err_y < 1e-4 and err_g < 1e-3, (name, err_y, err_g)
    rows = []
    for impl, mod in (("gather", base), ("visionattn", ours)):
        def fwd():
            with torch.no_grad():
                mod(x)

        def fwd_bwd():
            xi = x.clone().requires_grad_()
            mod(xi).sum().backward()
            mod.zero_grad(set_to_none=True)

        rows.append(
            dict(
                case=name, impl=impl, batch=B, H=H, W=W, dim=C, heads=heads, n_win=n, topk=topk,
                fwd_ms=1e3 * median_time(fwd, repeats),
                fwd_bwd_ms=1e3 * median_time(fwd_bwd, repeats),
                fwd_peak_mib=peak_bytes(fwd) / 2**20,
                fwd_bwd_peak_mib=peak_bytes(fwd_bwd) / 2**20,
                max_abs_diff_out=err_y,
                max_abs_diff_grad=err_g,
            )
        )
    return rows


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, CPU {cpu}, {os.cpu_count()} logical cores visible"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/routing_gather")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import timm

    rows = []
    for case in CASES:
        rows += run_case(case, args.repeats)
        r0, r1 = rows[-2], rows[-1]
        print(
            f"{case[0]:32s} fwd {r0['fwd_ms']:8.1f} -> {r1['fwd_ms']:8.1f} ms | fwd+bwd {r0['fwd_bwd_ms']:8.1f} -> {r1['fwd_bwd_ms']:8.1f} ms | "
            f"peak fwd {r0['fwd_peak_mib']:7.1f} -> {r1['fwd_peak_mib']:7.1f} MiB | peak fwd+bwd {r0['fwd_bwd_peak_mib']:7.1f} -> {r1['fwd_bwd_peak_mib']:7.1f} MiB",
            flush=True,
        )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    cmd = "OMP_NUM_THREADS={} python {}".format(os.environ.get("OMP_NUM_THREADS", "unset"), " ".join(sys.argv))
    lines = [
        "# Bi-level routing attention: straightforward gather vs visionattn",
        "",
        f"- command: `{cmd}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}; torch threads {args.threads}; load average at start {os.getloadavg()[0]:.1f} (shared machine: times are indicative, memory is exact)",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}",
        "- fp32, CPU; whole BRA mixer (qkv, routing, gather, attention, LePE, proj) with shared weights; "
        f"times are medians of {args.repeats} runs after a warm-up; peak = extra memory allocated during the call (torch.profiler allocation events)",
        "- `gather` = official-style `torch.gather` over the p^2-expanded key/value tensor + explicit softmax(QK^T)V; "
        "`visionattn` = `BiLevelRoutingAttention` (heads-major regions, `index_select`, fused SDPA)",
        "",
        "| case (batch, map, C, heads, n_win, topk) | impl | fwd ms | fwd+bwd ms | fwd peak MiB | fwd+bwd peak MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        desc = f"{r['case']} ({r['batch']}, {r['H']}x{r['W']}, {r['dim']}, {r['heads']}, {r['n_win']}, {r['topk']})"
        lines.append(
            f"| {desc} | {r['impl']} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | {r['fwd_peak_mib']:.1f} | {r['fwd_bwd_peak_mib']:.1f} |"
        )
    lines += ["", "Ratios (gather / visionattn):", "", "| case | fwd time | fwd+bwd time | fwd peak | fwd+bwd peak |", "|---|---:|---:|---:|---:|"]
    for i in range(0, len(rows), 2):
        a, b = rows[i], rows[i + 1]
        lines.append(
            f"| {a['case']} | {a['fwd_ms'] / b['fwd_ms']:.2f}x | {a['fwd_bwd_ms'] / b['fwd_bwd_ms']:.2f}x | "
            f"{a['fwd_peak_mib'] / max(b['fwd_peak_mib'], 1e-9):.2f}x | {a['fwd_bwd_peak_mib'] / max(b['fwd_bwd_peak_mib'], 1e-9):.2f}x |"
        )
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}.csv and {args.out}.md")


if __name__ == "__main__":
    main()
