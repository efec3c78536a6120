"""The shared hierarchical backbone: stem -> stages -> final norm -> head.

Every family composes this scaffolding; it implements timm's model contract (timm 1.0.x,
``models/swin_transformer.py`` and ``models/davit.py`` are the examples followed):
``forward_features``, ``forward_head(pre_logits=...)``, ``forward_intermediates``,
``prune_intermediate_layers``, ``features_only=True`` through ``build_model_with_cfg``
(``feature_cls='getter'``), ``set_grad_checkpointing``, ``group_matcher`` (layer-wise LR decay),
``no_weight_decay``, ``get_classifier`` / ``reset_classifier``, ``num_features``,
``head_hidden_size``, ``feature_info``.

Layouts: images enter NCHW; tokens travel NHWC ``(B, H, W, C)`` between stem, stages and norm;
``forward_features`` and every intermediate are handed out NCHW (``output_fmt = 'NCHW'``).
:class:`PlainBackbone` (the isotropic, ViT-like models) follows timm's ``VisionTransformer``
instead: ``forward_features`` gives ``(B, num_prefix_tokens + N, C)`` tokens, intermediates NCHW or NLC.
"""
# (no ``from __future__ import annotations`` here: FX copies ``forward``'s annotations into the
# GraphModule's code, which TorchScript must then parse: ``torch.jit.script`` of an FX graph)
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn
from timm.layers import ClassifierHead, register_notrace_function, trunc_normal_
from timm.layers.helpers import get_device_dtype
from timm.models import checkpoint_seq
from torch.utils.checkpoint import checkpoint
from timm.models._features import feature_take_indices

__all__ = ["Stage", "HierarchicalBackbone", "PlainBackbone", "TokenHead", "drop_path_rates", "per_stage", "init_weights"]


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> List[List[float]]:
    """Stochastic-depth rates ``linspace(0, rate, sum(depths))`` split per stage (as every family)."""
    total = sum(depths)
    rates = torch.linspace(0, drop_path_rate, total, device="cpu").tolist() if total > 1 else [0.0] * total
    out, i = [], 0
    for d in depths:
        out.append(rates[i : i + d])
        i += d
    return out


def per_stage(value, n: int, name: str) -> List:
    """Expand a per-stage argument: a scalar is repeated ``n`` times, a sequence must have ``n`` items.

    Raises:
        ValueError: a sequence whose length is not ``n`` (the message names the argument).
    """
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} must have one entry per stage ({n}); got {value!r}")
        return list(value)
    return [value] * n


def square_img_size(img_size: Union[int, Sequence[int]], model: str) -> int:
    """The construction size of a model whose position tables are square (Agent, InLine, CSWin, the
    isotropic NAT/ViT-rpb models): ``img_size`` as an int, or an ``(H, W)`` pair with ``H == W``.

    The size only shapes tables sized at construction (they are resized to the input at run time,
    so any input size still works); timm users often pass ``img_size=(H, W)``.

    Raises:
        ValueError: a non-square pair or something that is neither an int nor a pair.
    """
    if isinstance(img_size, int):
        return img_size
    if isinstance(img_size, (tuple, list)) and len(img_size) == 2 and all(isinstance(v, int) for v in img_size):
        if img_size[0] == img_size[1]:
            return int(img_size[0])
        raise ValueError(
            f"{model}: img_size={tuple(img_size)} is not square; this model's position tables are built square "
            f"at construction (and resized to any input at run time): pass one int, e.g. img_size={max(img_size)}")
    raise ValueError(f"{model}: img_size must be an int or an (H, W) pair of ints; got {img_size!r}")


def init_weights(module: nn.Module) -> None:
    """The init every family's official code uses (ViT/Swin style): truncated normal (std .02)
    Linear weights, zero biases, LayerNorm weight 1 / bias 0; convolutions keep PyTorch's default.
    Apply with ``model.apply(init_weights)``."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register_notrace_function
def _check_image(x: torch.Tensor, min_size: int, model_name: str) -> None:
    """The input checks of :meth:`HierarchicalBackbone._check_input` (a leaf of FX graphs: sizes are known at run time only)."""
    if x.dim() != 4:
        raise ValueError(f"{model_name} expects images of shape (B, C, H, W); got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(
            f"{model_name} expects floating-point images (float32/float16/bfloat16, normalised "
            f"with the pretrained cfg's mean/std, as timm's transforms produce); got {x.dtype}. "
            "Convert e.g. uint8 images with timm.data.create_transform(**timm.data.resolve_data_config(model=model)) "
            "or (x.float() / 255 - mean) / std"
        )
    if x.shape[-2] < min_size or x.shape[-1] < min_size:
        raise ValueError(
            f"{model_name}: input {tuple(x.shape[-2:])} is smaller than the minimum "
            f"{min_size}x{min_size} pixels this model accepts"
        )


torch.fx.wrap("_check_image")


class Stage(nn.Module):
    """One resolution stage on NHWC tokens: optional ``downsample``, a sequence of ``blocks``,
    then an optional ``norm``.

    Args:
        blocks: the stage's blocks, each ``(B, H, W, C) -> (B, H, W, C)``.
        downsample: module applied first (``(B, H, W, C_in) -> (B, H', W', C)``) or None.
        norm: module applied to the stage's output (VAN's per-stage LayerNorm, which feeds the
            next stage and the feature taps) or None. Key ``norm``.
    """

    def __init__(self, blocks: Sequence[nn.Module], downsample: Optional[nn.Module] = None, norm: Optional[nn.Module] = None):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm if norm is not None else nn.Identity()
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


class HierarchicalBackbone(nn.Module):
    """Stem, stages and head with timm's full model contract.

    Args:
        stem: ``(B, in_chans, H, W) -> (B, H/r0, W/r0, C0)`` NHWC tokens.
        stages: the stages, in order.
        stage_dims: output channels of each stage.
        stage_reductions: cumulative stride of each stage's output w.r.t. the image.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        global_pool: ``'avg'`` (default), ``'max'``, ``'avgmax'`` or ``''`` (no pooling).
        drop_rate: dropout before the classifier.
        norm_layer: final norm over the last stage's channels (None: no final norm).
        min_input_size: smallest image side accepted (pixels); smaller inputs raise ValueError.
        no_weight_decay_keywords: parameter-name components excluded from weight decay.
        head: optional head module with timm's head API (``forward(x, pre_logits)`` on NCHW,
            ``reset(num_classes, pool_type)``); default ``ClassifierHead`` (keys ``head.fc``).
        stem_feature: ``(channels, reduction)`` of the stem output to expose it as feature
            index 0 (as timm's MaxViT does); None: taps are the stages only.

    Raises:
        ValueError: inputs that are not ``(B, C, H, W)`` or smaller than ``min_input_size``.
        TypeError: inputs that are not floating point (e.g. uint8 images: normalise them first).

    An empty batch ``(0, C, H, W)`` gives empty outputs of the usual shapes (``(0, num_classes)``,
    ``(0, C_i, h_i, w_i)`` taps), in inference and in training.
    """

    # properties TorchScript must not compile (it would script ``in_chans``' module walk)
    __jit_unused_properties__ = ["in_chans"]

    output_fmt = "NCHW"

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        stage_dims: Sequence[int],
        stage_reductions: Sequence[int],
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        norm_layer: Optional[Callable[[int], nn.Module]] = nn.LayerNorm,
        min_input_size: int = 32,
        no_weight_decay_keywords: Sequence[str] = ("rpb",),
        head: Optional[nn.Module] = None,
        stem_feature: Optional[Tuple[int, int]] = None,
    ):
        super().__init__()
        if len(stages) != len(stage_dims) or len(stages) != len(stage_reductions):
            raise ValueError("HierarchicalBackbone: stages, stage_dims and stage_reductions must have one length")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.min_input_size = min_input_size
        self._no_wd_keywords = tuple(no_weight_decay_keywords)
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = int(stage_dims[-1])
        self.norm = norm_layer(self.num_features) if norm_layer is not None else nn.Identity()
        self.feature_info = [
            dict(num_chs=int(c), reduction=int(r), module=f"stages.{i}") for i, (c, r) in enumerate(zip(stage_dims, stage_reductions))
        ]
        self._stem_tap = 1 if stem_feature is not None else 0
        if stem_feature is not None:
            self.feature_info.insert(0, dict(num_chs=int(stem_feature[0]), reduction=int(stem_feature[1]), module="stem"))
        self.head = head if head is not None else ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)

    # ---------------------------------------------------------------- timm API: misc
    @property
    def in_chans(self) -> int:
        """Image channels the model takes: ``in_channels`` of the stem's first convolution
        (timm's ``model.in_chans``, read by its factory and its default-cfg checks)."""
        for m in self.stem.modules():
            if isinstance(m, nn.Conv2d):
                return m.in_channels
        raise AttributeError(f"{type(self).__name__}: no Conv2d in the stem to read in_chans from")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        """Parameter groups for layer-wise LR decay (``timm.optim.param_groups_layer_decay``)."""
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.norm", (99999,)),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's blocks in the backward pass (``checkpoint_seq``)."""
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Names of parameters excluded from weight decay (relative position tables etc.)."""
        return {n for n, _ in self.named_parameters() if n.split(".")[-1] in self._no_wd_keywords}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False) -> None:
        """Replace the classifier (``num_classes=0``: Identity); ``global_pool=''`` disables pooling.
        The new layers take the device and dtype of the model's parameters and its train/eval mode.

        ``reset_other=True`` also removes the head's other layers (e.g. the norm and pre-logits of
        ``NormMlpClassifierHead``) and resizes it to ``num_features`` (timm's head API
        ``reset(num_classes, pool_type, reset_other, in_features)``; used after pruning).
        """
        dd = get_device_dtype(self)  # the new head lives where the model lives (timm's contract)
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        if reset_other:
            self.head.reset(num_classes, pool_type=global_pool, reset_other=True, in_features=self.num_features)
            self.head_hidden_size = getattr(self.head, "num_features", self.num_features)
        else:
            self.head.reset(num_classes, pool_type=global_pool)
        self.head.to(**dd)
        self.head.train(self.training)

    # ---------------------------------------------------------------- forward
    def _check_input(self, x: torch.Tensor) -> None:
        if not torch.jit.is_scripting():  # TorchScript: the ops' own checks remain
            _check_image(x, self.min_input_size, type(self).__name__)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, num_features, H/32, W/32)`` (NCHW, after the final norm)."""
        self._check_input(x)
        x = self.stem(x)
        x = self.stages(x)
        x = self.norm(x)
        return x.permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (+ classify) NCHW features: ``(B, C, h, w) -> (B, num_classes)`` or ``(B, C)``."""
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Outputs of selected stages (timm's feature-tap API).

        Args:
            x: ``(B, in_chans, H, W)`` images.
            indices: tap indices (``feature_info`` order: the stem first when it is a tap) to return (None: all; int n: the last n; negatives allowed).
            norm: apply the final norm to the last stage's tap.
            stop_early: stop after the last requested stage.
            output_fmt: ``'NCHW'`` (the only layout offered; raises ValueError otherwise).
            intermediates_only: return only the list.

        Returns:
            list of NCHW tensors ``(B, C_i, H/r_i, W/r_i)``, or ``(final_features, list)`` where
            ``final_features`` equals :meth:`forward_features`.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"forward_intermediates: output_fmt must be 'NCHW', got {output_fmt!r}")
        self._check_input(x)
        off = self._stem_tap
        take_indices, max_index = feature_take_indices(len(self.stages) + off, indices)
        intermediates = []
        last = len(self.stages) - 1 + off
        x = self.stem(x)
        if off and 0 in take_indices:
            intermediates.append(x.permute(0, 3, 1, 2))
        stages = self.stages if (torch.jit.is_scripting() or not stop_early) else self.stages[: max_index + 1 - off]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i + off in take_indices:
                x_out = self.norm(x) if (norm and i + off == last) else x
                intermediates.append(x_out.permute(0, 3, 1, 2))
        if intermediates_only:
            return intermediates
        x = self.norm(x)
        return x.permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the stages after the last requested tap (and the norm/head); returns the taps."""
        off = self._stem_tap
        take_indices, max_index = feature_take_indices(len(self.stages) + off, indices)
        pruned = max_index < len(self.stages) - 1 + off
        self.stages = self.stages[: max_index + 1 - off]
        if pruned:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_norm or pruned:
            self.norm = nn.Identity()
        if prune_head or pruned:
            # the features never reach the head: drop its norm/pre-logits too, as timm's MaxViT/DaViT do
            # (parameters left without gradients would make DDP fail)
            self.reset_classifier(0, "", reset_other=True)
        return take_indices


class TokenHead(nn.Module):
    """Classifier head on a token sequence ``(B, P + N, C)`` (timm ``VisionTransformer``'s pooling).

    ``pool_type``: ``'token'`` (the first prefix token: DeiT's class token; needs ``P >= 1``),
    ``'avg'`` / ``'max'`` / ``'avgmax'`` (over the ``N`` patch tokens, prefix tokens excluded) or
    ``''`` (no pooling: the classifier, if any, applies to every token). timm's head API:
    ``forward(x, pre_logits)``, ``reset(num_classes, pool_type, reset_other, in_features)``.

    Keys: ``fc``. Raises ValueError for an unknown pool type, or ``'token'`` without prefix tokens.
    """

    POOL_TYPES = ("token", "avg", "max", "avgmax", "")

    def __init__(self, in_features: int, num_classes: int, pool_type: str = "token", drop_rate: float = 0.0, num_prefix_tokens: int = 1):
        super().__init__()
        self.in_features = self.num_features = in_features
        self.num_prefix_tokens = num_prefix_tokens
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes, pool_type)

    def reset(self, num_classes: int, pool_type: Optional[str] = None, reset_other: bool = False, in_features: Optional[int] = None) -> None:
        if in_features is not None:
            self.in_features = self.num_features = in_features
        if pool_type is not None:
            if pool_type not in self.POOL_TYPES:
                raise ValueError(f"TokenHead: pool_type must be one of {self.POOL_TYPES}, got {pool_type!r}")
            if pool_type == "token" and not self.num_prefix_tokens:
                raise ValueError("TokenHead: pool_type='token' needs a prefix (class) token; this model has none (use 'avg')")
            self.pool_type = pool_type
        self.num_classes = num_classes
        self.fc = nn.Linear(self.in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == "token":
            x = x[:, 0]
        elif self.pool_type:
            patches = x[:, self.num_prefix_tokens :]
            if self.pool_type == "avg":
                x = patches.mean(1)
            elif self.pool_type == "max":
                x = patches.amax(1)
            else:
                x = 0.5 * (patches.mean(1) + patches.amax(1))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class PlainBackbone(HierarchicalBackbone):
    """A plain (isotropic, ViT-like) backbone with timm's ``VisionTransformer`` contract.

    One resolution (stride ``patch_size``) throughout; each block is its own stage (a feature tap
    after every block, ``feature_info`` as timm's ViT). Unlike :class:`HierarchicalBackbone`:

    * ``forward_features``: ``(B, in_chans, H, W) -> (B, P + h*w, C)`` normalised tokens (NLC,
      the ``P = num_prefix_tokens`` prefix tokens first, patch tokens row-major, ``h, w = ceil(H/p),
      ceil(W/p)``), so ``feats[:, 0]`` is the class token where there is one, as in timm;
    * ``forward_head`` pools that sequence (:class:`TokenHead`: ``global_pool`` ``'token'``,
      ``'avg'``, ``'max'``, ``'avgmax'`` or ``''``, which returns the tokens);
    * ``forward_intermediates(..., return_prefix_tokens=False, output_fmt='NCHW' | 'NLC')`` as
      timm's ViT: patch tokens as ``(B, C, h, w)`` maps or ``(B, h*w, C)`` sequences, and with
      ``return_prefix_tokens`` (and ``P > 0``) a list of ``(patch_tokens, prefix_tokens (B, P, C))`` pairs.
      ``features_only=True`` and the detection adapters read the NCHW taps.

    The pretrained cfgs carry ``pool_size=None`` (as timm's ViT). ``output_fmt`` stays ``'NCHW'``:
    it describes the feature taps (timm's ViT has no other), not ``forward_features``.

    Subclasses provide :meth:`_embed` (image -> the token state and the grid ``(h, w)``), and may
    override :meth:`_sequence` (state -> ``(B, P + N, C)``). Each stage's blocks are called as
    ``block(x, grid)`` (a sequence mixer reads the grid, a map mixer ignores it).
    """

    def __init__(self, stem, stages, dim, reduction, num_classes=1000, global_pool="avg", drop_rate=0.0, num_prefix_tokens=0, **kwargs):
        super().__init__(
            stem,
            stages,
            [dim] * len(stages),
            [reduction] * len(stages),
            num_classes=num_classes,
            global_pool=global_pool,
            drop_rate=drop_rate,
            head=TokenHead(dim, num_classes, global_pool, drop_rate, num_prefix_tokens=num_prefix_tokens),
            **kwargs,
        )
        self.num_prefix_tokens = num_prefix_tokens

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.stem(x)  # (B, h, w, C)
        return x, (x.shape[1], x.shape[2])

    def _sequence(self, x: torch.Tensor) -> torch.Tensor:
        """The token state as ``(B, P + N, C)``: NHWC ``(B, h, w, C)`` tokens flattened row-major
        (subclasses whose state is already a sequence return it; no shape test, so FX can trace it)."""
        return x.flatten(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, num_prefix_tokens + h*w, C)``: normalised tokens (NLC)."""
        self._check_input(x)
        x, grid = self._embed(x)
        for stage in self.stages:  # inline (TorchScript takes no module arguments); grid for sequence mixers
            x = stage.downsample(x)
            for blk in stage.blocks:
                if stage.grad_checkpointing and not torch.jit.is_scripting():
                    x = checkpoint(blk, x, grid, use_reentrant=False)
                else:
                    x = blk(x, grid)
        return self.norm(self._sequence(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Patch tokens after selected blocks (timm ``VisionTransformer.forward_intermediates``).

        Args:
            x: ``(B, in_chans, H, W)`` images.
            indices: taps to return (None: all; int n: the last n; negatives allowed).
            return_prefix_tokens: return ``(patch_tokens, prefix_tokens)`` pairs (prefix ``(B, P, C)``;
                as timm, plain tensors when the model has no prefix tokens).
            norm: apply the final norm to the last block's tap.
            stop_early: stop after the last requested block.
            output_fmt: ``'NCHW'`` (``(B, C, h, w)`` maps) or ``'NLC'`` (``(B, h*w, C)``).
            intermediates_only: return only the list.

        Returns:
            the list, or ``(final_features, list)`` with ``final_features`` = :meth:`forward_features`.

        Raises:
            ValueError: another ``output_fmt``, or images :meth:`_check_input` refuses.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"forward_intermediates: output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        self._check_input(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x, (h, w) = self._embed(x)
        P = self.num_prefix_tokens
        last = len(self.stages) - 1
        stages = self.stages if (torch.jit.is_scripting() or not stop_early) else self.stages[: max_index + 1]
        intermediates: List = []
        for i, stage in enumerate(stages):
            x = stage.downsample(x)
            for blk in stage.blocks:
                if stage.grad_checkpointing and not torch.jit.is_scripting():
                    x = checkpoint(blk, x, (h, w), use_reentrant=False)
                else:
                    x = blk(x, (h, w))
            if i in take_indices:
                t = self._sequence(x)
                if norm and i == last:
                    t = self.norm(t)
                B, _, C = t.shape
                patches = t[:, P:]
                if output_fmt == "NCHW":
                    patches = patches.reshape(B, h, w, C).permute(0, 3, 1, 2)
                intermediates.append((patches, t[:, :P]) if (return_prefix_tokens and P) else patches)
        if intermediates_only:
            return intermediates
        return self.norm(self._sequence(x)), intermediates
