"""NAT, DiNAT, DiNAT_s and the isotropic NAT / DiNAT / ViT-rpb models.

Papers:
    Hassani, Walton, Li, Li, Shi. "Neighborhood Attention Transformer". CVPR 2023. arXiv:2204.07143
    Hassani, Shi. "Dilated Neighborhood Attention Transformer". arXiv:2209.15001
Official code and weights: github SHI-Labs/Neighborhood-Attention-Transformer (MIT licence),
``classification/{nat,dinat,dinats,isotropic}.py``; Hugging Face copies ``shi-labs/{nat,dinat}-*``.

Every variant is a composition of the shared parts: :class:`~visionattn.layers.TransformerBlock`
around :class:`~visionattn.layers.NeighborhoodAttention2d` (DiNAT = NA with a per-layer dilation
schedule), the conv tokenizer / downsampler (NAT, DiNAT) or patch embed / merging (DiNAT_s,
isotropic), inside :class:`~visionattn.models._backbone.HierarchicalBackbone`.

Module keys differ from the official ones (``stem``/``stages`` as everywhere in timm);
:func:`checkpoint_filter_fn` converts the official ``.pth`` files and the Hugging Face
``transformers`` layout strictly.

@article{hassani2022neighborhood, title={Neighborhood Attention Transformer},
  author={Hassani, Ali and Walton, Steven and Li, Jiachen and Li, Shen and Shi, Humphrey},
  journal={arXiv preprint arXiv:2204.07143}, year={2022}}
@article{hassani2022dilated, title={Dilated Neighborhood Attention Transformer},
  author={Hassani, Ali and Shi, Humphrey}, journal={arXiv preprint arXiv:2209.15001}, year={2022}}
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn
from timm.models import generate_default_cfgs

from ..layers.block import TransformerBlock
from ..layers.conv import ConvDownsampler, ConvTokenizer, PatchEmbed, PatchMerging
from ..layers.neighborhood import NeighborhoodAttention2d
from ..layers.pos import relative_position_index, resize_rel_pos_table
from ..layers.window import WindowAttention
from ._backbone import HierarchicalBackbone, PlainBackbone, Stage, drop_path_rates, init_weights, per_stage, square_img_size
from ._manifest import family_cfg, manifest_cfgs
from ._registry import build_model, check_state_dict, register_model, unwrap_state_dict

__all__ = ["NAT", "NATIsotropic", "checkpoint_filter_fn"]

IntOrSeq = Union[int, Sequence[int]]


class NAT(HierarchicalBackbone):
    """Hierarchical (dilated) neighborhood attention transformer: NAT, DiNAT and DiNAT_s.

    Args:
        in_chans: image channels.
        num_classes: classifier outputs (0 for none).
        global_pool: ``'avg'`` or ``''`` etc. (timm pooling types).
        embed_dim: channels of stage 0; stage ``i`` has ``embed_dim * 2**i``.
        depths: blocks per stage.
        num_heads: heads per stage.
        mlp_ratio: MLP expansion.
        kernel_size: neighborhood size, int or one per stage (odd).
        dilations: per stage, per block dilation lists (DiNAT); None: all 1 (NAT).
        qkv_bias: bias in the qkv projections.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after attention/MLP projections.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        layer_scale: layer-scale init value (NAT-S/B, DiNAT-B use 1e-5) or None.
        layout: ``'conv'`` (NAT/DiNAT: overlapping conv tokenizer + conv downsamplers) or
            ``'swin'`` (DiNAT_s: 4x4 patch embed + patch merging).
        backend: :func:`visionattn.ops.na2d` backend.

    Shapes: images ``(B, in_chans, H, W)`` with ``H, W >= 32``; ``forward_features`` gives
    ``(B, 8 * embed_dim, ceil(H/32), ceil(W/32))``.

    Raises:
        ValueError: inconsistent per-stage arguments, even kernels, unknown layout.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 64,
        depths: Sequence[int] = (3, 4, 6, 5),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        mlp_ratio: float = 3.0,
        kernel_size: IntOrSeq = 7,
        dilations: Optional[Sequence[Sequence[int]]] = None,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        layer_scale: Optional[float] = None,
        layout: str = "conv",
        backend: str = "auto",
    ):
        n = len(depths)
        num_heads = per_stage(num_heads, n, "num_heads")
        kernel_sizes = per_stage(kernel_size, n, "kernel_size")
        if dilations is None:
            dilations = [[1] * d for d in depths]
        dilations = [list(x) for x in per_stage(dilations, n, "dilations")]
        for i, (d, dl) in enumerate(zip(depths, dilations)):
            if len(dl) != d:
                raise ValueError(f"dilations[{i}] has {len(dl)} entries but stage {i} has {d} blocks")
        if layout not in ("conv", "swin"):
            raise ValueError(f"layout must be 'conv' (NAT/DiNAT) or 'swin' (DiNAT_s); got {layout!r}")
        dims = [int(embed_dim * 2**i) for i in range(n)]
        dpr = drop_path_rates(drop_path_rate, depths)
        if layout == "conv":
            stem = ConvTokenizer(in_chans, embed_dim)
            down = ConvDownsampler
        else:
            stem = PatchEmbed(in_chans, embed_dim, patch_size=4)
            down = PatchMerging
        stages = []
        for i in range(n):
            blocks = [
                TransformerBlock(
                    dims[i],
                    NeighborhoodAttention2d(
                        dims[i], num_heads[i], kernel_sizes[i], dilations[i][j], qkv_bias, proj_drop=proj_drop_rate, backend=backend
                    ),
                    mlp_ratio=mlp_ratio,
                    drop_path=dpr[i][j],
                    layer_scale=layer_scale,
                    mlp_drop=proj_drop_rate,
                )
                for j in range(depths[i])
            ]
            stages.append(Stage(blocks, down(dims[i - 1], dims[i]) if i > 0 else None))
        super().__init__(
            stem,
            stages,
            dims,
            [4 * 2**i for i in range(n)],
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            min_input_size=4 * 2 ** (n - 1),
        )
        self.layout = layout
        self.apply(init_weights)


class NATIsotropic(PlainBackbone):
    """Isotropic (ViT-like) NAT / DiNAT / ViT-rpb: 16x16 patch embed, one resolution, no class token.

    Each block is its own stage (taps at every block, stride 16), as timm's ViT feature taps. Shaped
    like timm's ``VisionTransformer`` (:class:`~visionattn.models._backbone.PlainBackbone`):
    ``num_prefix_tokens = 0`` (the official models have no class token and average-pool the
    patch tokens), ``forward_features`` gives ``(B, h*w, C)`` tokens.

    Args:
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias, drop_rate, proj_drop_rate,
        drop_path_rate: as :class:`NAT`.
        kernel_size: neighborhood size of the NA layers.
        dilation: dilation of the odd layers (even layers use 1); DiNAT-iso uses 2.
        attention: ``'na'`` (neighborhood attention) or ``'mhsa'`` (ViT-rpb: global attention
            with a relative position bias over ``img_size // 16`` tokens per side).
        img_size: training resolution (sets the ViT-rpb bias table extent only; any input works).

    Shapes: ``(B, in_chans, H, W)``, ``H, W >= 16``; ``forward_features`` ``(B, h*w, embed_dim)``
    and NCHW taps ``(B, embed_dim, h, w)`` with ``h, w = ceil(H/16), ceil(W/16)``.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        kernel_size: int = 7,
        dilation: int = 1,
        attention: str = "na",
        img_size: int = 224,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        backend: str = "auto",
    ):
        if attention not in ("na", "mhsa"):
            raise ValueError(f"attention must be 'na' or 'mhsa'; got {attention!r}")
        dpr = drop_path_rates(drop_path_rate, [depth])[0]
        grid = square_img_size(img_size, "isotropic NAT / ViT-rpb") // 16

        def mixer(i: int) -> nn.Module:
            if attention == "mhsa":
                return WindowAttention(embed_dim, num_heads, (grid, grid), qkv_bias, proj_drop=proj_drop_rate)
            d = 1 if i % 2 == 0 else dilation
            return NeighborhoodAttention2d(embed_dim, num_heads, kernel_size, d, qkv_bias, proj_drop=proj_drop_rate, backend=backend)

        stages = [
            Stage([TransformerBlock(embed_dim, mixer(i), mlp_ratio=mlp_ratio, drop_path=dpr[i], mlp_drop=proj_drop_rate)])
            for i in range(depth)
        ]
        super().__init__(
            PatchEmbed(in_chans, embed_dim, patch_size=16),
            stages,
            embed_dim,
            16,
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            num_prefix_tokens=0,
            min_input_size=16,
        )
        self.attention = attention
        self.apply(init_weights)


# ------------------------------------------------------------------------------------------------
# Checkpoint conversion

_HF_RULES = [
    (r"^embeddings\.patch_embeddings\.projection\.(\d)\.", r"patch_embed.proj.\1."),
    (r"^embeddings\.norm\.", "patch_embed.norm."),
    (r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.layernorm_before\.", r"levels.\1.blocks.\2.norm1."),
    (r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.attention\.self\.rpb$", r"levels.\1.blocks.\2.attn.rpb"),
    (r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.attention\.output\.dense\.", r"levels.\1.blocks.\2.attn.proj."),
    (r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.layernorm_after\.", r"levels.\1.blocks.\2.norm2."),
    (r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.intermediate\.dense\.", r"levels.\1.blocks.\2.mlp.fc1."),
    (r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.output\.dense\.", r"levels.\1.blocks.\2.mlp.fc2."),
    (r"^encoder\.levels\.(\d+)\.downsample\.", r"levels.\1.downsample."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]
_HF_QKV = re.compile(r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")
_HF_LS = re.compile(r"^encoder\.levels\.(\d+)\.layers\.(\d+)\.layer_scale_parameters$")


def _hf_to_official(sd: Dict[str, torch.Tensor]):
    """Hugging Face ``transformers`` NAT/DiNAT keys -> official keys (split q/k/v fused, layer scale split)."""
    out, unknown, qkv = {}, [], {}
    for k, v in sd.items():
        k2 = re.sub(r"^(dinat|nat)\.", "", k)
        m = _HF_QKV.match(k2)
        if m:
            qkv.setdefault((m.group(1), m.group(2), m.group(4)), {})[m.group(3)] = v
            continue
        m = _HF_LS.match(k2)
        if m:
            base = f"levels.{m.group(1)}.blocks.{m.group(2)}."
            out[base + "gamma1"], out[base + "gamma2"] = v[0], v[1]
            continue
        for pat, rep in _HF_RULES:
            if re.match(pat, k2):
                out[re.sub(pat, rep, k2)] = v
                break
        else:
            unknown.append(k)
    for (i, j, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            unknown.extend(f"levels.{i}.layers.{j}.attention.self.{p}.{kind}" for p in parts)
            continue
        out[f"levels.{i}.blocks.{j}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out, unknown


def _official_to_ours(sd: Dict[str, torch.Tensor], model: nn.Module):
    """Official NAT/DiNAT/DiNAT_s/isotropic keys -> visionattn keys."""
    out, unknown = {}, []
    isotropic = isinstance(model, NATIsotropic)
    for k, v in sd.items():
        if k.startswith("patch_embed."):
            out["stem." + k[len("patch_embed."):]] = v
        elif k.startswith("norm.") or k.startswith("head."):
            out[k if k.startswith("norm.") else "head.fc." + k[len("head."):]] = v
        elif isotropic and re.match(r"^layers\.\d+\.", k):
            i, rest = re.match(r"^layers\.(\d+)\.(.*)$", k).groups()
            if rest == "attn.relative_position_index":
                # Derived buffer of MHSARPB: accounted for by checking it equals ours, then dropped.
                # The checkpoint's grid may differ from the model's (its rpb is resized in checkpoint_filter_fn).
                g = int(round(v.shape[0] ** 0.5)) if v.dim() == 2 and v.shape[0] == v.shape[1] else 0
                if not g or g * g != v.shape[0] or not torch.equal(v.long().cpu(), relative_position_index(g, g)):
                    unknown.append(k + " (is not the relative position index of a square grid)")
                continue
            out[f"stages.{i}.blocks.0.{rest}"] = v
        else:
            m = re.match(r"^(levels|layers)\.(\d+)\.(blocks\.\d+|downsample)\.(.*)$", k)
            if not m or isotropic:
                unknown.append(k)
                continue
            _, i, part, rest = m.groups()
            i = int(i)
            if part == "downsample":
                out[f"stages.{i + 1}.downsample.{rest}"] = v
            else:
                rest = {"gamma1": "ls1.gamma", "gamma2": "ls2.gamma"}.get(rest, rest)
                out[f"stages.{i}.{part}.{rest}"] = v
    return out, unknown


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Convert an official NAT/DiNAT checkpoint to this model's keys, strictly.

    Accepts (a) the official ``.pth`` state dicts of ``classification/{nat,dinat,dinats,isotropic}.py``
    (flat, or wrapped under ``model`` / ``state_dict``, with or without a ``module.`` prefix),
    (b) the Hugging Face ``transformers`` layout (``nat.`` / ``dinat.`` prefixed ``NatModel`` /
    ``DinatForImageClassification``: split q/k/v, ``layer_scale_parameters``), and (c) visionattn's own
    layout (returned as is after the check). Any training resolution loads into any model: NA
    tables depend on the kernel only; ViT-rpb tables of another ``img_size`` are resized
    bicubically (:func:`_resize_rpb_tables`).

    Raises:
        CheckpointKeyError: any key that cannot be mapped, any model key left uncovered, or any
            shape mismatch (all listed), so no partial load is possible. Classifier keys may be
            missing or of another class count (timm then drops them).
    """
    sd, _ = unwrap_state_dict(state_dict)
    unknown: List[str] = []
    if any(k.startswith("stages.") for k in sd):
        source = "visionattn checkpoint"
    else:
        if any(k.startswith(("dinat.", "nat.", "embeddings.", "encoder.")) for k in sd):
            sd, unknown = _hf_to_official(sd)
            source = "Hugging Face NAT/DiNAT checkpoint"
        else:
            source = "official NAT/DiNAT checkpoint"
        sd, unknown2 = _official_to_ours(sd, model)
        unknown += unknown2
    _resize_rpb_tables(sd, model)
    check_state_dict(sd, model, unknown=unknown, source=source)
    return sd


def _resize_rpb_tables(sd: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """Resize ViT-rpb relative position tables ``(heads, 2g-1, 2g-1)`` trained at another ``img_size``
    to the model's grid, bicubically (:func:`~visionattn.layers.pos.resize_rel_pos_table`, the rule
    :class:`~visionattn.layers.WindowAttention` applies at run time to maps of another size, so a
    224 checkpoint loaded into a 384 model gives the 224 model's outputs at 384). Neighborhood
    attention tables ``(heads, 2K-1, 2K-1)`` depend on the kernel only and are never resized."""
    if not isinstance(model, NATIsotropic) or model.attention != "mhsa":
        return
    msd = model.state_dict()
    for k, v in list(sd.items()):
        if k.endswith(".attn.rpb") and k in msd and v.dim() == 3 and v.shape[0] == msd[k].shape[0] and v.shape != msd[k].shape:
            sd[k] = resize_rel_pos_table(v, tuple(msd[k].shape[-2:]))


# ------------------------------------------------------------------------------------------------
# Pretrained configs: generated from the manifest (visionattn/models/pretrained.yaml; URLs, Hub
# ids, licence, per-tag resolution and class counts live there). ``_cfg`` holds the defaults.

_ORIGIN = "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer"


_cfg = family_cfg(
    min_input_size=(3, 32, 32),  # smallest image side the model accepts (plain models: 16, per tag)
    crop_pct=0.875,
    first_conv="stem.proj.0",
    license="mit",
    origin_url=_ORIGIN,
    paper_ids="arXiv:2204.07143",
    paper_name="Neighborhood Attention Transformer",
)


default_cfgs = generate_default_cfgs(manifest_cfgs("nat", _cfg))


# ------------------------------------------------------------------------------------------------
# Variants (classification/{nat,dinat,dinats,isotropic}.py of the official repository)

_D224 = [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1, 1, 1, 1, 1]]
_D224_MINI = [[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]]
_D384 = [[1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1, 1, 1, 1, 1]]
_DS224_T = [[1, 8], [1, 4], [1, 2, 1, 2, 1, 2], [1, 1]]
_DS224 = [[1, 8], [1, 4], [1, 2] * 9, [1, 1]]
_DS384 = [[1, 13], [1, 6], [1, 3] * 9, [1, 1]]

_MINI = dict(embed_dim=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0, drop_path_rate=0.2)
_TINY = dict(embed_dim=64, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0, drop_path_rate=0.2)
_SMALL = dict(embed_dim=96, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), mlp_ratio=2.0, drop_path_rate=0.3)
_BASE = dict(embed_dim=128, depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), mlp_ratio=2.0, drop_path_rate=0.5)
_LARGE = dict(embed_dim=192, depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), mlp_ratio=2.0, drop_path_rate=0.35)
_S = dict(layout="swin", mlp_ratio=4.0)
_S_TINY = dict(_S, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2, dilations=_DS224_T)
_S_SMALL = dict(_S, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3, dilations=_DS224)
_S_BASE = dict(_S, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5, dilations=_DS224)
_S_LARGE = dict(_S, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), drop_path_rate=0.35, dilations=_DS224)
_ISO_S = dict(embed_dim=384, num_heads=12, drop_path_rate=0.1)
_ISO_B = dict(embed_dim=768, num_heads=24, drop_path_rate=0.4)


def _nat(variant: str, pretrained: bool, defaults: Dict, kwargs: Dict, cls=NAT):
    taps = (0, 1, 2, 3) if cls is NAT else (2, 5, 8, 11)
    return build_model(cls, variant, pretrained, checkpoint_filter_fn, defaults, kwargs, taps)


@register_model
def nat_mini(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Mini: 20.0M params, 2.7 GMACs, 81.8 top-1 (ImageNet-1k, 224)."""
    return _nat("nat_mini", pretrained, _MINI, kwargs)


@register_model
def nat_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Tiny: 27.9M params, 4.3 GMACs, 83.2 top-1."""
    return _nat("nat_tiny", pretrained, _TINY, kwargs)


@register_model
def nat_small(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Small: 50.7M params, 7.8 GMACs, 83.7 top-1 (layer scale 1e-5)."""
    return _nat("nat_small", pretrained, dict(_SMALL, layer_scale=1e-5), kwargs)


@register_model
def nat_base(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Base: 89.8M params, 13.7 GMACs, 84.3 top-1 (layer scale 1e-5)."""
    return _nat("nat_base", pretrained, dict(_BASE, layer_scale=1e-5), kwargs)


@register_model
def dinat_mini(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Mini: 20.0M params, 2.7 GMACs, 81.8 top-1."""
    return _nat("dinat_mini", pretrained, dict(_MINI, dilations=_D224_MINI), kwargs)


@register_model
def dinat_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Tiny: 27.9M params, 4.3 GMACs, 82.7 top-1."""
    return _nat("dinat_tiny", pretrained, dict(_TINY, dilations=_D224), kwargs)


@register_model
def dinat_small(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Small: 50.7M params, 7.8 GMACs, 83.8 top-1 (no layer scale, unlike NAT-S)."""
    return _nat("dinat_small", pretrained, dict(_SMALL, dilations=_D224), kwargs)


@register_model
def dinat_base(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Base: 89.8M params, 13.7 GMACs, 84.4 top-1 (layer scale 1e-5)."""
    return _nat("dinat_base", pretrained, dict(_BASE, dilations=_D224, layer_scale=1e-5), kwargs)


@register_model
def dinat_large(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large 224, K=7: 200.9M params, 30.6 GMACs, 86.6 top-1 (IN-22k pre-trained)."""
    return _nat("dinat_large", pretrained, dict(_LARGE, dilations=_D224), kwargs)


@register_model
def dinat_large_11x11(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large 224, K=11 (the IN-22k weights with rpb bicubically interpolated 13->21)."""
    return _nat("dinat_large_11x11", pretrained, dict(_LARGE, dilations=_D224, kernel_size=11, drop_path_rate=0.2), kwargs)


@register_model
def dinat_large_384(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large 384, K=7: 200.9M params, 89.7 GMACs, 87.4 top-1."""
    return _nat("dinat_large_384", pretrained, dict(_LARGE, dilations=_D384), kwargs)


@register_model
def dinat_large_384_11x11(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large 384, K=11: 201.1M params, 92.4 GMACs, 87.5 top-1."""
    return _nat("dinat_large_384_11x11", pretrained, dict(_LARGE, dilations=_D224, kernel_size=11), kwargs)


@register_model
def dinat_s_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT_s-Tiny (Swin layout): 28.3M params, 4.5 GMACs, 81.8 top-1."""
    return _nat("dinat_s_tiny", pretrained, _S_TINY, kwargs)


@register_model
def dinat_s_small(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT_s-Small: 49.6M params, 8.7 GMACs, 83.5 top-1."""
    return _nat("dinat_s_small", pretrained, _S_SMALL, kwargs)


@register_model
def dinat_s_base(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT_s-Base: 87.8M params, 15.4 GMACs, 83.8 top-1."""
    return _nat("dinat_s_base", pretrained, _S_BASE, kwargs)


@register_model
def dinat_s_large(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT_s-Large 224: 196.5M params, 34.5 GMACs, 86.5 top-1 (IN-22k pre-trained; heads fixed upstream in 4a39ab6)."""
    return _nat("dinat_s_large", pretrained, _S_LARGE, kwargs)


@register_model
def dinat_s_large_384(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT_s-Large 384: 196.5M params, 101.5 GMACs, 87.4 top-1."""
    return _nat("dinat_s_large_384", pretrained, dict(_S_LARGE, dilations=_DS384), kwargs)


@register_model
def nat_isotropic_small(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """NAT-iso-Small: 22.0M params, 4.3 GMACs, 80.0 top-1."""
    return _nat("nat_isotropic_small", pretrained, _ISO_S, kwargs, cls=NATIsotropic)


@register_model
def dinat_isotropic_small(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """DiNAT-iso-Small (dilation 1, 2 alternating): 22.0M params, 4.3 GMACs, 80.8 top-1."""
    return _nat("dinat_isotropic_small", pretrained, dict(_ISO_S, dilation=2), kwargs, cls=NATIsotropic)


@register_model
def vitrpb_small(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """ViT-rpb-Small (global attention + 27x27 relative position bias): 22.1M params, 81.2 top-1."""
    return _nat("vitrpb_small", pretrained, dict(_ISO_S, attention="mhsa"), kwargs, cls=NATIsotropic)


@register_model
def nat_isotropic_base(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """NAT-iso-Base: 86.5M params, 16.9 GMACs, 81.6 top-1."""
    return _nat("nat_isotropic_base", pretrained, _ISO_B, kwargs, cls=NATIsotropic)


@register_model
def dinat_isotropic_base(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """DiNAT-iso-Base: 86.5M params, 16.9 GMACs, 82.1 top-1."""
    return _nat("dinat_isotropic_base", pretrained, dict(_ISO_B, dilation=2), kwargs, cls=NATIsotropic)


@register_model
def vitrpb_base(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """ViT-rpb-Base: 86.6M params, 17.5 GMACs, 82.5 top-1."""
    return _nat("vitrpb_base", pretrained, dict(_ISO_B, attention="mhsa"), kwargs, cls=NATIsotropic)
