"""CUDA check of the zoo: what a CPU-only CI cannot run.

For the smallest model of every family (and the MixerNet presets when ``--mixers``), on one GPU:

- fp32 CUDA logits against the same model's fp32 CPU logits (relative L2 error; TF32 off);
- a bf16 autocast forward (relative error against fp32) and an fp16 autocast forward (finite);
- channels_last input and model (relative error against the contiguous run);
- a training step (forward + backward under bf16 autocast, every parameter gets a finite gradient),
  and its gradients with torch's default SDPA backend choice against the math backend;
- ``torch.compile`` (default mode): first-call time, a second size's (re)compile time, compiled
  and eager inference throughput at batch 64, 224x224, bf16;
- peak CUDA memory of the eager inference step.

Prints one table and writes ``--out`` (JSON). Exit status 1 if any numerical check failed.

    python benchmarks/gpu_check.py --out gpu_check.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback

import torch

import timm
import visionattn


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def smallest_per_family():
    from timm.models._registry import _model_to_module

    sizes = {}
    for n in visionattn.list_models():
        with torch.device("meta"):
            m = timm.create_model(n)
        sizes[n] = sum(p.numel() for p in m.parameters())
    best = {}
    for n, s in sizes.items():
        f = _model_to_module[n]
        if f not in best or s < sizes[best[f]]:
            best[f] = n
    # the NAT file holds several layouts: check one of each
    extra = [n for n in ("nat_mini", "dinat_mini", "agent_pvt_tiny", "dinat_s_tiny", "nat_isotropic_small", "vitrpb_small",
                         "agent_swin_tiny", "agent_deit_tiny", "agent_cswin_tiny") if n in sizes]
    return sorted(set(best.values()) | set(extra))


def _timeit(fn, iters=10):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def check(name: str, batch: int = 64, compile_: bool = True) -> dict:
    r = {"model": name}
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
        model = model.cuda()
        xc = x.cuda()
        out = model(xc)
        r["fp32_vs_cpu"] = _rel(out, ref)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            r["bf16_vs_fp32"] = _rel(model(xc).float(), out)
        with torch.autocast("cuda", dtype=torch.float16):
            r["fp16_finite"] = bool(torch.isfinite(model(xc)).all())
        mcl = model.to(memory_format=torch.channels_last)
        r["channels_last_vs_fp32"] = _rel(mcl(xc.contiguous(memory_format=torch.channels_last)), out)
        model = mcl
        # odd size: padding paths on CUDA
        odd = model(torch.randn(1, 3, 200, 152, device="cuda"))
        r["odd_size_finite"] = bool(torch.isfinite(odd).all())
    model.train()
    xt = torch.randn(4, 3, 224, 224, device="cuda")

    def grads(backends=None):
        from torch.nn.attention import sdpa_kernel

        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # same drop path draws
        with (sdpa_kernel(backends) if backends else contextlib.nullcontext()), \
                torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(xt).float().logsumexp(-1).mean()
        loss.backward()
        return [p.grad.detach().float().clone() if p.grad is not None else None for p in model.parameters()]

    from torch.nn.attention import SDPBackend

    g_default = grads()
    r["grads_ok"] = all(g is not None and bool(torch.isfinite(g).all()) for g in g_default)
    g_math = grads([SDPBackend.MATH])
    # bf16 training step: torch's default SDPA backend choice against the math backend (a wrong fused
    # kernel gives O(1) differences; bf16 rounding gives ~1e-2)
    r["bf16_grad_default_vs_math"] = _rel(torch.cat([g.flatten() for g in g_default if g is not None]),
                                          torch.cat([g.flatten() for g in g_math if g is not None]))
    model.zero_grad(set_to_none=True)
    model.eval()
    xb = torch.randn(batch, 3, 224, 224, device="cuda")

    def eager():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model(xb)

    torch.cuda.reset_peak_memory_stats()
    r["eager_img_s"] = batch / _timeit(eager)
    r["eager_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if compile_:
        torch._dynamo.reset()
        cm = torch.compile(model)

        def comp():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                return cm(xb)

        t = time.perf_counter()
        comp()
        torch.cuda.synchronize()
        r["compile_s"] = time.perf_counter() - t
        r["compiled_img_s"] = batch / _timeit(comp)
        x2 = torch.randn(batch, 3, 256, 192, device="cuda")
        t = time.perf_counter()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            cm(x2)
        torch.cuda.synchronize()
        r["recompile_s"] = time.perf_counter() - t
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            r["compiled_vs_eager"] = _rel(cm(xb).float(), eager().float())
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--mixers", action="store_true", help="also the MixerNet presets")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", default="gpu_check.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    names = args.models or smallest_per_family()
    if args.mixers and hasattr(visionattn, "list_mixer_models"):
        names += [n for n in visionattn.list_mixer_models() if n not in names]
    print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.cuda.get_device_name()}; {len(names)} models",
          flush=True)
    rows, failed = [], False
    for n in names:
        t = time.perf_counter()
        try:
            r = check(n, batch=args.batch, compile_=not args.no_compile)
        except Exception as e:  # one model's failure must not hide the others
            r = {"model": n, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=6)}
        r["wall_s"] = time.perf_counter() - t
        ok = ("error" not in r and r["fp32_vs_cpu"] < 1e-4 and r["bf16_vs_fp32"] < 5e-2 and r["fp16_finite"]
              and r["channels_last_vs_fp32"] < 1e-4 and r["odd_size_finite"] and r["grads_ok"]
              and r["bf16_grad_default_vs_math"] < 0.1)
        r["ok"] = bool(ok)
        failed |= not ok
        rows.append(r)
        print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items() if k != "trace"}),
              flush=True)
        if "trace" in r:
            print(r["trace"], flush=True)
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    hdr = ["model", "ok", "fp32_vs_cpu", "bf16_vs_fp32", "channels_last_vs_fp32", "bf16_grad_default_vs_math", "eager_img_s", "compiled_img_s",
           "compile_s", "recompile_s", "eager_peak_mib"]
    print("| " + " | ".join(hdr) + " |")
    for r in rows:
        print("| " + " | ".join(
            (f"{r[h]:.3g}" if isinstance(r.get(h), float) else str(r.get(h, r.get("error", "-")))[:60]) for h in hdr) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
