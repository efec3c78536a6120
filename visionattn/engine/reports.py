"""Run reports: the per-epoch log as CSV and JSON, the loss/accuracy/LR curves as a PNG and the
human-readable summary of a finished training run (all written atomically)."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from .files import atomic_write, atomic_write_text, jsonable


LOG_NAME = "log.csv"
LOG_JSON_NAME = "log.json"
SUMMARY_NAME = "summary.json"
SUMMARY_TEXT_NAME = "summary.txt"
CURVES_NAME = "curves.png"


def write_log_csv(path: os.PathLike, history: List[Dict[str, Any]]) -> None:
    """Write the per-epoch history as CSV (atomically, the whole file each time)."""
    buf = io.StringIO()
    if history:
        writer = csv.DictWriter(buf, fieldnames=list(history[0].keys()), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def write_log_json(path: os.PathLike, history: List[Dict[str, Any]]) -> None:
    """Write the per-epoch history as a JSON list (atomically)."""
    atomic_write_text(path, json.dumps(jsonable(history), indent=1) + "\n")


def save_figure(fig: Any, path: os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib figure to ``path`` as PNG (``dpi`` dots per inch) atomically, and close it.

    Returns the path. Raises ``OSError`` when the place cannot be written."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_curves(path: os.PathLike, history: List[Dict[str, Any]]) -> Optional[Path]:
    """Render train/held-out loss, top-1 (and the EMA's) and the LR against epoch into one PNG
    with matplotlib's Agg backend (written atomically). Returns the path, or None without history."""
    if not history:
        return None
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["train_loss"] for r in history], marker=".", label="train")
    axes[0].plot(epochs, [r["val_loss"] for r in history], marker=".", label="held-out")
    axes[0].set_ylabel("loss")
    axes[1].plot(epochs, [r["top1"] for r in history], marker=".", label="model")
    if "ema_top1" in history[0]:
        axes[1].plot(epochs, [r["ema_top1"] for r in history], marker=".", label="EMA")
    axes[1].set_ylabel("held-out top-1 (%)")
    axes[2].plot(epochs, [r["lr"] for r in history], marker=".")
    axes[2].set_ylabel("learning rate (end of epoch)")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def summary_text(summary: Dict[str, Any]) -> str:
    """A short human-readable report of a finished run."""
    lines = [f"model        {summary['model']} ({summary['param_count'] / 1e6:.3f}M params)",
             f"data         {summary['data']}",
             f"samples      {summary['train_samples']} train / {summary['held_out_samples']} held-out, "
             f"{summary['num_classes']} classes, input {tuple(summary['data_config']['input_size'])}",
             f"run          {summary['epochs']} epochs, {summary['num_updates']} updates, world size "
             f"{summary['world_size']} x batch {summary['batch_size']} x accum {summary['grad_accum_steps']}, "
             f"device {summary['device']}, amp {summary['amp']}",
             f"final        top1 {summary['final']['top1']:.2f}%  top5 {summary['final']['top5']:.2f}%  "
             f"loss {summary['final']['loss']:.4f}"]
    if summary.get("best"):
        b = summary["best"]
        lines.append(f"best         top1 {b['top1']:.2f}% at epoch {b['epoch']}")
    if summary.get("ema_final"):
        e = summary["ema_final"]
        lines.append(f"EMA final    top1 {e['top1']:.2f}%  top5 {e['top5']:.2f}%")
    lines.append(f"train time   {summary['train_time_s']:.1f} s")
    lines.append("files        " + ", ".join(f"{k}: {v}" for k, v in summary["files"].items()))
    return "\n".join(lines) + "\n"
