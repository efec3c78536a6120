"""benchmarks/mixers.py: the CIFAR-10 cache, the on-device augmentation and one tiny training run."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_mixers", os.path.join(ROOT, "benchmarks", "mixers.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def fake_cifar(tmp_path, bench):
    """CIFAR-10-shaped class folders: image k of class c is filled with the value 10*c + k."""
    for split, n in (("train", 4), ("test", 2)):
        for c, cls in enumerate(bench.CIFAR10_CLASSES):
            d = tmp_path / "cifar" / split / cls
            d.mkdir(parents=True)
            for k in range(n):
                Image.fromarray(np.full((32, 32, 3), 10 * c + k, np.uint8)).save(d / f"{k:04d}.png")
    return tmp_path / "cifar"


def test_prepare_cache_is_balanced_seeded_and_labelled(bench, fake_cifar, tmp_path):
    out = tmp_path / "c.npz"
    bench.prepare_cache(str(fake_cifar), str(out), train_per_class=3, test_per_class=1, seed=0)
    data = bench.load_cache(str(out))
    assert data["x_train"].shape == (30, 32, 32, 3) and data["x_train"].dtype == np.uint8
    assert np.bincount(data["y_train"], minlength=10).tolist() == [3] * 10
    assert np.bincount(data["y_test"], minlength=10).tolist() == [1] * 10
    # labels match the images (value // 10 is the class index)
    assert (data["x_train"][:, 0, 0, 0] // 10 == data["y_train"]).all()
    bench.prepare_cache(str(fake_cifar), str(tmp_path / "d.npz"), 3, 1, seed=0)
    again = bench.load_cache(str(tmp_path / "d.npz"))
    assert (again["x_train"] == data["x_train"]).all() and (again["y_train"] == data["y_train"]).all()
    with pytest.raises(ValueError, match="fewer than"):
        bench.prepare_cache(str(fake_cifar), str(tmp_path / "e.npz"), 5, 1, seed=0)
    with pytest.raises(FileNotFoundError, match="--prepare-cache"):
        bench.load_cache(str(tmp_path / "missing.npz"))


def test_augment_is_a_crop_or_flipped_crop_and_deterministic(bench):
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).reshape(2, 3, 8, 8)
    data = bench.GpuData(
        {"x_train": x.permute(0, 2, 3, 1).numpy(), "y_train": np.zeros(2, np.int64), "x_test": x.permute(0, 2, 3, 1).numpy(), "y_test": np.zeros(2, np.int64)},
        torch.device("cpu"), img_size=8,
    )
    a = data.augment(x, torch.Generator().manual_seed(1))
    b = data.augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (2, 3, 8, 8)
    # every output is a window of the reflect-padded image, possibly mirrored
    padded = torch.nn.functional.pad(x.float(), (4, 4, 4, 4), mode="reflect")
    for i in range(2):
        found = any(
            torch.equal(a[i], w) or torch.equal(a[i], w.flip(-1))
            for dy in range(9) for dx in range(9) for w in [padded[i, :, dy:dy + 8, dx:dx + 8]]
        )
        assert found


def test_tiny_training_run_writes_the_report(bench, fake_cifar, tmp_path):
    cache = tmp_path / "c.npz"
    bench.prepare_cache(str(fake_cifar), str(cache), 4, 2, seed=0)
    out = tmp_path / "res" / "mixers"
    rc = bench.main(["--cache", str(cache), "--device", "cpu", "--models", "identity_mixernet_tiny", "pool_mixernet_tiny",
                     "--img-size", "32", "--epochs", "1", "--batch-size", "20", "--output", str(out)])
    assert rc == 0
    rows = bench.read_csv(str(out) + ".csv")
    assert [r["model"] for r in rows] == ["pool_mixernet_tiny", "identity_mixernet_tiny"]
    assert all(0 <= r["top1"] <= 100 and r["test_images"] == 20 and not r["error"] for r in rows)
    md = open(str(out) + ".md").read()
    assert "What it cannot show" in md and "--models identity_mixernet_tiny" in md
    assert os.path.isfile(str(out) + ".png")


def test_sdpa_context_names_the_backends(bench):
    with bench.sdpa_context("default"):
        pass
    with bench.sdpa_context("math,efficient"):
        pass
    with pytest.raises(ValueError, match="comma-separated list"):
        bench.sdpa_context("cudnn,bogus")


def test_sdpa_check_agrees_with_math_and_catches_a_wrong_kernel(bench, monkeypatch):
    """The per-model check compares a step under the run's SDPA backends with the math backend:
    ~0 when they agree, order 1 when a fused kernel returns wrong gradients (the GPU pass of #16 gave
    chance-level accuracy only for mixers that feed SDPA a learned float mask)."""
    import timm

    torch.manual_seed(0)
    # NA on 64 px: stages 2-3 (4x4, 2x2 maps padded to 7x7) run SDPA with the rpb as a float mask
    model = timm.create_model("na_mixernet_tiny", num_classes=10, depths=(1, 1, 1, 1))
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 2])
    ok = bench.sdpa_check(model, x, y, amp=False)
    assert ok["sdpa_logit_rel"] < 1e-5 and ok["sdpa_grad_rel"] < 1e-4, ok
    assert all(p.grad is None for p in model.parameters()) and model.training

    real = torch.nn.functional.scaled_dot_product_attention
    in_check = {"on": False}

    def wrong_backward(q, k, v, attn_mask=None, **kw):  # right forward, no gradient to q, k or the mask
        if in_check["on"]:
            return real(q.detach(), k.detach(), v, attn_mask=None if attn_mask is None else attn_mask.detach(), **kw)
        return real(q, k, v, attn_mask=attn_mask, **kw)

    class Faulty:
        def __enter__(self):
            in_check["on"] = True

        def __exit__(self, *exc):
            in_check["on"] = False

    contexts = iter([Faulty(), bench.sdpa_context("math")])
    monkeypatch.setattr(bench, "sdpa_context", lambda spec: next(contexts))
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", wrong_backward)
    bad = bench.sdpa_check(model, x, y, amp=False, spec="cudnn")
    assert bad["sdpa_logit_rel"] < 1e-5 and bad["sdpa_grad_rel"] > 0.1, bad
    assert bad["sdpa_worst"].startswith("stages."), bad
