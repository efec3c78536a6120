#!/usr/bin/env python3
"""Pictures of what a model attends to: per-layer attention of a query pixel, effective receptive
fields per stage, and Grad-CAM class activation maps (:mod:`visionattn.visualize`).

Three subcommands, each writing a PNG grid (matplotlib) and a JSON summary into ``--output``::

    visionattn-viz attention --model dinat_mini --pretrained --image cat.jpg --query 120 96 --output viz/
    visionattn-viz erf --model nat_mini --pretrained --image photos/ --output viz/
    visionattn-viz cam --checkpoint runs/demo/last.pth.tar --image digit.png --output viz/

* ``attention``: the model runs once on the image with :func:`visionattn.visualize.capture_attention`;
  every mixer call gives one panel, the head-averaged weights of the token holding the query
  pixel (``--query Y X`` in the pixels of the image file; default its centre) drawn over the
  image: the neighborhood window (dilation, border shift), BiFormer's routed regions, CSWin's two
  stripes, MaxViT's block and grid windows, Swin windows, agent attention's composed
  query -> agent -> key map, global attention; DaViT's channel attention as its ``C x C`` matrix.
  Writes ``attention.png`` and ``attention.json``.
* ``erf``: the effective receptive field of each stage's centre unit, averaged over the images
  (``--image`` files or folders, at most ``--max-images``), log-scaled. Writes ``erf.png``,
  ``erf.json`` and the raw maps ``erf.npz``.
* ``cam``: Grad-CAM (``grad-cam`` library) of the predicted class, or ``--target-class``, at the
  last stage (``--cam-stage`` picks another).
  Writes ``cam.png`` and ``cam.json``.

The model comes from ``--model`` with ``--pretrained [TAG]`` (timm weights, or ``hf-hub:`` /
``local-dir:`` names), ``--checkpoint`` (a ``tools/train.py`` checkpoint or ``.safetensors``, as
``visionattn-validate`` reads them; the model name, kwargs and preprocessing are taken from it),
or neither (random weights: the geometry of the attention is right, its content is not; a note
says so). Images are resized (no crop) to the model's input size (``--img-size`` overrides) and
normalised with its data config.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import visionattn  # noqa: F401  (registers the zoo's models with timm)
from visionattn.engine.cli import UsageError, check_output_dir, run_cli
from visionattn.engine.config import parse_model_kwargs
from visionattn.engine.console import unknown_model_message
from visionattn.engine.files import atomic_write_text, jsonable

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visionattn-viz", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("attention", "erf", "cam"), help="what to draw")
    p.add_argument("--model", help="timm model name, hf-hub:org/repo or local-dir:PATH (default: the checkpoint's)")
    p.add_argument("--checkpoint", type=Path, help="a tools/train.py checkpoint or a .safetensors file")
    p.add_argument("--pretrained", nargs="?", const=True, default=False, metavar="TAG",
                   help="timm pretrained weights (optionally a tag, e.g. in22k)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="extra constructor kwargs")
    p.add_argument("--num-classes", type=int, help="classifier size (default: the checkpoint's or the pretrained cfg's)")
    p.add_argument("--image", type=Path, nargs="+", required=True,
                   help="image file(s); erf also takes folders (all images inside, averaged)")
    p.add_argument("--query", type=float, nargs=2, metavar=("Y", "X"),
                   help="attention: query pixel (row, column) in the image file's pixels (default: the centre)")
    p.add_argument("--img-size", type=int, help="model input size (default: the model's data config)")
    p.add_argument("--stages", type=int, nargs="+", help="erf: feature taps (default: every stage)")
    p.add_argument("--max-images", type=int, default=32, help="erf: images averaged at most (32)")
    p.add_argument("--target-class", type=int, help="cam: class to explain (default: the predicted one)")
    p.add_argument("--cam-stage", type=int, default=-1,
                   help="cam: the stage whose last block is the target layer (-1, the last; an earlier one maps finer)")
    p.add_argument("--device", default="cpu", help="torch device (cpu)")
    p.add_argument("--output", type=Path, required=True, help="folder for the PNG and JSON files")
    return p


def _images(paths: Sequence[Path], folders: bool, limit: int) -> List[Path]:
    """The image files named (and, with ``folders``, inside the folders named); UsageError if none or missing."""
    found: List[Path] = []
    for p in paths:
        if p.is_dir():
            if not folders:
                raise UsageError(f"--image {p} is a folder; this subcommand takes one image file")
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise UsageError(f"--image {p} does not exist")
    if not found:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {', '.join(map(str, paths))}")
    return found[:limit]


def load_model(args: argparse.Namespace) -> Tuple[torch.nn.Module, Dict[str, Any], str]:
    """``(model in eval mode, data config, description of the weights)`` from the flags."""
    from timm.data import resolve_data_config

    from visionattn.engine.model import build_model, read_checkpoint
    import timm

    if unknown_model_message(args.model):
        raise UsageError(unknown_model_message(args.model))
    state_dict, meta = read_checkpoint(args.checkpoint) if args.checkpoint else (None, {})
    name = args.model or meta.get("model")
    if not name:
        raise UsageError("give --model (the checkpoint does not record its architecture)")
    if unknown_model_message(name):
        raise UsageError(unknown_model_message(name))
    kwargs = {**(meta.get("model_kwargs") or {}), **parse_model_kwargs(args.model_kwargs)}
    num_classes = args.num_classes or meta.get("num_classes")
    if num_classes is None and state_dict is None and not args.pretrained and ":" not in name:
        num_classes = 1000
    if state_dict is not None or args.pretrained or ":" in name:
        if num_classes is None:
            cfg = timm.models.get_pretrained_cfg(name.split(".")[0], allow_unregistered=True) if ":" not in name else None
            num_classes = getattr(cfg, "num_classes", None) or 1000
        model = build_model(name, num_classes, kwargs, state_dict, pretrained=args.pretrained, img_size=args.img_size)
        weights = args.checkpoint.name if args.checkpoint else f"pretrained {args.pretrained if isinstance(args.pretrained, str) else ''}".strip()
    else:
        if args.img_size is not None:
            try:
                model = timm.create_model(name, num_classes=num_classes, img_size=args.img_size, **kwargs)
            except TypeError:
                model = timm.create_model(name, num_classes=num_classes, **kwargs)
        else:
            model = timm.create_model(name, num_classes=num_classes, **kwargs)
        weights = "random init"
        print("note: no --checkpoint or --pretrained: random weights, the attention geometry is right but not its content",
              file=sys.stderr)
    overrides = {"img_size": args.img_size} if args.img_size else {}
    data_config = resolve_data_config(overrides, pretrained_cfg=meta.get("data_config"), model=model)
    return model.eval().to(args.device), data_config, f"{name} ({weights})"


def load_image(path: Path, data_config: Dict[str, Any]) -> Tuple[torch.Tensor, np.ndarray, Tuple[int, int]]:
    """``(input (1, 3, H, W) normalised, rgb (H, W, 3) in [0, 1], original (h, w))``: resized, not cropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            original = (im.height, im.width)
            _, H, W = data_config["input_size"]
            im = im.resize((W, H), Image.BICUBIC)
            rgb = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"--image {path}: cannot read it as an image ({e})") from None
    mean = np.asarray(data_config["mean"], dtype=np.float32)
    std = np.asarray(data_config["std"], dtype=np.float32)
    x = torch.from_numpy((rgb - mean) / std).permute(2, 0, 1)[None].contiguous()
    return x, rgb, original


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Draw; returns the JSON summary written beside the PNG. Raises :class:`UsageError` for bad input."""
    from visionattn import visualize as viz

    args = build_parser().parse_args(argv)
    check_output_dir(args.output, "--output")
    files = _images(args.image, folders=args.what == "erf", limit=max(1, args.max_images))
    if args.what != "erf" and len(files) > 1:
        raise UsageError(f"{args.what} draws one image; got {len(files)} (--image takes several only for erf)")
    model, data_config, desc = load_model(args)
    device = torch.device(args.device)
    args.output.mkdir(parents=True, exist_ok=True)
    summary: Dict[str, Any] = {"model": desc, "input_size": list(data_config["input_size"]), "image": [str(f) for f in files]}

    if args.what == "attention":
        x, rgb, (oh, ow) = load_image(files[0], data_config)
        qy, qx = args.query if args.query is not None else ((oh - 1) / 2, (ow - 1) / 2)
        if not (0 <= qy < oh and 0 <= qx < ow):
            raise UsageError(f"--query {qy:g} {qx:g} is outside the image {files[0]} ({oh}x{ow} pixels: 0 <= Y < {oh}, 0 <= X < {ow})")
        H, W = x.shape[-2:]
        query = (qy * H / oh, qx * W / ow)  # in the resized input's pixels
        try:
            maps, logits = viz.attention_maps(model, x.to(device), query)
        except ValueError as e:
            raise UsageError(str(e)) from None
        viz.plot_attention(rgb, maps, query, args.output / "attention.png",
                           title=f"{desc}: attention of pixel ({qy:g}, {qx:g}), head mean, max-normalised")
        summary.update(query=[qy, qx], predicted_class=int(logits.argmax(-1)[0]), layers=[
            {"name": m["record"].name, "module": m["record"].module, "kind": m["record"].kind,
             "grid": list(m["record"].size) if m["record"].spatial else None,
             "token": list(m["token"]) if m["token"] else None,
             "heads": int(m["weights"].shape[0]) if m["weights"] is not None else None} for m in maps])
    elif args.what == "erf":
        xs = torch.cat([load_image(f, data_config)[0] for f in files]).to(device)
        try:
            maps = viz.effective_receptive_field(model, xs, args.stages)
        except ValueError as e:
            raise UsageError(str(e)) from None
        stages = args.stages if args.stages is not None else viz.default_erf_taps(model)
        labels = [f"{model.feature_info[i]['module']} (/{model.feature_info[i]['reduction']})" for i in stages]
        maps = [m.cpu() for m in maps]
        viz.plot_erf(maps, labels, args.output / "erf.png", title=f"{desc}: effective receptive field, {len(files)} image(s)")
        np.savez_compressed(args.output / "erf.npz", **{f"tap{i}": m.numpy() for i, m in zip(stages, maps)})
        summary.update(stages=stages, labels=labels, nonzero_fraction=[float((m > 0).float().mean()) for m in maps])
    else:
        x, rgb, _ = load_image(files[0], data_config)
        try:
            cam, cls = viz.grad_cam(model, x.to(device), args.target_class, args.cam_stage)
        except ValueError as e:
            raise UsageError(str(e)) from None
        viz.plot_cam(rgb, cam, args.output / "cam.png", title=f"{desc}: Grad-CAM of class {cls}")
        summary.update(target_class=cls, cam_stage=args.cam_stage)
    atomic_write_text(args.output / f"{args.what}.json", json.dumps(jsonable(summary), indent=2) + "\n")
    print(f"wrote {args.output / (args.what + '.png')}", file=sys.stderr)
    return summary


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: run :func:`main`, print user and checkpoint errors without a traceback."""
    from visionattn.models._hub import CheckpointFileError
    from visionattn.models._registry import CheckpointKeyError

    return run_cli(main, argv, errors=(UsageError, CheckpointFileError, CheckpointKeyError))


if __name__ == "__main__":
    sys.exit(cli())
