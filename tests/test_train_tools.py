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
from timm.loss import SoftTargetCrossEntropy

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from visionattn.tools import train as train_tool  # noqa: E402
from visionattn.tools import validate as validate_tool  # noqa: E402
from visionattn.engine.checkpoint import load_initial_checkpoint  # noqa: E402
from visionattn.engine.cli import UsageError  # noqa: E402
from visionattn.engine.model import create_model  # noqa: E402
from visionattn.engine.optim import build_loss, build_mixup, build_optimizer  # noqa: E402

CIFAR10 = ROOT / ".." / "shared" / "data" / "cifar10"
# A DiNAT shrunk to ~1.8M parameters (the demo's), written as the CLI takes it.
TINY_DINAT = ["--model", "dinat_mini", "--model-kwargs", "embed_dim=32", "depths=[2,2,2,2]", "num_heads=[1,2,4,8]",
              "kernel_size=3", "dilations=[[1,2],[1,1],[1,1],[1,1]]", "mlp_ratio=2.0"]
# A short demo run: 10 updates per epoch; drop path and the random-shift augmentation keep the
# torch RNG busy so that resuming has to restore it; the EMA must be restored too.
SHORT_DEMO = ["--demo", "--max-train-samples", "320", "--max-val-samples", "100", "--epochs", "3",
              "--batch-size", "32", "--lr", "2e-3", "--warmup-epochs", "1", "--drop-path", "0.1",
              "--workers", "0", "--seed", "3", "--no-progress", "--model-ema", "--model-ema-decay", "0.9"]
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
    assert config["pretrained_cfg"]["tag"] == "cifar"  # the run's own tag (the folder name), not dinat_mini's in1k


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
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "args", "model_ema"} <= set(ckpt)
    assert ckpt["model_ema"] is not None
    assert {"python", "numpy", "torch", "data"} <= set(ckpt["rng"])
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # atomic writes leave no debris

    # continue from nothing but the run folder: every other argument comes from the checkpoint
    resumed = train_tool.main(["--resume", "auto", "--output", str(out), "--no-progress"])

    assert resumed["final"] == ref["final"]
    assert resumed["num_updates"] == ref["num_updates"] == 30
    assert _log_metrics(out) == _log_metrics(ref_dir)
    assert resumed["ema_final"] == ref["ema_final"]
    for name in ("model.safetensors", "ema/model.safetensors"):
        w_ref, w_res = load_file(ref_dir / name), load_file(out / name)
        assert w_ref.keys() == w_res.keys()
        for k in w_ref:
            assert torch.equal(w_ref[k], w_res[k]), (name, k)


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


# --------------------------------------------------------------------------------------------
# Training-loop pieces checked against values computed another way
# --------------------------------------------------------------------------------------------
def _toy_batches(n_batches: int, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 6, generator=g), torch.randint(0, 3, (batch,), generator=g))
            for _ in range(n_batches)]


def _sgd_and_constant_schedule(model, lr=0.1):
    from timm.scheduler import create_scheduler_v2
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched, _ = create_scheduler_v2(opt, sched="step", num_epochs=10, decay_epochs=100, decay_rate=1.0,
                                   warmup_epochs=0, step_on_epochs=False, updates_per_epoch=10)
    return opt, sched


def test_ema_equals_hand_computed_average():
    """After N updates the EMA weights equal e_1 = p_1, e_k = d e_(k-1) + (1 - d) p_k over the weights
    p_k seen after each optimizer step (timm's ModelEmaV3 uses decay 0 at step 1, i.e. copies)."""
    from timm.utils import ModelEmaV3
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    opt, sched = _sgd_and_constant_schedule(model)
    ema = train_tool.ModelEmaV3(model, decay=0.6)
    assert isinstance(ema, ModelEmaV3)
    seen = []
    opt.register_step_post_hook(lambda *_: seen.append([p.detach().clone() for p in model.parameters()]))
    train_tool.train_one_epoch(model, _toy_batches(5, 4), opt, sched, torch.nn.CrossEntropyLoss(),
                               device=torch.device("cpu"), epoch=0, epochs=1, num_updates=0, progress=False,
                               model_ema=ema)
    assert len(seen) == 5
    expected = seen[0]
    for params in seen[1:]:
        expected = [0.6 * e + 0.4 * p for e, p in zip(expected, params)]
    for e, p in zip(expected, ema.module.parameters()):
        torch.testing.assert_close(p, e, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(list(ema.module.parameters())[0], seen[-1][0])  # it is an average, not a copy


def test_gradient_accumulation_equals_one_large_batch():
    """Two micro-batches of 4 with --grad-accum-steps 2 give the same update as one batch of 8 for a
    model without batch statistics (each micro-loss is divided by 2)."""
    data = _toy_batches(2, 4, seed=1)
    big = [(torch.cat([data[0][0], data[1][0]]), torch.cat([data[0][1], data[1][1]]))]
    results = []
    for loader, accum in ((big, 1), (data, 2)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
        opt, sched = _sgd_and_constant_schedule(model, lr=0.5)
        stats = train_tool.train_one_epoch(model, loader, opt, sched, torch.nn.CrossEntropyLoss(),
                                           device=torch.device("cpu"), epoch=0, epochs=1, num_updates=0,
                                           progress=False, grad_accum_steps=accum)
        assert stats["num_updates"] == 1 and stats["samples"] == 8
        results.append((stats, [p.detach().clone() for p in model.parameters()]))
    (s1, w1), (s2, w2) = results
    assert s1["loss"] == pytest.approx(s2["loss"], rel=1e-6)
    torch.manual_seed(0)
    init = [p.detach() for p in torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(),
                                                    torch.nn.Linear(8, 3)).parameters()]
    assert not torch.allclose(w1[0], init[0])  # the update did move the weights
    for a, b in zip(w1, w2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_layer_decay_scales_follow_model_depth():
    """With --layer-decay d the tiny DiNAT has 10 layers in depth order -- stem, 4 stages x 2 blocks (a
    stage's downsample going with its first block, the final norm with the last block), head -- and
    layer i gets lr scale d**(9 - i), computed here from the parameter names. The 1-D parameters and
    the model's no_weight_decay() names (rpb tables) get no weight decay."""
    import re
    model = create_model("dinat_mini", 10, train_tool.DEMO_KWARGS)
    args = train_tool.argparse.Namespace(opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    opt = build_optimizer(model, args)
    d, names = 0.5, {id(p): n for n, p in model.named_parameters()}
    checked = 0
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            m = re.match(r"stages\.(\d)\.(?:blocks\.(\d)|downsample)", name)
            if name.startswith("stem"):
                layer = 0
            elif m:
                layer = 1 + 2 * int(m.group(1)) + int(m.group(2) or 0)
            else:
                assert name.startswith(("norm", "head")), name
                layer = 8 if name.startswith("norm") else 9
            assert group["lr_scale"] == pytest.approx(d ** (9 - layer)), name
            no_wd = p.ndim <= 1 or name.endswith("rpb")
            assert group["weight_decay"] == (0.0 if no_wd else 0.05), name
            checked += 1
    assert checked == len(list(model.parameters()))
    # the scheduler applies the scales: after a step every group's lr is lr * lr_scale
    from timm.scheduler import create_scheduler_v2
    sched, _ = create_scheduler_v2(opt, sched="cosine", num_epochs=2, warmup_epochs=0, min_lr=0.0,
                                   step_on_epochs=False, updates_per_epoch=4)
    sched.step_update(num_updates=0)
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"])


def test_mixup_targets_are_soft_and_training_runs(tmp_path):
    args, _ = train_tool.resolve_args(["--demo", "--mixup", "0.8", "--cutmix", "1.0", "--smoothing", "0.1",
                                       "--output", str(tmp_path / "unused")])
    mixup = build_mixup(args, 10)
    assert isinstance(build_loss(args.smoothing, mixup=True), SoftTargetCrossEntropy)
    np.random.seed(0)
    images, targets = torch.randn(8, 3, 16, 16), torch.arange(8) % 10
    mixed, soft = mixup(images.clone(), targets)
    assert soft.shape == (8, 10) and mixed.shape == images.shape
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    assert soft.max() < 1.0 - 0.01  # smoothed and mixed, never one-hot
    assert not torch.equal(mixed, images)
    with pytest.raises(UsageError, match="even --batch-size"):
        train_tool.resolve_args(["--demo", "--mixup", "0.8", "--batch-size", "31"])
    summary = train_tool.main(["--demo", "--max-train-samples", "64", "--max-val-samples", "20", "--epochs", "1",
                               "--batch-size", "16", "--warmup-epochs", "0", "--mixup", "0.8", "--cutmix", "1.0",
                               "--aug-repeats", "2", "--no-progress", "--output", str(tmp_path / "mix")])
    assert summary["num_updates"] == 4 and np.isfinite(summary["final"]["loss"])
    for name in ("log.json", "summary.txt", "curves.png"):
        assert (tmp_path / "mix" / name).stat().st_size > 0
    assert (tmp_path / "mix" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fine_tune_starts_reset_the_head(short_demo_run, tmp_path):
    """--initial-checkpoint and --pretrained-path load every backbone tensor and re-initialise a
    classifier of another class count."""
    out, _ = short_demo_run
    ckpt = torch.load(out / "last.pth.tar", map_location="cpu", weights_only=True)
    model = create_model("dinat_mini", 5, train_tool.DEMO_KWARGS)
    info = load_initial_checkpoint(model, out / "last.pth.tar")
    assert sorted(info["skipped"]) == ["head.fc.bias", "head.fc.weight"]
    sd = model.state_dict()
    assert sd["head.fc.weight"].shape[0] == 5
    assert all(torch.equal(sd[k], v) for k, v in ckpt["model"].items() if not k.startswith("head.fc"))
    load_initial_checkpoint(model, out / "last.pth.tar", use_ema=True)
    assert torch.equal(model.state_dict()["stem.proj.0.weight"], ckpt["model_ema"]["stem.proj.0.weight"])
    weights = load_file(out / "model.safetensors")
    for n_classes in (5, 10):
        m = create_model("dinat_mini", n_classes, train_tool.DEMO_KWARGS,
                                    pretrained_path=out / "model.safetensors")
        sd = m.state_dict()
        assert torch.equal(sd["stages.2.blocks.1.attn.qkv.weight"], weights["stages.2.blocks.1.attn.qkv.weight"])
        assert torch.equal(sd["head.fc.weight"], weights["head.fc.weight"]) == (n_classes == 10)
    # a training checkpoint as --pretrained-path is read with weights_only and unwrapped
    m = create_model("dinat_mini", 10, train_tool.DEMO_KWARGS, pretrained_path=out / "last.pth.tar")
    assert torch.equal(m.state_dict()["head.fc.weight"], ckpt["model"]["head.fc.weight"])


def test_validate_halves_the_batch_on_out_of_memory(short_demo_run, monkeypatch):
    out, summary = short_demo_run
    real = validate_tool.evaluate
    sizes = []

    def oom_above_8(model, loader, *args, **kwargs):
        sizes.append(loader.batch_size)
        if loader.batch_size > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(validate_tool, "evaluate", oom_above_8)
    res = validate_tool.main(["--checkpoint", str(out / "last.pth.tar"), "--no-progress", "--batch-size", "32"])
    assert sizes == [32, 16, 8] and res["batch_size"] == 8
    assert (res["top1"], res["top5"]) == (summary["final"]["top1"], summary["final"]["top5"])
    with pytest.raises(torch.OutOfMemoryError):
        validate_tool.main(["--checkpoint", str(out / "last.pth.tar"), "--no-progress", "--batch-size", "32",
                            "--no-retry"])


def test_validate_several_resolutions_and_ema(short_demo_run, tmp_path):
    out, summary = short_demo_run
    res = validate_tool.main(["--checkpoint", str(out / "last.pth.tar"), "--no-progress", "--img-size", "32", "40",
                              "--results-csv", str(tmp_path / "r.csv"), "--results-file", str(tmp_path / "r.json")])
    rows = res["by_resolution"]
    assert [r["img_size"] for r in rows] == [32, 40]
    assert rows[0]["top1"] == summary["final"]["top1"] and rows[0]["count"] == rows[1]["count"] == 100
    with open(tmp_path / "r.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(r["img_size"]) for r in table] == [32, 40]
    assert float(table[1]["top1"]) == rows[1]["top1"]
    assert json.loads((tmp_path / "r.json").read_text())["by_resolution"][1]["img_size"] == 40
    ema = validate_tool.main(["--checkpoint", str(out / "last.pth.tar"), "--no-progress", "--use-ema"])
    assert ema["top1"] == summary["ema_final"]["top1"]


def test_validate_local_dir_folder(short_demo_run):
    out, summary = short_demo_run
    res = validate_tool.main(["--model", f"local-dir:{out}", "--demo", "--max-val-samples", "100",
                              "--batch-size", "32", "--no-progress"])
    assert res["num_classes"] == 10 and (res["top1"], res["count"]) == (summary["final"]["top1"], 100)


def test_timm_dataset_factory_reader(tmp_path):
    """--dataset goes to timm.data.create_dataset (here torchvision's ImageFolder via torch/folder);
    the classes come from the dataset and the held-out subset is the one validate.py rebuilds."""
    if not CIFAR10.is_dir():
        pytest.skip(f"CIFAR-10 class folders not found at {CIFAR10.resolve()} (developer machines and CI only)")
    out = tmp_path / "tv"
    summary = train_tool.main(TINY_DINAT + [
        "--dataset", "torch/folder", "--data-dir", str(CIFAR10), "--val-split", "test", "--img-size", "32",
        "--max-train-samples", "64", "--max-val-samples", "30", "--epochs", "1", "--batch-size", "32",
        "--warmup-epochs", "0", "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--no-progress",
        "--output", str(out)])
    assert summary["num_classes"] == 10 and summary["held_out_samples"] == 30 and summary["num_updates"] == 2
    assert json.loads((out / "config.json").read_text())["label_names"][0] == "airplane"
    res = validate_tool.main(["--checkpoint", str(out / "last.pth.tar"), "--no-progress"])
    assert (res["top1"], res["count"]) == (summary["final"]["top1"], 30)


# --------------------------------------------------------------------------------------------
# Issue #19: data problems named, output places checked first, the right numbers printed
# --------------------------------------------------------------------------------------------
class _NoWork(Exception):
    """Raised by a stand-in for the first piece of real work."""


def _no_work(*args, **kwargs):
    raise _NoWork


def test_output_places_are_checked_before_the_work(short_demo_run, tmp_path, capsys, monkeypatch):
    out, _ = short_demo_run
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setattr(validate_tool, "evaluate_with_retry", _no_work)
    for flag in ("--results-file", "--results-csv"):
        assert validate_tool.cli(["--checkpoint", str(out / "last.pth.tar"), flag, str(blocker / "r.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: {flag} {blocker / 'r.json'}: cannot write there, {blocker} is a file, not a directory"
    monkeypatch.setattr(train_tool, "build_demo_datasets", _no_work)
    assert train_tool.cli(["--demo", "--no-progress", "--output", str(blocker / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --output ") and "cannot write there" in err and len(err.splitlines()) == 1


def test_recipe_warning_gives_the_recipes_batch(tmp_path, capsys, monkeypatch):
    import yaml
    config = ROOT / "configs" / "imagenet" / "dinat_mini.yaml"
    recipe = yaml.safe_load(config.read_text())
    gpus, batch, accum = recipe["recipe_gpus"], recipe["batch_size"], recipe.get("grad_accum_steps", 1)
    assert batch != 64
    monkeypatch.setattr(train_tool, "build_demo_datasets", _no_work)
    with pytest.raises(_NoWork):
        train_tool.main(["-c", str(config), "--demo", "-b", "64", "--no-progress", "--output", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert (f"recipe is for {gpus} processes x batch {batch} x accum {accum} = global batch {gpus * batch * accum} "
            f"at lr {recipe['lr']:g}; this run has 1 x 64 x 1 = 64") in out


def test_resume_with_more_epochs_follows_the_longer_schedule(tmp_path, capsys):
    """The resumed run's LR in epochs 3-4 equals an uninterrupted 4-epoch run's (the saved
    2-epoch cosine had ended at --min-lr, where the run used to stay without a word)."""
    common = ["--demo", "--max-train-samples", "64", "--max-val-samples", "20", "--batch-size", "32",
              "--warmup-epochs", "0", "--no-progress", "--seed", "0", "--min-lr", "1e-6"]
    train_tool.main(common + ["--epochs", "4", "--output", str(tmp_path / "long")])
    train_tool.main(common + ["--epochs", "2", "--output", str(tmp_path / "short")])
    capsys.readouterr()
    train_tool.main(common + ["--epochs", "4", "--output", str(tmp_path / "short"), "--resume", "auto"])
    long_lr = [float(r["lr"]) for r in _log_metrics(tmp_path / "long")]
    resumed_lr = [float(r["lr"]) for r in _log_metrics(tmp_path / "short")]
    assert len(resumed_lr) == 4 and resumed_lr[2] > 1e-4
    assert resumed_lr[2:] == pytest.approx(long_lr[2:], rel=1e-9)
    assert "changed LR schedule (epochs: 2 -> 4)" in capsys.readouterr().out


def test_validate_says_which_precision_each_run_used(short_demo_run, tmp_path, capsys):
    out, _ = short_demo_run
    ckpt = torch.load(out / "last.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["eval_precision"] == "float32"
    res = validate_tool.main(["--checkpoint", str(out / "last.pth.tar"), "--no-progress"])
    assert res["precision"] == res["train_precision"] == "float32"
    assert "note:" not in capsys.readouterr().err

    bf16 = dict(ckpt, eval_precision="bfloat16 autocast", args=dict(ckpt["args"], amp=True))
    torch.save(bf16, tmp_path / "bf16.pth.tar")
    res = validate_tool.main(["--checkpoint", str(tmp_path / "bf16.pth.tar"), "--no-progress"])
    assert (res["precision"], res["train_precision"]) == ("float32", "bfloat16 autocast")
    assert "the training run evaluated in bfloat16 autocast" in capsys.readouterr().err.replace("\n", " ")
    res = validate_tool.main(["--checkpoint", str(tmp_path / "bf16.pth.tar"), "--no-progress", "--amp"])
    assert res["precision"] == "bfloat16 autocast" and "note:" not in capsys.readouterr().err

    old = {k: v for k, v in bf16.items() if k != "eval_precision"}  # written before the entry existed
    old["args"] = dict(old["args"], amp_dtype="bfloat16")
    torch.save(old, tmp_path / "old.pth.tar")
    assert validate_tool.main(["--checkpoint", str(tmp_path / "old.pth.tar"),
                               "--no-progress"])["train_precision"] == "bfloat16 autocast"
    old["args"] = dict(old["args"], amp_dtype="auto")  # the dtype depended on the training device
    torch.save(old, tmp_path / "old.pth.tar")
    capsys.readouterr()
    res = validate_tool.main(["--checkpoint", str(tmp_path / "old.pth.tar"), "--no-progress", "--amp"])
    assert res["train_precision"] == "bfloat16 or float16 autocast (--amp-dtype auto)"
    assert "note:" not in capsys.readouterr().err


def test_validate_bad_data_fail_or_skip(short_demo_run, tmp_path, capsys):
    """Class folders named as the demo's classes, plus a class the model does not know and a
    truncated image: the default names the problem and stops, --bad-data skip counts and lists."""
    from PIL import Image
    out, _ = short_demo_run
    for name in [str(c) for c in range(10)] + ["x"]:
        (tmp_path / "val" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (25 * i, 100, 200)).save(tmp_path / "val" / name / f"{i}.png")
    bad = tmp_path / "val" / "3" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])
    args = ["--checkpoint", str(out / "last.pth.tar"), "--data-dir", str(tmp_path), "--no-progress"]
    assert validate_tool.cli(args) == 2
    assert "1 class folder(s) the model does not know: 'x' (2)" in capsys.readouterr().err
    res = validate_tool.main(args + ["--bad-data", "skip"])
    assert (res["samples"], res["count"], res["skipped_unreadable"]) == (20, 19, 1)
    assert res["data_problems"] == {"unknown_classes": {"x": 2}, "unreadable": [str(bad)]}
    err = capsys.readouterr().err
    assert f"skipped unreadable image {bad}" in err and "counted 19 of 20 held-out images" in err
