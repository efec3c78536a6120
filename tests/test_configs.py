"""configs/imagenet/*.yaml: one recipe per registered model, parsed by tools/train.py's -c loader.

Besides parsing, a few recipe facts are checked against the values the official repositories state
(transcribed here from ../shared/reference/training_coco_flops.md §2, nat_dinat.md §1.5 and
biformer_cswin_agent.md §2, independently of the generator that wrote the files).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import visionattn  # noqa: E402
from visionattn.engine.cli import UsageError  # noqa: E402
from visionattn.tools import train as train_tool  # noqa: E402

CONFIG_DIR = ROOT / "configs" / "imagenet"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))

# (model, key, value) facts from the official recipes; global batch = batch_size x recipe_gpus x accum.
FACTS = [
    ("dinat_tiny", "lr", 1e-3), ("dinat_tiny", "drop_path", 0.2), ("dinat_tiny", "warmup_epochs", 20),
    ("dinat_tiny", "min_lr", 5e-6), ("dinat_tiny", "clip_grad", 5.0), ("nat_base", "drop_path", 0.5),
    ("dinat_large", "lr", 5e-5), ("dinat_large", "epochs", 30), ("dinat_large", "weight_decay", 1e-4),
    ("dinat_large_384", "weight_decay", 1e-10), ("dinat_s_large_384", "weight_decay", 1e-5),
    ("dinat_large_384", "img_size", 384), ("dinat_large", "mixup", 0.0), ("dinat_large", "amp", False),
    ("biformer_small", "drop_path", 0.15), ("biformer_small", "model_ema_decay", 0.99996),
    ("biformer_small", "lr", 1e-3), ("biformer_small", "warmup_epochs", 5),
    ("cswin_tiny", "batch_size", 256), ("cswin_tiny", "lr", 2e-3), ("cswin_tiny", "model_ema_decay", 0.99984),
    ("cswin_base", "weight_decay", 0.1), ("cswin_base", "model_ema_decay", 0.99992), ("cswin_small", "drop_path", 0.4),
    ("cswin_base_384", "drop_path", 0.7),
    ("maxvit_tiny", "lr", 3e-3), ("maxvit_tiny", "model_ema_decay", 0.9999), ("maxvit_large", "drop_path", 0.6),
    ("maxvit_tiny", "cutmix", 0.0), ("maxvit_base_384", "lr", 5e-5), ("maxvit_base_384", "weight_decay", 1e-8),
    ("davit_tiny_va", "clip_grad", 1.0), ("davit_tiny_va", "lr", 1e-3),
    ("agent_swin_tiny", "drop_path", 0.2), ("agent_swin_base", "drop_path", 0.5), ("agent_pvt_tiny", "drop_path", 0.1),
    ("agent_cswin_base", "weight_decay", 0.1), ("agent_cswin_small", "model_ema_decay", 0.99984),
    ("van_b0", "lr", 1e-3), ("van_b0", "drop_path", 0.1), ("van_b3", "drop_path", 0.2), ("van_b0", "min_lr", 1e-6),
    ("van_b0", "batch_size", 128),
]
GLOBAL_BATCH = {"dinat_tiny": 1024, "biformer_small": 1024, "cswin_tiny": 2048, "cswin_base": 1024,
                "maxvit_tiny": 4096, "maxvit_tiny_384": 512, "davit_tiny_va": 1024, "agent_swin_tiny": 1024,
                "agent_swin_base": 512}


def _raw(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())


def test_every_registered_model_has_exactly_one_config():
    names = set(visionattn.list_models())
    assert len(names) == 72 + 7 + 15 + 8  # the first six families, VAN, InLine, CrossFormer T/S/B/L + ++ S/B/L/H
    assert {p.stem for p in CONFIGS} == names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_names_its_model(path):
    raw = yaml.safe_load(path.read_text())
    assert raw["model"] == path.stem and raw["model"] in visionattn.list_models()
    assert "lr" in raw and float(raw["lr"]) > 0  # never left to a scaling default
    header = path.read_text().split("\nmodel:")[0]
    assert header.startswith("#") and "Source:" in header and "LR scaling rule" in header
    cfg = train_tool.load_config(path)
    assert cfg["model"] == path.stem and isinstance(cfg["lr"], float)
    args, _ = train_tool.resolve_args(["-c", str(path), "--data-dir", str(ROOT), "--output", "unused"])
    assert args.model == path.stem and args.lr == float(raw["lr"])
    assert args.recipe_gpus == raw["recipe_gpus"]


@pytest.mark.parametrize("name,key,value", FACTS)
def test_recipe_facts_from_the_official_repos(name, key, value):
    assert _raw(name)[key] == pytest.approx(value, rel=1e-12, abs=0)


@pytest.mark.parametrize("name,global_batch", sorted(GLOBAL_BATCH.items()))
def test_global_batch(name, global_batch):
    raw = _raw(name)
    assert raw["batch_size"] * raw["recipe_gpus"] * raw.get("grad_accum_steps", 1) == global_batch


def test_agent_linear_lr_rule():
    """Agent-Attention's main.py scales lr, warmup_lr and min_lr by global_batch / 512 from base values
    5e-4 / 5e-7 / 5e-6 (Swin cfgs) or 5e-4 / 1e-6 / 1e-5 (PVT/CSwin cfgs)."""
    for name, base in [("agent_swin_tiny", (5e-4, 5e-7, 5e-6)), ("agent_swin_base", (5e-4, 5e-7, 5e-6)),
                       ("agent_deit_tiny", (5e-4, 5e-7, 5e-6)), ("agent_pvt_large", (5e-4, 1e-6, 1e-5)),
                       ("agent_cswin_base", (5e-4, 1e-6, 1e-5))]:
        raw = _raw(name)
        k = raw["batch_size"] * raw["recipe_gpus"] / 512
        for key, b in zip(("lr", "warmup_lr", "min_lr"), base):
            assert raw[key] == pytest.approx(b * k, rel=1e-9), (name, key)


def test_unknown_and_run_keys_are_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: dinat_mini\nlr: 1e-3\nlearning_rate: 0.1\n")
    with pytest.raises(UsageError, match="learning_rate.*not a train.py flag"):
        train_tool.load_config(bad)
    bad.write_text("model: dinat_mini\nlr: 1e-3\nmodel_ema_decy: 0.99\n")
    with pytest.raises(UsageError, match="did you mean model_ema_decay"):
        train_tool.load_config(bad)
    bad.write_text("model: dinat_mini\nresume: auto\n")
    with pytest.raises(UsageError, match="names a run"):
        train_tool.load_config(bad)
    bad.write_text("model: dinat_mini\namp: 1\n")
    with pytest.raises(UsageError, match="true or false"):
        train_tool.load_config(bad)
    bad.write_text("- model\n- lr\n")
    with pytest.raises(UsageError, match="mapping"):
        train_tool.load_config(bad)
    assert train_tool.cli(["-c", str(tmp_path / "missing.yaml")]) == 2


def test_command_line_overrides_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    # YAML 1.1 reads 1e-3 (no dot) as a string: the loader must still give a float
    cfg.write_text("model: dinat_mini\nlr: 1e-3\nepochs: 7\nbatch-size: 48\nscale: [0.5, 1.0]\n"
                   "model_kwargs: {embed_dim: 32}\nmodel_ema: true\n")
    args, _ = train_tool.resolve_args(["-c", str(cfg), "--demo", "--epochs", "3", "--model-kwargs", "kernel_size=3",
                                       "--output", str(tmp_path / "o")])
    assert args.lr == 1e-3 and isinstance(args.lr, float)
    assert args.epochs == 3 and args.batch_size == 48 and args.scale == (0.5, 1.0) and args.model_ema is True
    assert args.model_kwargs == {"embed_dim": 32, "kernel_size": 3}
    assert args.config == cfg
