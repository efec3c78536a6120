"""CSWin: stripe attention and the cross-shaped mixer against naive references, checkpoint
conversion round trip, parameter counts, model contract on small configs.

References written here (not the code under test):
* ``_loop_stripe_reference``: explicit loops over the stripes of the map (clipped to the map when
  padding is masked, over the zero-padded map otherwise), dense softmax per stripe, LePE as an
  explicit sum over the 3x3 taps inside the stripe.
* ``_dense_mixer_reference``: the whole mixer as dense ``HW x HW`` attention with a same-stripe
  mask per branch (first half of the channels: vertical stripes) and LePE as a masked tap sum.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import timm

import visionattn.models.cswin as cswin_mod
from visionattn.layers.cross_shaped import CrossShapedWindowAttention
from visionattn.models._registry import CheckpointKeyError
from visionattn.models.cswin import CSWin, checkpoint_filter_fn, load_official_checkpoint
from visionattn.ops.stripe import stripe_attention

VARIANTS = ["cswin_tiny", "cswin_small", "cswin_base", "cswin_large", "cswin_base_384", "cswin_large_384"]
PARAMS_JSON = Path(__file__).parent / "data" / "param_counts.json"  # official counts, source named inside
# Official parameter counts (M) measured from microsoft/CSWin-Transformer models/cswin.py; the
# 384 models have the same parameters as the 224 ones (no resolution-dependent tensors).
PARAMS_M = {
    "cswin_tiny": 22.321,
    "cswin_small": 34.643,
    "cswin_base": 77.382,
    "cswin_large": 173.263,
    "cswin_base_384": 77.382,
    "cswin_large_384": 173.263,
}


# ------------------------------------------------------------------------------------------------
# references


def _tap_sum(v_img: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """3x3 (k x k) depthwise conv of ``(B, h, w, C)`` with zeros outside, as an explicit tap sum."""
    B, h, w, C = v_img.shape
    ks = weight.shape[-1]
    r = ks // 2
    vp = F.pad(v_img, (0, 0, r, r, r, r))
    out = torch.zeros_like(v_img) + (bias if bias is not None else 0)
    for dy in range(ks):
        for dx in range(ks):
            out = out + vp[:, dy : dy + h, dx : dx + w, :] * weight[:, 0, dy, dx]
    return out


def _loop_stripe_reference(q, k, v, stripe, scale, lw, lb, mask_padding):
    B, H, W, m, d = q.shape
    C = m * d
    sh = H if stripe[0] is None else stripe[0]
    sw = W if stripe[1] is None else stripe[1]
    ph, pw = (-H) % sh, (-W) % sw
    top, left = ph // 2, pw // 2
    if mask_padding:
        Hm, Wm, off_r, off_c = H, W, top, left
    else:  # the zero-padded map, every stripe full; cropped at the end
        q, k, v = (F.pad(t, (0, 0, 0, 0, left, pw - left, top, ph - top)) for t in (q, k, v))
        Hm, Wm, off_r, off_c = H + ph, W + pw, 0, 0
    out = torch.zeros(B, Hm, Wm, C, dtype=q.dtype)
    for r in range(0, H + ph, sh):
        for c in range(0, W + pw, sw):
            r0, r1 = max(r - off_r, 0), min(r - off_r + sh, Hm)
            c0, c1 = max(c - off_c, 0), min(c - off_c + sw, Wm)
            Q, K, V = (t[:, r0:r1, c0:c1].reshape(B, -1, m, d) for t in (q, k, v))
            A = torch.softmax(torch.einsum("bnhd,bNhd->bhnN", Q, K) * scale, dim=-1)
            O = torch.einsum("bhnN,bNhd->bnhd", A, V).reshape(B, r1 - r0, c1 - c0, C)
            if lw is not None:
                O = O + _tap_sum(v[:, r0:r1, c0:c1].reshape(B, r1 - r0, c1 - c0, C), lw, lb)
            out[:, r0:r1, c0:c1] = O
    if not mask_padding:
        out = out[:, top : top + H, left : left + W]
    return out.reshape(B, H, W, m, d)


def _dense_mixer_reference(mixer: CrossShapedWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Dense masked attention: token i sees token j iff they share a stripe (padding masked)."""
    B, H, W, C = x.shape
    qkv = x.reshape(B, H * W, C) @ mixer.qkv.weight.t() + mixer.qkv.bias
    q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
    rows = torch.arange(H).repeat_interleave(W)
    cols = torch.arange(W).repeat(H)
    d = C // mixer.num_heads
    sw = mixer.stripe_width
    if mixer.full:
        groups = [(0, C, torch.zeros(H * W, dtype=torch.long))]
    else:  # first half: vertical stripes (id from the column), second half: horizontal stripes
        pw, ph = (-W) % sw, (-H) % sw
        groups = [(0, C // 2, (cols + pw // 2) // sw), (C // 2, C, (rows + ph // 2) // sw)]
    outs = []
    for c0, c1, sid in groups:
        allowed = sid[:, None] == sid[None, :]
        o = torch.zeros(B, H * W, c1 - c0, dtype=x.dtype)
        for h0 in range(c0, c1, d):
            logits = (q[..., h0 : h0 + d] @ k[..., h0 : h0 + d].transpose(1, 2)) * d**-0.5
            attn = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
            o[..., h0 - c0 : h0 - c0 + d] = attn @ v[..., h0 : h0 + d]
        # LePE: taps restricted to the map and to the same stripe
        lw, lb = mixer.lepe.weight[c0:c1], mixer.lepe.bias[c0:c1]
        vv = v[..., c0:c1]
        lepe = lb.expand(B, H * W, c1 - c0).clone()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                rr, cc = rows + dy, cols + dx
                inside = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
                j = (rr.clamp(0, H - 1) * W + cc.clamp(0, W - 1))
                ok = inside & (sid[j] == sid)
                lepe = lepe + vv[:, j] * lw[:, 0, dy + 1, dx + 1] * ok[None, :, None]
        outs.append(o + lepe)
    y = torch.cat(outs, -1)
    return (y @ mixer.proj.weight.t() + mixer.proj.bias).reshape(B, H, W, C)


# ------------------------------------------------------------------------------------------------
# ops: stripe attention


@pytest.mark.parametrize("mask_padding", [True, False])
@pytest.mark.parametrize(
    "H,W,stripe",
    [
        (8, 6, (None, 2)),  # vertical, divisible
        (8, 6, (2, None)),  # horizontal, divisible
        (7, 5, (None, 3)),  # vertical, W padded 5 -> 6 (0 before, 1 after)
        (5, 9, (4, None)),  # horizontal, H padded 5 -> 8 (1 before, 2 after)
        (3, 4, (None, 7)),  # stripe wider than the map
        (5, 7, (None, None)),  # global
    ],
)
def test_stripe_attention_matches_loop_reference(H, W, stripe, mask_padding):
    torch.manual_seed(0)
    B, m, d = 2, 2, 4
    q, k, v = (torch.randn(B, H, W, m, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    lw = torch.randn(m * d, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    lb = torch.randn(m * d, dtype=torch.float64, requires_grad=True)
    scale = d**-0.5
    out = stripe_attention(q, k, v, stripe, scale=scale, lepe_weight=lw, lepe_bias=lb, mask_padding=mask_padding)
    ref = _loop_stripe_reference(q, k, v, stripe, scale, lw, lb, mask_padding)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v, lw, lb), g)
    grads_ref = torch.autograd.grad(ref, (q, k, v, lw, lb), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_stripe_attention_padding_modes_differ_only_when_padded():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 6, 7, 2, 4) for _ in range(3))
    a = stripe_attention(q, k, v, (None, 3), mask_padding=True)  # 7 -> 9: padded
    b = stripe_attention(q, k, v, (None, 3), mask_padding=False)
    assert (a - b).abs().max() > 1e-3
    a = stripe_attention(q[:, :, :6], k[:, :, :6], v[:, :, :6], (None, 3), mask_padding=True)
    b = stripe_attention(q[:, :, :6], k[:, :, :6], v[:, :, :6], (None, 3), mask_padding=False)
    torch.testing.assert_close(a, b)


def test_stripe_attention_errors():
    q = torch.randn(1, 4, 4, 2, 4)
    with pytest.raises(ValueError):
        stripe_attention(q, q, q[..., :2], (None, 2))
    with pytest.raises(ValueError):
        stripe_attention(q, q, q, (None, 0))
    with pytest.raises(ValueError):
        stripe_attention(q, q, q, (None, 2), lepe_weight=torch.randn(8, 1, 2, 2))


# ------------------------------------------------------------------------------------------------
# layers: the cross-shaped mixer


@pytest.mark.parametrize(
    "H,W,sw,full",
    [(6, 6, 2, False), (7, 9, 2, False), (5, 10, 4, False), (4, 5, 7, False), (5, 6, 7, True)],
)
def test_mixer_matches_dense_masked_reference(H, W, sw, full):
    torch.manual_seed(0)
    mixer = CrossShapedWindowAttention(16, 4, sw, full=full).double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, H, W, 16, dtype=torch.float64, requires_grad=True)
    out = mixer(x)
    ref = _dense_mixer_reference(mixer, x)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    params = [x] + list(mixer.parameters())
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_mixer_branch_order_vertical_first():
    """Swapping the two halves' stripe directions must change the output (weights are not symmetric)."""
    torch.manual_seed(0)
    mixer = CrossShapedWindowAttention(8, 2, 2)
    assert [b[2] for b in mixer.branches()] == [(None, 2), (2, None)]
    x = torch.randn(1, 6, 6, 8)
    ref = _dense_mixer_reference(mixer, x)
    torch.testing.assert_close(mixer(x), ref)
    mixer.branches = lambda: [(0, 4, (2, None)), (4, 8, (None, 2))]
    assert (mixer(x) - ref).abs().max() > 1e-3


def test_mixer_errors():
    with pytest.raises(ValueError):
        CrossShapedWindowAttention(12, 3, 2)  # odd heads with two branches
    with pytest.raises(ValueError):
        CrossShapedWindowAttention(10, 4, 2)
    CrossShapedWindowAttention(12, 3, 2, full=True)


# ------------------------------------------------------------------------------------------------
# models: parameters, checkpoints, contract


@pytest.mark.parametrize("name", VARIANTS)
def test_param_count(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(n, 3) == PARAMS_M[name]
    ref = json.loads(PARAMS_JSON.read_text())[name]
    assert round(n, ref[1]) == round(ref[0], ref[1])


def test_registered_names_and_cfgs():
    for name in VARIANTS:
        assert timm.is_model(name)
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        for key in ("input_size", "pool_size", "crop_pct", "interpolation", "mean", "std", "first_conv", "classifier", "license", "origin_url", "url"):
            assert cfg.get(key), (name, key)
        assert cfg["url"].startswith("https://github.com/microsoft/CSWin-Transformer/releases/download/v0.1.0/")
    assert timm.models.get_pretrained_cfg("cswin_base_384").input_size == (3, 384, 384)


def _official_tiny_layout(num_classes: int = 1000, seed: int = 0):
    """Official CSWin-T state dict (models/cswin.py, 418 keys) from the documented names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        return torch.randn(*shape, generator=g)

    C, depths, heads = 64, (1, 2, 21, 1), (2, 4, 8, 16)
    sd = {
        "stage1_conv_embed.0.weight": t(C, 3, 7, 7),
        "stage1_conv_embed.0.bias": t(C),
        "stage1_conv_embed.2.weight": t(C),
        "stage1_conv_embed.2.bias": t(C),
    }
    for s in range(4):
        c = C * 2**s
        if s > 0:
            sd[f"merge{s}.conv.weight"] = t(c, c // 2, 3, 3)
            sd[f"merge{s}.conv.bias"] = t(c)
            sd[f"merge{s}.norm.weight"] = t(c)
            sd[f"merge{s}.norm.bias"] = t(c)
        for j in range(depths[s]):
            p = f"stage{s + 1}.{j}."
            sd[p + "qkv.weight"], sd[p + "qkv.bias"] = t(3 * c, c), t(3 * c)
            sd[p + "norm1.weight"], sd[p + "norm1.bias"] = t(c), t(c)
            sd[p + "proj.weight"], sd[p + "proj.bias"] = t(c, c), t(c)
            branches = [c] if s == 3 else [c // 2, c // 2]
            for b, cb in enumerate(branches):
                sd[p + f"attns.{b}.get_v.weight"], sd[p + f"attns.{b}.get_v.bias"] = t(cb, 1, 3, 3), t(cb)
            sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = t(4 * c, c), t(4 * c)
            sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = t(c, 4 * c), t(c)
            sd[p + "norm2.weight"], sd[p + "norm2.bias"] = t(c), t(c)
    sd["norm.weight"], sd["norm.bias"] = t(8 * C), t(8 * C)
    sd["head.weight"], sd["head.bias"] = t(num_classes, 8 * C), t(num_classes)
    assert len(sd) == 418
    return sd


def test_official_checkpoint_round_trip_strict():
    model = timm.create_model("cswin_tiny")
    ema, plain = _official_tiny_layout(seed=0), _official_tiny_layout(seed=1)
    ckpt = {"epoch": 300, "arch": "CSWin_64_12211_tiny_224", "state_dict": {"module." + k: v for k, v in plain.items()}, "state_dict_ema": ema, "version": 2}
    sd = checkpoint_filter_fn(ckpt, model)
    model.load_state_dict(sd, strict=True)
    assert model.pretrained_state_key == "state_dict_ema"
    msd = model.state_dict()
    assert len(msd) == len(sd) == 418 - 2 * 21 - 2 * 2 - 2 * 1  # two get_v per two-branch block become one lepe
    torch.testing.assert_close(msd["stem.conv.weight"], ema["stage1_conv_embed.0.weight"])
    torch.testing.assert_close(msd["stem.norm.bias"], ema["stage1_conv_embed.2.bias"])
    torch.testing.assert_close(msd["stages.2.blocks.5.attn.qkv.weight"], ema["stage3.5.qkv.weight"])
    torch.testing.assert_close(msd["stages.2.blocks.5.attn.proj.bias"], ema["stage3.5.proj.bias"])
    torch.testing.assert_close(msd["stages.2.blocks.5.mlp.fc2.weight"], ema["stage3.5.mlp.fc2.weight"])
    torch.testing.assert_close(msd["stages.1.downsample.reduction.weight"], ema["merge1.conv.weight"])
    torch.testing.assert_close(msd["stages.3.downsample.norm.weight"], ema["merge3.norm.weight"])
    torch.testing.assert_close(msd["head.fc.weight"], ema["head.weight"])
    lepe = msd["stages.1.blocks.1.attn.lepe.weight"]
    torch.testing.assert_close(lepe[:64], ema["stage2.1.attns.0.get_v.weight"])  # branch 0 = first half
    torch.testing.assert_close(lepe[64:], ema["stage2.1.attns.1.get_v.weight"])
    torch.testing.assert_close(msd["stages.3.blocks.0.attn.lepe.bias"], ema["stage4.0.attns.0.get_v.bias"])
    # non-EMA weights on request (model option or filter argument), module. prefix stripped
    model2 = timm.create_model("cswin_tiny", prefer_ema=False)
    model2.load_state_dict(checkpoint_filter_fn(ckpt, model2), strict=True)
    assert model2.pretrained_state_key == "state_dict"
    torch.testing.assert_close(model2.state_dict()["stem.conv.weight"], plain["stage1_conv_embed.0.weight"])
    checkpoint_filter_fn(ckpt, model, prefer_ema=False)
    assert model.pretrained_state_key == "state_dict"
    # flat dict and our own layout
    checkpoint_filter_fn(ema, model)
    assert model.pretrained_state_key is None
    checkpoint_filter_fn(model.state_dict(), model)


def test_load_official_checkpoint_file(tmp_path):
    """A CheckpointSaver-style file (pickled argparse args, optimizer, EMA) loads with weights_only."""
    import argparse

    sd = _official_tiny_layout()
    path = tmp_path / "cswin_tiny_224.pth"
    torch.save(
        {"epoch": 1, "arch": "CSWin_64_12211_tiny_224", "state_dict": sd, "state_dict_ema": sd, "version": 2,
         "args": argparse.Namespace(model="CSWin_64_12211_tiny_224", lr=2e-3), "optimizer": {"state": {}, "param_groups": []}},
        path,
    )
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    model = timm.create_model("cswin_tiny")
    model.load_state_dict(checkpoint_filter_fn(load_official_checkpoint(str(path)), model), strict=True)
    assert model.pretrained_state_key == "state_dict_ema"


def test_official_checkpoint_errors():
    model = timm.create_model("cswin_tiny")
    sd = _official_tiny_layout()
    with pytest.raises(CheckpointKeyError, match="stage3.0.attn_bias"):
        checkpoint_filter_fn({**sd, "stage3.0.attn_bias": torch.zeros(1)}, model)
    missing = dict(sd)
    del missing["stage3.4.mlp.fc1.weight"]
    with pytest.raises(CheckpointKeyError, match="stages.2.blocks.4.mlp.fc1.weight"):
        checkpoint_filter_fn(missing, model)
    # a two-branch block given as one full-width branch (same total shape) is refused
    bad = {k: v for k, v in sd.items() if not re.match(r"^stage2\.0\.attns\.", k)}
    bad["stage2.0.attns.0.get_v.weight"], bad["stage2.0.attns.0.get_v.bias"] = torch.zeros(128, 1, 3, 3), torch.zeros(128)
    with pytest.raises(CheckpointKeyError, match="branch"):
        checkpoint_filter_fn(bad, model)
    with pytest.raises(KeyError):
        checkpoint_filter_fn({"state_dict_ema": sd}, model, prefer_ema=False)
    # another class count: the classifier is tolerated (timm drops it)
    other = _official_tiny_layout(num_classes=10)
    out = checkpoint_filter_fn(other, model)
    assert out["head.fc.weight"].shape == (10, 512)


def _small(**kw):
    cfg = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 4), split_size=(1, 2, 3, 3), num_classes=5)
    cfg.update(kw)
    return CSWin(**cfg).eval()


def test_small_model_contract():
    torch.manual_seed(0)
    model = _small()
    for hw in [(64, 64), (72, 104), (33, 47)]:
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            feats = model.forward_features(x)
            final, inter = model.forward_intermediates(x)
            torch.testing.assert_close(final, feats)
            assert len(inter) == 4
            for f, info in zip(inter, model.feature_info):
                r = info["reduction"]
                assert tuple(f.shape[1:]) == (info["num_chs"], -(-hw[0] // r), -(-hw[1] // r))
            assert model(x).shape == (2, 5)
    with pytest.raises(ValueError, match="minimum"):
        model(torch.randn(1, 3, 31, 64))
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 128)


def test_small_model_grad_checkpointing_and_backward():
    torch.manual_seed(0)
    model = _small(drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 72, 40)
    y0 = model(x)
    y0.sum().backward()
    g0 = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(torch.isfinite(g).all() for g in g0.values())
    model.zero_grad()
    model.set_grad_checkpointing(True)
    y1 = model(x)
    y1.sum().backward()
    torch.testing.assert_close(y0, y1)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, g0[n], msg=n)


def test_full_stage_rule_and_mixer_fn():
    """A stage whose nominal resolution equals its stripe width is one global branch (official rule)."""
    model = _small(img_size=64, split_size=(16, 2, 3, 3))  # stage 0: 64 // 4 == 16
    assert model.stages[0].blocks[0].attn.full and not model.stages[1].blocks[0].attn.full
    assert model.stages[3].blocks[0].attn.full
    seen = []

    def mixer_fn(**kw):
        seen.append(kw)
        return torch.nn.Identity() if kw["stage"] == 0 else None

    model = _small(mixer_fn=mixer_fn)
    assert isinstance(model.stages[0].blocks[0].attn, torch.nn.Identity)
    assert isinstance(model.stages[1].blocks[0].attn, CrossShapedWindowAttention)
    assert seen[0] == dict(stage=0, block=0, dim=16, num_heads=2, split_size=1, full=False, resolution=56)


def test_features_only_tiny():
    model = timm.create_model("cswin_tiny", features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 72, 104))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 18, 26), (128, 9, 13), (256, 5, 7), (512, 3, 4)]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
