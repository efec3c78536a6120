"""Throughput of visionattn's MaxViT / DaViT against timm's implementations (not a test).

Both sides run in one process on the same inputs, interleaved (ours, timm, ours, timm, ...) so that
load from other processes hits both alike; the median of the repeats is reported. Inference is
``model.eval()`` under ``torch.inference_mode()``; a training step is ``model.train()``, forward,
cross-entropy on random labels, backward and an SGD step.

    python benchmarks/maxvit_davit_vs_timm.py [--batch 8] [--size 224] [--repeats 5] [--threads 1]

Writes ``benchmarks/results/maxvit_davit_vs_timm.{md,csv}`` (command, machine, versions, medians,
ratio = ours img/s / timm img/s; >= 1.0 means ours is not slower).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import timm
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import visionattn.models.davit  # noqa: E402,F401  (registers davit_*_va)
import visionattn.models.maxvit  # noqa: E402,F401  (registers maxvit_*)

PAIRS = [("maxvit_tiny", "maxvit_tiny_tf_224"), ("davit_tiny_va", "davit_tiny")]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _infer(model, x):
    model.eval()
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(x)
        return time.perf_counter() - t0


def _train(model, opt, x, y):
    model.train()
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    rows = []
    for ours_name, timm_name in PAIRS:
        models = {}
        for name in (ours_name, timm_name):
            m = timm.create_model(name)
            models[name] = (m, torch.optim.SGD(m.parameters(), lr=1e-4))
        for mode in ("inference", "train_step"):
            times = {ours_name: [], timm_name: []}
            for r in range(args.repeats + 1):  # first round is warm-up
                for name in (ours_name, timm_name):
                    m, opt = models[name]
                    t = _infer(m, x) if mode == "inference" else _train(m, opt, x, y)
                    if r > 0:
                        times[name].append(t)
                print(f"{mode} round {r}: " + ", ".join(f"{n} {times[n][-1] if times[n] else float('nan'):.3f}s" for n in times), flush=True)
            med = {n: statistics.median(ts) for n, ts in times.items()}
            rows.append(
                dict(
                    pair=f"{ours_name} vs {timm_name}",
                    mode=mode,
                    ours_s=round(med[ours_name], 4),
                    timm_s=round(med[timm_name], 4),
                    ours_img_s=round(args.batch / med[ours_name], 3),
                    timm_img_s=round(args.batch / med[timm_name], 3),
                    ratio=round(med[timm_name] / med[ours_name], 3),
                    ours_all=" ".join(f"{t:.3f}" for t in times[ours_name]),
                    timm_all=" ".join(f"{t:.3f}" for t in times[timm_name]),
                )
            )
        del models
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "maxvit_davit_vs_timm")
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cmd = "python " + " ".join([os.path.relpath(__file__, os.getcwd())] + sys.argv[1:])
    env = (
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n"
        f"- command: `{cmd}` (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})\n"
        f"- machine: {_cpu_name()}, {os.cpu_count()} logical CPUs (shared with other processes), {platform.platform()}\n"
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}\n"
        f"- settings: fp32, CPU, batch {args.batch}, {args.size}x{args.size}, torch threads {args.threads}, "
        f"{args.repeats} interleaved repeats after 1 warm-up round, medians\n"
    )
    lines = [
        "# visionattn vs timm: MaxViT-T and DaViT-T throughput",
        "",
        env,
        "| pair | mode | ours s/batch | timm s/batch | ours img/s | timm img/s | ratio (ours/timm speed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['mode']} | {r['ours_s']} | {r['timm_s']} | {r['ours_img_s']} | {r['timm_img_s']} | {r['ratio']} |")
    lines += ["", "Per-repeat seconds (ours / timm):", ""]
    lines += [f"- {r['pair']} {r['mode']}: ours [{r['ours_all']}] / timm [{r['timm_all']}]" for r in rows]
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
