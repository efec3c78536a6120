"""CSWin Transformer: cross-shaped window self-attention with LePE.

Paper: Dong, Bao, Chen, Zhang, Yu, Yuan, Chen, Guo. "CSWin Transformer: A General Vision
Transformer Backbone with Cross-Shaped Windows". CVPR 2022. arXiv:2107.00652
Official code and weights: github microsoft/CSWin-Transformer (MIT licence), ``models/cswin.py``
(classification, fixed resolution) and ``segmentation/backbone/cswin_transformer.py`` (any size).

Composition: a 7x7 stride-4 conv stem + LayerNorm (:class:`CSWinStem`), four stages of
:class:`~visionattn.layers.TransformerBlock` around
:class:`~visionattn.layers.cross_shaped.CrossShapedWindowAttention` (stripe widths
``[1, 2, 7, 7]`` at 224 and ``[1, 2, 12, 12]`` at 384; the last stage is one global branch),
3x3 stride-2 conv + LayerNorm merges (:class:`~visionattn.layers.conv.ConvDownsampler` with bias),
final LayerNorm, average pool, linear head, inside
:class:`~visionattn.models._backbone.HierarchicalBackbone`.

Differences from the official classifier: any input size works (the official model fixes
``img_size`` at construction and fails at 256: CSWin#5, #6, #45). Stripes that do not divide the
map are zero-padded symmetrically as in the official segmentation backbone, and the padded
tokens are masked out of attention (``mask_padding=True``; ``False`` reproduces the segmentation
backbone, which lets them into the softmax with logit 0). At the training sizes (224 / 384 and
every size whose stage maps divide by the stripes) nothing is padded and the outputs are the
official ones. Images whose sides are not multiples of 4 are padded bottom/right before the stem
(the official conv would give ``(H - 3) // 4 + 1`` rows, one fewer than ``ceil(H / 4)``).

GMACs are fvcore counts with a handle for ``aten::scaled_dot_product_attention`` (QK^T + AV);
they equal fvcore on the official definitions: T 4.341, S 6.827, B 14.995, B-384 47.081,
L 33.190, L-384 102.058. The README's L figures (31.5 / 96.8) are not reproduced by the official
code either.

Checkpoints: the official ``.pth`` files are timm ``CheckpointSaver`` dicts with ``state_dict``
and ``state_dict_ema``. The official evaluation (``main.py --eval_checkpoint``) calls timm's
``load_checkpoint(model, path, use_ema=args.model_ema)`` with ``--model-ema`` defaulting to True,
and checkpoints were selected on the EMA metric, so the reported accuracies are those of
``state_dict_ema``; loading ``state_dict`` instead is the likely cause of CSWin#24 (80.5 vs 82.8).
:func:`checkpoint_filter_fn` therefore prefers ``state_dict_ema`` (model argument
``prefer_ema=True``; ``False`` selects ``state_dict``) and records the key it used in
``model.pretrained_state_key``.

@inproceedings{dong2022cswin, title={CSWin Transformer: A General Vision Transformer Backbone with
  Cross-Shaped Windows}, author={Dong, Xiaoyi and Bao, Jianmin and Chen, Dongdong and Zhang, Weiming
  and Yu, Nenghai and Yuan, Lu and Chen, Dong and Guo, Baining}, booktitle={CVPR}, year={2022}}
"""
from __future__ import annotations

import argparse
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from timm.models import generate_default_cfgs

from ..layers.block import TransformerBlock
from ..ops._trace import pad_nchw
from ..layers.conv import ConvDownsampler
from ..layers.cross_shaped import CrossShapedWindowAttention
from ._backbone import HierarchicalBackbone, Stage, drop_path_rates, init_weights, square_img_size
from ._manifest import family_cfg, manifest_cfgs
from ._registry import build_model, check_state_dict, register_model, unwrap_state_dict

torch.fx.wrap("pad_nchw")  # a leaf of FX graphs (see ops/_trace.py)

__all__ = ["CSWin", "CSWinStem", "checkpoint_filter_fn", "load_official_checkpoint"]


class CSWinStem(nn.Module):
    """CSWin stem: Conv2d(in_chans, dim, 7, stride 4, padding 2) then LayerNorm, NCHW -> NHWC.

    Official ``stage1_conv_embed`` (``.0`` conv, ``.2`` LayerNorm; the ``Rearrange`` in between is
    a reshape). Images whose sides are not multiples of 4 are first zero-padded bottom/right to
    the next multiple (as timm's patch-embed stems), so the token map is ``ceil(H/4) x ceil(W/4)``
    like every stem of the zoo; multiples of 4 (all official and mmdet/mmseg sizes) are unchanged.
    Shapes: ``(B, in_chans, H, W) -> (B, ceil(H/4), ceil(W/4), dim)``. Keys: ``conv``, ``norm``.
    """

    def __init__(self, in_chans: int = 3, dim: int = 64, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, kernel_size=7, stride=4, padding=2)
        self.norm = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_nchw(x, 4, 4)
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class CSWin(HierarchicalBackbone):
    """CSWin Transformer (hierarchical, four stages, cross-shaped stripe attention).

    Args:
        in_chans: image channels.
        num_classes: classifier outputs (0 for none).
        global_pool: timm pooling type (``'avg'``, ``''``, ...).
        embed_dim: channels of stage 0; stage ``i`` has ``embed_dim * 2**i``.
        depths: blocks per stage.
        num_heads: heads per stage (even in two-branch stages).
        split_size: stripe width per stage (tokens).
        mlp_ratio: MLP expansion.
        qkv_bias: bias in the qkv projections.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after the attention/MLP projections.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        img_size: training resolution. Only used for the official rule that a stage whose
            nominal resolution ``img_size // 2**(i+2)`` equals its stripe width is one global
            branch (this fixes parameter shapes); any input size runs.
        full_attn: per stage, force one global branch (default: the last stage only, as official).
        mask_padding: mask padded stripe tokens out of attention (see module docstring).
        prefer_ema: :func:`checkpoint_filter_fn` loads ``state_dict_ema`` (True, the official
            evaluation's choice) or ``state_dict`` (False) from the official checkpoints.
        mixer_fn: optional factory for other token mixers on this body (Agent-CSwin), called as
            ``mixer_fn(stage=i, block=j, dim=C, num_heads=m, split_size=sw, full=bool,
            resolution=img_size // 2**(i+2))``; returning None keeps the CSWin mixer.

    Shapes: images ``(B, in_chans, H, W)`` with ``H, W >= 32``; ``forward_features`` gives NCHW
    ``(B, 8 * embed_dim, ceil(H / 32), ceil(W / 32))``; stage ``i`` is at stride ``4 * 2**i``.

    Raises:
        ValueError: per-stage arguments of the wrong length, odd heads in a two-branch stage.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 64,
        depths: Sequence[int] = (1, 2, 21, 1),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        split_size: Sequence[int] = (1, 2, 7, 7),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        img_size: int = 224,
        full_attn: Optional[Sequence[bool]] = None,
        mask_padding: bool = True,
        prefer_ema: bool = True,
        mixer_fn: Optional[Callable[..., Optional[nn.Module]]] = None,
    ):
        n = len(depths)
        for name, value in (("num_heads", num_heads), ("split_size", split_size)):
            if len(value) != n:
                raise ValueError(f"{name} must have one entry per stage ({n}); got {value!r}")
        if full_attn is None:
            full_attn = [i == n - 1 for i in range(n)]
        if len(full_attn) != n:
            raise ValueError(f"full_attn must have one entry per stage ({n}); got {full_attn!r}")
        dims = [int(embed_dim * 2**i) for i in range(n)]
        reductions = [4 * 2**i for i in range(n)]
        dpr = drop_path_rates(drop_path_rate, depths)
        stages = []
        for i in range(n):
            resolution = square_img_size(img_size, "CSWin / Agent-CSwin / InLine-CSwin") // reductions[i]
            full = bool(full_attn[i]) or resolution == split_size[i]
            blocks = []
            for j in range(depths[i]):
                attn = None
                if mixer_fn is not None:
                    attn = mixer_fn(
                        stage=i, block=j, dim=dims[i], num_heads=num_heads[i], split_size=split_size[i], full=full, resolution=resolution
                    )
                if attn is None:
                    attn = CrossShapedWindowAttention(
                        dims[i],
                        num_heads[i],
                        split_size[i],
                        full=full,
                        qkv_bias=qkv_bias,
                        attn_drop=attn_drop_rate,
                        proj_drop=proj_drop_rate,
                        mask_padding=mask_padding,
                    )
                blocks.append(TransformerBlock(dims[i], attn, mlp_ratio=mlp_ratio, drop_path=dpr[i][j], mlp_drop=proj_drop_rate))
            down = ConvDownsampler(dims[i - 1], dims[i], bias=True) if i > 0 else None
            stages.append(Stage(blocks, down))
        super().__init__(
            CSWinStem(in_chans, embed_dim),
            stages,
            dims,
            reductions,
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            min_input_size=reductions[-1],
        )
        self.img_size = img_size
        self.prefer_ema = prefer_ema
        self.pretrained_state_key: Optional[str] = None
        self.apply(init_weights)


# ------------------------------------------------------------------------------------------------
# Checkpoint conversion

_SIMPLE_RULES = [
    (re.compile(r"^stage1_conv_embed\.0\.(weight|bias)$"), r"stem.conv.\1"),
    (re.compile(r"^stage1_conv_embed\.2\.(weight|bias)$"), r"stem.norm.\1"),
    (re.compile(r"^norm\.(weight|bias)$"), r"norm.\1"),
    (re.compile(r"^head\.(weight|bias)$"), r"head.fc.\1"),
]
_BLOCK = re.compile(r"^stage(\d)\.(\d+)\.(qkv|proj|norm1|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)$")
_LEPE = re.compile(r"^stage(\d)\.(\d+)\.attns\.(\d+)\.get_v\.(weight|bias)$")
_MERGE = re.compile(r"^merge(\d)\.(conv|norm)\.(weight|bias)$")


def _official_to_ours(sd: Mapping[str, torch.Tensor], model: nn.Module):
    """Official ``models/cswin.py`` keys -> visionattn keys; per-branch ``get_v`` convs are concatenated."""
    out: Dict[str, torch.Tensor] = {}
    unknown: List[str] = []
    lepe: Dict[tuple, Dict[int, torch.Tensor]] = {}
    for k, v in sd.items():
        for pat, rep in _SIMPLE_RULES:
            if pat.match(k):
                out[pat.sub(rep, k)] = v
                break
        else:
            m = _BLOCK.match(k)
            if m:
                s, j, part, kind = m.groups()
                part = {"qkv": "attn.qkv", "proj": "attn.proj"}.get(part, part)
                out[f"stages.{int(s) - 1}.blocks.{j}.{part}.{kind}"] = v
                continue
            m = _MERGE.match(k)
            if m:
                s, part, kind = m.groups()
                out[f"stages.{s}.downsample.{'reduction' if part == 'conv' else 'norm'}.{kind}"] = v
                continue
            m = _LEPE.match(k)
            if m:
                s, j, b, kind = m.groups()
                lepe.setdefault((int(s) - 1, int(j), kind), {})[int(b)] = v
                continue
            unknown.append(k)
    for (i, j, kind), parts in sorted(lepe.items()):
        name = f"stages.{i}.blocks.{j}.attn.lepe.{kind}"
        try:
            attn = model.stages[i].blocks[j].attn
        except (IndexError, AttributeError):
            attn = None
        n_branch = len(attn.branches()) if hasattr(attn, "branches") else None
        if sorted(parts) != list(range(len(parts))) or (n_branch is not None and len(parts) != n_branch):
            unknown.extend(
                f"stage{i + 1}.{j}.attns.{b}.get_v.{kind} (checkpoint block has {len(parts)} branch(es), model block {n_branch})"
                for b in sorted(parts)
            )
            continue
        out[name] = torch.cat([parts[b] for b in range(len(parts))], 0)
    return out, unknown


def load_official_checkpoint(path: str) -> Dict:
    """``torch.load(path, weights_only=True)`` of an official CSWin ``.pth``, on CPU.

    timm's ``CheckpointSaver`` (official ``checkpoint_saver.py``) pickles the training
    ``argparse.Namespace`` under ``'args'``, which ``weights_only`` loading refuses; this allows
    that one class and nothing else. Pass the result to :func:`checkpoint_filter_fn`.

    Raises:
        pickle.UnpicklingError: the file holds other non-tensor objects.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_filter_fn(
    state_dict: Mapping, model: nn.Module, prefer_ema: Optional[bool] = None
) -> Dict[str, torch.Tensor]:
    """Convert an official CSWin checkpoint to this model's keys, strictly.

    Accepts the official ``.pth`` dicts (timm ``CheckpointSaver``: ``state_dict`` and
    ``state_dict_ema``; also ``model`` or a flat state dict, with or without ``module.``) and
    visionattn's own layout. Which weights are taken from a wrapped checkpoint:
    ``state_dict_ema`` when ``prefer_ema`` (default: ``model.prefer_ema``, True) and present, else
    ``state_dict``, else ``model``; the key used is stored in ``model.pretrained_state_key``
    (None for a flat dict, e.g. after timm's file loader has unwrapped ``state_dict_ema`` itself).

    Official -> ours: ``stage1_conv_embed.{0,2}`` -> ``stem.{conv,norm}``;
    ``stage{s}.{j}.{qkv,proj}`` -> ``stages.{s-1}.blocks.{j}.attn.{qkv,proj}``;
    ``stage{s}.{j}.attns.{0,1}.get_v`` -> concatenated (branch 0 first) into ``...attn.lepe``;
    ``norm1/norm2/mlp.fc1/mlp.fc2`` unchanged under ``blocks.{j}``;
    ``merge{s}.{conv,norm}`` -> ``stages.{s}.downsample.{reduction,norm}``; ``head`` -> ``head.fc``.

    Raises:
        CheckpointKeyError: unmappable keys, model keys left uncovered, shape mismatches, or a
            block whose branch count differs from the model's (all listed); classifier keys may
            be absent or of another class count.
        KeyError: ``prefer_ema=False`` but the checkpoint only holds ``state_dict_ema``.
    """
    if prefer_ema is None:
        prefer_ema = getattr(model, "prefer_ema", True)
    key = None
    if isinstance(state_dict.get("state_dict_ema"), Mapping) and prefer_ema:
        key = "state_dict_ema"
    elif isinstance(state_dict.get("state_dict"), Mapping):
        key = "state_dict"
    elif isinstance(state_dict.get("model"), Mapping):
        key = "model"
    elif isinstance(state_dict.get("state_dict_ema"), Mapping):
        raise KeyError("checkpoint holds only 'state_dict_ema' but prefer_ema=False asked for the non-EMA weights")
    sd, key = unwrap_state_dict(state_dict, prefer=key)
    if any(k.startswith("stages.") for k in sd):
        source, unknown = "visionattn checkpoint", []
    else:
        source = f"official CSWin checkpoint ({key or 'flat state dict'})"
        sd, unknown = _official_to_ours(sd, model)
    check_state_dict(sd, model, unknown=unknown, source=source)
    model.pretrained_state_key = key
    return sd


# ------------------------------------------------------------------------------------------------
# Pretrained configs: generated from the manifest (visionattn/models/pretrained.yaml: official
# GitHub release v0.1.0 URLs, Hub ids, per-tag resolution and class counts); ``_cfg`` holds the defaults.

_ORIGIN = "https://github.com/microsoft/CSWin-Transformer"
_EMA_NOTE = (
    "official .pth holds state_dict and state_dict_ema; the reported accuracy is the EMA's "
    "(main.py evaluates with --model-ema, default True); checkpoint_filter_fn loads state_dict_ema "
    "unless the model is built with prefer_ema=False (model.pretrained_state_key records the choice)"
)


_cfg = family_cfg(
    min_input_size=(3, 32, 32),  # smallest image side the model accepts (plain models: 16, per tag)
    crop_pct=0.9,
    first_conv="stem.conv",
    license="mit",
    origin_url=_ORIGIN,
    paper_ids="arXiv:2107.00652",
    paper_name="CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows",
    notes=(_EMA_NOTE,),
)


default_cfgs = generate_default_cfgs(manifest_cfgs("cswin", _cfg))  # per-tag data: visionattn/models/pretrained.yaml


# ------------------------------------------------------------------------------------------------
# Variants (models/cswin.py factories ``CSWin_{dim}_{depths}_{size}_{res}``; drop path from the
# README training / fine-tuning commands; L-384's is not published, L-224's is used)

_TINY = dict(embed_dim=64, depths=(1, 2, 21, 1), num_heads=(2, 4, 8, 16), drop_path_rate=0.2)
_SMALL = dict(embed_dim=64, depths=(2, 4, 32, 2), num_heads=(2, 4, 8, 16), drop_path_rate=0.4)
_BASE = dict(embed_dim=96, depths=(2, 4, 32, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)
_LARGE = dict(embed_dim=144, depths=(2, 4, 32, 2), num_heads=(6, 12, 24, 24), drop_path_rate=0.2)
_AT384 = dict(split_size=(1, 2, 12, 12), img_size=384)


def _cswin(variant: str, pretrained: bool, defaults: Dict, kwargs: Dict) -> CSWin:
    return build_model(CSWin, variant, pretrained, checkpoint_filter_fn, defaults, kwargs)


@register_model
def cswin_tiny(pretrained: bool = False, **kwargs) -> CSWin:
    """CSWin-T 224: 22.3M params (README "23M"), 4.3 GMACs, 82.8 top-1 (ImageNet-1k)."""
    return _cswin("cswin_tiny", pretrained, _TINY, kwargs)


@register_model
def cswin_small(pretrained: bool = False, **kwargs) -> CSWin:
    """CSWin-S 224: 34.6M params, 6.8 GMACs (README 6.9), 83.6 top-1."""
    return _cswin("cswin_small", pretrained, _SMALL, kwargs)


@register_model
def cswin_base(pretrained: bool = False, **kwargs) -> CSWin:
    """CSWin-B 224: 77.4M params, 15.0 GMACs, 84.2 top-1."""
    return _cswin("cswin_base", pretrained, _BASE, kwargs)


@register_model
def cswin_large(pretrained: bool = False, **kwargs) -> CSWin:
    """CSWin-L 224: 173.3M params, 33.2 GMACs (README 31.5), 86.5 top-1 (ImageNet-22k pre-trained)."""
    return _cswin("cswin_large", pretrained, _LARGE, kwargs)


@register_model
def cswin_base_384(pretrained: bool = False, **kwargs) -> CSWin:
    """CSWin-B 384 (stripes 1, 2, 12, 12): 77.4M params, 47.1 GMACs, 85.5 top-1 (fine-tuned from 224)."""
    return _cswin("cswin_base_384", pretrained, dict(_BASE, drop_path_rate=0.7, **_AT384), kwargs)


@register_model
def cswin_large_384(pretrained: bool = False, **kwargs) -> CSWin:
    """CSWin-L 384 (stripes 1, 2, 12, 12): 173.3M params, 102.1 GMACs (README 96.8), 87.5 top-1 (ImageNet-22k pre-trained)."""
    return _cswin("cswin_large_384", pretrained, dict(_LARGE, **_AT384), kwargs)
