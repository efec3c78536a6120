"""A test-side re-statement of the official NAT / DiNAT / DiNAT_s / isotropic module trees.

Module names and forward order follow the reference facts (``shared/reference/nat_dinat.md``
sections 2.1-2.6, from SHI-Labs/Neighborhood-Attention-Transformer ``classification/*.py`` and
NATTEN 0.14 ``NeighborhoodAttention2D``), so ``state_dict()`` has the official keys. Written
independently of visionattn: attention is the gather implementation in ``_na_reference``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from _na_reference import gather_na2d


class LegacyNA2D(nn.Module):
    def __init__(self, dim, heads, K, d):
        super().__init__()
        self.heads, self.K, self.d = heads, K, d
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rpb = nn.Parameter(torch.randn(heads, 2 * K - 1, 2 * K - 1) * 0.5)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, H, W, C = x.shape
        span = self.K * self.d
        ph, pw = max(0, span - H), max(0, span - W)
        x = F.pad(x, (0, 0, 0, pw, 0, ph))  # pad the module input, before qkv (NATTEN <= 0.15)
        Hp, Wp = x.shape[1:3]
        q, k, v = self.qkv(x).reshape(B, Hp, Wp, 3, self.heads, C // self.heads).unbind(3)
        q = q * self.scale
        x = gather_na2d(q, k, v, self.K, self.d, self.rpb, scale=1.0).reshape(B, Hp, Wp, C)
        return self.proj(x[:, :H, :W])


class MHSARPB(nn.Module):
    """ViT-rpb attention with the Swin index buffer flipped on both axes (isotropic.py)."""

    def __init__(self, dim, heads, S=14):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rpb = nn.Parameter(torch.randn(heads, 2 * S - 1, 2 * S - 1) * 0.5)
        self.proj = nn.Linear(dim, dim)
        coords = torch.stack(torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += S - 1
        rel[:, :, 1] += S - 1
        rel[:, :, 0] *= 2 * S - 1
        self.register_buffer("relative_position_index", torch.flipud(torch.fliplr(rel.sum(-1))))

    def forward(self, x):
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H * W, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.rpb.flatten(1)[:, self.relative_position_index.view(-1)].view(self.heads, H * W, H * W)
        attn = (attn + bias[None]).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, H, W, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, dim, attn, mlp_ratio, layer_scale=None):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(dim), attn, nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(torch.rand(dim))
            self.gamma2 = nn.Parameter(torch.rand(dim))

    def forward(self, x):
        if self.layer_scale:
            x = x + self.gamma1 * self.attn(self.norm1(x))
            return x + self.gamma2 * self.mlp(self.norm2(x))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ConvDown(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x):
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class Merge(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        if x.shape[1] % 2 or x.shape[2] % 2:
            x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        x0, x1, x2, x3 = x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]
        return self.reduction(self.norm(torch.cat([x0, x1, x2, x3], -1)))


class Level(nn.Module):
    def __init__(self, blocks, downsample):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbedConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(3, dim // 2, 3, 2, 1), nn.Conv2d(dim // 2, dim, 3, 2, 1))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchEmbedPatch(nn.Module):
    def __init__(self, dim, p):
        super().__init__()
        self.p = p
        self.proj = nn.Conv2d(3, dim, p, p)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        p = self.p
        x = F.pad(x, (0, (p - x.shape[-1] % p) % p, 0, (p - x.shape[-2] % p) % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class OfficialNAT(nn.Module):
    """``layout='conv'``: NAT/DiNAT (``levels``); ``'swin'``: DiNAT_s (``layers``)."""

    def __init__(self, embed_dim, depths, num_heads, mlp_ratio, kernel_size=7, dilations=None, layer_scale=None, layout="conv", num_classes=1000):
        super().__init__()
        dilations = dilations or [[1] * d for d in depths]
        self.patch_embed = PatchEmbedConv(embed_dim) if layout == "conv" else PatchEmbedPatch(embed_dim, 4)
        stages = []
        for i, depth in enumerate(depths):
            dim = embed_dim * 2**i
            blocks = [Layer(dim, LegacyNA2D(dim, num_heads[i], kernel_size, dilations[i][j]), mlp_ratio, layer_scale) for j in range(depth)]
            down = None if i == len(depths) - 1 else (ConvDown(dim) if layout == "conv" else Merge(dim))
            stages.append(Level(blocks, down))
        if layout == "conv":
            self.levels = nn.ModuleList(stages)
        else:
            self.layers = nn.ModuleList(stages)
        nf = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(nf)
        self.head = nn.Linear(nf, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        for level in getattr(self, "levels", None) or self.layers:
            x = level(x)
        return self.head(self.norm(x).flatten(1, 2).mean(1))


class OfficialIsotropic(nn.Module):
    def __init__(self, embed_dim, num_heads, depth=12, kernel_size=7, dilation=1, attention="na", num_classes=1000):
        super().__init__()
        self.patch_embed = PatchEmbedPatch(embed_dim, 16)
        self.layers = nn.Sequential(
            *[
                Layer(
                    embed_dim,
                    MHSARPB(embed_dim, num_heads) if attention == "mhsa" else LegacyNA2D(embed_dim, num_heads, kernel_size, 1 if i % 2 == 0 else dilation),
                    4.0,
                )
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        x = self.layers(self.patch_embed(x))
        return self.head(self.norm(x).flatten(1, 2).mean(1))


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter non-trivial random values (norms and biases too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(noise * (0.1 if p.dim() <= 1 else 0.05))
    return model


def official_to_hf(sd: dict, prefix: str = "dinat.") -> dict:
    """Official NAT/DiNAT keys -> Hugging Face transformers keys (reference section 2.6 table)."""
    import re

    out = {}
    for k, v in sd.items():
        m = re.match(r"levels\.(\d+)\.blocks\.(\d+)\.(.*)", k)
        if m:
            i, j, rest = m.groups()
            base = f"{prefix}encoder.levels.{i}.layers.{j}."
            if rest.startswith("attn.qkv."):
                kind = rest.split(".")[-1]
                qq, kk, vv = v.chunk(3, 0)
                out[base + f"attention.self.query.{kind}"] = qq
                out[base + f"attention.self.key.{kind}"] = kk
                out[base + f"attention.self.value.{kind}"] = vv
            elif rest == "gamma1":
                out[base + "layer_scale_parameters"] = torch.stack([v, sd[k[:-1] + "2"]])
            elif rest == "gamma2":
                continue
            else:
                ren = {
                    "norm1.": "layernorm_before.",
                    "attn.rpb": "attention.self.rpb",
                    "attn.proj.": "attention.output.dense.",
                    "norm2.": "layernorm_after.",
                    "mlp.fc1.": "intermediate.dense.",
                    "mlp.fc2.": "output.dense.",
                }
                for a, b in ren.items():
                    if rest.startswith(a):
                        out[base + b + rest[len(a):]] = v
                        break
                else:
                    raise KeyError(rest)
            continue
        m = re.match(r"levels\.(\d+)\.downsample\.(.*)", k)
        if m:
            out[f"{prefix}encoder.levels.{m.group(1)}.downsample.{m.group(2)}"] = v
        elif k.startswith("patch_embed.proj."):
            out[prefix + "embeddings.patch_embeddings.projection." + k[len("patch_embed.proj."):]] = v
        elif k.startswith("patch_embed.norm."):
            out[prefix + "embeddings.norm." + k[len("patch_embed.norm."):]] = v
        elif k.startswith("norm."):
            out[prefix + "layernorm." + k[len("norm."):]] = v
        elif k.startswith("head."):
            out["classifier." + k[len("head."):]] = v
        else:
            raise KeyError(k)
    return out
