"""Training augmentations of the shipped recipes never crash (issue #19.1).

With Pillow >= 10, timm 1.0.31's posterize ops raise ``ValueError: bits must be between or equal to
1 and 8`` when their magnitude maps to 0 bits (``rand-m9-mstd0.5-inc1`` at magnitude >= 10), which
57 of the 72 ImageNet recipes reach within a few steps. ``import visionattn`` gives those ops the
Pillow < 10 result (a black image). Here every ``configs/imagenet`` recipe's training transform, as
``tools/train.py`` builds it, is run op by op at its magnitude extremes (0, the upper bound, and
the magnitude noise pushed 6 sigma beyond both) on a fixed image, and posterize results are held to
the old Pillow formula written out in numpy: keep ``value & ~(2 ** (8 - bits) - 1)``.
"""
from __future__ import annotations

import copy
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from timm.data import auto_augment as timm_aa
from timm.data import create_transform

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import visionattn  # noqa: E402,F401  (installs the posterize fix)
from visionattn.engine.data import build_transforms  # noqa: E402
from visionattn.tools import train as train_tool  # noqa: E402

CONFIGS = sorted((ROOT / "configs" / "imagenet").glob("*.yaml"))
H, W = 40, 48
# every 8-bit value in every channel, no two channels alike
IMG = Image.fromarray((np.arange(H * W * 3).reshape(H, W, 3) * np.array([7, 11, 13]) % 256).astype(np.uint8))


def _old_pillow_posterize(arr: np.ndarray, bits: int) -> np.ndarray:
    """Pillow 9.5 ``ImageOps.posterize``: ``lut[i] = i & ~(2 ** (8 - bits) - 1)``; timm returns the image at >= 8."""
    if bits >= 8:
        return arr
    mask = ~(2 ** (8 - bits) - 1)
    lut = np.array([i & mask for i in range(256)], dtype=np.int64)
    return lut[arr].astype(np.uint8)


def _policy_ops(transform):
    """Every ``AugmentOp`` of the auto-augment policies inside a timm transform (Compose)."""
    ops, found = [], False
    for t in getattr(transform, "transforms", [transform]):
        if isinstance(t, (timm_aa.RandAugment, timm_aa.AugMixAugment)):
            ops += list(t.ops)
            found = True
        elif isinstance(t, timm_aa.AutoAugment):
            ops += [op for sub in t.policy for op in sub]
            found = True
    assert found, f"no auto-augment policy in {transform}"
    return ops


def _run_at_extremes(op, monkeypatch):
    """Apply ``op`` (probability forced to 1) at magnitude 0, its upper bound and beyond; return the bit counts seen."""
    upper = op.magnitude_max or timm_aa._LEVEL_DENOM
    std = op.magnitude_std if op.magnitude_std not in (0, float("inf")) else 1.0
    cases = [(m, 0) for m in (0, upper, -6 * std, upper + 6 * std)]
    if op.magnitude_std > 0:  # the noisy path itself, with the draw forced to +-6 sigma / the uniform ends
        cases += [(op.magnitude, s) for s in (-6, 6)]
    for magnitude, sigma in cases:
        o = copy.copy(op)
        o.prob, o.magnitude = 1.0, magnitude
        if sigma:
            monkeypatch.setattr(timm_aa.random, "gauss", lambda mu, sd, s=sigma: mu + s * sd)
            monkeypatch.setattr(timm_aa.random, "uniform", lambda a, b, s=sigma: a if s < 0 else b)
        else:
            o.magnitude_std = 0
        for seed in (0, 1):  # both signs of the randomly negated ops
            random.seed(seed)
            out = o(IMG)
            assert isinstance(out, Image.Image) and out.size == IMG.size and out.mode == "RGB", (op, magnitude)
        monkeypatch.undo()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_augmentation_survives_extreme_magnitudes(path, monkeypatch):
    raw = yaml.safe_load(path.read_text())
    assert raw.get("aa"), f"{path.name} has no aa policy"
    args, _ = train_tool.resolve_args(["-c", str(path), "--data-dir", str(ROOT), "--output", "unused"])
    data_config = dict(input_size=(3, H, W), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                       interpolation="bicubic", crop_pct=0.9)
    train_tf, _ = build_transforms(data_config, aa=args.aa, reprob=args.reprob, remode=args.remode,
                                   recount=args.recount, train_interpolation=args.train_interpolation)
    ops = _policy_ops(train_tf)
    assert len(ops) >= 14
    for op in ops:
        _run_at_extremes(op, monkeypatch)
    random.seed(0)
    assert train_tf(IMG).shape == (3, H, W)


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "rand-m15-n2", "rand-m9-mstd101-inc1", "rand-m9-mmax20-inc1",
                                    "rand-m0-mstd1", "v0", "v0r", "original", "originalr", "3a", "augmix-m5-w4-d2"])
def test_timm_policies_after_import_survive_extreme_magnitudes(policy, monkeypatch):
    """``import visionattn`` covers any policy a user builds with timm's own ``create_transform``."""
    tf = create_transform((3, H, W), is_training=True, auto_augment=policy)
    for op in _policy_ops(tf):
        _run_at_extremes(op, monkeypatch)


@pytest.mark.parametrize("bits", range(-4, 10))
def test_posterize_matches_old_pillow(bits):
    from visionattn.augment import posterize

    arr = np.asarray(IMG)
    np.testing.assert_array_equal(np.asarray(posterize(IMG, bits)), _old_pillow_posterize(arr, bits))
    gray = IMG.convert("L")
    np.testing.assert_array_equal(np.asarray(posterize(gray, bits)), _old_pillow_posterize(np.asarray(gray), bits))


@pytest.mark.parametrize("name,bits_at_level", [
    # timm 1.0.31 auto_augment.py: _posterize_level_to_arg / _increasing / _original
    ("Posterize", lambda lv: int(lv / 10 * 4)),
    ("PosterizeIncreasing", lambda lv: 4 - int(lv / 10 * 4)),
    ("PosterizeOriginal", lambda lv: int(lv / 10 * 4) + 4),
])
def test_posterize_ops_give_old_pillow_result_at_every_level(name, bits_at_level):
    arr = np.asarray(IMG)
    for level in (0, 1, 2.4, 2.5, 5, 7.5, 9.9, 10, 15, 20):
        op = timm_aa.AugmentOp(name, prob=1.0, magnitude=level, hparams=dict(magnitude_max=20))
        np.testing.assert_array_equal(np.asarray(op(IMG)), _old_pillow_posterize(arr, bits_at_level(level)),
                                      err_msg=f"{name} level {level}")


def test_install_is_idempotent_and_reversible():
    from visionattn import augment

    assert augment.is_installed()
    augment.install()
    assert augment.is_installed()
    try:
        augment.uninstall()
        assert timm_aa.NAME_TO_OP["PosterizeIncreasing"] is timm_aa.posterize
        with pytest.raises(ValueError, match="bits"):  # the bug this module works around (Pillow >= 10)
            timm_aa.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)(IMG)
    finally:
        augment.install()
    assert augment.is_installed()
    with pytest.raises(ValueError, match="L and RGB.*got a RGBA"):
        augment.posterize(IMG.convert("RGBA"), 0)
