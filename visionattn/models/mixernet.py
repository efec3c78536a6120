"""MixerNet: one hierarchical macro-architecture, any token mixer per stage or per block.

The zoo's families differ almost only in their token mixer (DESIGN.md, "One idea"). MixerNet
keeps everything else fixed (stem, downsamplers, pre-norm :class:`~visionattn.layers.TransformerBlock`
with timm's ``Mlp``/``LayerScale``/``DropPath``, final norm, head, all from the shared layers
and :class:`~visionattn.models._backbone.HierarchicalBackbone`) and takes the mixers by name from
:mod:`visionattn.mixers`, so that

* ``timm.create_model('na_mixernet_tiny')``, ``'swin_mixernet_tiny'``, ``'pool_mixernet_tiny'``, ... are the
  same network with a different mixer (an ablation by construction), and
* ``timm.create_model('dwconv_na_mhsa_mixernet_tiny')`` (convolution early, neighborhood attention in
  the middle, global attention at the end) or ``timm.create_model('mixernet_tiny',
  mixers=['dwconv', 'na', ['na', 'mhsa'], 'mhsa'])`` build hybrids in one line.

The presets share the macro of the families' tiny models: 4 stages of widths 64-128-256-512, depths
2-2-6-2, head dim 32, MLP ratio 4, NAT's overlapping conv stem and downsamplers (stride 4, 8, 16,
32). They have no pretrained weights (their pretrained cfg has no URL nor Hub id); they are not in
:func:`visionattn.list_models` (the paper models) but in :func:`list_mixer_models`.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn
from timm.models import generate_default_cfgs, is_model
from timm.models import register_model as _timm_register_model

from .. import mixers as _mixers
from ..layers.block import TransformerBlock
from ..layers.conv import ConvDownsampler, ConvTokenizer, PatchEmbed, PatchMerging
from ._backbone import HierarchicalBackbone, Stage, drop_path_rates, init_weights, per_stage
from ._manifest import family_cfg
from ._registry import build_model, check_state_dict, unwrap_state_dict

__all__ = ["MixerNet", "list_mixer_models", "resolve_mixers", "checkpoint_filter_fn"]

MixerSpecArg = Union[str, Sequence[Union[str, Sequence[str]]]]

_STEMS = ("conv", "patch")
_DOWNSAMPLES = ("conv", "merge")


def resolve_mixers(mixers: MixerSpecArg, depths: Sequence[int]) -> List[List[str]]:
    """Expand a ``mixers=`` argument to one mixer name per block, ``[[stage 0 names], ...]``.

    Accepted forms:

    * one name: every block (``'na'``);
    * one entry per stage (``len == len(depths)``), each a name (the whole stage) or a list of
      names that the stage's blocks follow cyclically, block ``j`` taking ``names[j % len(names)]``
      (``['na', 'mhsa']`` alternates; a stage built with fewer blocks uses the first names;
      ``['na', 'mhsa'] * 3`` spells out a 6-block stage):
      ``['dwconv', 'na', ['na', 'mhsa'], 'mhsa']``;
    * one name per block, flat (``len == sum(depths)``).

    Every name is checked against the registry.

    Raises:
        ValueError: a list of the wrong length (the message says which lengths are accepted).
        UnknownMixerError: a name that is not registered (lists the registered ones).
    """
    n, total = len(depths), sum(depths)
    if isinstance(mixers, str):
        out = [[mixers] * d for d in depths]
    elif isinstance(mixers, (list, tuple)):
        items = list(mixers)
        if len(items) == n and (n != total or any(not isinstance(m, str) for m in items)):
            out = []
            for i, (m, d) in enumerate(zip(items, depths)):
                if isinstance(m, str):
                    out.append([m] * d)
                elif isinstance(m, (list, tuple)) and len(m) > 0 and all(isinstance(x, str) for x in m):
                    out.append([m[j % len(m)] for j in range(d)])
                else:
                    raise ValueError(
                        f"mixers[{i}] must be a mixer name or a non-empty list of names, block j of the stage "
                        f"taking names[j % len(names)] (stage {i} has {d} blocks); got {m!r}"
                    )
        elif len(items) == total and all(isinstance(m, str) for m in items):
            out, i = [], 0
            for d in depths:
                out.append(items[i : i + d])
                i += d
        else:
            raise ValueError(
                f"mixers must be one name, one entry per stage ({n}) or one name per block ({total}, depths {tuple(depths)}); "
                f"got a list of {len(items)}"
            )
    else:
        raise ValueError(f"mixers must be a mixer name or a list of names, got {type(mixers).__name__}")
    for stage in out:
        for name in stage:
            _mixers.get_mixer(name)  # raises with the list of registered names
    return out


def _stage_kwargs(mixer_kwargs, n: int) -> List[Dict[str, Any]]:
    if mixer_kwargs is None:
        return [{} for _ in range(n)]
    if isinstance(mixer_kwargs, Mapping):
        return [dict(mixer_kwargs) for _ in range(n)]
    if isinstance(mixer_kwargs, (list, tuple)):
        if len(mixer_kwargs) != n or not all(k is None or isinstance(k, Mapping) for k in mixer_kwargs):
            raise ValueError(f"mixer_kwargs must be a dict or a list of {n} dicts (one per stage); got {mixer_kwargs!r}")
        return [dict(k or {}) for k in mixer_kwargs]
    raise ValueError(f"mixer_kwargs must be a dict or a list of dicts, got {type(mixer_kwargs).__name__}")


def _kwargs_for(name: str, stage_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """A stage's kwargs for mixer ``name``: a dict keyed by mixer names gives per-mixer kwargs,
    any other dict applies to every mixer of the stage."""
    registered = set(_mixers.list_mixers())
    if stage_kwargs and all(k in registered and isinstance(v, Mapping) for k, v in stage_kwargs.items()):
        return dict(stage_kwargs.get(name, {}))
    return stage_kwargs


class MixerNet(HierarchicalBackbone):
    """Hierarchical backbone with the token mixers given by name (see the module docstring).

    Args:
        mixers: mixer names, per model, per stage or per block (:func:`resolve_mixers`); names are
            those of :func:`visionattn.list_mixers` (including user-registered ones).
        mixer_kwargs: kwargs for the mixers: one dict for every stage, or a list with one dict (or
            None) per stage. A dict whose keys are all mixer names gives kwargs per mixer
            (``{'na': {'kernel_size': 5}, 'mhsa': {}}``); any other dict goes to every mixer of
            the stage, which must accept all its keys.
        in_chans, num_classes, global_pool, drop_rate: as every timm model.
        embed_dim: width of stage 0; stage ``i`` has ``embed_dim * 2**i`` unless ``dims`` is given.
        dims: explicit widths per stage.
        depths: blocks per stage.
        num_heads: heads per stage (int or per stage); default ``dim // head_dim``.
        head_dim: channels per head when ``num_heads`` is None.
        mlp_ratio: MLP hidden width ratio (0: no MLP branch).
        layer_scale: layer-scale init value (CaiT) or None.
        drop_path_rate: stochastic depth, linear over all blocks.
        proj_drop_rate: dropout inside the MLP.
        stem: ``'conv'`` (NAT's two overlapping stride-2 3x3 convs + LN) or ``'patch'`` (4x4 patch embed).
        downsample: ``'conv'`` (NAT's stride-2 3x3 conv + LN) or ``'merge'`` (Swin's patch merging).
        norm_eps: epsilon of every LayerNorm.

    Attributes:
        mixer_names: ``[[name per block] per stage]``, what was built.

    Shapes: images ``(B, in_chans, H, W)``, ``H, W >= 4 * 2**(stages-1)``; ``forward_features``
    gives ``(B, dims[-1], ceil(H/32), ceil(W/32))`` (4 stages).

    Raises:
        ValueError: inconsistent per-stage arguments, an unknown stem/downsample, mixers of the wrong
            shape; UnknownMixerError: an unknown mixer name; TypeError: a kwarg a mixer does not take.
    """

    def __init__(
        self,
        mixers: MixerSpecArg = "na",
        mixer_kwargs: Optional[Union[Mapping[str, Any], Sequence[Optional[Mapping[str, Any]]]]] = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 64,
        dims: Optional[Sequence[int]] = None,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Optional[Union[int, Sequence[int]]] = None,
        head_dim: int = 32,
        mlp_ratio: float = 4.0,
        layer_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        stem: str = "conv",
        downsample: str = "conv",
        norm_eps: float = 1e-5,
    ):
        depths = [int(d) for d in depths]
        n = len(depths)
        if n < 1 or any(d < 1 for d in depths):
            raise ValueError(f"depths must be positive block counts, got {tuple(depths)}")
        dims = [int(embed_dim * 2**i) for i in range(n)] if dims is None else [int(d) for d in per_stage(list(dims), n, "dims")]
        heads = [max(1, d // head_dim) for d in dims] if num_heads is None else [int(h) for h in per_stage(num_heads, n, "num_heads")]
        if stem not in _STEMS:
            raise ValueError(f"stem must be one of {_STEMS}, got {stem!r}")
        if downsample not in _DOWNSAMPLES:
            raise ValueError(f"downsample must be one of {_DOWNSAMPLES}, got {downsample!r}")
        names = resolve_mixers(mixers, depths)
        stage_kwargs = _stage_kwargs(mixer_kwargs, n)
        norm = partial(nn.LayerNorm, eps=norm_eps)
        dpr = drop_path_rates(drop_path_rate, depths)
        stem_mod = ConvTokenizer(in_chans, dims[0], norm_layer=norm) if stem == "conv" else PatchEmbed(in_chans, dims[0], 4, norm_layer=norm)
        down = ConvDownsampler if downsample == "conv" else PatchMerging
        stages = []
        for i in range(n):
            blocks = []
            for j, name in enumerate(names[i]):
                kw = _kwargs_for(name, stage_kwargs[i])
                try:
                    mixer = _mixers.create_mixer(name, dims[i], heads[i], **kw)
                except (TypeError, ValueError) as exc:
                    raise type(exc)(f"stage {i} block {j} (mixer {name!r}, dim {dims[i]}, {heads[i]} heads): {exc}") from exc
                blocks.append(
                    TransformerBlock(
                        dims[i], mixer, mlp_ratio=mlp_ratio, drop_path=dpr[i][j], layer_scale=layer_scale,
                        norm_layer=norm, mlp_drop=proj_drop_rate,
                    )
                )
            stages.append(Stage(blocks, down(dims[i - 1], dims[i], norm_layer=norm) if i > 0 else None))
        super().__init__(
            stem_mod,
            stages,
            dims,
            [4 * 2**i for i in range(n)],
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            norm_layer=norm,
            min_input_size=4 * 2 ** (n - 1),
            no_weight_decay_keywords=("rpb", "an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias"),
        )
        self.mixer_names = names
        self.apply(init_weights)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Checkpoints of MixerNet are its own ``state_dict`` (optionally wrapped, e.g. ``{'model': ...}``
    or with a DDP ``module.`` prefix); every key is checked.

    Raises:
        CheckpointKeyError: unknown, missing or mis-shaped keys (all listed).
    """
    sd, _ = unwrap_state_dict(state_dict)
    check_state_dict(sd, model, source="MixerNet checkpoint")
    return sd


# ------------------------------------------------------------------------------------------------
# presets

_DEPTHS = (2, 2, 6, 2)

#: preset name -> (mixers, mixer_kwargs, one-line description)
PRESETS: Dict[str, tuple] = {
    "na_mixernet_tiny": ("na", None, "neighborhood attention 7x7 everywhere (NAT)"),
    "dina_mixernet_tiny": (
        [["na", "dina"]] * 4,
        [{"dina": {"dilation": d}} for d in (8, 4, 2, 1)],
        "NA / dilated NA alternating, DiNAT's dilations 8-4-2-1 (sized for 224 px)",
    ),
    "bra_mixernet_tiny": ("bra", [{"topk": k} for k in (1, 4, 16, 49)], "bi-level routing attention, 7x7 regions, top-k 1-4-16-49 (BiFormer-T's; 49 = all)"),
    "swin_mixernet_tiny": ([["swin", "swin_shift"]] * 4, None, "Swin window / shifted-window attention alternating, 7x7 windows"),
    "maxvit_mixernet_tiny": ([["maxvit_block", "maxvit_grid"]] * 4, None, "MaxViT block / grid attention alternating, 7x7"),
    "cswin_mixernet_tiny": (
        "cswin",
        [{"stripe_width": 1}, {"stripe_width": 2}, {"stripe_width": 7}, {"full": True}],
        "CSWin cross-shaped windows, stripe widths 1-2-7-global (CSWin-T's)",
    ),
    "davit_channel_mixernet_tiny": ("davit_channel", None, "DaViT channel group attention everywhere"),
    "agent_mixernet_tiny": ("agent", None, "agent attention, 49 agents, everywhere"),
    "mhsa_mixernet_tiny": ("mhsa", None, "global multi-head self-attention everywhere"),
    "pool_mixernet_tiny": ("pool", None, "PoolFormer 3x3 average pooling"),
    "dwconv_mixernet_tiny": ("dwconv", None, "7x7 depthwise convolution (ConvNeXt-style)"),
    "identity_mixernet_tiny": ("identity", None, "no token mixing (floor)"),
    # hybrids
    "dwconv_na_mhsa_mixernet_tiny": (["dwconv", "na", "na", "mhsa"], None, "hybrid: depthwise conv, NA, NA, global attention by stage"),
    "dwconv_mhsa_mixernet_tiny": (["dwconv", "dwconv", "mhsa", "mhsa"], None, "hybrid (CoAtNet-like): conv stages 1-2, global attention stages 3-4"),
    "na_mhsa_mixernet_tiny": (
        ["na", "na", ["na", "mhsa"], "mhsa"],
        None,
        "hybrid per block: NA, NA, NA/global alternating, global",
    ),
}

_GENERIC = "mixernet_tiny"

_cfg = family_cfg(
    first_conv="stem.proj.0",
    crop_pct=0.9,
    license="apache-2.0",
    paper_name="visionattn MixerNet (mixer ablation macro; no pretrained weights)",
)
default_cfgs = generate_default_cfgs({name: _cfg() for name in [_GENERIC, *PRESETS]})

_MIXER_MODELS: List[str] = []


def list_mixer_models(pattern: str = "") -> List[str]:
    """Names of the MixerNet models registered with timm (the generic ``mixernet_tiny`` and the
    presets), sorted; ``pattern`` is an fnmatch filter."""
    import fnmatch

    names = sorted(_MIXER_MODELS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def _register(name: str, defaults: Dict[str, Any], doc: str) -> None:
    if is_model(name):
        raise RuntimeError(f"visionattn: refusing to register {name!r}: timm already has a model of that name")

    def entry(pretrained: bool = False, **kwargs) -> MixerNet:
        return build_model(MixerNet, name, pretrained, checkpoint_filter_fn, defaults, kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"MixerNet tiny (2-2-6-2, 64-512): {doc}. Keyword arguments override the preset (see :class:`MixerNet`)."
    globals()[name] = _timm_register_model(entry)
    _MIXER_MODELS.append(name)


_register(_GENERIC, dict(depths=_DEPTHS, embed_dim=64), "the generic model; pass mixers=... (default 'na') and mixer_kwargs=...")
for _name, (_mix, _kw, _doc) in PRESETS.items():
    _register(_name, dict(depths=_DEPTHS, embed_dim=64, mixers=_mix, mixer_kwargs=_kw), _doc)
del _name, _mix, _kw, _doc
