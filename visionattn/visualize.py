"""Inspection: what each token mixer attends to, effective receptive fields and class activation maps.

Three tools, each drawn as a PNG grid with matplotlib by :mod:`visionattn.tools.visualize`
(``visionattn-viz attention|erf|cam``):

* **Attention of one query** (:func:`capture_attention`, :func:`attention_maps`): every attention
  mixer of the zoo has a ``forward_attention`` method, its forward through the explicit
  (materialised) softmax returning ``(output, record)``. Inside ``with capture_attention(model)``
  each mixer's ``forward`` is replaced by that method (an instance attribute, removed on exit) and
  the records are collected in call order, so the weights are those of the model's own forward
  pass (with its padding, masks, routing and biases); outside the context nothing changes (the
  class ``forward``, fused kernels, ``torch.compile``/FX/TorchScript/``torch.export`` paths are
  untouched). timm's ``Attention`` (Agent-DeiT's global blocks) is captured by switching it to
  its own unfused path (``fused_attn = False``) and hooking its ``attn_drop``, whose input is the
  softmax. Record layouts (``record.data``, ``kind``):

  - ``neighborhood`` (NA / DiNA): ``attn (B, heads, Hp, Wp, K*K)``, ``keys_r (Hp, K)``,
    ``keys_c (Wp, K)`` absolute key rows / columns (dilation and border shift included);
  - ``routing`` (BiFormer BRA): ``attn (B, heads, R, T, topk*T)``, ``idx (B, R, topk)`` routed
    regions, ``grid`` the region layout;
  - ``windows`` (Swin / MaxViT block and grid / DaViT spatial windows): ``attn (B, nW, heads, N, N)``
    and ``pos (nW, N)``, the token of each window slot (-1: padding);
  - ``stripes`` (CSWin): ``branches``, each a ``windows``-like entry for its heads (vertical
    stripes, then horizontal);
  - ``global`` (MHSA, ViT-rpb, BiFormer's last stage, timm ``Attention``): ``attn (B, heads,
    P+N, P+N)`` with ``P`` prefix tokens;
  - ``linear`` (InLine attention): ``attn (B, heads, P+N, P+N)``, the injective linear weights
    (rows sum to 1, entries may be negative; drawn on a diverging scale);
  - ``agent`` (Agent attention): ``agent_attn (B, m, n, P+N)`` and ``query_attn (B, m, P+N, n)``;
    the query -> key map is their product;
  - ``channel`` (DaViT channel groups): ``attn (B, G, C_g, C_g)``; not spatial, drawn as the
    ``C x C`` block-diagonal matrix.

  :meth:`AttentionRecord.query_weights` turns any spatial record into the ``(heads, H, W)``
  weights of one query token over the key grid.

* **Effective receptive field** (:func:`effective_receptive_field`): Luo et al., "Understanding
  the Effective Receptive Field in Deep Convolutional Neural Networks", NeurIPS 2016, and the
  RepLKNet script (Ding et al., CVPR 2022, github DingXiaoH/RepLKNet-pytorch ``erf/``): the
  gradient of the centre unit of a stage's output (summed over channels) with respect to the
  input pixels, absolute, summed over the colour channels and averaged over images; drawn
  log-scaled (``log10(1 + x)`` then normalised, as RepLKNet).

* **Class activation maps** (:func:`grad_cam`): Grad-CAM (Selvaraju et al., ICCV 2017) through the
  ``grad-cam`` library (``pytorch_grad_cam``), with the target layer and ``reshape_transform``
  of each layout (:func:`cam_target`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AttentionRecord",
    "capture_attention",
    "attention_maps",
    "query_token",
    "channel_matrix",
    "default_erf_taps",
    "effective_receptive_field",
    "cam_target",
    "grad_cam",
    "plot_attention",
    "plot_erf",
    "plot_cam",
]


@dataclass
class AttentionRecord:
    """What one mixer computed in one forward call.

    Attributes:
        name: the mixer's module name in the model (``stages.0.blocks.1.attn``).
        module: the mixer's class name.
        data: the record its ``forward_attention`` returned (layouts: module docstring).
    """

    name: str
    module: str
    data: Dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``neighborhood``, ``routing``, ``windows``, ``stripes``, ``global``, ``linear``, ``agent`` or ``channel``."""
        return self.data["kind"]

    @property
    def spatial(self) -> bool:
        """True for records with a key map (all but DaViT's channel attention)."""
        return self.kind != "channel"

    @property
    def size(self) -> Tuple[int, int]:
        """The token grid ``(H, W)`` of the mixer's input.

        Raises:
            ValueError: a channel record (no grid) or a global record whose grid is unknown.
        """
        size = self.data.get("size")
        if size is None:
            raise ValueError(f"{self.name}: a {self.kind} record has no token grid")
        return int(size[0]), int(size[1])

    def query_weights(self, y: int, x: int, batch: int = 0) -> torch.Tensor:
        """Attention weights of the query token ``(y, x)`` over the ``H x W`` key grid.

        Args:
            y, x: query token (row, column) in this mixer's grid, ``0 <= y < H``, ``0 <= x < W``.
            batch: image index.

        Returns:
            float ``(heads, H, W)``: weight of each key token for each head; zero outside the
            window / routed regions / stripe. Each head sums to 1 except where keys were zero
            padding beyond the map that the mixer lets in (DaViT's unmasked windows, BiFormer's
            ``pad_mode='zero'``), whose weight is dropped, and for prefix keys (class token)
            of plain models, left out of the grid.

        Raises:
            ValueError: a channel record, or ``(y, x)`` outside the grid.
        """
        if not self.spatial:
            raise ValueError(f"{self.name}: channel attention has no spatial query map; use channel_matrix()")
        H, W = self.size
        if not (0 <= y < H and 0 <= x < W):
            raise ValueError(f"{self.name}: query token ({y}, {x}) is outside the {H}x{W} token grid")
        d, kind = self.data, self.kind
        if kind == "neighborhood":
            attn = d["attn"][batch, :, y, x].detach().float()  # (heads, K*K)
            kr, kc = d["keys_r"][y], d["keys_c"][x]
            heads, Hp, Wp = attn.shape[0], d["attn"].shape[2], d["attn"].shape[3]
            out = attn.new_zeros(heads, Hp, Wp)
            out[:, kr[:, None], kc[None, :]] = attn.view(heads, kr.numel(), kc.numel())
            return out[:, :H, :W]
        if kind == "routing":
            g, attn, idx = d["grid"], d["attn"][batch].detach().float(), d["idx"][batch]
            r = (y // g.rh) * g.nw + x // g.rw
            t = (y % g.rh) * g.rw + x % g.rw
            a = attn[:, r, t].view(attn.shape[0], idx.shape[-1], g.rh, g.rw)
            out = attn.new_zeros(attn.shape[0], g.Hp, g.Wp)
            for i, j in enumerate(idx[r].tolist()):
                jr, jc = divmod(j, g.nw)
                out[:, jr * g.rh : (jr + 1) * g.rh, jc * g.rw : (jc + 1) * g.rw] = a[:, i]
            return out[:, :H, :W]
        if kind == "windows":
            return _window_query(d["attn"][batch], d["pos"], y * W + x, H, W)
        if kind == "stripes":
            return torch.cat([_window_query(b["attn"][batch], b["pos"], y * W + x, H, W) for b in d["branches"]])
        P = int(d.get("prefix", 0))
        if kind in ("global", "linear"):
            row = d["attn"][batch, :, P + y * W + x].detach().float()
        elif kind == "agent":
            qa = d["query_attn"][batch, :, P + y * W + x].detach().float()  # (m, n)
            row = (qa[:, None, :] @ d["agent_attn"][batch].detach().float()).squeeze(1)  # (m, P + N)
        else:
            raise ValueError(f"{self.name}: unknown record kind {kind!r}")
        return row[:, P:].reshape(-1, H, W)


def _window_query(attn: torch.Tensor, pos: torch.Tensor, p: int, H: int, W: int) -> torch.Tensor:
    """Weights of the token ``p`` (row-major) over the map, from ``attn (nW, heads, N, N)`` and ``pos (nW, N)``."""
    w, s = (pos == p).nonzero()[0].tolist()
    weights = attn[w, :, s].detach().float()  # (heads, N)
    keys = pos[w]
    valid = keys >= 0
    out = weights.new_zeros(weights.shape[0], H * W)
    out[:, keys[valid]] = weights[:, valid]
    return out.view(-1, H, W)


def _is_timm_attention(m: nn.Module) -> bool:
    from timm.layers import Attention

    return isinstance(m, Attention) and hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[List[AttentionRecord]]:
    """Record the attention every mixer of ``model`` computes while the context is open.

    Yields a list that fills with one :class:`AttentionRecord` per mixer call, in call order
    (a mixer called twice, e.g. for two batches, records twice). Mixers are the modules with a
    ``forward_attention`` method (all attention mixers of :mod:`visionattn.layers`) and timm's
    ``Attention``. Use it in eval mode: the explicit paths apply no attention dropout.

    On exit every module is restored (its class ``forward``, timm's ``fused_attn`` setting,
    hooks removed), also when the body raises.

    Raises:
        ValueError: the model has no attention mixer (e.g. a pool / conv MixerNet).
    """
    records: List[AttentionRecord] = []
    patched: List[nn.Module] = []
    fused: List[Tuple[nn.Module, Any]] = []
    handles = []
    num_prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)

    def wrap(name: str, module: nn.Module):
        def forward(*args, **kwargs):
            out, data = module.forward_attention(*args, **kwargs)
            records.append(AttentionRecord(name, type(module).__name__, data))
            return out

        return forward

    def timm_hook(name: str, owner: nn.Module):
        def hook(_mod, _inp, out):
            records.append(AttentionRecord(name, type(owner).__name__, {"kind": "global", "attn": out.detach(), "size": None,
                                                                      "prefix": num_prefix}))

        return hook

    try:
        for name, m in model.named_modules():
            if callable(getattr(type(m), "forward_attention", None)):
                m.forward = wrap(name, m)
                patched.append(m)
            elif _is_timm_attention(m):
                fused.append((m, m.fused_attn))
                m.fused_attn = False
                handles.append(m.attn_drop.register_forward_hook(timm_hook(name, m)))
        if not patched and not fused:
            raise ValueError(f"{type(model).__name__} has no attention mixer to capture (pooling, convolution and "
                             "identity mixers have no attention weights)")
        yield records
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
        for m, value in fused:
            m.fused_attn = value
        for h in handles:
            h.remove()


def query_token(query: Tuple[float, float], image_size: Tuple[int, int], grid: Tuple[int, int]) -> Tuple[int, int]:
    """The token of an ``H x W`` grid that holds image pixel ``query = (y, x)`` of an image of ``image_size``.

    Token ``(floor(y * H / img_H), floor(x * W / img_W))``, clamped to the grid (a stride-``s`` grid
    of ``ceil(img / s)`` tokens maps pixel ``y`` to ``y // s``).

    Raises:
        ValueError: a query outside the image.
    """
    (y, x), (ih, iw), (H, W) = query, image_size, grid
    if not (0 <= y < ih and 0 <= x < iw):
        raise ValueError(f"query pixel (y={y}, x={x}) is outside the {ih}x{iw} image (0 <= y < {ih}, 0 <= x < {iw})")
    return min(int(y * H / ih), H - 1), min(int(x * W / iw), W - 1)


def _plain_grid(model: nn.Module, image_size: Tuple[int, int]) -> Tuple[int, int]:
    """Patch grid of a plain (ViT-like) model: ``ceil(size / reduction)``."""
    r = int(model.feature_info[-1]["reduction"])
    return -(-image_size[0] // r), -(-image_size[1] // r)


@torch.no_grad()
def attention_maps(
    model: nn.Module, image: torch.Tensor, query: Tuple[float, float]
) -> Tuple[List[Dict[str, Any]], torch.Tensor]:
    """Run ``model`` on one image and return each mixer's attention for the query pixel.

    Args:
        model: a zoo model (eval mode).
        image: ``(1, 3, H, W)`` or ``(3, H, W)`` normalised input.
        query: ``(y, x)`` pixel of ``image``.

    Returns:
        ``(maps, logits)``: ``maps`` one dict per mixer call in order, ``{"record", "token": (ty, tx),
        "weights": (heads, h, w)}`` (``weights`` None and ``token`` None for channel records);
        ``logits`` the model output.

    Raises:
        ValueError: a query outside the image; a model without attention mixers.
    """
    if image.dim() == 3:
        image = image[None]
    size = (image.shape[-2], image.shape[-1])
    query_token(query, size, (1, 1))  # checks the query before the forward pass
    with capture_attention(model) as records:
        logits = model(image)
    maps = []
    for rec in records:
        if rec.kind == "global" and rec.data.get("size") is None:  # timm Attention: grid from the image
            rec.data["size"] = _plain_grid(model, size)
        if not rec.spatial:
            maps.append({"record": rec, "token": None, "weights": None})
            continue
        token = query_token(query, size, rec.size)
        maps.append({"record": rec, "token": token, "weights": rec.query_weights(*token)})
    return maps, logits


def channel_matrix(record: AttentionRecord, batch: int = 0) -> torch.Tensor:
    """DaViT channel attention as one ``(C, C)`` block-diagonal matrix (row: output channel, column:
    value channel; group ``g`` fills block ``g``; rows sum to 1)."""
    attn = record.data["attn"][batch].detach().float()  # (G, Cg, Cg)
    return torch.block_diag(*attn.unbind(0))


# ------------------------------------------------------------------------------------------------
# Effective receptive field


def default_erf_taps(model: nn.Module) -> List[int]:
    """Feature taps :func:`effective_receptive_field` draws by default: all of a model with at most
    six (hierarchical stages), else four evenly spaced ones (the blocks of a plain model)."""
    n = len(model.feature_info)
    return list(range(n)) if n <= 6 else sorted({round(i * (n - 1) / 3) for i in range(4)})


def effective_receptive_field(
    model: nn.Module, images: torch.Tensor, indices: Optional[Sequence[int]] = None
) -> List[torch.Tensor]:
    """Effective receptive field of the centre unit of each selected stage (Luo et al. 2016).

    For tap ``i`` of ``model.forward_intermediates`` (NCHW ``(B, C, h, w)``), the centre unit is
    ``out[:, :, h // 2, w // 2]`` summed over channels; its gradient with respect to the input
    pixels, absolute and summed over the colour channels, is averaged over the images (each
    image's gradient is its own: the model runs in eval mode, nothing mixes the batch).

    Args:
        model: a model with timm's ``forward_intermediates`` (every zoo model).
        images: ``(B, 3, H, W)`` normalised inputs.
        indices: feature taps (``feature_info`` order); default all of a hierarchical model's,
            four evenly spaced blocks of a plain one.

    Returns:
        one float ``(H, W)`` map per tap (raw gradient magnitudes, not normalised).
    """
    n = len(model.feature_info)
    if indices is None:
        indices = default_erf_taps(model)
    bad = [i for i in indices if not -n <= i < n]
    if bad:
        raise ValueError(f"stage index {bad} out of range: the model has {n} feature taps (0..{n - 1})")
    maps = []
    for i in indices:
        x = images.detach().clone().requires_grad_(True)
        feat = model.forward_intermediates(x, indices=[i], intermediates_only=True, stop_early=True)[0]
        h, w = feat.shape[-2], feat.shape[-1]
        centre = feat[:, :, h // 2, w // 2].sum()
        (grad,) = torch.autograd.grad(centre, x)
        maps.append(grad.abs().sum(1).mean(0).detach())
    return maps


# ------------------------------------------------------------------------------------------------
# Grad-CAM


def cam_target(model: nn.Module, image_size: Tuple[int, int], stage: int = -1):
    """Grad-CAM target layer and ``reshape_transform`` for a zoo model.

    * hierarchical models (NHWC tokens inside stages): the last block of stage ``stage`` (default
      the last; an earlier one gives a finer map on small inputs), whose output ``(B, h, w, C)``
      is permuted to ``(B, C, h, w)``;
    * plain models (``num_prefix_tokens`` attribute, ViT-like): the first norm of the last
      block (as for timm's ViT: the class-token head leaves the last block's patch outputs
      without gradient), whose ``(B, P + h*w, C)`` tokens lose the prefix and are reshaped to the
      patch grid (isotropic NAT keeps NHWC tokens: permuted).

    Returns:
        ``(target_layer, reshape_transform)``.

    Raises:
        ValueError: a model without ``stages[stage].blocks`` (not a zoo backbone) or a stage
            index out of range.
    """
    plain = hasattr(model, "num_prefix_tokens")
    stages = getattr(model, "stages", None)
    if stages is None or not hasattr(stages[-1], "blocks"):
        raise ValueError(f"{type(model).__name__}: Grad-CAM targets need a zoo backbone (model.stages[i].blocks)")
    if not -len(stages) <= stage < len(stages):
        raise ValueError(f"stage {stage} is out of range: the model has {len(stages)} stages")
    block = stages[stage].blocks[-1]
    grid = _plain_grid(model, image_size) if plain else None
    P = int(getattr(model, "num_prefix_tokens", 0) or 0)
    layer = getattr(block, "norm1", None) if plain else None
    layer = layer if layer is not None else block

    def reshape(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 4:  # NHWC tokens
            return t.permute(0, 3, 1, 2)
        return t[:, P:].reshape(t.shape[0], grid[0], grid[1], t.shape[-1]).permute(0, 3, 1, 2)

    return layer, reshape


def grad_cam(model: nn.Module, image: torch.Tensor, target_class: Optional[int] = None, stage: int = -1) -> Tuple[np.ndarray, int]:
    """Grad-CAM of one image through ``pytorch_grad_cam.GradCAM`` with :func:`cam_target`.

    Args:
        model: a zoo classifier (eval mode).
        image: ``(1, 3, H, W)`` normalised input.
        target_class: class to explain (default: the predicted one).
        stage: the stage whose last block is the target (see :func:`cam_target`).

    Returns:
        ``(cam, class)``: float32 ``(H, W)`` map in ``[0, 1]`` and the class it explains.

    Raises:
        ValueError: a target class outside the classifier's range; see :func:`cam_target`.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if image.dim() == 3:
        image = image[None]
    if target_class is None:
        with torch.no_grad():
            target_class = int(model(image).argmax(-1)[0])
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if num_classes and not 0 <= target_class < num_classes:
        raise ValueError(f"target class {target_class} is outside the classifier's 0..{num_classes - 1}")
    layer, reshape = cam_target(model, (image.shape[-2], image.shape[-1]), stage)
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        out = cam(input_tensor=image, targets=[ClassifierOutputTarget(target_class)])
    return out[0].astype(np.float32), target_class


# ------------------------------------------------------------------------------------------------
# Drawing


def _figure(n: int, cols: int, size: float = 2.4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, (size + 0.45) * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, list(axes.flat), plt


def _save(fig, plt, path, title: str) -> None:
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97 if title else 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _overlay(weights: torch.Tensor, image_size: Tuple[int, int]) -> np.ndarray:
    """``(h, w)`` token weights -> ``(H, W)`` per pixel (nearest: each token covers its pixels)."""
    up = F.interpolate(weights[None, None].float(), size=image_size, mode="nearest")[0, 0]
    return up.numpy()


def plot_attention(rgb: np.ndarray, maps: List[Dict[str, Any]], query: Tuple[float, float], path, title: str = "",
                   cols: int = 6) -> None:
    """One panel per mixer call: the head-averaged weights of the query over the image.

    Args:
        rgb: ``(H, W, 3)`` image in ``[0, 1]`` (the model input, de-normalised).
        maps: :func:`attention_maps` output. Channel records become a ``C x C`` matrix panel.
        query: the query pixel ``(y, x)``, drawn as a cross.
        path: PNG file to write.
        title: figure title.
    """
    fig, axes, plt = _figure(len(maps), cols)
    size = rgb.shape[:2]
    for ax, m in zip(axes, maps):
        rec = m["record"]
        label = f"{rec.name.replace('stages.', 's').replace('blocks.', 'b').replace('.attn', '')}\n{rec.kind}"
        if m["weights"] is None:
            ax.imshow(channel_matrix(rec).numpy(), cmap="viridis")
            ax.set_title(label + " (C x C)", fontsize=7)
            continue
        w = m["weights"].mean(0)  # heads averaged: still a distribution over keys
        ax.imshow(rgb.mean(-1), cmap="gray", vmin=0, vmax=1)
        if rec.kind == "linear":  # signed weights (InLine): blue below zero, red above
            heat = _overlay(w / w.abs().max().clamp(min=1e-12), size)
            ax.imshow(heat, cmap="coolwarm", alpha=0.6, vmin=-1, vmax=1)
        else:
            heat = _overlay(w / w.max().clamp(min=1e-12), size)
            ax.imshow(np.ma.masked_where(heat <= 0, heat), cmap="turbo", alpha=0.6, vmin=0, vmax=1)
        ax.plot([query[1]], [query[0]], marker="+", color="white", markersize=9, mew=2)
        ax.set_title(f"{label} {rec.size[0]}x{rec.size[1]}", fontsize=7)
    _save(fig, plt, path, title)


def plot_erf(maps: List[torch.Tensor], labels: Sequence[str], path, title: str = "") -> None:
    """One panel per stage: ``log10(1 + erf)`` normalised to ``[0, 1]`` (RepLKNet's display)."""
    fig, axes, plt = _figure(len(maps), len(maps), size=2.6)
    for ax, m, label in zip(axes, maps, labels):
        data = np.log10(1.0 + m.numpy().astype(np.float64))
        data = data / max(data.max(), 1e-12)
        ax.imshow(data, cmap="RdYlGn", vmin=0, vmax=1)
        ax.set_title(label, fontsize=8)
    _save(fig, plt, path, title)


def plot_cam(rgb: np.ndarray, cam: np.ndarray, path, title: str = "") -> None:
    """The image and its Grad-CAM overlay (``pytorch_grad_cam.utils.image.show_cam_on_image``)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    fig, axes, plt = _figure(2, 2, size=3.0)
    axes[0].imshow(rgb)
    axes[0].set_title("input", fontsize=8)
    axes[1].imshow(show_cam_on_image(rgb.astype(np.float32), cam, use_rgb=True))
    axes[1].set_title("Grad-CAM", fontsize=8)
    _save(fig, plt, path, title)
