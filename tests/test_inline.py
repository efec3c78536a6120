"""InLine attention: the mixer against the paper's dense definition (forward and backward), the
registry entry, checkpoint conversion from the official key layouts, parameter counts, the layout
of the variants and fvcore GMACs.

References written here (not the code under test):
* ``_ref_inline``: InLine attention from Eq. 5 of Han et al. (arXiv:2412.06590) as an explicit
  ``N x N`` weight matrix ``w_ij = (s/N) (phi(q_i).phi(k_j) - mean_t phi(q_i).phi(k_t)) + 1/N``
  applied to ``V``, and the local residual as a per-image ``F.conv2d`` with the predicted kernels
  (the convolution the official code runs), the kernel MLP as explicit grouped matrix products.
* ``_official_keys``: the official state-dict key layouts (``models/inline_*.py`` module trees)
  produced from our keys by the inverse of the documented mapping; the tiny models' entry counts
  are those of the official definitions (200 / 166 / 205 / 430).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import visionattn
from visionattn.layers import TransformerBlock
from visionattn.layers.inline import InLineAttention, dynamic_dwconv3x3
from visionattn.layers.window import WindowAttention
from visionattn.models._registry import CheckpointKeyError
from visionattn.models.inline import InLineCSWin, InLineDeiT, InLinePVT, InLineSwin, checkpoint_filter_fn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _f64():
    torch.set_default_dtype(torch.float64)  # the references are compared at float64 precision
    yield
    torch.set_default_dtype(torch.float32)


def _randomise(mod, std=0.3):
    with torch.no_grad():
        for prm in mod.parameters():
            prm.copy_(torch.randn_like(prm) * std)


# ------------------------------------------------------------------------------------------------
# the mixer


_PHI = {"identity": lambda t: t, "relu": torch.relu, "leakyrelu": lambda t: F.leaky_relu(t, 0.01), "exp": lambda t: torch.exp(0.2 * t)}


def _ref_inline(mod: InLineAttention, x: torch.Tensor, H: int, W: int, P: int = 0, context=None) -> torch.Tensor:
    """InLine attention of ``x (B, P + H*W, C)`` from the paper's definition, with ``mod``'s parameters."""
    B, N, C = x.shape
    m = mod.num_heads
    d = C // m
    s = d**-0.5
    if hasattr(mod, "q"):
        q = x @ mod.q.weight.T + mod.q.bias
        kv = x @ mod.kv.weight.T + mod.kv.bias
        k, v = kv[..., :C], kv[..., C:]
    else:
        qkv = x @ mod.qkv.weight.T + mod.qkv.bias
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    phi = _PHI[mod.kernel_func]
    q, k = phi(q), phi(k)
    out = torch.zeros(B, N, C)
    for h in range(m):
        sl = slice(h * d, (h + 1) * d)
        sim = q[..., sl] @ k[..., sl].transpose(1, 2)  # (B, N, N)
        w = (s / N) * (sim - sim.mean(-1, keepdim=True)) + 1.0 / N  # Eq. 5 with the official scale
        torch.testing.assert_close(w.sum(-1), torch.ones(B, N))  # the weights of every query sum to 1
        out[..., sl] = w @ v[..., sl]
    # local residual: kernels from the token mean through the grouped 1x1 convs, as explicit products
    ctx = (x if context is None else context.reshape(B, -1, C)).mean(1)  # (B, C)
    g = C // m
    w0, b0 = mod.residual[0].weight[..., 0], mod.residual[0].bias  # (C, g), (C,)
    w2, b2 = mod.residual[2].weight[..., 0], mod.residual[2].bias  # (9C, g), (9C,)
    hid = F.gelu(torch.cat([ctx[:, h * g:(h + 1) * g] @ w0[h * g:(h + 1) * g].T for h in range(m)], -1) + b0)
    G = 9 * C // m
    ker = torch.cat([hid[:, h * g:(h + 1) * g] @ w2[h * G:(h + 1) * G].T for h in range(m)], -1) + b2  # (B, 9C)
    vimg = v[:, P:].reshape(B, H, W, C).permute(0, 3, 1, 2)
    local = torch.stack([F.conv2d(vimg[b:b + 1], ker[b].reshape(C, 1, 3, 3), padding=1, groups=C)[0] for b in range(B)])
    if mod.lepe is not None:
        local = local + F.conv2d(vimg, mod.lepe.weight, mod.lepe.bias, padding=1, groups=C)
    out = torch.cat([out[:, :P], out[:, P:] + local.permute(0, 2, 3, 1).reshape(B, H * W, C)], 1)
    return out @ mod.proj.weight.T + mod.proj.bias


@pytest.mark.parametrize(
    "H, W, split, kernel, lepe",
    [(4, 4, False, "identity", False), (5, 3, True, "identity", False), (3, 6, False, "relu", True), (1, 2, False, "exp", False), (4, 5, True, "leakyrelu", True)],
)
def test_mixer_nhwc_matches_paper_definition_forward_backward(H, W, split, kernel, lepe):
    torch.manual_seed(0)
    mod = InLineAttention(12, 3, split_qkv=split, kernel_func=kernel, lepe=lepe)
    _randomise(mod)
    x = torch.randn(2, H, W, 12, requires_grad=True)
    y = mod(x)
    xr = x.detach().clone().requires_grad_(True)
    ref = _ref_inline(mod, xr.reshape(2, H * W, 12), H, W).reshape(2, H, W, 12)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    gy = torch.randn_like(y)
    (y * gy).sum().backward()
    (ref * gy).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("H, W", [(4, 4), (3, 5)])
def test_mixer_with_class_token_and_block_context(H, W):
    torch.manual_seed(1)
    mod = InLineAttention(8, 2, num_prefix_tokens=1)
    _randomise(mod)
    x = torch.randn(2, 1 + H * W, 8)
    torch.testing.assert_close(mod(x, (H, W)), _ref_inline(mod, x, H, W, P=1), rtol=1e-10, atol=1e-10)
    # residual_source='block': the kernels come from the block input before norm1 (InLine-CSwin)
    mod = InLineAttention(8, 2, lepe=True, residual_source="block")
    _randomise(mod)
    blk = TransformerBlock(8, mod, mlp_ratio=0)
    _randomise(blk.norm1)
    xi = torch.randn(2, H, W, 8)
    with torch.no_grad():
        out = blk(xi)
    ref = _ref_inline(mod, blk.norm1(xi).reshape(2, H * W, 8), H, W, context=xi).reshape(2, H, W, 8)
    torch.testing.assert_close(out, xi + ref, rtol=1e-10, atol=1e-10)
    assert blk(torch.randn(0, H, W, 8)).shape == (0, H, W, 8)  # empty batch through the context path


def test_dynamic_dwconv_matches_conv2d_and_empty_batch():
    torch.manual_seed(2)
    x, w = torch.randn(3, 5, 7, 4), torch.randn(3, 4, 9)
    ref = torch.stack([F.conv2d(x[b:b + 1].permute(0, 3, 1, 2), w[b].reshape(4, 1, 3, 3), padding=1, groups=4)[0] for b in range(3)])
    torch.testing.assert_close(dynamic_dwconv3x3(x, w), ref.permute(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    mod = InLineAttention(8, 2)
    assert mod(torch.randn(0, 3, 3, 8)).shape == (0, 3, 3, 8)


def test_mixer_errors():
    with pytest.raises(ValueError, match="divisible"):
        InLineAttention(10, 3)
    with pytest.raises(ValueError, match="kernel_func"):
        InLineAttention(8, 2, kernel_func="softmax")
    with pytest.raises(ValueError, match="residual_source"):
        InLineAttention(8, 2, residual_source="norm")
    mod = InLineAttention(8, 2, num_prefix_tokens=1)
    with pytest.raises(ValueError, match="prefix"):
        mod(torch.randn(1, 3, 3, 8))
    with pytest.raises(ValueError, match=r"11 tokens but grid 3x3 \+ 1"):
        mod(torch.randn(1, 11, 8), (3, 3))
    with pytest.raises(ValueError, match="need grid"):
        InLineAttention(8, 2)(torch.randn(1, 9, 8))


def test_registry_entry():
    spec = visionattn.get_mixer("inline")
    assert spec.description and spec.cost and "NeurIPS 2024" in spec.paper
    assert sorted(spec.kwargs) == sorted(spec.accepted_kwargs())
    m = visionattn.create_mixer("inline", 32, 2, lepe=True)
    for H, W in [(14, 14), (9, 13), (1, 2)]:
        x = torch.randn(2, H, W, 32, requires_grad=True)
        y = m(x)
        (y * torch.randn_like(y)).sum().backward()
        assert y.shape == x.shape and torch.isfinite(x.grad).all()
        torch.testing.assert_close(m(x[:1].detach()), y[:1].detach())  # batch independence
    from visionattn.engine.flops import count_gmacs, unexpected_uncounted

    class Nchw(torch.nn.Module):
        def __init__(self, mixer):
            super().__init__()
            self.m = mixer

        def forward(self, x):
            return self.m(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        gmacs, uns = count_gmacs(Nchw(visionattn.create_mixer("inline", 32, 2)), (32, 14, 14))
    finally:
        torch.set_default_dtype(prev)
    N, C, m_ = 196, 32, 2
    assert unexpected_uncounted(uns) == []
    assert round(gmacs * 1e9) == 4 * N * C * C + 2 * N * C * C // m_ + 10 * C * C // m_ + 9 * N * C  # the documented cost


# ------------------------------------------------------------------------------------------------
# official key layouts (inverse of the documented mapping), conversion


def _official_keys(model, sd):
    """Our state dict -> the official layout of the family (``models/inline_*.py`` module trees)."""
    out = {}
    for k, v in sd.items():
        if isinstance(model, InLineCSWin):
            parts = k.split(".")
            if k.startswith("stages.") and parts[2] == "blocks":
                i, j, rest = int(parts[1]), parts[3], ".".join(parts[4:])
                attn = model.stages[i].blocks[int(j)].attn
                if rest.startswith("attn.qkv.") or rest.startswith("attn.proj."):
                    out[f"stage{i + 1}.{j}.{rest[5:]}"] = v
                elif rest.startswith("attn.lepe.") and not isinstance(attn, InLineAttention):
                    C = v.shape[0]
                    if attn.full:
                        out[f"stage{i + 1}.{j}.attns.0.get_v.{parts[-1]}"] = v
                    else:
                        out[f"stage{i + 1}.{j}.attns.0.get_v.{parts[-1]}"] = v[: C // 2]
                        out[f"stage{i + 1}.{j}.attns.1.get_v.{parts[-1]}"] = v[C // 2:]
                elif rest.startswith("attn."):
                    out[f"stage{i + 1}.{j}.attns.0.{rest[5:].replace('lepe.', 'get_v.')}"] = v
                else:
                    out[f"stage{i + 1}.{j}.{rest}"] = v
            elif ".downsample." in k:
                out[f"merge{parts[1]}.{k.split('.downsample.')[1].replace('reduction', 'conv')}"] = v
            elif k.startswith("stem."):
                out[k.replace("stem.conv", "stage1_conv_embed.0").replace("stem.norm", "stage1_conv_embed.2")] = v
            elif k.startswith("head.fc."):
                out["head." + k[8:]] = v
            else:
                out[k] = v
        elif isinstance(model, InLinePVT):
            if k.startswith("stem."):
                k2 = "pos_embed1" if k == "stem.pos_embed" else "patch_embed1." + k[5:]
            elif ".downsample." in k:
                i = int(k.split(".")[1])
                rest = k.split(".downsample.")[1]
                k2 = f"pos_embed{i + 1}" if rest == "pos_embed" else f"patch_embed{i + 1}.{rest}"
            elif k.startswith("stages."):
                _, i, _, j, rest = k.split(".", 4)
                k2 = f"block{int(i) + 1}.{j}.{rest}"
            else:
                k2 = "head." + k[8:]
            out[k2] = v
        elif isinstance(model, InLineDeiT):
            if k.startswith("stages."):
                _, i, _, _, rest = k.split(".", 4)
                k2 = f"blocks.{i}.{rest}"
            elif k.startswith("stem."):
                k2 = "patch_embed." + k[5:]
            elif k.startswith("head.fc."):
                k2 = "head." + k[8:]
            else:
                k2 = k
            out[k2] = v
        else:  # InLineSwin
            if k.startswith("stem."):
                k2 = "patch_embed." + k[5:]
            elif ".downsample." in k:
                k2 = f"layers.{int(k.split('.')[1]) - 1}.downsample." + k.split(".downsample.")[1]
            elif k.startswith("stages."):
                _, i, _, j, rest = k.split(".", 4)
                k2 = f"layers.{i}.blocks.{j}.{rest}"
                if rest == "attn.rpb":
                    heads, s, _ = v.shape
                    out[k2.replace("rpb", "relative_position_bias_table")] = v.flip(1, 2).reshape(heads, s * s).t()
                    out[k2.replace("rpb", "relative_position_index")] = torch.zeros(((s + 1) // 2) ** 2, ((s + 1) // 2) ** 2, dtype=torch.long)
                    if model.stages[int(i)].blocks[int(j)].attn.shift_size[0]:
                        out[f"layers.{i}.blocks.{j}.attn_mask"] = torch.zeros(1)
                    continue
            elif k.startswith("head.fc."):
                k2 = "head." + k[8:]
            else:
                k2 = k
            out[k2] = v
    return out


def _small(cls, **kw):
    base = {
        InLinePVT: dict(embed_dims=(8, 16, 16, 24), num_heads=(1, 2, 2, 3), depths=(1, 1, 2, 1), img_size=64),
        InLineDeiT: dict(embed_dim=24, depth=2, num_heads=3, img_size=64),
        InLineSwin: dict(embed_dim=8, depths=(1, 1, 4, 1), num_heads=(1, 2, 2, 4), inline_blocks=(1, 1, 1, 0), img_size=256),
        InLineCSWin: dict(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(2, 2, 2, 4), split_size=(1, 2, 2, 2), img_size=64),
    }[cls]
    torch.manual_seed(3)
    return cls(**{**base, **kw}).eval()


@pytest.mark.parametrize("cls", [InLinePVT, InLineDeiT, InLineSwin, InLineCSWin])
def test_official_layout_converts_strictly(cls):
    model = _small(cls)
    _randomise(model, 0.05)
    sd = model.state_dict()
    off = _official_keys(model, sd)
    conv = checkpoint_filter_fn({"model": off, "epoch": 1}, model)
    assert model.pretrained_state_key == "model" and set(conv) == set(sd)
    for k in sd:
        torch.testing.assert_close(conv[k], sd[k], rtol=0, atol=0)
    with pytest.raises(CheckpointKeyError, match="extra_weight"):
        checkpoint_filter_fn({"model": dict(off, extra_weight=torch.zeros(1))}, model)
    first = next(k for k in off if "residual" in k)
    with pytest.raises(CheckpointKeyError, match="missing"):
        checkpoint_filter_fn({k: v for k, v in off.items() if k != first}, model)
    # any input size >= 32 px (the InLine blocks are global and need no padding)
    with torch.no_grad():
        y = model(torch.randn(1, 3, 33, 47))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


@pytest.mark.parametrize("name, count", [("inline_deit_tiny", 200), ("inline_pvt_tiny", 166), ("inline_swin_tiny", 205), ("inline_cswin_tiny", 430)])
def test_official_key_counts(name, count):
    """The inverse mapping of our tiny models gives exactly the official state-dict entry counts."""
    with torch.device("meta"):
        m = timm.create_model(name)
    off = _official_keys(m, m.state_dict())
    assert len(off) == count
    assert sum("residual" in k for k in off) == 4 * sum(isinstance(b.attn, InLineAttention) for s in m.stages for b in s.blocks)


# ------------------------------------------------------------------------------------------------
# registry, parameter counts, cfgs, layout

# measured from the unmodified official definitions (1000 classes, exact counts)
OFFICIAL = {
    "inline_deit_tiny": 6477736,
    "inline_deit_small": 16734760,
    "inline_deit_base": 23797096,
    "inline_pvt_tiny": 12032232,
    "inline_pvt_small": 21556136,
    "inline_pvt_medium": 37618856,
    "inline_pvt_large": 51154280,
    "inline_swin_tiny": 29223544,
    "inline_swin_small": 49793296,
    "inline_swin_base": 88350120,
    "inline_swin_base_384": 88465320,
    "inline_cswin_tiny": 20604520,
    "inline_cswin_small": 33032872,
    "inline_cswin_base": 73413640,
    "inline_cswin_base_384": 73413640,
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_param_count_and_cfg(name):
    with torch.device("meta"):
        m = timm.create_model(name)
    assert sum(p.numel() for p in m.parameters()) == OFFICIAL[name]
    ref = json.loads((Path(__file__).parent / "data" / "param_counts.json").read_text())
    assert ref[name][0] == round(OFFICIAL[name] / 1e6, ref[name][1])
    cfg = timm.models.get_pretrained_cfg(name)
    assert cfg.input_size[1] == {"inline_deit_small": 288, "inline_deit_base": 448}.get(name, 384 if name.endswith("_384") else 224)
    assert cfg.url.startswith("https://cloud.tsinghua.edu.cn/f/") or name.endswith("_384")


def test_inline_layout_of_variants():
    with torch.device("meta"):
        swin = {s: timm.create_model(f"inline_swin_{s}") for s in ("tiny", "small", "base")}
        cs = timm.create_model("inline_cswin_tiny")
        deit = timm.create_model("inline_deit_small")
        pvt = timm.create_model("inline_pvt_tiny")
    kinds = {s: ["".join("I" if isinstance(b.attn, InLineAttention) else "S" for b in st.blocks) for st in m.stages] for s, m in swin.items()}
    assert kinds["tiny"] == ["II", "II", "IIIIII", "SS"]  # ATTN_TYPE IIIS
    assert kinds["small"] == ["II", "II", "S" * 18, "SS"]  # IISS
    assert kinds["base"] == ["II", "II", "II" + "S" * 16, "SS"]  # IIMS2
    assert all(isinstance(b.attn, WindowAttention) for b in swin["small"].stages[2].blocks)
    assert [isinstance(st.blocks[0].attn, InLineAttention) for st in cs.stages] == [True, True, False, False]
    assert cs.stages[0].blocks[0].attn.lepe is not None and cs.stages[0].blocks[0].attn.residual_source == "block"
    assert all(isinstance(st.blocks[0].attn, InLineAttention) and st.blocks[0].attn.num_prefix_tokens == 1 for st in deit.stages)
    assert deit.pos_embed.shape == (1, 1 + 18 * 18, 320)  # trained at 288
    assert [st.blocks[0].attn.num_heads for st in pvt.stages] == [2, 4, 10, 16] and all(hasattr(st.blocks[0].attn, "q") for st in pvt.stages)


# ------------------------------------------------------------------------------------------------
# fvcore GMACs (slow: traces the four tiny models)

# the README's FLOPs column (G, multiply-accumulates as fvcore counts them)
README_GMACS = {"inline_deit_tiny": 1.1, "inline_pvt_tiny": 2.0, "inline_swin_tiny": 4.5, "inline_cswin_tiny": 4.3}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(README_GMACS))
def test_fvcore_gmacs_within_2_percent_of_readme(name):
    from visionattn.engine.flops import count_gmacs, unexpected_uncounted

    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        m = timm.create_model(name).eval()
        g, uns = count_gmacs(m, m.pretrained_cfg["input_size"])
    finally:
        torch.set_default_dtype(prev)
    assert unexpected_uncounted(uns) == []
    assert abs(g - README_GMACS[name]) / README_GMACS[name] < 0.02 + 0.05 / README_GMACS[name], f"{name}: {g:.3f} GMACs"
