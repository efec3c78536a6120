"""BiFormer: bi-level routing attention against explicit-loop references, official-layout
checkpoints (built here from the documented key names and shapes) converted strictly and run
through a functional re-implementation of the official forward, parameter counts, GMACs and the
timm model contract.

References used here are written independently of visionattn: ``loop_bra`` walks the regions one
by one in Python (region lists, per-region means, top-k, attention over the concatenated routed
tokens); ``official_forward`` evaluates an official-layout state dict with ``torch.nn.functional``
following ``models/biformer.py`` / ``ops/bra_legacy.py`` / ``models/_common.py`` of
github rayleizhu/BiFormer (1697bbb) as documented in ``shared/reference/biformer_cswin_agent.md`` §3.1.
"""
from __future__ import annotations

import json
import math
import os

import pytest
import timm
import torch
import torch.nn.functional as F

import visionattn.models.biformer  # noqa: F401  (registers the models)
from visionattn.layers.routing import AttentionLePE, BiLevelRoutingAttention
from visionattn.models._registry import CheckpointKeyError
from visionattn.models.biformer import checkpoint_filter_fn
from visionattn.ops.routing import bra2d, bra2d_flops, bra2d_reference, region_grid

NAMES = ["biformer_tiny", "biformer_small", "biformer_base", "biformer_stl"]
TINY = dict(dims=(64, 128, 256, 512), depths=(2, 2, 8, 2))


# ------------------------------------------------------------------------------------------------
# Explicit-loop reference of BRA (masked semantics for maps not divisible into regions)


def _axis(L: int, n: int):
    r = math.ceil(L / n)
    return r, math.ceil(L / r)


def loop_bra(q, k, v, n, topk, scale):
    """q, k (B, H, W, m, dq), v (B, H, W, m, dv); region by region, padded tokens never exist."""
    B, H, W, m, _ = q.shape
    n_h, n_w = (n, n) if isinstance(n, int) else n
    rh, nh = _axis(H, n_h)
    rw, nw = _axis(W, n_w)
    regions = [
        torch.tensor([i * W + j for i in range(a * rh, min((a + 1) * rh, H)) for j in range(b * rw, min((b + 1) * rw, W))])
        for a in range(nh)
        for b in range(nw)
    ]
    assert all(len(r) for r in regions), "a region made only of padding"
    order = torch.cat(regions)
    qf, kf, vf = (t.reshape(B, H * W, m, t.shape[-1]) for t in (q, k, v))
    rows = []
    for bi in range(B):
        qd = torch.stack([qf[bi, reg].detach().reshape(len(reg), -1).mean(0) for reg in regions])
        kd = torch.stack([kf[bi, reg].detach().reshape(len(reg), -1).mean(0) for reg in regions])
        sel = torch.topk(qd @ kd.T, min(topk, len(regions)), dim=-1).indices
        outs = []
        for r, reg in enumerate(regions):
            keys = torch.cat([regions[s] for s in sel[r].tolist()])
            A = (torch.einsum("tmd,nmd->mtn", qf[bi, reg], kf[bi, keys]) * scale).softmax(-1)
            outs.append(torch.einsum("mtn,nme->tme", A, vf[bi, keys]))
        rows.append(torch.cat(outs)[torch.argsort(order)])  # back to raster order
    return torch.stack(rows).reshape(B, H, W, m, -1)


def _qkv(B, H, W, m, dq, dv, seed):
    g = torch.Generator().manual_seed(seed)
    mk = lambda d: torch.randn(B, H, W, m, d, generator=g, dtype=torch.float64).requires_grad_()
    return mk(dq), mk(dq), mk(dv)


# (H, W, num_regions, topk): divisible, not divisible, fewer regions than topk, rectangular grid
BRA_CASES = [(14, 14, 7, 4), (10, 13, 7, 3), (3, 5, 7, 16), (16, 9, (4, 3), 2), (8, 8, 7, 1)]


@pytest.mark.parametrize("H,W,n,topk", BRA_CASES)
def test_bra2d_matches_loop_reference_forward_backward(H, W, n, topk):
    q, k, v = _qkv(2, H, W, 2, 6, 5, seed=H * 31 + W)
    want = loop_bra(q, k, v, n, topk, 0.3)
    g = torch.randn_like(want)
    gw = torch.autograd.grad(want, (q, k, v), g)
    for fn in (bra2d, bra2d_reference):
        got = fn(q, k, v, n, topk, scale=0.3)
        assert got.shape == (2, H, W, 2, 5)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        for a, b in zip(torch.autograd.grad(got, (q, k, v), g), gw):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_region_grid_never_has_an_all_padding_region():
    assert tuple(region_grid(56, 28, 7)[2:]) == (8, 4, 7, 7)  # BiFormer at 224: 8x8 and 4x4 regions
    for L in range(1, 300):
        rh, _, nh, _ = region_grid(L, L, 7)[2:]
        assert (nh - 1) * rh < L <= nh * rh and nh <= 7
        if L % 7 == 0:
            assert (rh, nh) == (L // 7, 7)


def test_bra2d_rejects_bad_arguments():
    q = torch.zeros(1, 7, 7, 2, 4)
    with pytest.raises(ValueError):
        bra2d(q, q, q[..., :3].unsqueeze(0), 7, 1)
    with pytest.raises(ValueError):
        bra2d(q, q, q, 7, 0)
    with pytest.raises(ValueError):
        BiLevelRoutingAttention(64, 3)
    with pytest.raises(ValueError):
        BiLevelRoutingAttention(64, 2, pad_mode="reflect")


# ------------------------------------------------------------------------------------------------
# Mixers: official formulas written out


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def _bra_layer_reference(layer, x, n, topk):
    """Official legacy BRA (qkv rows q|k|v, scale qk_dim**-0.5, LePE on V before ``wo``)."""
    C, qk, m = layer.dim, layer.qk_dim, layer.num_heads
    qkv = F.linear(x, layer.qkv.weight, layer.qkv.bias)
    q, k, v = qkv[..., :qk], qkv[..., qk : 2 * qk], qkv[..., 2 * qk :]
    B, H, W, _ = x.shape
    o = loop_bra(q.reshape(B, H, W, m, -1), k.reshape(B, H, W, m, -1), v.reshape(B, H, W, m, -1), n, topk, qk ** -0.5)
    lepe = F.conv2d(v.permute(0, 3, 1, 2), layer.lepe.weight, layer.lepe.bias, padding=2, groups=C).permute(0, 2, 3, 1)
    return F.linear(o.reshape(B, H, W, C) + lepe, layer.proj.weight, layer.proj.bias)


@pytest.mark.parametrize("H,W,qk_dim", [(14, 14, None), (11, 17, None), (9, 9, 32)])
def test_bra_layer_matches_official_formula(H, W, qk_dim):
    layer = _randomize(BiLevelRoutingAttention(16, 2, num_regions=7, topk=3, qk_dim=qk_dim), 1).double()
    x = torch.randn(2, H, W, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    want = _bra_layer_reference(layer, x, 7, 3)
    got = layer(x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    g = torch.randn_like(want)
    params = [x, layer.qkv.weight, layer.lepe.weight, layer.proj.weight]
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_bra_layer_zero_pad_mode_is_official_auto_pad():
    """``pad_mode='zero'``: zero-pad the (normalised) input to 7*ceil(L/7), plain BRA, crop."""
    layer = _randomize(BiLevelRoutingAttention(16, 2, num_regions=7, topk=4, pad_mode="zero"), 3).double()
    x = torch.randn(1, 10, 15, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    xp = F.pad(x, (0, 0, 0, 21 - 15, 0, 14 - 10))
    want = _bra_layer_reference(layer, xp, 7, 4)[:, :10, :15]
    torch.testing.assert_close(layer(x), want, rtol=1e-9, atol=1e-9)
    masked = BiLevelRoutingAttention(16, 2, num_regions=7, topk=4).double()
    masked.load_state_dict(layer.state_dict())
    assert (masked(x) - want).abs().max() > 1e-3  # the two modes differ when padding is involved
    torch.testing.assert_close(masked(xp[:, :7, :14]), layer(xp[:, :7, :14]))  # and agree when divisible


def test_attention_lepe_matches_official_formula():
    layer = _randomize(AttentionLePE(32, num_heads=8), 5).double()
    assert layer.qkv.bias is None
    x = torch.randn(2, 5, 6, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    qkv = (x.reshape(2, 30, 32) @ layer.qkv.weight.T).reshape(2, 30, 3, 8, 4)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    a = (torch.einsum("bihd,bjhd->bhij", q, k) * 4 ** -0.5).softmax(-1)
    o = torch.einsum("bhij,bjhd->bihd", a, v).reshape(2, 5, 6, 32)
    lepe = F.conv2d(x.permute(0, 3, 1, 2), layer.lepe.weight, layer.lepe.bias, padding=2, groups=32).permute(0, 2, 3, 1)
    want = F.linear(o + lepe, layer.proj.weight, layer.proj.bias)
    torch.testing.assert_close(layer(x), want, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# Official-layout state dicts from the documented key names and shapes


def official_shapes(dims, depths, mlp_ratio=3, topks=(1, 4, 16, -2), layout="conv", num_classes=1000):
    """Key -> shape of an official ``BiFormer`` (layout 'conv') / ``BiFormerSTL`` ('stl') state dict."""
    s = {}

    def conv(p, cout, cin, k):
        s[p + ".weight"], s[p + ".bias"] = (cout, cin, k, k), (cout,)

    def bn(p, c):
        for n in ("weight", "bias", "running_mean", "running_var"):
            s[f"{p}.{n}"] = (c,)
        s[p + ".num_batches_tracked"] = ()

    def lin(p, cout, cin, bias=True):
        s[p + ".weight"] = (cout, cin)
        if bias:
            s[p + ".bias"] = (cout,)

    if layout == "conv":
        conv("downsample_layers.0.0", dims[0] // 2, 3, 3)
        bn("downsample_layers.0.1", dims[0] // 2)
        conv("downsample_layers.0.3", dims[0], dims[0] // 2, 3)
        bn("downsample_layers.0.4", dims[0])
    else:
        conv("downsample_layers.0.0", dims[0], 3, 4)
        bn("downsample_layers.0.1", dims[0])
    for i in range(1, 4):
        if layout == "conv":
            conv(f"downsample_layers.{i}.0", dims[i], dims[i - 1], 3)
            bn(f"downsample_layers.{i}.1", dims[i])
        else:
            bn(f"downsample_layers.{i}.0", dims[i - 1])
            conv(f"downsample_layers.{i}.1", dims[i], dims[i - 1], 2)
    for i, (c, d) in enumerate(zip(dims, depths)):
        for j in range(d):
            p = f"stages.{i}.{j}." if layout == "conv" else f"stages.{i}.blocks.{j}."
            if layout == "conv":
                s[p + "pos_embed.weight"], s[p + "pos_embed.bias"] = (c, 1, 3, 3), (c,)
            s[p + "norm1.weight"] = s[p + "norm1.bias"] = (c,)
            s[p + "attn.lepe.weight"], s[p + "attn.lepe.bias"] = (c, 1, 5, 5), (c,)
            if topks[i] > 0:
                lin(p + "attn.qkv.qkv", 3 * c, c)
                lin(p + "attn.wo", c, c)
            else:
                lin(p + "attn.qkv", 3 * c, c, bias=False)
                lin(p + "attn.proj", c, c)
            s[p + "norm2.weight"] = s[p + "norm2.bias"] = (c,)
            lin(p + "mlp.0", mlp_ratio * c, c)
            lin(p + ("mlp.3" if layout == "conv" else "mlp.2"), c, mlp_ratio * c)
    bn("norm", dims[-1])
    lin("head", num_classes, dims[-1])
    return s


def random_state_dict(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(100, dtype=torch.long)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("norm1.weight", "norm2.weight")) or (len(shape) == 1 and key.endswith(".weight")):
            sd[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            sd[key] = torch.randn(shape, generator=g) * (0.5 / math.sqrt(fan_in) if len(shape) > 1 else 0.1)
    return sd


def official_forward(sd, x, dims, depths, topks=(1, 4, 16, -2), n_win=7, head_dim=32, last_heads=8):
    """BiFormer-T/S/B forward on an official-layout state dict (masked BRA for indivisible maps)."""
    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5)

    def conv(t, p, **kw):
        return F.conv2d(t, sd[p + ".weight"], sd[p + ".bias"], **kw)

    def lin(t, p):
        return F.linear(t, sd[p + ".weight"], sd.get(p + ".bias"))

    x = bn(conv(x, "downsample_layers.0.0", stride=2, padding=1), "downsample_layers.0.1")
    x = bn(conv(F.gelu(x), "downsample_layers.0.3", stride=2, padding=1), "downsample_layers.0.4")
    for i in range(4):
        if i:
            x = bn(conv(x, f"downsample_layers.{i}.0", stride=2, padding=1), f"downsample_layers.{i}.1")
        C = dims[i]
        for j in range(depths[i]):
            p = f"stages.{i}.{j}."
            x = x + conv(x, p + "pos_embed", padding=1, groups=C)
            t = x.permute(0, 2, 3, 1)
            B, H, W, _ = t.shape
            y = F.layer_norm(t, (C,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
            if topks[i] > 0:
                q, k, v = lin(y, p + "attn.qkv.qkv").split([C, C, C], -1)
                m = C // head_dim
                o = loop_bra(q.reshape(B, H, W, m, -1), k.reshape(B, H, W, m, -1), v.reshape(B, H, W, m, -1), n_win, topks[i], C ** -0.5)
                lepe = conv(v.permute(0, 3, 1, 2), p + "attn.lepe", padding=2, groups=C).permute(0, 2, 3, 1)
                a = lin(o.reshape(B, H, W, C) + lepe, p + "attn.wo")
            else:
                q, k, v = lin(y, p + "attn.qkv").reshape(B, H * W, 3, last_heads, C // last_heads).unbind(2)
                att = (torch.einsum("bihd,bjhd->bhij", q, k) * (C // last_heads) ** -0.5).softmax(-1)
                o = torch.einsum("bhij,bjhd->bihd", att, v).reshape(B, H, W, C)
                lepe = conv(y.permute(0, 3, 1, 2), p + "attn.lepe", padding=2, groups=C).permute(0, 2, 3, 1)
                a = lin(o + lepe, p + "attn.proj")
            t = t + a
            t = t + lin(F.gelu(lin(F.layer_norm(t, (C,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6), p + "mlp.0")), p + "mlp.3")
            x = t.permute(0, 3, 1, 2)
    return lin(bn(x, "norm").mean((2, 3)), "head")


def _expected_key(k: str) -> str:
    """Where each documented official key must land (written out independently of the filter)."""
    parts = k.split(".")
    if parts[0] == "downsample_layers":
        return ("stem." if parts[1] == "0" else f"stages.{parts[1]}.downsample.") + ".".join(parts[2:])
    if parts[0] == "head":
        return "head.fc." + parts[1]
    if parts[0] == "norm":
        return k
    if parts[2] == "blocks":  # STL
        parts = parts[:2] + parts[3:]
    i, j, rest = parts[1], parts[2], ".".join(parts[3:])
    rest = {
        "pos_embed.weight": "pos.proj.weight", "pos_embed.bias": "pos.proj.bias",
        "attn.qkv.qkv.weight": "attn.qkv.weight", "attn.qkv.qkv.bias": "attn.qkv.bias",
        "attn.wo.weight": "attn.proj.weight", "attn.wo.bias": "attn.proj.bias",
        "mlp.0.weight": "mlp.fc1.weight", "mlp.0.bias": "mlp.fc1.bias",
        "mlp.3.weight": "mlp.fc2.weight", "mlp.3.bias": "mlp.fc2.bias",
        "mlp.2.weight": "mlp.fc2.weight", "mlp.2.bias": "mlp.fc2.bias",
    }.get(rest, rest)
    return f"stages.{i}.blocks.{j}.{rest}"


@pytest.mark.parametrize(
    "name,dims,depths,mlp,layout,n_keys",
    [
        ("biformer_tiny", TINY["dims"], TINY["depths"], 3, "conv", 264),  # 264 entries documented for T
        pytest.param("biformer_small", (64, 128, 256, 512), (4, 4, 18, 4), 3, "conv", None, marks=pytest.mark.slow),
        pytest.param("biformer_base", (96, 192, 384, 768), (4, 4, 18, 4), 3, "conv", None, marks=pytest.mark.slow),
        ("biformer_stl", (96, 192, 384, 768), (2, 2, 6, 2), 4, "stl", None),
    ],
)
def test_official_layout_round_trip_is_strict(name, dims, depths, mlp, layout, n_keys):
    shapes = official_shapes(dims, depths, mlp, layout=layout)
    if n_keys is not None:
        assert len(shapes) == n_keys
    sd = random_state_dict(shapes, seed=1)
    model = timm.create_model(name)
    converted = checkpoint_filter_fn({"model": sd}, model)  # official files wrap weights under "model"
    assert len(converted) == len(sd)
    model.load_state_dict(converted, strict=True)
    ours = model.state_dict()
    assert len(ours) == len(sd)
    for k, v in sd.items():
        assert torch.equal(ours[_expected_key(k)], v), k


def test_official_layout_forward_matches_functional_reference():
    dims, depths = TINY["dims"], (1, 1, 2, 1)
    sd = random_state_dict(official_shapes(dims, depths), seed=2)
    model = timm.create_model("biformer_tiny", depths=depths).eval()
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True)
    for size in [(112, 112), (96, 80)]:  # divisible at stages 1-3, and not (masked padding)
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            want = official_forward(sd, x, dims, depths)
            got = model(x)
        assert (want - got).abs().max().item() < 1e-4 * max(1.0, want.abs().max().item())


def test_strict_errors_name_the_keys(tmp_path):
    shapes = official_shapes(TINY["dims"], TINY["depths"])
    sd = random_state_dict(shapes)
    model = timm.create_model("biformer_tiny")
    missing = {k: v for k, v in sd.items() if k != "stages.2.5.attn.lepe.weight"}
    with pytest.raises(CheckpointKeyError, match=r"missing.*stages\.2\.blocks\.5\.attn\.lepe\.weight"):
        checkpoint_filter_fn(missing, model)
    with pytest.raises(CheckpointKeyError, match=r"unknown keys.*stages\.0\.0\.attn\.router\.emb\.weight"):
        checkpoint_filter_fn(dict(sd, **{"stages.0.0.attn.router.emb.weight": torch.zeros(64, 64)}), model)
    with pytest.raises(CheckpointKeyError, match="shape mismatches"):
        checkpoint_filter_fn(random_state_dict(official_shapes(TINY["dims"], TINY["depths"], mlp_ratio=4)), model)
    with pytest.raises(CheckpointKeyError):  # small weights into tiny: depth differs
        checkpoint_filter_fn(random_state_dict(official_shapes(TINY["dims"], (4, 4, 18, 4))), model)
    # official file through timm's pretrained path (wrapped, weights_only load), head re-sized
    path = tmp_path / "biformer_tiny_in1k.pth"
    torch.save({"model": sd}, path)
    m = timm.create_model("biformer_tiny", pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path)))
    assert m.get_classifier().out_features == 10
    assert torch.equal(m.stages[3].blocks[1].attn.qkv.weight, sd["stages.3.1.attn.qkv.weight"])
    m0 = timm.create_model("biformer_tiny", pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(m0.norm.running_var, sd["norm.running_var"])


# ------------------------------------------------------------------------------------------------
# Parameter counts, GMACs, configs, model contract


def test_param_counts_match_official():
    # official counts as facts in the repository (tests/data/param_counts.json names their source)
    with open(os.path.join(os.path.dirname(__file__), "data", "param_counts.json")) as f:
        ref = json.load(f)
    for name in NAMES:
        with torch.device("meta"):
            m = timm.create_model(name)
        n = sum(p.numel() for p in m.parameters()) / 1e6
        want, digits = ref[name]
        assert round(n, digits) == want, (name, n, want)


def test_variant_heads_and_scales():
    m = timm.create_model("biformer_base")
    bra = [b.attn for s in m.stages[:3] for b in s.blocks]
    assert [m.stages[i].blocks[0].attn.num_heads for i in range(3)] == [3, 6, 12]
    assert {a.topk for a in m.stages[0].blocks.modules() if isinstance(a, BiLevelRoutingAttention)} == {1}
    assert [m.stages[i].blocks[0].attn.topk for i in range(3)] == [1, 4, 16]
    assert all(a.num_regions == 7 and a.scale == a.qk_dim ** -0.5 for a in bra)
    last = m.stages[3].blocks[0].attn
    assert isinstance(last, AttentionLePE) and last.num_heads == 8 and last.qkv.bias is None
    assert m.stages[0].blocks[0].norm1.eps == 1e-6 and m.stages[0].blocks[0].mlp.fc1.out_features == 3 * 96


def _gmacs(model, size=224):
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

    def sdpa(inputs, outputs):
        q, k, v = (get_shape(inputs[i]) for i in range(3))
        return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])

    fca = FlopCountAnalysis(model.eval(), torch.zeros(1, 3, size, size)).set_op_handle("aten::scaled_dot_product_attention", sdpa)
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    return fca.total() / 1e9


def test_gmacs_tiny_match_official_fvcore_count():
    # official models/biformer.py under fvcore: 2.228 GMACs (README 2.2G)
    assert abs(_gmacs(timm.create_model("biformer_tiny")) - 2.228) / 2.228 < 0.02



def test_bra2d_flops_formula_matches_fvcore():
    class Op(torch.nn.Module):
        def forward(self, q, k, v):
            return bra2d(q, k, v, 7, 4)

    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

    def sdpa(inputs, outputs):
        q, k, v = (get_shape(inputs[i]) for i in range(3))
        return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])

    q = torch.zeros(2, 17, 23, 3, 8)
    v = torch.zeros(2, 17, 23, 3, 5)
    fca = FlopCountAnalysis(Op(), (q, q, v)).set_op_handle("aten::scaled_dot_product_attention", sdpa)
    fca.unsupported_ops_warnings(False)
    # 17 -> 6 regions of 3 rows; 23 -> 6 regions of 4 columns (padded grid 18 x 24)
    R, T = 6 * 6, 3 * 4
    assert bra2d_flops(17, 23, 3, 8, 5, 7, 4, batch=2) == fca.total() == 2 * 3 * R * T * 4 * T * (8 + 5) + 2 * R * R * 24

@pytest.mark.slow
@pytest.mark.parametrize("name,want", [("biformer_small", 4.4873), ("biformer_stl", 4.5899)])
def test_gmacs_match_official_fvcore_count(name, want):
    assert abs(_gmacs(timm.create_model(name)) - want) / want < 0.02


def test_pretrained_cfgs_complete():
    for name in NAMES:
        tags = timm.list_pretrained(name + ".*")
        assert tags == [name + ".in1k"]
        cfg = timm.models.get_pretrained_cfg(tags[0]).to_dict()
        for key in ("input_size", "pool_size", "crop_pct", "interpolation", "mean", "std", "first_conv", "classifier", "license", "origin_url"):
            assert cfg.get(key), (name, key)
        assert cfg["url"].startswith("https://api.onedrive.com/v1.0/shares/") and cfg["license"] == "mit"
        assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"


SMALL_KW = dict(depths=(1, 1, 2, 1))


def test_any_input_size_and_minimum():
    m = timm.create_model("biformer_tiny", **SMALL_KW).eval()
    with torch.no_grad():
        for size in [(32, 32), (200, 264), (57, 33), (256, 256)]:
            f = m.forward_features(torch.randn(1, 3, *size))
            assert f.shape == (1, 512, math.ceil(size[0] / 32), math.ceil(size[1] / 32))
            assert torch.isfinite(f).all()
    with pytest.raises(ValueError, match="minimum"):
        m(torch.randn(1, 3, 31, 64))


@pytest.mark.parametrize("name,kw", [("biformer_tiny", SMALL_KW),
                                     pytest.param("biformer_stl", dict(depths=(1, 1, 1, 1)), marks=pytest.mark.slow)])
def test_model_contract(name, kw):
    torch.manual_seed(0)
    m = timm.create_model(name, **kw).eval()
    x = torch.randn(2, 3, 200, 264)
    with torch.no_grad():
        feats = m.forward_features(x)
        final, inter = m.forward_intermediates(x)
        torch.testing.assert_close(final, feats)
        assert [t.shape[1:] for t in inter] == [(c, math.ceil(200 / r), math.ceil(264 / r)) for c, r in zip((m.feature_info[i]["num_chs"] for i in range(4)), (4, 8, 16, 32))]
    torch.manual_seed(0)  # same initialisation as m
    fm = timm.create_model(name, features_only=True, **kw).eval()
    with torch.no_grad():
        outs = fm(x)
    for a, b in zip(outs, inter):
        torch.testing.assert_close(a, b)
    m.train()
    torch.manual_seed(0)
    y0 = m(x[:1])
    m.set_grad_checkpointing(True)
    torch.manual_seed(0)
    y1 = m(x[:1])
    torch.testing.assert_close(y0, y1)
    y1.sum().backward()
    m.reset_classifier(0)
    m.eval()
    with torch.no_grad():
        assert m(x).shape == (2, m.num_features)
