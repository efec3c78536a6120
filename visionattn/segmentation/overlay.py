"""Colour-palette renderings of label maps for a visual check (``--save-predictions``):
:func:`colorize` and :func:`overlay_triptych` (image | ground truth | prediction)."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image as PILImage
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ["colorize", "overlay_triptych", "to_uint8_image"]

ArrayLike = Union[torch.Tensor, np.ndarray]


def _label_array(mask: ArrayLike) -> np.ndarray:
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"a label map must be (H, W), got shape {arr.shape}")
    return arr.astype(np.int64)


def colorize(mask: ArrayLike, palette: Sequence[Sequence[int]], ignore_index: int = 255,
             ignore_color: Tuple[int, int, int] = (0, 0, 0)) -> PILImage.Image:
    """An ``(H, W)`` map of class indices as an RGB PIL image: class ``c`` in ``palette[c]``,
    ``ignore_index`` in ``ignore_color``. Raises ``ValueError`` for a value that is neither a
    palette index nor ``ignore_index``."""
    arr = _label_array(mask)
    lut = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    bad = (arr != ignore_index) & ((arr < 0) | (arr >= len(lut)))
    if bad.any():
        raise ValueError(f"label values {np.unique(arr[bad])[:10].tolist()} have no palette colour "
                         f"({len(lut)} colours; ignore_index={ignore_index})")
    rgb = np.empty((*arr.shape, 3), dtype=np.uint8)
    keep = arr != ignore_index
    rgb[keep] = lut[arr[keep]]
    rgb[~keep] = ignore_color
    return PILImage.fromarray(rgb)


def to_uint8_image(image, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> np.ndarray:
    """An image as an ``(H, W, 3)`` uint8 array: a PIL image, a uint8 ``(3, H, W)`` tensor or
    ``(H, W, 3)`` array, or a float ``(3, H, W)`` tensor normalised with ``mean``/``std`` on the
    0..1 scale (the test pipeline's output; un-normalised here)."""
    if isinstance(image, PILImage.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] != 3:
            raise ValueError(f"image tensor must be (3, H, W), got {tuple(t.shape)}")
        if t.is_floating_point():
            t = t * torch.tensor(std).view(3, 1, 1) * 255.0 + torch.tensor(mean).view(3, 1, 1) * 255.0
            t = t.round().clamp(0, 255)
        return t.to(torch.uint8).permute(1, 2, 0).numpy()
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"image array must be (H, W, 3), got {arr.shape}")
    return arr.astype(np.uint8)


def overlay_triptych(image, gt: ArrayLike, pred: ArrayLike, palette: Sequence[Sequence[int]],
                     opacity: float = 0.5, ignore_index: int = 255, gap: int = 4) -> PILImage.Image:
    """Image | ground truth | prediction side by side, the label maps blended over the image with
    ``opacity`` (mmseg's ``show_result`` default 0.5); ignored pixels show the bare image.

    ``image``: see :func:`to_uint8_image`; it is resized (bilinear) to the label size when they
    differ (the test pipeline resizes the image but scores at the label's size). ``gt``, ``pred``:
    ``(H, W)`` class maps of one size. Panels are separated by ``gap`` white pixels.
    Returns an RGB PIL image ``(3 W + 2 gap) x H``.
    """
    gt_arr, pred_arr = _label_array(gt), _label_array(pred)
    if gt_arr.shape != pred_arr.shape:
        raise ValueError(f"gt {gt_arr.shape} and pred {pred_arr.shape} must have the same size")
    h, w = gt_arr.shape
    img = PILImage.fromarray(to_uint8_image(image))
    if img.size != (w, h):
        img = img.resize((w, h), PILImage.BILINEAR)
    base = np.asarray(img, dtype=np.float32)
    panels = [np.asarray(img)]
    for arr in (gt_arr, pred_arr):
        col = np.asarray(colorize(arr, palette, ignore_index), dtype=np.float32)
        blend = base * (1 - opacity) + col * opacity
        keep = (arr != ignore_index)[..., None]
        panels.append(np.where(keep, blend, base).round().astype(np.uint8))
    out = np.full((h, 3 * w + 2 * gap, 3), 255, dtype=np.uint8)
    for k, p in enumerate(panels):
        out[:, k * (w + gap):k * (w + gap) + w] = p
    return PILImage.fromarray(out)
