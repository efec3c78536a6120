"""BiFormer: vision transformer with bi-level routing attention (T / S / B and the Swin-layout STL).

Paper: Zhu, Wang, Ke, Li, Lau. "BiFormer: Vision Transformer with Bi-Level Routing Attention".
CVPR 2023. arXiv:2303.08810
Official code and weights: github rayleizhu/BiFormer (MIT licence) at 1697bbb,
``models/biformer.py`` (T/S/B, factories at lines 307-402), ``models/biformer_stl.py`` (STL),
``ops/bra_legacy.py``, ``models/_common.py``.

Every variant is a composition of the shared parts: :class:`~visionattn.layers.TransformerBlock`
(LayerNorm eps 1e-6, MLP ratio 3, the 3x3 depthwise positional conv as its ``pos`` module,
:class:`~visionattn.layers.conv.ConvPosEnc`) around
:class:`~visionattn.layers.routing.BiLevelRoutingAttention` in stages 1-3 (``n_win`` 7, top-k
1/4/16, ``C/32`` heads, scale ``C**-0.5``, 5x5 LePE on V) and
:class:`~visionattn.layers.routing.AttentionLePE` in stage 4 (global, 8 heads, no qkv bias,
LePE on the block input), inside :class:`~visionattn.models._backbone.HierarchicalBackbone` with
BiFormer's conv-BN stem / downsamplers and a BatchNorm before the average-pool head.

Any input size: the official classifiers assert ``H, W`` divisible by 7 at stages 1-3 (inputs
multiples of 112); here maps are padded inside the mixer (see
:mod:`visionattn.ops.routing`), so e.g. 256x256 or 200x264 work; at 224 (and every multiple of
112) the numbers are those of the official model.

Module keys differ from the official ones (``stem``/``stages.i.blocks.j``, timm's ``Mlp`` and
``ClassifierHead``); :func:`checkpoint_filter_fn` converts the official ``.pth`` files strictly.

@inproceedings{zhu2023biformer, title={BiFormer: Vision Transformer with Bi-Level Routing Attention},
  author={Zhu, Lei and Wang, Xinjiang and Ke, Zhanghan and Zhang, Wayne and Lau, Rynson},
  booktitle={CVPR}, year={2023}}
"""
from __future__ import annotations

import re
from functools import partial
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.models import generate_default_cfgs

from ..layers.block import TransformerBlock
from ..ops._trace import pad_nchw
from ..layers.conv import ConvPosEnc
from ..layers.routing import AttentionLePE, BiLevelRoutingAttention
from ._backbone import HierarchicalBackbone, Stage, drop_path_rates, init_weights, per_stage
from ._manifest import family_cfg, manifest_cfgs
from ._registry import build_model, check_state_dict, register_model, unwrap_state_dict

torch.fx.wrap("pad_nchw")  # a leaf of FX graphs (see ops/_trace.py)

__all__ = ["BiFormer", "checkpoint_filter_fn"]


class BatchNormNHWC(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` on NHWC tokens ``(B, H, W, C) -> (B, H, W, C)`` (BiFormer's pre-head norm).

    ``forward`` is ``nn.BatchNorm2d.forward`` written out on ``F.batch_norm`` (as timm's
    ``BatchNormAct2d``): TorchScript has no ``super()`` and FX cannot trace its input-rank check.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        x = F.batch_norm(
            x.permute(0, 3, 1, 2),
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )
        return x.permute(0, 2, 3, 1)


class ConvNormSeq(nn.Sequential):
    """NCHW conv/BN layers run on NHWC tokens (or on NCHW images with ``image_in=True``); NHWC out.

    Unpadded strided convs (STL's 4x4/s4 and 2x2/s2) get their input zero-padded bottom/right to
    a multiple of the stride first (the official code floors), so every input size keeps all pixels.
    Keys are the ``nn.Sequential`` indices, as in the official ``downsample_layers``.
    """

    def __init__(self, *layers: nn.Module, image_in: bool = False):
        super().__init__(*layers)
        self.image_in = image_in
        # per layer: the multiple its input is padded to (the stride of unpadded strided convs, else 1)
        self.pad_to = [
            (int(m.stride[0]), int(m.stride[1]))
            if isinstance(m, nn.Conv2d) and m.padding == (0, 0) and max(m.stride) > 1
            else (1, 1)
            for m in layers
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.image_in:
            x = x.permute(0, 3, 1, 2)
        for i, layer in enumerate(self):
            x = layer(pad_nchw(x, self.pad_to[i][0], self.pad_to[i][1]))
        return x.permute(0, 2, 3, 1)


class BiFormer(HierarchicalBackbone):
    """BiFormer (T/S/B: ``layout='conv'``; STL: ``layout='stl'``).

    Args:
        in_chans: image channels.
        num_classes: classifier outputs (0 for none).
        global_pool: timm pooling type (``'avg'`` as the official ``mean``).
        embed_dims: channels per stage.
        depths: blocks per stage.
        head_dim: channels per head in BRA stages (heads = ``qk_dim // head_dim``).
        mlp_ratio: MLP expansion, int/float or one per stage.
        num_regions: regions per side ``n_win`` (int or one per stage).
        topks: per stage, ``> 0``: BRA with that top-k; ``-2``: global :class:`AttentionLePE`.
        qk_dims: query/key channels per stage (None: = ``embed_dims``).
        last_num_heads: heads of the global-attention stages (8 in every released model).
        lepe_kernel: LePE depthwise kernel (5).
        pos_kernel: the residual depthwise conv before attention (3; 0 for none, as STL).
        layout: ``'conv'`` (3x3/s2 conv-BN-GELU-conv-BN stem, 3x3/s2 conv-BN downsamplers) or
            ``'stl'`` (4x4/s4 conv-BN stem, BN-2x2/s2 conv downsamplers: the Swin-T layout).
        pad_mode: :class:`BiLevelRoutingAttention` padding for maps not divisible by ``n_win``
            (``'mask'``: padded tokens excluded; ``'zero'``: official ``auto_pad``).
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after the attention and MLP projections.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        layer_scale: layer-scale init (the official ``layer_scale_init_value``; off in every
            released model) or None.

    Shapes: images ``(B, in_chans, H, W)``, ``H, W >= 32``; ``forward_features`` gives
    ``(B, embed_dims[-1], ceil(H/32), ceil(W/32))``.

    Raises:
        ValueError: inconsistent per-stage arguments, unknown ``layout``, a ``topk`` that is
            neither positive nor -2.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 8, 2),
        head_dim: int = 32,
        mlp_ratio: Union[float, Sequence[float]] = 3.0,
        num_regions: Union[int, Sequence[int]] = 7,
        topks: Sequence[int] = (1, 4, 16, -2),
        qk_dims: Optional[Sequence[int]] = None,
        last_num_heads: int = 8,
        lepe_kernel: int = 5,
        pos_kernel: int = 3,
        layout: str = "conv",
        pad_mode: str = "mask",
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale: Optional[float] = None,
    ):
        n = len(depths)
        dims = [int(d) for d in per_stage(list(embed_dims), n, "embed_dims")]
        mlp_ratios = per_stage(mlp_ratio, n, "mlp_ratio")
        regions = per_stage(num_regions, n, "num_regions")
        topks = per_stage(list(topks), n, "topks")
        qk_dims = dims if qk_dims is None else per_stage(list(qk_dims), n, "qk_dims")
        for t in topks:
            if not (t > 0 or t == -2):
                raise ValueError(f"topks entries must be > 0 (routing attention) or -2 (global attention with LePE); got {topks}")
        if layout == "conv":
            stem = ConvNormSeq(
                nn.Conv2d(in_chans, dims[0] // 2, 3, stride=2, padding=1),
                nn.BatchNorm2d(dims[0] // 2),
                nn.GELU(),
                nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1),
                nn.BatchNorm2d(dims[0]),
                image_in=True,
            )
            down = lambda i: ConvNormSeq(nn.Conv2d(dims[i - 1], dims[i], 3, stride=2, padding=1), nn.BatchNorm2d(dims[i]))
        elif layout == "stl":
            stem = ConvNormSeq(nn.Conv2d(in_chans, dims[0], 4, stride=4), nn.BatchNorm2d(dims[0]), image_in=True)
            down = lambda i: ConvNormSeq(nn.BatchNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2))
        else:
            raise ValueError(f"layout must be 'conv' (BiFormer-T/S/B) or 'stl' (BiFormer-STL); got {layout!r}")
        dpr = drop_path_rates(drop_path_rate, depths)
        norm = partial(nn.LayerNorm, eps=1e-6)

        def mixer(i: int) -> nn.Module:
            if topks[i] > 0:
                return BiLevelRoutingAttention(
                    dims[i], qk_dims[i] // head_dim, regions[i], topks[i], qk_dims[i],
                    lepe_kernel=lepe_kernel, pad_mode=pad_mode, proj_drop=proj_drop_rate,
                )
            return AttentionLePE(dims[i], last_num_heads, qkv_bias=False, lepe_kernel=lepe_kernel, proj_drop=proj_drop_rate)

        stages = []
        for i in range(n):
            blocks = [
                TransformerBlock(
                    dims[i],
                    mixer(i),
                    mlp_ratio=mlp_ratios[i],
                    drop_path=dpr[i][j],
                    layer_scale=layer_scale,
                    norm_layer=norm,
                    mlp_drop=proj_drop_rate,
                    pos=ConvPosEnc(dims[i], pos_kernel) if pos_kernel > 0 else None,
                )
                for j in range(depths[i])
            ]
            stages.append(Stage(blocks, down(i) if i > 0 else None))
        super().__init__(
            stem,
            stages,
            dims,
            [4 * 2**i for i in range(n)],
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            norm_layer=BatchNormNHWC,
            min_input_size=4 * 2 ** (n - 1),
            no_weight_decay_keywords=(),
        )
        self.layout = layout
        self.apply(init_weights)


# ------------------------------------------------------------------------------------------------
# Checkpoint conversion

_BLOCK_RULES = [
    (r"^pos_embed\.", "pos.proj."),  # T/S/B: residual 3x3 depthwise conv before attention
    (r"^attn\.qkv\.qkv\.", "attn.qkv."),  # BRA's QKVLinear wrapper
    (r"^attn\.wo\.", "attn.proj."),
    (r"^mlp\.0\.", "mlp.fc1."),
    (r"^mlp\.[23]\.", "mlp.fc2."),  # T/S/B: Linear, Identity, GELU, Linear; STL: Linear, GELU, Linear
    (r"^gamma1$", "ls1.gamma"),
    (r"^gamma2$", "ls2.gamma"),
    (r"^(norm[12]|attn\.(qkv|proj|lepe))\.(weight|bias|running_mean|running_var|num_batches_tracked)$", None),
]


def _official_to_ours(sd: Dict[str, torch.Tensor]):
    """Official BiFormer / BiFormer-STL keys -> visionattn keys (``(out, unknown)``)."""
    out, unknown = {}, []
    for k, v in sd.items():
        m = re.match(r"^downsample_layers\.(\d+)\.(\d+\..*)$", k)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            out[("stem." if i == 0 else f"stages.{i}.downsample.") + rest] = v
            continue
        m = re.match(r"^stages\.(\d+)\.(?:blocks\.)?(\d+)\.(.*)$", k)  # T/S/B: stages.i.j; STL: stages.i.blocks.j
        if m:
            i, j, rest = m.groups()
            for pat, rep in _BLOCK_RULES:
                if re.match(pat, rest):
                    out[f"stages.{i}.blocks.{j}." + (rest if rep is None else re.sub(pat, rep, rest))] = v
                    break
            else:
                unknown.append(k)
            continue
        if k.startswith("norm."):
            out[k] = v
        elif k.startswith("head."):
            out["head.fc." + k[len("head."):]] = v
        else:
            unknown.append(k)
    return out, unknown


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert an official BiFormer checkpoint to this model's keys, strictly.

    Accepts the official ``.pth`` files of ``models/biformer.py`` (T/S/B) and
    ``models/biformer_stl.py`` (STL), whose weights are wrapped under ``"model"`` (flat dicts,
    ``state_dict`` wrappers and a ``module.`` prefix are accepted too), and visionattn's own layout.
    Key map: ``downsample_layers.0.*`` -> ``stem.*``; ``downsample_layers.i.*`` ->
    ``stages.i.downsample.*``; ``stages.i.j.`` -> ``stages.i.blocks.j.`` with ``pos_embed`` ->
    ``pos.proj``, ``attn.qkv.qkv`` -> ``attn.qkv``, ``attn.wo`` -> ``attn.proj``, ``mlp.0`` /
    ``mlp.3`` (STL ``mlp.2``) -> ``mlp.fc1`` / ``mlp.fc2``, ``gamma1/2`` -> ``ls1/2.gamma``;
    ``norm.*`` (BatchNorm, with running stats) unchanged; ``head.*`` -> ``head.fc.*``.

    Raises:
        CheckpointKeyError: any key that cannot be mapped, any model key left uncovered, or any
            shape mismatch (all listed). Classifier keys may be missing or of another class
            count (timm then drops them); they are dropped here when the model has no classifier.
    """
    sd, _ = unwrap_state_dict(state_dict)
    unknown: List[str] = []
    if any(k.startswith("downsample_layers.") for k in sd):
        sd, unknown = _official_to_ours(sd)
        source = "official BiFormer checkpoint"
    else:
        source = "visionattn checkpoint"
    model_keys = model.state_dict().keys()
    for k in ("head.fc.weight", "head.fc.bias"):
        if k in sd and k not in model_keys:
            del sd[k]
    check_state_dict(sd, model, unknown=unknown, source=source)
    return sd


# ------------------------------------------------------------------------------------------------
# Pretrained configs. The official OneDrive links (README, ``model_urls`` in the model files) are
# recorded as provenance; BiFormer#53 (2026-03) reports them broken, and all of them end in
# ``/root/content``, so torch.hub caches every one under the same file name ``content``.

_ORIGIN = "https://github.com/rayleizhu/BiFormer"


_cfg = family_cfg(
    min_input_size=(3, 32, 32),  # smallest image side the model accepts (plain models: 16, per tag)
    crop_pct=0.875,  # datasets.py: Resize(256/224 * S, bicubic) + CenterCrop(S)
    first_conv="stem.0",
    license="mit",
    origin_url=_ORIGIN,
    paper_ids="arXiv:2303.08810",
    paper_name="BiFormer: Vision Transformer with Bi-Level Routing Attention",
)


default_cfgs = generate_default_cfgs(manifest_cfgs("biformer", _cfg))  # per-tag data: visionattn/models/pretrained.yaml


# ------------------------------------------------------------------------------------------------
# Variants (models/biformer.py, models/biformer_stl.py of the official repository)

_TINY = dict(embed_dims=(64, 128, 256, 512), depths=(2, 2, 8, 2), drop_path_rate=0.1)
_SMALL = dict(embed_dims=(64, 128, 256, 512), depths=(4, 4, 18, 4), drop_path_rate=0.15)
_BASE = dict(embed_dims=(96, 192, 384, 768), depths=(4, 4, 18, 4), drop_path_rate=0.3)
_STL = dict(embed_dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), mlp_ratio=4.0, pos_kernel=0, layout="stl", drop_path_rate=0.1)


def _create(variant: str, pretrained: bool, defaults: Dict, kwargs: Dict) -> BiFormer:
    return build_model(BiFormer, variant, pretrained, checkpoint_filter_fn, defaults, kwargs)


@register_model
def biformer_tiny(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-T: 13.1M params, 2.2 GMACs, 81.4 top-1 (ImageNet-1k, 224; drop path 0.1 per BiFormer#32)."""
    return _create("biformer_tiny", pretrained, _TINY, kwargs)


@register_model
def biformer_small(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-S: 25.5M params, 4.5 GMACs, 83.8 top-1 (drop path 0.15, README)."""
    return _create("biformer_small", pretrained, _SMALL, kwargs)


@register_model
def biformer_base(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-B: 56.8M params, 9.8 GMACs, 84.3 top-1 (training drop path unpublished; 0.3 here)."""
    return _create("biformer_base", pretrained, _BASE, kwargs)


@register_model
def biformer_stl(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-STL (Swin-T layout ablation): 28.4M params, 4.6 GMACs, 82.7 top-1 (drop path 0.1, scripts/train.sh)."""
    return _create("biformer_stl", pretrained, _STL, kwargs)
