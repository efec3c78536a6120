"""A test-side re-statement of the official VAN module tree (NCHW, 1x1 convolutions as ``Conv2d``).

Module names and forward order follow Visual-Attention-Network/VAN-Classification ``models/van.py``
as documented in :mod:`visionattn.models.van` (``patch_embed{i}.{proj,norm}``,
``block{i}.{j}.{norm1, attn.{proj_1, spatial_gating_unit.{conv0, conv_spatial, conv1}, proj_2},
layer_scale_1, norm2, mlp.{fc1, dwconv.dwconv, fc2}, layer_scale_2}``, ``norm{i}``, ``head``), so
``state_dict()`` has the official keys. Written independently of visionattn: plain NCHW modules,
the stage LayerNorm applied on a flattened ``(B, HW, C)`` sequence as the official code does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _DW(nn.Module):  # official ``DWConv``: the conv is one level deeper (key ``dwconv.dwconv``)
    def __init__(self, c):
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 3, 1, 1, groups=c)

    def forward(self, x):
        return self.dwconv(x)


class _Mlp(nn.Module):
    def __init__(self, c, hidden):
        super().__init__()
        self.fc1, self.dwconv, self.fc2 = nn.Conv2d(c, hidden, 1), _DW(hidden), nn.Conv2d(hidden, c, 1)

    def forward(self, x):
        return self.fc2(F.gelu(self.dwconv(self.fc1(x))))


class _Gate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv0 = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.conv_spatial = nn.Conv2d(c, c, 7, padding=9, dilation=3, groups=c)
        self.conv1 = nn.Conv2d(c, c, 1)

    def forward(self, u):
        return u * self.conv1(self.conv_spatial(self.conv0(u)))


class _Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.proj_1, self.spatial_gating_unit, self.proj_2 = nn.Conv2d(c, c, 1), _Gate(c), nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x + self.proj_2(self.spatial_gating_unit(F.gelu(self.proj_1(x))))


class _Block(nn.Module):
    def __init__(self, c, ratio):
        super().__init__()
        self.norm1, self.attn = nn.BatchNorm2d(c), _Attn(c)
        self.norm2, self.mlp = nn.BatchNorm2d(c), _Mlp(c, int(c * ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((c,), 1e-2))
        self.layer_scale_2 = nn.Parameter(torch.full((c,), 1e-2))

    def forward(self, x):
        x = x + self.layer_scale_1[:, None, None] * self.attn(self.norm1(x))
        return x + self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x))


class _Embed(nn.Module):
    def __init__(self, cin, c, k, s):
        super().__init__()
        self.proj, self.norm = nn.Conv2d(cin, c, k, s, k // 2), nn.BatchNorm2d(c)

    def forward(self, x):
        return self.norm(self.proj(x))


class OfficialVAN(nn.Module):
    """Official-layout VAN. ``forward`` -> logits; ``stage_outputs`` -> the four normalised stage maps (NCHW)."""

    def __init__(self, embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), mlp_ratios=(8, 8, 4, 4), num_classes=1000):
        super().__init__()
        for i, (c, d, r) in enumerate(zip(embed_dims, depths, mlp_ratios)):
            cin = 3 if i == 0 else embed_dims[i - 1]
            setattr(self, f"patch_embed{i + 1}", _Embed(cin, c, 7 if i == 0 else 3, 4 if i == 0 else 2))
            setattr(self, f"block{i + 1}", nn.ModuleList([_Block(c, r) for _ in range(d)]))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(c, eps=1e-6))
        self.n = len(depths)
        self.head = nn.Linear(embed_dims[-1], num_classes)

    def stage_outputs(self, x):
        outs = []
        for i in range(1, self.n + 1):
            x = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                x = blk(x)
            B, C, H, W = x.shape
            x = getattr(self, f"norm{i}")(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, C, H, W)
            outs.append(x)
        return outs

    def forward(self, x):
        return self.head(self.stage_outputs(x)[-1].flatten(2).mean(-1))


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every parameter and BatchNorm buffer (layer scales to O(0.1), running stats away from 0/1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.1 if "layer_scale" in k else 0.05))
        for k, b in model.named_buffers():
            if k.endswith("running_mean"):
                b.add_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.1)
            elif k.endswith("running_var"):
                b.mul_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
            elif k.endswith("num_batches_tracked"):
                b.fill_(77)
    return model
