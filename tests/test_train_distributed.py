"""tools/train.py under ``torchrun --nproc_per_node=2`` (gloo, CPU) against the same run on one process.

Why the runs are equal: the trainer's sampler is ``DistributedSampler(shuffle=True, seed=--seed,
drop_last=True)`` for every world size, so epoch e draws one permutation P_e of the training set from
``seed + e`` whatever the number of processes. With W processes, rank r takes P_e[r::W] and its k-th
batch of B is P_e[kWB + r : (k+1)WB : W]; the union over ranks of the k-th batches is exactly
P_e[kWB : (k+1)WB], the k-th batch of the single process run with batch W x B. Every rank starts from
the same initial weights (DDP broadcasts rank 0's; FSDP2 shards copies initialised from the same seed),
the model has no batch statistics (LayerNorm only), and with ``--no-aug --drop-path 0`` nothing else is
random, so the DDP gradient (mean over ranks of per-rank mean losses over equal-size batches) equals the
single process gradient (mean over the global batch) up to float summation order. The losses therefore
agree to ~1e-6 relative; the test allows 1e-4.

Held-out: 101 samples on 2 ranks (51 + 50; rank 1 pads one sample that must not be counted). The
summed counts must be exactly 101 and top-1/top-5 exactly those of the single process run, and rank 0
re-evaluates the exported weights alone on the whole split and must find the same correct counts.

Data: the CIFAR-10 class folders at ``../shared/data/cifar10`` (skipped when absent).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from visionattn.tools import train as train_tool  # noqa: E402

CIFAR10 = ROOT / ".." / "shared" / "data" / "cifar10"
TINY_DINAT = ["--model", "dinat_mini", "--model-kwargs", "embed_dim=32", "depths=[2,2,2,2]", "num_heads=[1,2,4,8]",
              "kernel_size=3", "dilations=[[1,2],[1,1],[1,1],[1,1]]", "mlp_ratio=2.0"]
PER_RANK_BATCH = 16
COMMON = TINY_DINAT + [
    "--data-dir", str(CIFAR10), "--img-size", "32", "--crop-pct", "1.0", "--no-aug", "--drop-path", "0",
    "--max-train-samples", "256", "--max-val-samples", "101", "--epochs", "2", "--lr", "2e-3",
    "--warmup-epochs", "1", "--seed", "0", "--workers", "0", "--threads", "1", "--no-progress"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CIFAR10.is_dir(), reason=f"CIFAR-10 class folders not found at {CIFAR10.resolve()}"),
]


def _torchrun(args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tools" / "train.py")] + [str(a) for a in args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    """The reference: one process, batch 2 x PER_RANK_BATCH."""
    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("single")
    try:
        summary = train_tool.main(COMMON + ["--batch-size", str(2 * PER_RANK_BATCH), "--output", str(out)])
    finally:
        torch.set_num_threads(before)
    return out, summary


def _history(out: Path):
    return json.loads((out / "log.json").read_text())


def _check_equivalent(out: Path, ref_out: Path, ref: dict):
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["batch_size"] == PER_RANK_BATCH
    assert summary["num_updates"] == ref["num_updates"] == 16  # 256 / 32 per epoch, 2 epochs
    hist, ref_hist = _history(out), _history(ref_out)
    assert len(hist) == len(ref_hist) == 2
    for row, ref_row in zip(hist, ref_hist):
        for key in ("train_loss", "val_loss", "lr"):
            assert row[key] == pytest.approx(ref_row[key], rel=1e-4), (key, row, ref_row)
        assert (row["top1"], row["top5"]) == (ref_row["top1"], ref_row["top5"])
    # distributed evaluation counts each of the 101 held-out samples once (no padding duplicate)
    assert summary["final"]["count"] == ref["final"]["count"] == 101
    assert (summary["final"]["top1"], summary["final"]["top5"]) == (ref["final"]["top1"], ref["final"]["top5"])
    # rank 0 alone, on the whole split, with the exported weights: the same correct counts
    assert summary["reload_check"]["identical"] is True
    assert ref["final"]["loss"] < 2.3  # it did learn (chance is ln 10 = 2.303)
    return hist


def test_ddp_two_processes_match_one_process(single_process_run, tmp_path):
    ref_out, ref = single_process_run
    out = tmp_path / "ddp"
    proc = _torchrun(COMMON + ["--batch-size", PER_RANK_BATCH, "--output", out])
    assert "(DDP)" in proc.stdout
    _check_equivalent(out, ref_out, ref)
    # rank 0 alone writes the run folder
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["config.json", "curves.png", "last.pth.tar", "log.csv", "log.json", "model.safetensors", "summary.json",
         "summary.txt"])
    ckpt = torch.load(out / "last.pth.tar", map_location="cpu", weights_only=True)
    assert len(ckpt["rng_per_rank"]) == 2 and not any(k.startswith("module.") for k in ckpt["model"])


def test_fsdp2_two_processes_match_one_process(single_process_run, tmp_path):
    ref_out, ref = single_process_run
    out = tmp_path / "fsdp"
    proc = _torchrun(COMMON + ["--batch-size", PER_RANK_BATCH, "--fsdp", "--output", out])
    assert "(FSDP2)" in proc.stdout
    _check_equivalent(out, ref_out, ref)
    ckpt = torch.load(out / "last.pth.tar", map_location="cpu", weights_only=True)
    # the checkpoint holds the gathered full tensors, not shards
    ref_ckpt = torch.load(ref_out / "last.pth.tar", map_location="cpu", weights_only=True)
    assert {k: v.shape for k, v in ckpt["model"].items()} == {k: v.shape for k, v in ref_ckpt["model"].items()}


def test_readme_recipe_command_runs_a_full_epoch(tmp_path):
    """The README's ImageNet command (``torchrun ... tools/train.py -c configs/imagenet/<model>.yaml --data-dir
    ... --output ...``) with the shipped recipe unchanged (RandAugment rand-m9-mstd0.5-inc1, random erasing,
    Mixup/CutMix, label smoothing, AdamW, per-update cosine, clip-grad, AMP, drop path), on real images: only the
    data size, the batch and the schedule length are overridden so that one full epoch (and its held-out
    evaluation, export and reload check) runs on two CPU processes."""
    out = tmp_path / "dinat_mini"
    _torchrun(["-c", ROOT / "configs" / "imagenet" / "dinat_mini.yaml", "--data-dir", CIFAR10, "--output", out,
               "--max-train-samples", "256", "--max-val-samples", "64", "--img-size", "64", "--batch-size", "16",
               "--epochs", "1", "--cooldown-epochs", "0", "--warmup-epochs", "0", "--no-progress", "--device", "cpu"],
              timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_samples"] == 256 and summary["held_out_samples"] == 64
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 2, rows  # header + the one epoch
    assert summary["reload_check"]["identical"]
    args = json.loads((out / "config.json").read_text())
    assert args["architecture"] == "dinat_mini"
    run = summary
    assert run["args"]["aa"] == "rand-m9-mstd0.5-inc1" and run["args"]["mixup"] == 0.8 and run["args"]["reprob"] == 0.25
