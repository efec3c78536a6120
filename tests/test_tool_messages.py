"""What the tools tell the user (issue #19.11): progress bars only on a terminal, what a fine-tune
loaded, "unknown model" from validate, the COCO start-up summary, its 1-based epoch bar and a
worker count the machine can run. Small synthetic inputs only (no ../shared data)."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from visionattn.tools import coco as coco_tool  # noqa: E402
from visionattn.tools import train as train_tool  # noqa: E402
from visionattn.tools import validate as validate_tool  # noqa: E402
from visionattn.engine.console import (default_workers, describe_initial_checkpoint, show_progress,  # noqa: E402
                                       unknown_model_message)

TINY_NAT = ["depths=[1,1,1,1]", "embed_dim=32", "num_heads=[1,2,4,8]"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_show_progress_only_on_a_terminal():
    assert show_progress(None, _Tty()) is True
    assert show_progress(None, io.StringIO()) is False  # a file or pipe: no bar frames
    assert show_progress(False, _Tty()) is False and show_progress(True, io.StringIO()) is True


def test_redirected_fine_tune_has_no_bar_frames_and_says_what_it_loaded(tmp_path, capfd):
    """A demo fine-tune from a 5-class safetensors file, output captured (not a terminal), no --no-progress."""
    from safetensors.torch import save_file

    src = train_tool.create_model("dinat_mini", 5, train_tool.DEMO_KWARGS)
    save_file(src.state_dict(), str(tmp_path / "w5.safetensors"))
    capfd.readouterr()
    train_tool.main(["--demo", "--pretrained-path", str(tmp_path / "w5.safetensors"), "--max-train-samples", "32",
                     "--max-val-samples", "10", "--epochs", "1", "--batch-size", "16", "--warmup-epochs", "0",
                     "--workers", "0", "--output", str(tmp_path / "ft")])
    out, err = capfd.readouterr()
    text = out + err
    assert "\r" not in text and "it/s" not in text and "s/it" not in text, text[-2000:]
    line = next((ln for ln in text.splitlines() if ln.startswith("pretrained weights:")), None)
    assert line is not None, text[-2000:]
    assert "w5.safetensors" in line
    assert "classifier re-initialised for 10 classes (checkpoint: 5): head.fc.weight, head.fc.bias" in line
    assert "missing keys (left as initialised): none" in line and "unexpected keys (ignored): none" in line


def test_initial_checkpoint_message_names_reset_and_missing_keys():
    msg = describe_initial_checkpoint("runs/x/last.pth.tar", {"skipped": ["head.fc.weight", "head.fc.bias"],
                                                              "missing": ["head.fc.weight", "head.fc.bias", "norm.w"]})
    assert msg == ("initial weights from runs/x/last.pth.tar; re-initialised (shape differs): head.fc.weight, "
                   "head.fc.bias; missing keys (left as initialised): norm.w")


def test_validate_unknown_model(capsys):
    assert validate_tool.cli(["--model", "dinat_foo", "--demo"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'dinat_foo'" in err and "did you mean" in err and "dinat_" in err
    assert unknown_model_message("dinat_mini.in1k") is None and unknown_model_message("hf-hub:org/x") is None


def test_coco_default_workers_fit_the_machine(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    args, _ = coco_tool.resolve_args(["train", "--model", "nat_mini", "--data-dir", "/nonexistent"])
    assert args.workers == 2  # was 4: DataLoader warns above the CPU count
    assert coco_tool.resolve_args(["train", "--model", "nat_mini", "--data-dir", "x", "--workers", "3"])[0].workers == 3
    assert default_workers(processes_per_node=2) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert default_workers() == 4


def _tiny_coco(root: Path) -> Path:
    """Two 64x64 images with one box (and polygon) each, in the official instances format."""
    (root / "img").mkdir(parents=True)
    images, anns = [], []
    for i in range(2):
        arr = np.zeros((64, 64, 3), np.uint8)
        arr[16:48, 8 + 8 * i:40 + 8 * i] = (200, 40 + 60 * i, 90)
        Image.fromarray(arr).save(root / "img" / f"{i}.png")
        x0 = 8 + 8 * i
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 64, "width": 64})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 3, "bbox": [x0, 16, 32, 32], "area": 1024,
                     "iscrowd": 0, "segmentation": [[x0, 16, x0 + 32, 16, x0 + 32, 48, x0, 48]]})
    ann = root / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": 3, "name": "car", "supercategory": "vehicle"}]}))
    return ann


def test_coco_train_prints_summary_and_counts_epochs_from_one(tmp_path, capsys, monkeypatch):
    import visionattn.detection.engine as det_engine

    descs = []
    real_tqdm = det_engine.tqdm

    def recording_tqdm(*args, **kwargs):
        descs.append(kwargs.get("desc"))
        return real_tqdm(*args, **{**kwargs, "disable": True})

    monkeypatch.setattr(det_engine, "tqdm", recording_tqdm)
    ann = _tiny_coco(tmp_path / "data")
    out = tmp_path / "run"
    summary = coco_tool.main([
        "train", "--detector", "faster_rcnn", "--model", "nat_mini", "--model-kwargs", *TINY_NAT,
        "--train-images", str(tmp_path / "data" / "img"), "--train-ann", str(ann), "--max-train-images", "1",
        "--train-min-sizes", "64", "--max-size", "96", "--test-min-size", "64", "--epochs", "1", "--lr-steps", "1",
        "--warmup-iters", "0", "--batch-size", "1", "--workers", "0", "--threads", "1", "--progress",
        "--no-pretrained", "--output", str(out)])
    printed = capsys.readouterr().out
    assert "coco train: faster_rcnn on nat_mini" in printed and "1 classes" in printed
    assert "1 train images, no val set" in printed and "1 steps/epoch" in printed
    assert "1 epochs" in printed and "0 loader workers/process" in printed and str(out) in printed
    assert summary["history"][0]["epoch"] == 1
    assert (out / "log.csv").read_text().splitlines()[1].startswith("1,")
    assert descs == ["epoch 1"]  # the bar names the epoch as log.csv does (it said "epoch 0")


def test_generated_folders_are_git_ignored():
    """Converted checkpoints (hub/, the convert tool's default) and run folders (runs/) stay out of git."""
    import shutil
    import subprocess

    if shutil.which("git") is None or subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode:
        lines = (ROOT / ".gitignore").read_text().split()
        assert {"/hub/", "hub/"} & set(lines) and {"/runs/", "runs/"} & set(lines)
        return
    for path in ("hub/dinat_tiny.in1k/model.safetensors", "runs/demo/last.pth.tar"):
        assert subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path]).returncode == 0, path
    assert subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "visionattn/hub/x.py"]).returncode == 1
