"""The shared library layer, visionattn/engine: the demo data, subsets, config parsing, and the
data and output checks every program relies on (class folders from ../shared/data/cifar10 when
present, small synthetic folders otherwise)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from visionattn.engine.cli import UsageError
from visionattn.engine.config import parse_model_kwargs
from visionattn.engine.data import balanced_subset
from visionattn.engine.digits import DEMO_NUM_SAMPLES, DigitsDataset, load_digits_split


def test_demo_digits_split_is_deterministic_and_stratified():
    a, b = load_digits_split(), load_digits_split()
    (xtr, ytr), (xva, yva) = a["train"], a["val"]
    assert len(ytr) + len(yva) == DEMO_NUM_SAMPLES == 1797
    assert (len(ytr), len(yva)) == (1437, 360)
    assert xtr.shape == (1437, 8, 8) and xva.shape == (360, 8, 8)
    for split in ("train", "val"):
        np.testing.assert_array_equal(a[split][0], b[split][0])
        np.testing.assert_array_equal(a[split][1], b[split][1])
    # stratified: every class keeps ~20% of its samples in the held-out split
    counts_val, counts_all = np.bincount(yva, minlength=10), np.bincount(np.concatenate([ytr, yva]), minlength=10)
    assert np.all(np.abs(counts_val - 0.2 * counts_all) <= 1)
    # disjoint: no held-out scan also appears in the training split
    train_rows = {x.tobytes() for x in xtr}
    assert sum(x.tobytes() in train_rows for x in xva) <= 5  # a few digits are pixel-identical scans

    ds = DigitsDataset(xva, yva, img_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == int(yva[0])
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey replicated to RGB
    assert x.min() >= -2.0 - 1e-6 and x.max() <= 2.0 + 1e-6  # [0, 1] normalised by (0.5, 0.25)


def test_balanced_subset_and_model_kwargs_parsing():
    targets = [0] * 50 + [1] * 30 + [2] * 5
    idx = balanced_subset(targets, 12)
    assert idx == balanced_subset(targets, 12) and len(idx) == 12
    assert np.bincount(np.asarray(targets)[idx]).tolist() == [4, 4, 4]
    assert np.bincount(np.asarray(targets)[balanced_subset(targets, 30)]).tolist() == [13, 12, 5]
    assert balanced_subset(targets, None) == list(range(85))
    kw = parse_model_kwargs(["depths=[2,2]", "mlp_ratio=2", "layer_scale=1e-5", "act=gelu", "x=null"])
    assert kw == {"depths": [2, 2], "mlp_ratio": 2, "layer_scale": 1e-5, "act": "gelu", "x": None}
    with pytest.raises(UsageError, match="key=value"):
        parse_model_kwargs(["depths"])

