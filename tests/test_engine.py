"""The shared library layer, visionattn/engine: the demo data, subsets, config parsing, and the
data and output checks every program relies on (class folders from ../shared/data/cifar10 when
present, small synthetic folders otherwise)."""
from __future__ import annotations

import re

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


# --------------------------------------------------------------------------------------------
# Class-folder data problems are reported, naming the file or class (issue #19, item 5)
# --------------------------------------------------------------------------------------------
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
CIFAR10 = ROOT / ".." / "shared" / "data" / "cifar10"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
EVAL_CFG = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
            "crop_pct": 1.0}


def _needs_cifar10():
    if not CIFAR10.is_dir():
        pytest.skip(f"CIFAR-10 class folders not found at {CIFAR10.resolve()} (developer machines and CI only)")


def _image_folders(root, layout):
    """``root/<split>/<class>/<i>.png`` tiny RGB images; ``layout`` maps split -> {class: count}."""
    from PIL import Image
    for split, classes in layout.items():
        for name, n in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (10 * i, 20, 30)).save(folder / f"{i}.png")
    return root


def test_empty_class_folder_is_named_not_dropped(tmp_path):
    from visionattn.engine.data import build_folder_datasets
    root = _image_folders(tmp_path, {"train": {"a": 2, "b": 2, "c": 2, "d": 0}, "val": {"a": 1, "b": 1, "c": 1}})
    with pytest.raises(UsageError, match=r"class folder.*hold no images: 'd'.*3 classes instead of 4.*--bad-data skip"):
        build_folder_datasets(root, EVAL_CFG, augment=False)
    train_ds, val_ds, class_to_idx, _ = build_folder_datasets(root, EVAL_CFG, augment=False, bad_data="skip")
    assert class_to_idx == {"a": 0, "b": 1, "c": 2} and len(train_ds) == 6
    assert train_ds.data_problems["empty_classes"] == ["d"]


def test_held_out_classes_the_model_does_not_know_are_counted(tmp_path):
    _needs_cifar10()
    from visionattn.engine.data import build_folder_datasets
    known = {name: i for i, name in enumerate(CIFAR_CLASSES[:-1])}  # a model trained without 'truck'
    on_disk = sum(1 for _ in (CIFAR10 / "test").glob("*/*.jpg"))
    with pytest.raises(UsageError, match=r"1000 images in 1 class folder.*'truck' \(1000\)"):
        build_folder_datasets(CIFAR10, EVAL_CFG, train_split=None, val_split="test", class_to_idx=known)
    _, val_ds, _, _ = build_folder_datasets(CIFAR10, EVAL_CFG, train_split=None, val_split="test",
                                            class_to_idx=known, bad_data="skip")
    assert len(val_ds) == on_disk - 1000
    assert val_ds.data_problems["unknown_classes"] == {"truck": 1000}


def test_class_name_mismatch_says_which_names(tmp_path):
    _needs_cifar10()
    from visionattn.engine.data import build_folder_datasets
    digits = {str(i): i for i in range(10)}  # e.g. a checkpoint of the digits demo
    for bad_data in ("fail", "skip"):
        with pytest.raises(UsageError, match=r"none of the 10 class folders.*airplane.*model's classes.*'0'"):
            build_folder_datasets(CIFAR10, EVAL_CFG, train_split=None, val_split="test", class_to_idx=digits,
                                  bad_data=bad_data)


def test_corrupt_image_is_named_and_never_counted_twice(tmp_path):
    from visionattn.engine.data import build_folder_datasets, make_loader
    root = _image_folders(tmp_path, {"val": {"a": 3, "b": 3}})
    bad = root / "val" / "a" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated: the header survives, the pixels do not
    _, val_ds, _, _ = build_folder_datasets(root, EVAL_CFG, train_split=None)
    with pytest.raises(UsageError, match=rf"cannot read image {re.escape(str(bad))}.*--bad-data skip"):
        [b for b in make_loader(val_ds, 2, train=False)]
    _, val_ds, _, _ = build_folder_datasets(root, EVAL_CFG, train_split=None, bad_data="skip")
    targets = torch.cat([t for _, t in make_loader(val_ds, 2, train=False)])
    assert targets.tolist() == [0, 0, 1, 1, 1]  # five images: the bad one left out, no neighbour doubled
    assert val_ds.data_problems["unreadable"] == [str(bad)]
    # batch size 1: the bad image's batch is empty; evaluation passes over it and counts five
    from visionattn.engine.evaluation import evaluate
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    metrics = evaluate(model, make_loader(val_ds, 1, train=False), torch.device("cpu"), progress=False)
    assert metrics["count"] == 5


# --------------------------------------------------------------------------------------------
# Output places are checked before the work starts (issue #19, item 6)
# --------------------------------------------------------------------------------------------
def test_output_checks_name_the_place(tmp_path):
    from visionattn.engine.cli import check_output_dir, check_output_file
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    where = re.escape(str(blocker))
    with pytest.raises(UsageError, match=rf"--results-file {where}/r.json: cannot write there, {where} is a file"):
        check_output_file(blocker / "r.json", "--results-file")
    with pytest.raises(UsageError, match="is a directory"):
        check_output_file(tmp_path, "--results-file")
    with pytest.raises(UsageError, match="exists and is not a directory"):
        check_output_dir(blocker, "--output")
    check_output_file(tmp_path / "new" / "deeper" / "r.json", "--results-file")  # created later by the writer
    check_output_dir(tmp_path / "run", "--output")
    assert not (tmp_path / "new").exists() and not (tmp_path / "run").exists()  # checking creates nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_exported_config_carries_the_runs_own_tag(tmp_path):
    """#19.3: a run started from an official cfg (tag in1k) must not export config.json saying in1k."""
    import json

    import timm

    from visionattn.engine.checkpoint import export_weights, run_tag

    assert run_tag("CIFAR-10 dinat/") == "cifar_10_dinat"
    assert run_tag("in1k", ["in1k", "in22k"]) == "run_in1k" and run_tag("") == "run"
    model = timm.create_model("nat_mini", num_classes=3, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    assert model.pretrained_cfg["tag"] == "in1k"
    data_config = dict(input_size=(3, 32, 32), interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    _, config_path = export_weights(model, tmp_path, dict(embed_dim=16), data_config, tag=run_tag("in1k", ["in1k"]))
    assert json.loads(config_path.read_text())["pretrained_cfg"]["tag"] == "run_in1k"
