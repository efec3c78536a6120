"""Convolutional stems and downsamplers shared by the families.

All modules take NCHW images (stems) or NHWC tokens (downsamplers, blocks) and return NHWC tokens.

* :class:`ConvTokenizer` / :class:`ConvDownsampler`: NAT / DiNAT (Hassani et al., CVPR 2023,
  Sec. 3.2; github SHI-Labs/Neighborhood-Attention-Transformer ``classification/nat.py``): two
  stride-2 3x3 convs with no activation between them, then LayerNorm; one stride-2 3x3 conv
  without bias, then LayerNorm. Spatial size ``ceil(H / 2)`` per stride-2 conv.
* :class:`PatchEmbed` / :class:`PatchMerging`: the Swin-style layout used by DiNAT_s and the
  isotropic models (Liu et al., ICCV 2021, Sec. 3.1; ``classification/dinats.py``): a ``p x p``
  stride-``p`` conv (input zero-padded bottom/right to a multiple of ``p``) then LayerNorm;
  2x2 neighbor concatenation ``[x(0,0), x(1,0), x(0,1), x(1,1)]`` -> LayerNorm(4C) -> Linear(4C, 2C)
  without bias (odd maps zero-padded bottom/right first).
* :class:`MBConv` / :class:`ConvBNStem`: MaxViT's pre-norm MBConv with SE and TF "same" padding
  and its two-conv BatchNorm stem (Tu et al., ECCV 2022, Sec. 3.3; github google-research/maxvit).
* :class:`ConvPosEnc` / :class:`ConvLNStem` / :class:`LNConvDownsample`: DaViT's depthwise conv
  position encoding, 7x7 stride-4 conv + LN stem and LN + 2x2 stride-2 conv downsampler
  (Ding et al., ECCV 2022; github dingmyu/davit ``timm/models/davit.py``).
* :class:`CrossScaleEmbed`: CrossFormer's cross-scale embedding layer (CEL; Wang et al., ICLR
  2022, Sec. 3.1, Fig. 2a; github cheerss/CrossFormer ``models/crossformer.py`` ``PatchEmbed`` and
  ``PatchMerging``): several convolutions of one stride and growing kernels, centred on the same
  positions, concatenated along channels; the stem (LN after) and every downsampler (LN before).
* :class:`ActivationCooling`: CrossFormer++'s activation cooling layer (ACL): 3x3 depthwise conv
  then LayerNorm, no residual.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import DropPath, SEModule, create_conv2d, create_pool2d, get_norm_act_layer, make_divisible

from ..ops._trace import has_symbolic_hw, pad_nchw, pad_nhwc

torch.fx.wrap("pad_nchw")  # shape-dependent padding stays a leaf of FX graphs (see ops/_trace.py)
torch.fx.wrap("pad_nhwc")

__all__ = [
    "ConvTokenizer", "ConvDownsampler", "PatchEmbed", "PatchMerging", "ConvPosEnc", "MBConv", "ConvBNStem", "ConvLNStem", "LNConvDownsample",
    "CrossScaleEmbed", "ActivationCooling",
]


class ConvTokenizer(nn.Module):
    """NAT stem: ``(B, in_chans, H, W) -> (B, ceil(H/4), ceil(W/4), dim)``.

    Keys: ``proj.0`` (in_chans -> dim/2), ``proj.1`` (dim/2 -> dim), ``norm``.
    """

    def __init__(self, in_chans: int = 3, dim: int = 64, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """NAT downsampler: ``(B, H, W, dim) -> (B, ceil(H/2), ceil(W/2), dim_out)``.

    Keys: ``reduction`` (3x3 stride-2 conv, no bias unless ``bias=True``), ``norm``.
    ``bias=True`` gives CSWin's ``Merge_Block`` (github microsoft/CSWin-Transformer ``models/cswin.py``).
    """

    def __init__(self, dim: int, dim_out: int, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, bias: bool = False):
        super().__init__()
        self.reduction = nn.Conv2d(dim, dim_out, kernel_size=3, stride=2, padding=1, bias=bias)
        self.norm = norm_layer(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class PatchEmbed(nn.Module):
    """Patchify stem: ``(B, in_chans, H, W) -> (B, ceil(H/p), ceil(W/p), dim)``.

    Keys: ``proj`` (p x p conv, stride p, with bias), ``norm`` (absent when ``norm_layer`` is None).
    """

    def __init__(self, in_chans: int = 3, dim: int = 96, patch_size: int = 4, norm_layer=nn.LayerNorm):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass (a method of its own so subclasses can call it: TorchScript has no ``super()``)."""
        x = pad_nchw(x, self.patch_size, self.patch_size)
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Swin patch merging: ``(B, H, W, dim) -> (B, ceil(H/2), ceil(W/2), dim_out)``.

    Keys: ``norm`` (over ``4 * dim``), ``reduction`` (Linear(4*dim, dim_out), no bias).
    """

    def __init__(self, dim: int, dim_out: int, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, dim_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if has_symbolic_hw(x):
            # torch.export with a dynamic height/width: the padded size written as ``2 * ceil(H / 2)``,
            # so that the split below is provably exact (``pad_nhwc``'s ``H + (2 - H % 2) % 2`` is the
            # same number, but torch cannot prove it even)
            B, H, W, C = x.shape
            x = F.pad(x, [0, 0, 0, 2 * ((W + 1) // 2) - W, 0, 2 * ((H + 1) // 2) - H])
        else:
            x = pad_nhwc(x, 2, 2)
        B, H, W, C = x.shape
        # (B, H/2, 2 [row offset], W/2, 2 [col offset], C) -> channel order (col, row): x0, x1, x2, x3
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


# ------------------------------------------------------------------------------------------------
# MaxViT (Tu et al., ECCV 2022, Sec. 3.3 and Fig. 2; TF port: github google-research/maxvit
# ``maxvit/models/maxvit.py`` ``MBConvBlock`` / stem, ``common_ops.py``) and DaViT (Ding et al.,
# ECCV 2022, Sec. 3.3; github dingmyu/davit ``timm/models/davit.py`` ``PatchEmbed`` / ``ConvPosEnc``).
# Key names follow timm 1.0.x ``models/maxxvit.py`` / ``models/davit.py`` so converted weights line up.


class ConvPosEnc(nn.Module):
    """Convolutional position encoding (DaViT, CPVT-style): ``x + act(dwconv_k(x))``.

    ``proj`` is a ``k x k`` depthwise conv with bias, zero padding ``k // 2`` (keys ``proj``);
    ``act`` is GELU when ``act=True`` (off in DaViT). Source: dingmyu/davit ``ConvPosEnc``.

    Shapes: NHWC ``(B, H, W, C) -> (B, H, W, C)`` (permuted locally to NCHW for the conv).
    """

    def __init__(self, dim: int, kernel_size: int = 3, act: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.proj(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


class MBConv(nn.Module):
    """MaxViT's pre-norm inverted-bottleneck conv block with squeeze-excitation.

    ``x = shortcut(x) + drop_path(conv3_1x1(se(act(norm2(conv2_kxk(act(norm1(conv1_1x1(pre_norm(x))))))))))``
    with BatchNorm (``norm_eps``; TF 1e-3) and no activation in ``pre_norm``, expansion to
    ``expand_ratio * out_chs`` channels, a depthwise ``k x k`` conv carrying the stride with TF
    "same" padding (timm ``create_conv2d(padding='same')``: dynamic ``Conv2dSame`` at stride 2,
    static symmetric padding at stride 1), SE with ``int(se_ratio * out_chs)`` reduced channels
    and SiLU (timm ``SEModule``), and a 1x1 projection with bias. At stride 2 the shortcut is a
    2x2 "same" average pool (timm ``AvgPool2dSame``; on odd maps the padded zero counts in the
    mean, as in timm) then, when channels change, a 1x1 conv with
    bias (``shortcut.expand``). Source: google-research/maxvit ``MBConvBlock``; timm
    ``MbConvBlock`` with ``_tf_cfg()``.

    Args:
        in_chs, out_chs: channels; stride: 1 or 2; kernel_size: depthwise kernel.
        expand_ratio: expansion w.r.t. ``out_chs``; se_ratio: SE width w.r.t. ``out_chs`` (0: no SE).
        act_layer: activation name for timm ``get_act_layer`` (TF MaxViT: ``'gelu_tanh'``).
        norm_eps: BatchNorm eps; drop_path: stochastic depth of the residual branch.

    Shapes: NHWC ``(B, H, W, in_chs) -> (B, ceil(H/stride), ceil(W/stride), out_chs)``.

    Raises:
        ValueError: ``stride`` other than 1 or 2.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        kernel_size: int = 3,
        expand_ratio: float = 4.0,
        se_ratio: float = 0.25,
        act_layer: str = "gelu_tanh",
        norm_eps: float = 1e-3,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv: stride must be 1 or 2, got {stride}")
        bn_act = get_norm_act_layer("batchnorm2d", act_layer)
        mid = make_divisible(out_chs * expand_ratio)
        short = OrderedDict()
        if stride == 2:
            short["pool"] = create_pool2d("avg", 2, stride=2, padding="same")
        if in_chs != out_chs:
            short["expand"] = nn.Conv2d(in_chs, out_chs, 1, bias=True)
        self.shortcut = nn.Sequential(short) if short else nn.Identity()
        self.pre_norm = bn_act(in_chs, eps=norm_eps, apply_act=False)
        self.conv1_1x1 = create_conv2d(in_chs, mid, 1)
        self.norm1 = bn_act(mid, eps=norm_eps)
        self.conv2_kxk = create_conv2d(mid, mid, kernel_size, stride=stride, groups=mid, padding="same")
        self.norm2 = bn_act(mid, eps=norm_eps)
        self.se = SEModule(mid, rd_channels=int(se_ratio * out_chs), act_layer="silu") if se_ratio > 0 else nn.Identity()
        self.conv3_1x1 = create_conv2d(mid, out_chs, 1, bias=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # NCHW view of the NHWC memory (channels_last)
        shortcut = self.shortcut(x)
        x = self.norm1(self.conv1_1x1(self.pre_norm(x)))
        x = self.se(self.norm2(self.conv2_kxk(x)))
        x = self.drop_path(self.conv3_1x1(x)) + shortcut
        return x.permute(0, 2, 3, 1)


class ConvBNStem(nn.Module):
    """MaxViT stem: ``conv1`` 3x3 stride 2 -> BatchNorm + act (``norm1``) -> ``conv2`` 3x3 stride 1.

    Both convs have bias and TF "same" padding (timm ``create_conv2d(padding='same')``: dynamic
    at stride 2, so the output is ``ceil(H/2)``). No norm after ``conv2``. Source:
    google-research/maxvit ``MaxViT`` stem (``conv_0``/``conv_1``); timm ``maxxvit.Stem``.

    Shapes: NCHW images ``(B, in_chans, H, W) -> (B, ceil(H/2), ceil(W/2), dim)`` NHWC tokens.
    """

    def __init__(self, in_chans: int = 3, dim: int = 64, act_layer: str = "gelu_tanh", norm_eps: float = 1e-3):
        super().__init__()
        self.conv1 = create_conv2d(in_chans, dim, 3, stride=2, padding="same", bias=True)
        self.norm1 = get_norm_act_layer("batchnorm2d", act_layer)(dim, eps=norm_eps)
        self.conv2 = create_conv2d(dim, dim, 3, stride=1, padding="same", bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm1(self.conv1(x))).permute(0, 2, 3, 1)


class ConvLNStem(nn.Module):
    """DaViT stem: zero-pad bottom/right to a multiple of ``stride``, ``k x k`` conv (stride
    ``stride``, padding ``k // 2``, bias), then LayerNorm over channels.

    Keys ``conv``, ``norm``. Source: dingmyu/davit ``PatchEmbed(patch_size=4)`` (7x7, stride 4,
    padding 3, then LN); timm ``davit.Stem``.

    Shapes: NCHW images ``(B, in_chans, H, W) -> (B, ceil(H/stride), ceil(W/stride), dim)``.
    """

    def __init__(
        self, in_chans: int = 3, dim: int = 96, kernel_size: int = 7, stride: int = 4, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm
    ):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(in_chans, dim, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_nchw(x, self.stride, self.stride)
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class LNConvDownsample(nn.Module):
    """DaViT downsampler: LayerNorm over the input channels, then a stride-2 ``k x k`` conv (bias).

    Even ``k`` (DaViT: 2): zero-pad bottom/right to a multiple of ``k``, no conv padding; odd ``k``
    (Florence-2: 3): padding ``k // 2``. Keys ``norm``, ``conv``. Source: dingmyu/davit
    ``PatchEmbed(patch_size=2)`` (LN on the input tokens, then conv); timm ``davit.Downsample``.

    Shapes: NHWC ``(B, H, W, dim) -> (B, ceil(H/2), ceil(W/2), dim_out)``.
    """

    def __init__(self, dim: int, dim_out: int, kernel_size: int = 2, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(dim)
        self.even_k = kernel_size % 2 == 0
        self.conv = nn.Conv2d(dim, dim_out, kernel_size, stride=2, padding=0 if self.even_k else kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).permute(0, 3, 1, 2)
        if self.even_k:
            x = pad_nchw(x, self.conv.kernel_size[0], self.conv.kernel_size[0])
        return self.conv(x).permute(0, 2, 3, 1)


def cross_scale_dims(dim: int, n: int):
    """Output channels of the ``n`` kernels of a cross-scale embedding of ``dim`` channels: halves
    from the smallest kernel on, the last two equal (CrossFormer Sec. 3.1: ``[dim/2, dim/4, ...,
    dim/2^(n-1), dim/2^(n-1)]``; one kernel: ``[dim]``)."""
    return [dim // 2 ** (i + 1) for i in range(n - 1)] + [dim // 2 ** (n - 1)]


class CrossScaleEmbed(nn.Module):
    """Cross-scale embedding layer (CEL): concatenated convolutions of several kernel sizes.

    Every conv has stride ``stride`` and padding ``(k - stride) // 2``, so all sample the same
    positions; their outputs (:func:`cross_scale_dims` channels, smallest kernel first) are
    concatenated. ``position='stem'``: NCHW images in, LayerNorm after (CrossFormer
    ``PatchEmbed``, kernels 4/8/16/32, stride 4); ``position='downsample'``: NHWC tokens in,
    LayerNorm over the input before the convs (``PatchMerging``, kernels 2/4, stride 2). Source:
    Wang et al., ICLR 2022, Sec. 3.1; github cheerss/CrossFormer ``models/crossformer.py``.

    Keys ``convs.{i}`` and ``norm``. Any size: the input (after the downsampler's norm) is
    zero-padded bottom/right to a multiple of ``stride`` first, so every conv gives
    ``ceil(H / stride)`` (the official code only runs multiples: its images are padded to 32 for
    detection, and its merging asserts even maps); at multiples nothing changes.

    Args:
        in_chans: input channels; dim: output channels (the sum of the convs').
        kernel_sizes: kernel of each conv (each ``>= stride``, ``k - stride`` even).
        stride: the common stride; position: ``'stem'`` or ``'downsample'``.

    Shapes: ``(B, in_chans, H, W)`` (stem) or ``(B, H, W, in_chans)`` (downsample) ->
    ``(B, ceil(H / stride), ceil(W / stride), dim)``.

    Raises:
        ValueError: an unknown ``position``; a kernel smaller than the stride or with odd ``k - stride``.
    """

    def __init__(self, in_chans: int, dim: int, kernel_sizes=(4, 8, 16, 32), stride: int = 4, position: str = "stem",
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        if position not in ("stem", "downsample"):
            raise ValueError(f"CrossScaleEmbed: position must be 'stem' or 'downsample', got {position!r}")
        for k in kernel_sizes:
            if k < stride or (k - stride) % 2:
                raise ValueError(f"CrossScaleEmbed: kernel {k} does not fit stride {stride} (need k >= stride, k - stride even)")
        self.stem = position == "stem"
        self.stride = stride
        dims = cross_scale_dims(dim, len(kernel_sizes))
        self.convs = nn.ModuleList(nn.Conv2d(in_chans, d, k, stride=stride, padding=(k - stride) // 2) for d, k in zip(dims, kernel_sizes))
        self.norm = norm_layer(dim if self.stem else in_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.stem:
            x = self.norm(x).permute(0, 3, 1, 2)
        x = pad_nchw(x, self.stride, self.stride)
        x = torch.cat([conv(x) for conv in self.convs], dim=1).permute(0, 2, 3, 1)
        return self.norm(x) if self.stem else x


class ActivationCooling(nn.Module):
    """Activation cooling layer (ACL) of CrossFormer++: ``x = LN(dwconv3x3(x))``, no residual.

    It rescales the residual stream, whose activations otherwise grow with depth (Wang et al.,
    CrossFormer++, TPAMI 2023; github cheerss/CrossFormer ``models/crossformer.py``
    ``CrossFormerBlock`` ``ex_conv`` / ``ex_ln``). Keys ``conv``, ``norm``.

    Shapes: NHWC ``(B, H, W, dim) -> (B, H, W, dim)``.
    """

    def __init__(self, dim: int, kernel_size: int = 3, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
