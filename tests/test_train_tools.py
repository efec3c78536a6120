"""tools/train.py and tools/validate.py on real data, in-process on the CPU.

The data: scikit-learn's bundled digits (the demo) and, when present, the CIFAR-10 class folders
at ``../shared/data/cifar10`` beside the repository (developer machines and CI only).
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from visionattn.tools import train as train_tool  # noqa: E402
from visionattn.tools import validate as validate_tool  # noqa: E402

CIFAR10 = ROOT / ".." / "shared" / "data" / "cifar10"
# A DiNAT shrunk to ~1.8M parameters (the demo's), written as the CLI takes it.
TINY_DINAT = ["--model", "dinat_mini", "--model-kwargs", "embed_dim=32", "depths=[2,2,2,2]", "num_heads=[1,2,4,8]",
              "kernel_size=3", "dilations=[[1,2],[1,1],[1,1],[1,1]]", "mlp_ratio=2.0"]
# A short demo run: 10 updates per epoch; drop path and the random-shift augmentation keep the
# torch RNG busy so that resuming has to restore it.
SHORT_DEMO = ["--demo", "--max-train-samples", "320", "--max-val-samples", "100", "--epochs", "3",
              "--batch-size", "32", "--lr", "2e-3", "--warmup-epochs", "1", "--drop-path", "0.1",
              "--workers", "0", "--seed", "3", "--no-progress"]
METRIC_COLUMNS = ("epoch", "num_updates", "lr", "train_loss", "val_loss", "top1", "top5")


class SimulatedKill(Exception):
    """Stands for the process dying mid-run."""


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run these small models on one intra-op thread (restored afterwards): on a shared 2-core
    machine two spinning OpenMP threads can be several times slower than one, and the
    bit-exact resume comparison needs both runs on the same thread count anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _log_metrics(run_dir: Path):
    with open(run_dir / "log.csv", newline="") as f:
        return [{k: row[k] for k in METRIC_COLUMNS} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def short_demo_run(tmp_path_factory):
    """One uninterrupted SHORT_DEMO run: (output dir, summary)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    summary = train_tool.main(SHORT_DEMO + ["--output", str(out), "--overwrite"])
    return out, summary


def test_demo_digits_split_is_deterministic_and_stratified():
    a, b = train_tool.load_digits_split(), train_tool.load_digits_split()
    (xtr, ytr), (xva, yva) = a["train"], a["val"]
    assert len(ytr) + len(yva) == train_tool.DEMO_NUM_SAMPLES == 1797
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

    ds = train_tool.DigitsDataset(xva, yva, img_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == int(yva[0])
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey replicated to RGB
    assert x.min() >= -2.0 - 1e-6 and x.max() <= 2.0 + 1e-6  # [0, 1] normalised by (0.5, 0.25)


def test_balanced_subset_and_model_kwargs_parsing():
    targets = [0] * 50 + [1] * 30 + [2] * 5
    idx = train_tool.balanced_subset(targets, 12)
    assert idx == train_tool.balanced_subset(targets, 12) and len(idx) == 12
    assert np.bincount(np.asarray(targets)[idx]).tolist() == [4, 4, 4]
    assert np.bincount(np.asarray(targets)[train_tool.balanced_subset(targets, 30)]).tolist() == [13, 12, 5]
    assert train_tool.balanced_subset(targets, None) == list(range(85))
    kw = train_tool.parse_model_kwargs(["depths=[2,2]", "mlp_ratio=2", "layer_scale=1e-5", "act=gelu", "x=null"])
    assert kw == {"depths": [2, 2], "mlp_ratio": 2, "layer_scale": 1e-5, "act": "gelu", "x": None}
    with pytest.raises(train_tool.UsageError, match="key=value"):
        train_tool.parse_model_kwargs(["depths"])


@pytest.mark.slow
def test_cifar10_subset_training_beats_chance(tmp_path):
    if not CIFAR10.is_dir():
        pytest.skip(f"CIFAR-10 class folders not found at {CIFAR10.resolve()} (developer machines and CI only)")
    summary = train_tool.main(TINY_DINAT + [
        "--data-dir", str(CIFAR10), "--img-size", "32", "--crop-pct", "1.0", "--scale", "0.6", "1.0",
        "--max-train-samples", "2000", "--max-val-samples", "500", "--epochs", "4", "--batch-size", "64",
        "--lr", "2e-3", "--warmup-epochs", "1", "--seed", "0", "--workers", "0", "--no-progress",
        "--output", str(tmp_path / "cifar")])
    assert summary["num_classes"] == 10 and summary["held_out_samples"] == 500
    assert summary["train_samples"] == 2000
    # chance is 10%; this run reached 32.8-35.4% top-1 and 84.8-85.8% top-5 with seeds 0-2
    assert summary["final"]["top1"] > 22.0, summary["final"]
    assert summary["final"]["top5"] > 65.0, summary["final"]
    assert summary["reload_check"]["identical"]
    for name in ("last.pth.tar", "model.safetensors", "config.json", "log.csv", "summary.json"):
        assert (tmp_path / "cifar" / name).is_file()
    config = json.loads((tmp_path / "cifar" / "config.json").read_text())
    assert config["architecture"] == "dinat_mini" and config["num_classes"] == 10
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["label_names"][0] == "airplane" and config["model_args"]["embed_dim"] == 32


@pytest.mark.slow
def test_resume_after_kill_reproduces_uninterrupted_run(short_demo_run, tmp_path, monkeypatch):
    ref_dir, ref = short_demo_run
    out = tmp_path / "killed"
    real_train_one_epoch = train_tool.train_one_epoch

    def dies_in_second_epoch(*args, **kwargs):
        stats = real_train_one_epoch(*args, **kwargs)  # mutates model, optimizer, RNGs ...
        if kwargs["epoch"] == 1:
            raise SimulatedKill  # ... and dies before epoch 2's checkpoint is written
        return stats

    monkeypatch.setattr(train_tool, "train_one_epoch", dies_in_second_epoch)
    with pytest.raises(SimulatedKill):
        train_tool.main(SHORT_DEMO + ["--output", str(out)])
    monkeypatch.undo()

    ckpt = torch.load(out / "last.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["num_updates"] == 10
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "args"} <= set(ckpt)
    assert {"python", "numpy", "torch", "data"} <= set(ckpt["rng"])
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # atomic writes leave no debris

    # continue from nothing but the run folder: every other argument comes from the checkpoint
    resumed = train_tool.main(["--resume", "auto", "--output", str(out), "--no-progress"])

    assert resumed["final"] == ref["final"]
    assert resumed["num_updates"] == ref["num_updates"] == 30
    assert _log_metrics(out) == _log_metrics(ref_dir)
    w_ref, w_res = load_file(ref_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert w_ref.keys() == w_res.keys()
    for k in w_ref:
        assert torch.equal(w_ref[k], w_res[k]), k


def test_validate_matches_trainer_final_evaluation(short_demo_run):
    out, summary = short_demo_run
    final = summary["final"]
    res = validate_tool.main(["--checkpoint", str(out / "last.pth.tar"), "--no-progress"])
    assert (res["top1"], res["top5"], res["count"]) == (final["top1"], final["top5"], final["count"])
    assert res["model"] == "dinat_mini" and res["img_size"] == 32
    # the exported weights + config.json give the same numbers (held-out subset and batch given)
    res_st = validate_tool.main(["--checkpoint", str(out / "model.safetensors"), "--demo", "--max-val-samples",
                                 "100", "--batch-size", "32", "--no-progress",
                                 "--results-file", str(out / "validate.json")])
    assert (res_st["top1"], res_st["top5"]) == (final["top1"], final["top5"])
    assert json.loads((out / "validate.json").read_text())["top1"] == final["top1"]
    assert final["top1"] > 30.0  # 3 short epochs on 320 digits already far above chance (10%)


def test_output_reuse_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("an earlier run lives here")
    args = ["--demo", "--max-train-samples", "64", "--max-val-samples", "20", "--epochs", "1", "--batch-size", "32",
            "--warmup-epochs", "0", "--no-progress", "--output", str(out)]
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_tool.main(args)
    assert train_tool.cli(args) == 2
    assert "is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing touched

    summary = train_tool.main(args + ["--overwrite"])
    assert summary["epochs"] == 1 and (out / "model.safetensors").is_file()
    assert (out / "notes.txt").is_file()  # --overwrite only replaces the run's own artefacts
