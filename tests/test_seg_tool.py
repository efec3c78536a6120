"""The segmentation program, visionattn/tools/seg.py (``visionattn-seg train|eval``), and configs/ade20k.

Real data: ``../shared/data/camvid_mini`` (CamVid street scenes in the ADE20K layout: 184
training and 51 validation pairs, 480x360, 11 classes in ``classes.txt``, label 0 = ignore with
``reduce_zero_label``); the cases that need it skip when it is absent. Expected values are
computed here independently (mmcv's LR rule written out, timm's own poly scheduler, label
histograms read with PIL), never taken from the code under test.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml

import visionattn
from visionattn.engine.cli import UsageError
from visionattn.tools import seg as tool

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid_mini"
needs_camvid = pytest.mark.skipif(not (CAMVID / "classes.txt").is_file(),
                                  reason="camvid_mini not available at ../shared/data/camvid_mini")
CONFIGS = sorted((REPO / "configs" / "ade20k").glob("*.yaml"))

# a shrunk NAT (1 block per stage, 32 channels) with small heads: quick CPU runs
TINY = dict(head="upernet", model="nat_mini", channels=32,
            model_kwargs=dict(depths=[1, 1, 1, 1], embed_dim=32, num_heads=[1, 2, 4, 8], drop_path_rate=0.0))


@pytest.fixture(autouse=True)
def _restore_threads():
    """The runs here pass ``--threads 1`` (torch.set_num_threads); put the suite's setting back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _tiny_config(path: Path, **over) -> Path:
    cfg = dict(TINY, dataset="folder", crop_size=[64, 96], scale=[192, 96], ratio_range=[0.75, 1.25], iters=4,
               warmup_iters=2, lr=1e-3, weight_decay=0.01, batch_size=2, workers=0, progress=False, threads=1,
               eval_interval=0, max_train_images=8, max_val_images=3, seed=3)
    cfg.update(over)
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------------- configs
def test_ade20k_configs_cover_the_papers_and_parse():
    """Every recipe resolves through the CLI, names a registered model and a known head, states the
    paper's mIoU and its source file in the official repo, and the papers' backbone x head pairs exist."""
    assert len(CONFIGS) >= 30
    seen = set()
    for path in CONFIGS:
        text = path.read_text()
        header = text.split("\nhead:")[0]
        assert header.startswith("#") and "Source:" in header and "Paper" in header and "Our choices" in header
        args, _ = tool.resolve_args(["train", "-c", str(path), "--data-dir", "/nonexistent", "--output", "/tmp/unused"])
        assert args.model in visionattn.list_models(), path.name
        assert args.head in tool.HEADS and path.stem == f"{args.head}_{args.model}"
        assert 35 < args.paper["miou_ss"] < 60 and args.source.split()[0] in text.splitlines()[1]
        assert args.iters in (40000, 80000, 160000) and args.batch_size * args.recipe_gpus == 16
        assert args.lr in (6e-5, 1e-4, 2e-4) and args.crop_size in ([512, 512], [640, 640])
        if args.head == "upernet":  # the papers' shared UPerNet recipe (mmseg configs of every repo)
            assert (args.schedule, args.power, args.warmup_iters, args.warmup_ratio, args.weight_decay) == \
                ("poly", 1.0, 1500, 1e-6, 0.01) and args.aux_head and args.aux_weight == 0.4
        seen.add((args.head, args.model.split("_")[0]))
    assert {("upernet", "nat"), ("upernet", "dinat"), ("upernet", "biformer"), ("upernet", "cswin"),
            ("upernet", "davit"), ("upernet", "agent"), ("fpn", "biformer"), ("fpn", "agent")} <= seen
    demo, _ = tool.resolve_args(["train", "-c", str(REPO / "configs" / "camvid" / "upernet_nat_mini_shrunk.yaml"),
                                 "--data-dir", str(CAMVID), "--output", "/tmp/unused"])
    assert demo.dataset == "folder" and demo.crop_size == [128, 128] and demo.iters == 200


def test_ade20k_configs_match_the_library_table():
    """Two transcriptions of the papers' tables agree: every row of PAPER_SEGMENTATION has exactly
    one config with the same mIoU (single- and multi-scale) and parameter count."""
    from visionattn.segmentation import PAPER_SEGMENTATION
    rows = {(m, h): r for m, heads in PAPER_SEGMENTATION.items() for h, r in heads.items()}
    known = set()
    seen = set()
    for path in CONFIGS:
        raw = yaml.safe_load(path.read_text())
        key = (raw["model"], raw["head"])
        seen.add(key)
        assert key in rows, path.name
        r, p = rows[key], raw["paper"]
        assert p["params_m"] == r["params_m"] and p["iters"] == r["iters"], path.name
        if key not in known:
            assert (p["miou_ss"], p["miou_ms"]) == (r["miou"], r["miou_ms"]), path.name
    assert seen == set(rows)


@pytest.mark.slow  # 33 builds, ~30 s
def test_ade20k_configs_build_with_the_papers_parameter_counts():
    """Every config builds its segmentor through the tool (its model_kwargs: dilations, regions, layer
    scale; meta device, shapes only) with the parameter count the paper states (within 1%, or the
    paper's rounding to a whole M)."""
    for path in CONFIGS:
        args, _ = tool.resolve_args(["train", "-c", str(path), "--data-dir", "/x", "--output", "/tmp/unused",
                                     "--no-pretrained"])
        with torch.device("meta"):
            model = tool.build_model(args, 150, pretrained=False)
        n = sum(t.numel() for t in model.parameters()) / 1e6
        stated = args.paper["params_m"]
        if stated and (args.model, args.head) != ("cswin_tiny", "upernet"):  # README 60M; its config builds 52.1M
            assert abs(n - stated) <= max(0.01 * stated, 0.5), (path.name, n)


@pytest.mark.parametrize("name,key,value", [
    # facts read from the official config files (see each file's Source line)
    ("upernet_nat_tiny", "model_kwargs", {"drop_path_rate": 0.3}),
    ("upernet_dinat_tiny", "model_kwargs", {"drop_path_rate": 0.3, "dilations": [
        [1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4, 1, 2, 1, 3, 1, 4, 1, 2, 1, 3, 1, 4], [1, 2, 1, 2, 1]]}),
    ("upernet_cswin_base", "model_kwargs", {"drop_path_rate": 0.6}),
    ("upernet_biformer_small", "model_kwargs", {"drop_path_rate": 0.3, "num_regions": 8}),
    ("fpn_biformer_small", "schedule", "cosine"), ("fpn_biformer_small", "iters", 80000),
    ("fpn_biformer_small", "warmup_iters", 1000), ("fpn_agent_pvt_tiny", "power", 0.9),
    ("fpn_agent_pvt_tiny", "warmup_iters", 0), ("upernet_davit_tiny_va", "no_decay_1d", False),
    ("upernet_dinat_large", "pretrained", "in22k"), ("upernet_dinat_large", "crop_size", [640, 640]),
])
def test_config_facts_from_the_official_repos(name, key, value):
    raw = yaml.safe_load((REPO / "configs" / "ade20k" / f"{name}.yaml").read_text())
    assert raw[key] == value


# ------------------------------------------------------------------------------------- schedule
def _mmcv_lr(t, base, max_iters, power, min_lr, warmup_iters, warmup_ratio):
    """mmcv 1.x PolyLrUpdaterHook + linear warm-up, written out from its source (get_lr / get_warmup_lr)."""
    coeff = (1 - t / max_iters) ** power
    regular = (base - min_lr) * coeff + min_lr
    if t < warmup_iters:
        k = (1 - t / warmup_iters) * (1 - warmup_ratio)
        return regular * (1 - k)
    return regular


def test_poly_schedule_is_mmcv_exact_and_equals_timm_after_warmup():
    from timm.scheduler import PolyLRScheduler
    base, T, W = 6e-5, 200, 15
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=base)
    args = type("A", (), dict(iters=T, schedule="poly", power=1.0, min_lr=0.0, min_lr_ratio=None, warmup_iters=W,
                              warmup_ratio=1e-6))
    sched = tool.build_scheduler(opt, args)
    ours = []
    for _ in range(T):
        ours.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ref = [_mmcv_lr(t, base, T, 1.0, 0.0, W, 1e-6) for t in range(T)]
    assert ours == pytest.approx(ref, rel=1e-12, abs=0)
    assert ours[0] == pytest.approx(base * 1e-6) and ours[T // 2] == pytest.approx(base / 2)
    # timm's own poly (stepped per iteration) agrees once the warm-up is over
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base)
    timm_sched = PolyLRScheduler(opt2, t_initial=T, power=1.0, lr_min=0.0, warmup_t=W, warmup_lr_init=base * 1e-6,
                                 t_in_epochs=False)
    timm_lrs = []
    for t in range(T):
        timm_sched.step_update(t)
        timm_lrs.append(opt2.param_groups[0]["lr"])
    assert ours[W:] == pytest.approx(timm_lrs[W:], rel=1e-9)
    # ... but not during it: timm ramps to the base LR, mmcv scales the poly value (why we use LambdaLR)
    assert ours[W - 1] != pytest.approx(timm_lrs[W - 1], rel=1e-6)


def test_cosine_schedule_and_layer_scale_per_group():
    s = tool.MMSegSchedule(100, "cosine", min_lr_ratio=1e-8, warmup_iters=10, warmup_ratio=0.1, base_lr=2e-4)
    end = 2e-4 * 1e-8
    for t in (10, 50, 99):
        assert s.lr(t) == pytest.approx(end + 0.5 * (2e-4 - end) * (1 + math.cos(math.pi * t / 100)), rel=1e-12)
    assert s.lr(0) == pytest.approx(2e-4 * 0.1)
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p1], "lr": 1e-3}, {"params": [p2], "lr": 0.5e-3}], lr=1e-3)
    args = type("A", (), dict(iters=10, schedule="poly", power=0.9, min_lr=1e-6, min_lr_ratio=None, warmup_iters=0,
                              warmup_ratio=1e-6))
    sched = tool.build_scheduler(opt, args)
    for _ in range(4):
        opt.step()
        sched.step()
    for g, base in zip(opt.param_groups, (1e-3, 0.5e-3)):  # mmcv: (base - min) * coeff + min per group
        assert g["lr"] == pytest.approx((base - 1e-6) * (1 - 4 / 10) ** 0.9 + 1e-6, rel=1e-12)
    with pytest.raises(ValueError):
        tool.MMSegSchedule(0)


# ------------------------------------------------------------------------------------- optimizer groups
class _FakeSegmentor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Module()
        self.backbone.body = timm.create_model("nat_mini", features_only=True, **TINY["model_kwargs"])
        self.decode_head = torch.nn.Sequential(torch.nn.Conv2d(256, 8, 1), torch.nn.BatchNorm2d(8))


def test_param_groups_no_decay_and_layer_decay():
    m = _FakeSegmentor()
    named = dict(m.named_parameters())
    groups = tool.param_groups(m, 1e-3, 0.05, ["rpb", "norm"])
    assert sum(len(g["params"]) for g in groups) == len(named)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in named.items():
        expect_decay = p.ndim > 1 and "rpb" not in name and "norm" not in name
        assert (id(p) in decayed) == expect_decay, name
    assert any("rpb" in n for n in named) and any(n.startswith("decode_head") and p.ndim > 1 for n, p in named.items())
    # no keywords and no_decay_1d off (DaViT's recipe): only what the backbone's no_weight_decay() names is spared
    body = m.backbone.body
    inner = body.model if hasattr(body, "model") else body
    spared = {f"backbone.body.{'model.' if inner is not body else ''}{n}" for n in inner.no_weight_decay()}
    assert spared and spared <= set(named)
    groups = tool.param_groups(m, 1e-3, 0.05, [], no_decay_1d=False)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {n for n, p in named.items() if id(p) not in decayed} == spared
    # layer decay: timm's group_matcher layering of the wrapped model, heads at scale 1
    groups = tool.param_groups(m, 1e-3, 0.05, ["norm"], layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale_of[id(named["decode_head.0.weight"])] == 1.0
    stem, last = named["backbone.body.model.stem.proj.0.weight"], named["backbone.body.model.stages.3.blocks.0.mlp.fc1.weight"]
    assert scale_of[id(stem)] < scale_of[id(last)] < 1
    from timm.optim._param_groups import _layer_map  # timm's layering, read independently of the tool
    layers = _layer_map(m.backbone.body.model)
    n_layers = max(layers.values()) + 1
    assert scale_of[id(stem)] == pytest.approx(0.5 ** (n_layers - layers["stem.proj.0.weight"]))
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) for g in groups)


# ------------------------------------------------------------------------------------- sampler
def test_infinite_sharded_batches_resume_and_shard():
    full = tool.InfiniteShardedBatches(10, 2, 0, 1, seed=7)
    it = iter(full)
    first = [next(it) for _ in range(12)]  # 5 steps per pass: crosses two pass boundaries
    resumed = iter(tool.InfiniteShardedBatches(10, 2, 0, 1, seed=7, start_step=7))
    assert [next(resumed) for _ in range(5)] == first[7:12]
    assert sorted(sum(first[:5], [])) == list(range(10))  # a pass visits each sample once
    r0, r1 = iter(tool.InfiniteShardedBatches(10, 2, 0, 2, seed=7)), iter(tool.InfiniteShardedBatches(10, 2, 1, 2, seed=7))
    a, b = [next(r0) for _ in range(2)], [next(r1) for _ in range(2)]
    assert not set(sum(a, [])) & set(sum(b, [])) and len(set(sum(a + b, []))) == 8
    with pytest.raises(ValueError):
        tool.InfiniteShardedBatches(3, 2, 0, 2)


# ------------------------------------------------------------------------------------- errors
def test_cli_errors_are_one_line(tmp_path, capsys):
    cases = [
        (["train", "--model", "nat_mni", "--data-dir", str(tmp_path)], "did you mean nat_mini"),
        (["train", "--model", "nat_mini", "--head", "deeplab", "--data-dir", str(tmp_path)], "unknown head 'deeplab'"),
        (["train", "--model", "nat_mini", "--data-dir", str(tmp_path / "missing"), "--output", str(tmp_path / "o")],
         "is not a directory"),
        (["train", "-c", str(tmp_path / "no.yaml")], "does not exist"),
        (["eval", "--checkpoint", str(tmp_path / "none.pth.tar")], "does not exist"),
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: nat_mini\nbatch_szie: 2\n")
    cases.append((["train", "-c", str(bad)], "did you mean batch_size"))
    for argv, needle in cases:
        assert tool.cli(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and "\n" not in err, (argv, err)


# ------------------------------------------------------------------------------------- runs on camvid_mini
def _records(path: Path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@needs_camvid
def test_train_then_eval_writes_everything(tmp_path):
    """A few iterations of UPerNet on a shrunk NAT, then ``eval`` of the checkpoint: the files the
    README promises, their contents, and the LR of each iteration against mmcv's rule."""
    cfg = _tiny_config(tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    summary = tool.main(["train", "-c", str(cfg), "--data-dir", str(CAMVID), "--output", str(out)])
    assert summary["iters_done"] == 4 and len(summary["evals"]) == 1
    names = {p.name for p in out.iterdir()}
    assert {"last.pth.tar", "iterations.jsonl", "log.csv", "eval.json", "eval.md", "eval_iter4.json", "curves.png",
            "summary.json"} <= names
    recs = _records(out / "iterations.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert [r["lr"] for r in recs] == pytest.approx([_mmcv_lr(t, 1e-3, 4, 1.0, 0.0, 2, 1e-6) for t in range(4)])
    assert all(r["loss"] == pytest.approx(r["loss_decode"] + 0.4 * r["loss_aux"], rel=1e-4) for r in recs)
    classes = (CAMVID / "classes.txt").read_text().split()
    ev = json.loads((out / "eval.json").read_text())
    assert list(ev["IoU"]) == classes and ev["num_images"] == 3 and 0 <= ev["mIoU"] <= 1
    md = (out / "eval.md").read_text()
    assert md.count("\n| ") == 1 + len(classes) and "mIoU" in md.splitlines()[0]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(out / "last.pth.tar", weights_only=True)
    assert ckpt["iter"] == 4 and ckpt["classes"] == classes and {"model", "optimizer", "scheduler", "rng"} <= set(ckpt)
    # eval of the checkpoint: same numbers as the training run's final evaluation; triptychs written
    pred_dir = tmp_path / "pred"
    res = tool.main(["eval", "--checkpoint", str(out / "last.pth.tar"), "--data-dir", str(CAMVID),
                     "--max-val-images", "3", "--workers", "0", "--no-progress", "--output", str(tmp_path / "ev"),
                     "--save-predictions", str(pred_dir)])
    assert res["mIoU"] == pytest.approx(ev["mIoU"], abs=1e-12) and res["IoU"] == pytest.approx(ev["IoU"], nan_ok=True)
    pngs = sorted(pred_dir.glob("*.png"))
    assert len(pngs) == 3
    from PIL import Image
    with Image.open(pngs[0]) as im:
        assert im.width >= 3 * 480 and im.height >= 360  # image | ground truth | prediction, full size
    # a bare segmentor state dict, described by the recipe file: the same numbers
    torch.save({"state_dict": ckpt["model"]}, tmp_path / "segmentor.pth")
    bare = tool.main(["eval", "-c", str(cfg), "--checkpoint", str(tmp_path / "segmentor.pth"), "--data-dir", str(CAMVID),
                      "--max-val-images", "3", "--output", str(tmp_path / "bare")])
    assert bare["mIoU"] == pytest.approx(ev["mIoU"], abs=1e-12)
    # sliding-window, multi-scale + flip evaluation (the papers' MS column) through the same command
    ms = tool.main(["eval", "--checkpoint", str(out / "last.pth.tar"), "--data-dir", str(CAMVID), "--max-val-images",
                    "1", "--workers", "0", "--no-progress", "--output", str(tmp_path / "ms"), "--eval-mode", "slide",
                    "--eval-crop", "64", "64", "--eval-stride", "43", "43", "--aug-test", "--aug-ratios", "0.5", "1.0"])
    assert ms["mode"] == "slide + MS/flip" and ms["num_images"] == 1 and 0 <= ms["aAcc"] <= 1
    # a checkpoint trained on other classes is refused for this data
    other = tmp_path / "other"
    for sub in ("images/validation", "annotations/validation"):
        (other / sub).mkdir(parents=True)
    first = sorted((CAMVID / "images" / "validation").glob("*.jpg"))[0]
    (other / "images/validation" / first.name).write_bytes(first.read_bytes())
    (other / "annotations/validation" / f"{first.stem}.png").write_bytes(
        (CAMVID / "annotations" / "validation" / f"{first.stem}.png").read_bytes())
    (other / "classes.txt").write_text("\n".join(classes[:-1] + ["Cyclist"]) + "\n")
    with pytest.raises(UsageError, match="trained on 11 classes"):
        tool.main(["eval", "--checkpoint", str(out / "last.pth.tar"), "--data-dir", str(other), "--workers", "0"])


@needs_camvid
def test_train_semantic_fpn_with_bf16_amp_layer_decay_and_clipping(tmp_path):
    """The other head and the optional optimisation paths through the program: Semantic FPN, bf16
    autocast on CPU, layer-wise LR decay, gradient clipping."""
    cfg = _tiny_config(tmp_path / "tiny.yaml", head="fpn", iters=2, max_val_images=1)
    out = tmp_path / "fpn"
    summary = tool.main(["train", "-c", str(cfg), "--data-dir", str(CAMVID), "--output", str(out), "--amp",
                         "--layer-decay", "0.8", "--clip-grad", "1.0"])
    recs = _records(out / "iterations.jsonl")
    assert summary["iters_done"] == 2 and all(math.isfinite(r["loss"]) for r in recs)
    assert "loss_aux" not in recs[0]  # Semantic FPN has no auxiliary head
    ckpt = torch.load(out / "last.pth.tar", weights_only=True)
    scales = sorted({g["lr_scale"] for g in ckpt["optimizer"]["param_groups"]})
    assert len(scales) > 2 and scales[-1] == 1.0 and scales[0] < 0.8 ** 3


def _copy_pairs(dst: Path, n: int = 2) -> list:
    pairs = []
    for split in ("training", "validation"):
        (dst / "images" / split).mkdir(parents=True)
        (dst / "annotations" / split).mkdir(parents=True)
        for img in sorted((CAMVID / "images" / split).glob("*.jpg"))[:n]:
            lab = CAMVID / "annotations" / split / f"{img.stem}.png"
            (dst / "images" / split / img.name).write_bytes(img.read_bytes())
            (dst / "annotations" / split / lab.name).write_bytes(lab.read_bytes())
            pairs.append((dst / "images" / split / img.name, dst / "annotations" / split / lab.name))
    (dst / "classes.txt").write_text((CAMVID / "classes.txt").read_text())
    return pairs


@needs_camvid
@pytest.mark.parametrize("defect", ["corrupt_image", "label_out_of_range", "size_mismatch"])
def test_bad_data_gives_one_line_error_naming_the_file(tmp_path, capsys, defect):
    from PIL import Image
    data = tmp_path / "data"
    (img, lab), *_ = _copy_pairs(data)
    if defect == "corrupt_image":
        img.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
        culprit = img
    elif defect == "label_out_of_range":
        arr = np.array(Image.open(lab))
        arr[:4, :4] = 40  # 11 classes: 1..11 and 0 = ignore are the only valid values
        Image.fromarray(arr).save(lab)
        culprit = lab
    else:
        Image.open(lab).resize((240, 180), Image.NEAREST).save(lab)
        culprit = lab
    cfg = _tiny_config(tmp_path / "tiny.yaml", iters=1, max_train_images=None, max_val_images=None)
    rc = tool.cli(["train", "-c", str(cfg), "--data-dir", str(data), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and str(culprit) in err, err


@needs_camvid
@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    """Killed after iteration 3 and resumed (CPU, fixed seed, workers 0): the same weights, the
    same per-iteration losses as the uninterrupted run."""
    cfg = _tiny_config(tmp_path / "tiny.yaml", iters=6, eval_interval=0, max_val_images=2)
    common = ["-c", str(cfg), "--data-dir", str(CAMVID)]
    full = tool.main(["train", *common, "--output", str(tmp_path / "full")])
    part = tool.main(["train", *common, "--output", str(tmp_path / "part"), "--stop-after-iter", "3"])
    assert part["iters_done"] == 3 and full["iters_done"] == 6
    assert tool.cli(["train", *common, "--output", str(tmp_path / "part")]) == 2  # not empty, no --resume
    resumed = tool.main(["train", *common, "--output", str(tmp_path / "part"), "--resume", "auto"])
    assert resumed["iters_done"] == 6
    a = torch.load(tmp_path / "full" / "last.pth.tar", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pth.tar", weights_only=True)
    assert a["iter"] == b["iter"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    la, lb = _records(tmp_path / "full" / "iterations.jsonl"), _records(tmp_path / "part" / "iterations.jsonl")
    assert [r["step"] for r in lb] == list(range(1, 7)) and [r["loss"] for r in la] == [r["loss"] for r in lb]


@needs_camvid
@pytest.mark.slow
def test_torchrun_two_process_gloo(tmp_path):
    """``torchrun --nproc_per_node=2`` on CPU (gloo): one log record per step from rank 0, the
    sharded evaluation summed over both ranks equals a one-process ``eval`` of the same weights."""
    cfg = _tiny_config(tmp_path / "tiny.yaml", iters=2, max_val_images=5, norm="syncbn")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tools" / "seg.py"), "train", "-c", str(cfg), "--data-dir", str(CAMVID), "--device", "cpu",
           "--output", str(tmp_path / "ddp")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in _records(tmp_path / "ddp" / "iterations.jsonl")] == [1, 2]
    ddp_eval = json.loads((tmp_path / "ddp" / "eval.json").read_text())
    assert ddp_eval["num_images"] == 5
    one = tool.main(["eval", "--checkpoint", str(tmp_path / "ddp" / "last.pth.tar"), "--data-dir", str(CAMVID),
                     "--max-val-images", "5", "--workers", "0", "--no-progress", "--output", str(tmp_path / "one")])
    assert one["mIoU"] == pytest.approx(ddp_eval["mIoU"], abs=1e-12)
    assert one["aAcc"] == pytest.approx(ddp_eval["aAcc"], abs=1e-12)


def _majority_baseline(split: str = "validation"):
    """mIoU and aAcc of predicting the most frequent class everywhere, from the label histogram
    (PIL + numpy; CamVid-mini labels 1..11 = classes, 0 = ignored): IoU of that class = its share of
    the valid pixels, every other class 0."""
    from PIL import Image
    hist = np.zeros(256, dtype=np.int64)
    for p in sorted((CAMVID / "annotations" / split).glob("*.png")):
        hist += np.bincount(np.asarray(Image.open(p)).ravel(), minlength=256)
    counts = hist[1:12]
    share = counts.max() / counts.sum()
    return share / len(counts), share


@needs_camvid
@pytest.mark.slow
def test_short_real_training_beats_the_majority_class(tmp_path):
    """The README's demo command (configs/camvid/upernet_nat_mini_shrunk.yaml: 200 iterations,
    128x128 crops, random init; ~3-4 min on one loaded core): the loss falls and the validation
    mIoU clearly beats predicting the majority class (Road) everywhere."""
    base_miou, base_aacc = _majority_baseline()
    assert 0.02 < base_miou < 0.04  # Road: 29.4% of the valid validation pixels -> 2.68% mIoU
    out = tmp_path / "demo"
    summary = tool.main(["train", "-c", str(REPO / "configs" / "camvid" / "upernet_nat_mini_shrunk.yaml"),
                         "--data-dir", str(CAMVID), "--output", str(out), "--threads", "1", "--no-progress"])
    assert summary["iters_done"] == 200
    loss = [r["loss"] for r in _records(out / "iterations.jsonl")]
    assert np.mean(loss[-25:]) < 0.75 * np.mean(loss[:25])
    ev = json.loads((out / "eval.json").read_text())
    assert ev["num_images"] == 51
    assert ev["mIoU"] > 4 * base_miou and ev["aAcc"] > base_aacc + 0.2, (ev["mIoU"], ev["aAcc"])
