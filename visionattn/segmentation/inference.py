"""Test-time inference as mmseg's ``EncoderDecoder``: whole-image or sliding-window, optionally
multi-scale + flip (the papers' "MS" / "ms+flip" column, mmseg's ``--aug-test``).

- ``whole``: one forward pass; the head's stride-4 logits are resized bilinearly
  (``align_corners=False``) to the image size.
- ``slide``: windows of ``crop_size`` every ``stride`` pixels (mmseg's grid: ``max(H - crop +
  stride - 1, 0) // stride + 1`` rows, the last window shifted back inside the image, a window
  never larger than the image), each window's logits resized to the window and summed into the
  full map, divided by how many windows cover each pixel. ADE20K configs: crop 512, stride 341.
- ``scales`` / ``flip``: the input is resized by each ratio (bilinear) and, with ``flip``, also
  run mirrored (the output mirrored back). Every view is resized to the output size; with more
  than one view the softmax probabilities are averaged, as mmseg's ``aug_test`` does (the
  papers' MS ratios: 0.5, 0.75, 1.0, 1.25, 1.5, 1.75 with flip).

The input is the test pipeline's image (already resized to fit 2048x512 and normalised); the
scales apply to it, as mmseg's ``MultiScaleFlipAug`` applies ``img_ratios`` to the same test
scale (up to rounding of the resized size).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MS_RATIOS", "inference", "predict_batch", "slide_windows"]

#: The papers' multi-scale test ratios (mmseg ``img_ratios`` for ``--aug-test``).
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _pair(v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(v, int):
        return v, v
    h, w = v
    return int(h), int(w)


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    logits = out["out"] if isinstance(out, dict) else out
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def slide_windows(height: int, width: int, crop_size, stride) -> List[Tuple[int, int, int, int]]:
    """mmseg's sliding-window grid over an ``height x width`` image: list of ``(y1, y2, x1, x2)``
    (end exclusive), every window ``min(crop, size)`` pixels, the last row/column shifted to end
    at the border. ``crop_size`` / ``stride`` are ``(h, w)`` or one int."""
    (ch, cw), (sh, sw) = _pair(crop_size), _pair(stride)
    if min(ch, cw, sh, sw) < 1:
        raise ValueError(f"crop_size and stride must be positive, got {crop_size}, {stride}")
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = r * sh, c * sw
            y2, x2 = min(y1 + ch, height), min(x1 + cw, width)
            boxes.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return boxes


def _slide(model: nn.Module, x: torch.Tensor, crop_size, stride) -> torch.Tensor:
    b, _, h, w = x.shape
    preds = None
    count = x.new_zeros((1, 1, h, w))
    for y1, y2, x1, x2 in slide_windows(h, w, crop_size, stride):
        logits = _forward(model, x[:, :, y1:y2, x1:x2])
        if preds is None:
            preds = x.new_zeros((b, logits.shape[1], h, w), dtype=logits.dtype)
        preds[:, :, y1:y2, x1:x2] += logits
        count[:, :, y1:y2, x1:x2] += 1
    return preds / count


@torch.no_grad()
def inference(model: nn.Module, images: torch.Tensor, *, mode: str = "whole", crop_size=(512, 512),
              stride=(341, 341), scales: Sequence[float] = (1.0,), flip: bool = False,
              out_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Segment a batch (see the module doc for the modes).

    Args:
        model: a :class:`~visionattn.segmentation.Segmentor` (or any module mapping ``(B, 3, h, w)``
            to logits or to ``dict(out=logits)``), in eval mode.
        images: ``(B, 3, H, W)`` normalised float images.
        mode: ``'whole'`` or ``'slide'``.
        crop_size, stride: sliding-window size and step, ``(h, w)`` or int (slide mode).
        scales: resize ratios of the input (``MS_RATIOS`` for the papers' MS column).
        flip: also run each scale mirrored horizontally.
        out_size: ``(H_out, W_out)`` of the result (the label's original size); default ``(H, W)``.

    Returns ``(B, K, H_out, W_out)`` float scores whose argmax over ``K`` is the prediction: the
    logits for a single view, the log of the averaged softmax probabilities for several views.

    Raises:
        ValueError: an unknown ``mode``, empty or non-positive ``scales``, or non-4D ``images``.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if images.dim() != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    scales = [float(s) for s in scales]
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive ratios, got {scales}")
    h, w = images.shape[-2:]
    size = tuple(int(s) for s in out_size) if out_size is not None else (h, w)
    views = [(s, f) for s in scales for f in ((False, True) if flip else (False,))]
    total = None
    for s, f in views:
        x = images
        if s != 1.0:
            x = F.interpolate(x, size=(int(h * s + 0.5), int(w * s + 0.5)), mode="bilinear", align_corners=False)
        if f:
            x = x.flip(-1)
        logits = _slide(model, x, crop_size, stride) if mode == "slide" else _forward(model, x)
        if f:
            logits = logits.flip(-1)
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if len(views) == 1:
            return logits
        probs = logits.float().softmax(dim=1)
        total = probs if total is None else total + probs
    return (total / len(views)).log()


@torch.no_grad()
def predict_batch(model: nn.Module, images: torch.Tensor, sizes: torch.Tensor, **kwargs) -> List[torch.Tensor]:
    """Predicted label maps for a batch from :func:`visionattn.segmentation.collate`.

    ``images`` ``(B, 3, H_max, W_max)`` padded; ``sizes`` ``(B, 4)`` = each sample's image
    ``(h, w)`` and label ``(H, W)``. Each sample is segmented on its own unpadded image (batched
    when all images have one size) with :func:`inference` (``kwargs``: mode, crop_size, stride,
    scales, flip) and scored at its label size. Returns a list of ``(H_i, W_i)`` int64 maps.
    """
    sizes = sizes.tolist()
    if all(s == sizes[0] for s in sizes):
        ih, iw, mh, mw = sizes[0]
        scores = inference(model, images[:, :, :ih, :iw], out_size=(mh, mw), **kwargs)
        return list(scores.argmax(1))
    out = []
    for i, (ih, iw, mh, mw) in enumerate(sizes):
        scores = inference(model, images[i:i + 1, :, :ih, :iw], out_size=(mh, mw), **kwargs)
        out.append(scores.argmax(1)[0])
    return out
