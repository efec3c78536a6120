"""MaxViT and DaViT: partitions, mixers and whole models held to independent references.

* ``ops.window`` partitions against explicit index loops; the window mixer (block / grid /
  global, with the TF relative bias and with padding) against a dense explicit-loop attention
  written here; the relative bias against timm's ``RelPosBiasTf`` (one-hot einsum).
* ``ChannelGroupAttention`` against the paper's Eq. (3) written with explicit roles, and timm's
  ``davit.ChannelAttention``.
* Whole models: timm's ``maxvit_*_tf_*`` / ``davit_*`` with random weights (and random BN stats),
  their state dicts converted by our ``checkpoint_filter_fn`` and loaded strictly; logits and every
  ``forward_intermediates`` tap compared (max abs diff <= 1e-4, fp32). The official DaViT layout is
  produced from timm's keys by an inverse renaming written here. Large variants: key/shape
  equality on the meta device.
"""
from __future__ import annotations

import functools
import math
import re

import pytest
import timm
import torch
import torch.nn.functional as F

import visionattn.models.davit as davit
import visionattn.models.maxvit as maxvit
from visionattn.layers.channel import ChannelGroupAttention
from visionattn.layers.window import WindowAttention
from visionattn.models._registry import CheckpointKeyError
from visionattn.ops import window as W

TOL = 1e-4


# ------------------------------------------------------------------------------------------------
# ops.window


def _loop_windows(x, size, mode):
    """Explicit reference: list of windows, each (Ph, Pw, C), in (b, window-row, window-col) order."""
    B, H, Wd, C = x.shape
    out = []
    for b in range(B):
        if mode == "block":
            for wr in range(H // size[0]):
                for wc in range(Wd // size[1]):
                    out.append(x[b, wr * size[0]:(wr + 1) * size[0], wc * size[1]:(wc + 1) * size[1]])
        else:
            sh, sw = H // size[0], Wd // size[1]  # token spacing
            for a in range(sh):
                for c in range(sw):
                    out.append(torch.stack([torch.stack([x[b, i * sh + a, j * sw + c] for j in range(size[1])]) for i in range(size[0])]))
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["block", "grid"])
@pytest.mark.parametrize("hw,size", [((6, 8), (3, 2)), ((4, 4), (4, 4)), ((10, 6), (2, 3))])
def test_partition_matches_loops_and_inverts(mode, hw, size):
    x = torch.randn(2, *hw, 5)
    win = W.partition(x, size, mode)
    torch.testing.assert_close(win, _loop_windows(x, size, mode), rtol=0, atol=0)
    torch.testing.assert_close(W.reverse(win, size, hw, mode), x, rtol=0, atol=0)


def test_partition_errors_and_padding_mask():
    x = torch.randn(1, 7, 9, 3)
    with pytest.raises(ValueError, match="not divisible"):
        W.window_partition(x, (2, 2))
    xp, ph, pw = W.pad_to_multiple(x, (4, 4))
    assert xp.shape == (1, 8, 12, 3) and (ph, pw) == (1, 3)
    assert torch.equal(xp[:, :7, :9], x) and xp[:, 7:].abs().sum() == 0 and xp[:, :, 9:].abs().sum() == 0
    for mode in ("block", "grid"):
        m = W.padding_mask(7, 9, 1, 3, (4, 4), mode)
        ref = _loop_windows((xp.abs().sum(-1, keepdim=True) == 0).float(), (4, 4), mode).flatten(1).bool()
        # x has no exact zeros, so padded slots are exactly the all-zero tokens
        assert torch.equal(m, ref)
        assert not m.all(dim=1).any()  # every window keeps at least one real token


# ------------------------------------------------------------------------------------------------
# window mixer vs a dense explicit-loop reference


def _reference_window_attention(mod: WindowAttention, x, mode, mask_padding):
    """Explicit per-window attention: positions listed by loops, bias by the table formula."""
    B, H, Wd, C = x.shape
    P = mod.window_size
    heads, hd = mod.num_heads, mod.head_dim
    Hp, Wp = math.ceil(H / P[0]) * P[0], math.ceil(Wd / P[1]) * P[1]
    xp = torch.zeros(B, Hp, Wp, C)
    xp[:, :H, :Wd] = x
    qkv = mod.qkv(xp).view(B, Hp, Wp, 3, heads, hd)
    out = torch.zeros(B, Hp, Wp, heads, hd)
    if mode == "block":
        groups = [[(wr * P[0] + i, wc * P[1] + j) for i in range(P[0]) for j in range(P[1])]
                  for wr in range(Hp // P[0]) for wc in range(Wp // P[1])]
    else:
        sh, sw = Hp // P[0], Wp // P[1]
        groups = [[(i * sh + a, j * sw + c) for i in range(P[0]) for j in range(P[1])] for a in range(sh) for c in range(sw)]
    for b in range(B):
        for pos in groups:
            rows = torch.tensor([p[0] for p in pos])
            cols = torch.tensor([p[1] for p in pos])
            q, k, v = (qkv[b, rows, cols, t].transpose(0, 1) for t in range(3))  # (heads, N, hd)
            logits = (q * mod.scale) @ k.transpose(-1, -2)
            if mod.rpb is not None:
                bias = torch.empty(heads, len(pos), len(pos))
                for n in range(len(pos)):
                    for m in range(len(pos)):
                        # slot coordinates inside the window (grid: slot index, not map offset)
                        i, j = divmod(n, P[1])
                        r, c = divmod(m, P[1])
                        bias[:, n, m] = mod.rpb[:, r - i + P[0] - 1, c - j + P[1] - 1]
                logits = logits + bias
            if mask_padding:
                pad = (rows >= H) | (cols >= Wd)
                logits = logits.masked_fill(pad[None, None, :], float("-inf"))
            out[b, rows, cols] = (logits.softmax(-1) @ v).transpose(0, 1)
    out = out.reshape(B, Hp, Wp, C)[:, :H, :Wd]
    return mod.proj(out)


@pytest.mark.parametrize("mode", ["block", "grid"])
@pytest.mark.parametrize("hw,mask", [((6, 9), True), ((6, 9), False), ((2, 2), True), ((9, 6), True)])
def test_window_attention_matches_reference(mode, hw, mask):
    torch.manual_seed(0)
    mod = WindowAttention(16, 2, 3, partition=mode, mask_padding=mask).eval()
    with torch.no_grad():
        mod.rpb.normal_(0, 1.0)
        x = torch.randn(2, *hw, 16)
        ref = _reference_window_attention(mod, x, mode, mask)
        torch.testing.assert_close(mod(x), ref, rtol=1e-5, atol=1e-5)  # inference: SDPA
    y = mod(x)  # autograd on CPU: the explicit-product path
    torch.testing.assert_close(y.detach(), ref, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    assert torch.isfinite(mod.rpb.grad).all() and mod.rpb.grad.abs().sum() > 0


def test_window_attention_without_bias_matches_reference():
    mod = WindowAttention(12, 3, (2, 3), partition="block", rel_pos_bias=False, mask_padding=False).eval()
    assert mod.rpb is None
    x = torch.randn(1, 5, 7, 12)
    with torch.no_grad():
        torch.testing.assert_close(mod(x), _reference_window_attention(mod, x, "block", False), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(3, 3), (4, 2)])
def test_global_attention_unchanged(hw):
    """The ViT-rpb (global) path: dense attention with the (resized) table, written out here."""
    torch.manual_seed(0)
    mod = WindowAttention(8, 2, (3, 3)).eval()
    x = torch.randn(2, *hw, 8)
    H, Wd = hw
    with torch.no_grad():
        table = F.interpolate(mod.rpb[None], size=(2 * H - 1, 2 * Wd - 1), mode="bicubic", align_corners=False)[0]
        qkv = mod.qkv(x).view(2, H * Wd, 3, 2, 4)
        q, k, v = (qkv[:, :, t].transpose(1, 2) for t in range(3))
        bias = torch.empty(2, H * Wd, H * Wd)
        for n in range(H * Wd):
            for m in range(H * Wd):
                (i, j), (r, c) = divmod(n, Wd), divmod(m, Wd)
                bias[:, n, m] = table[:, r - i + H - 1, c - j + Wd - 1]
        ref = (((q * mod.scale) @ k.transpose(-1, -2) + bias).softmax(-1) @ v).transpose(1, 2).reshape(2, H, Wd, 8)
        torch.testing.assert_close(mod(x), mod.proj(ref), rtol=1e-5, atol=1e-5)


def test_window_bias_equals_timm_relposbiastf():
    from timm.layers.pos_embed_rel import RelPosBiasTf

    for P in [(7, 7), (3, 5)]:
        mod = WindowAttention(32, 4, P, partition="block")
        ref = RelPosBiasTf(P, num_heads=4)
        with torch.no_grad():
            ref.relative_position_bias_table.copy_(mod.rpb)
        torch.testing.assert_close(mod.window_bias(), ref.get_bias()[0] if ref.get_bias().dim() == 4 else ref.get_bias(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# channel group attention


def test_channel_group_attention_paper_and_timm():
    from timm.models.davit import ChannelAttention

    torch.manual_seed(0)
    C, G = 12, 3
    mod = ChannelGroupAttention(C, G).eval()
    x = torch.randn(2, 4, 5, C)
    with torch.no_grad():
        y = mod(x)
        # paper Eq. (3) per group with explicit roles: rows [0:C] values, [C:2C] queries, [2C:3C] keys
        t = mod.qkv(x.reshape(2, 20, C))
        Vv, Q, K = t[..., :C], t[..., C:2 * C], t[..., 2 * C:]
        out = torch.empty(2, 20, C)
        cg = C // G
        for g in range(G):
            s = slice(g * cg, (g + 1) * cg)
            A = (Q[..., s].transpose(1, 2) @ K[..., s] / math.sqrt(cg)).softmax(-1)  # (B, cg, cg)
            out[..., s] = (A @ Vv[..., s].transpose(1, 2)).transpose(1, 2)
        torch.testing.assert_close(y, mod.proj(out).reshape(2, 4, 5, C), rtol=1e-5, atol=1e-5)
        ref = ChannelAttention(C, num_heads=G, qkv_bias=True).eval()
        ref.load_state_dict(mod.state_dict())
        torch.testing.assert_close(y.reshape(2, 20, C), ref(x.reshape(2, 20, C)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        ChannelGroupAttention(10, 3)


# ------------------------------------------------------------------------------------------------
# whole models vs timm


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("weight") and p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        for n, b in model.named_buffers():
            if n.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif n.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model.eval()


def _compare(ref, ours, size, batch=1):
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f_ref, taps_ref = ref.forward_intermediates(x)
        f_ours, taps_ours = ours.forward_intermediates(x)
        logits = (ref.forward_head(f_ref) - ours.forward_head(f_ours)).abs().max().item()
    assert len(taps_ref) == len(taps_ours)
    diffs = [(a - b).abs().max().item() for a, b in zip(taps_ref, taps_ours)]
    for a, b in zip(taps_ref, taps_ours):
        assert a.shape == b.shape
    assert logits <= TOL and max(diffs) <= TOL and (f_ref - f_ours).abs().max().item() <= TOL, (logits, diffs)
    return logits, diffs


def _pair(timm_name, ours_name, filter_fn, **kw):
    ref = _randomize(timm.create_model(timm_name, **kw))
    ours = timm.create_model(ours_name, **kw).eval()
    ours.load_state_dict(filter_fn(ref.state_dict(), ours), strict=True)
    return ref, ours


@pytest.fixture(scope="module")
def maxvit_tiny_pair():
    return _pair("maxvit_tiny_tf_224", "maxvit_tiny", maxvit.checkpoint_filter_fn)


def test_maxvit_tiny_matches_timm_224(maxvit_tiny_pair):
    _compare(*maxvit_tiny_pair, (224, 224))


@pytest.mark.slow  # 224 px stays in the quick set
def test_maxvit_tiny_matches_timm_odd_stem_map(maxvit_tiny_pair):
    """222 px: the stem gives 111 rows (odd), so the stride-2 "same" conv and the 2x2 "same"
    average pool of the shortcut pad one row; timm still runs there (56 = 8 * 7 at stage 0)."""
    _compare(*maxvit_tiny_pair, (222, 224))


@pytest.mark.slow
def test_maxvit_tiny_matches_timm_448(maxvit_tiny_pair):
    _compare(*maxvit_tiny_pair, (448, 448))


_SLOW = pytest.mark.slow


@functools.lru_cache(maxsize=None)
def _cached_pair(timm_name, ours_name, depths):
    filt = maxvit.checkpoint_filter_fn if ours_name.startswith("maxvit") else davit.checkpoint_filter_fn
    return _pair(timm_name, ours_name, filt, depths=depths)


@pytest.mark.parametrize(
    "timm_name,ours_name,depths,size",
    [
        ("maxvit_small_tf_224", "maxvit_small", (1, 1, 2, 1), (224, 224)),
        pytest.param("maxvit_small_tf_224", "maxvit_small", (1, 1, 2, 1), (448, 448), marks=_SLOW),
        pytest.param("maxvit_base_tf_224", "maxvit_base", (1, 2, 1, 1), (224, 224), marks=_SLOW),
        pytest.param("maxvit_base_tf_224", "maxvit_base", (1, 2, 1, 1), (448, 448), marks=_SLOW),
        pytest.param("maxvit_tiny_tf_384", "maxvit_tiny_384", (1, 1, 1, 1), (384, 384), marks=_SLOW),
        pytest.param("maxvit_tiny_tf_384", "maxvit_tiny_384", (1, 1, 1, 1), (768, 768), marks=_SLOW),
    ],
)
def test_maxvit_variants_match_timm(timm_name, ours_name, depths, size):
    """Reduced depths (timm's ``depths=`` overlay), the variant's widths, heads and window."""
    _compare(*_cached_pair(timm_name, ours_name, depths), size)


@pytest.mark.slow  # test_maxvit_padding_is_masked_out covers padding in the quick set
def test_maxvit_runs_where_timm_fails(maxvit_tiny_pair):
    ref, ours = maxvit_tiny_pair
    x = torch.randn(1, 3, 256, 256)
    with pytest.raises(Exception, match="divisible"):
        with torch.no_grad():
            ref(x)
    with torch.no_grad():
        assert ours(x).shape == (1, 1000)
        assert ours.forward_features(torch.randn(1, 3, 200, 264)).shape == (1, 512, 7, 9)
        assert ours.forward_features(torch.randn(1, 3, 33, 40)).shape == (1, 512, 2, 2)
    with pytest.raises(ValueError, match="minimum"):
        ours(torch.randn(1, 3, 31, 64))


def test_maxvit_padding_is_masked_out():
    """Masked padding: a map smaller than the window attends only among its tokens, i.e. equals
    the same mixer applied with a window exactly the map's size (bias = the table's centre crop)."""
    torch.manual_seed(0)
    big = WindowAttention(32, 1, 7, partition="block").eval()
    small = WindowAttention(32, 1, 3, partition="block").eval()
    with torch.no_grad():
        big.rpb.normal_()
        small.load_state_dict({k: (v[:, 4:9, 4:9] if k == "rpb" else v) for k, v in big.state_dict().items()})
        x = torch.randn(2, 3, 3, 32)
        torch.testing.assert_close(big(x), small(x), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def davit_tiny_pair():
    return _pair("davit_tiny", "davit_tiny_va", davit.checkpoint_filter_fn)


@pytest.mark.parametrize("size", [(224, 224), (250, 333)])
def test_davit_tiny_matches_timm(davit_tiny_pair, size):
    _compare(*davit_tiny_pair, size)


@pytest.mark.parametrize(
    "timm_name,ours_name,depths,size",
    [
        ("davit_small", "davit_small_va", (1, 1, 2, 1), (224, 224)),
        ("davit_small", "davit_small_va", (1, 1, 2, 1), (288, 224)),
        pytest.param("davit_base", "davit_base_va", (1, 1, 2, 1), (224, 224), marks=_SLOW),
        pytest.param("davit_base", "davit_base_va", (1, 1, 2, 1), (320, 288), marks=_SLOW),
    ],
)
def test_davit_variants_match_timm(timm_name, ours_name, depths, size):
    _compare(*_cached_pair(timm_name, ours_name, depths), size)


def _timm_davit_to_official(sd):
    """Inverse of the official renaming (written independently of the converter)."""
    out = {}
    for k, v in sd.items():
        k2 = k
        k2 = re.sub(r"^stem\.conv\.", "patch_embeds.0.proj.", k2)
        k2 = re.sub(r"^stem\.norm\.", "patch_embeds.0.norm.", k2)
        k2 = re.sub(r"^stages\.(\d+)\.downsample\.conv\.", r"patch_embeds.\1.proj.", k2)
        k2 = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", r"patch_embeds.\1.norm.", k2)
        k2 = re.sub(r"^stages\.(\d+)\.blocks\.", r"main_blocks.\1.", k2)
        k2 = k2.replace(".cpe1.", ".cpe.0.").replace(".cpe2.", ".cpe.1.")
        k2 = k2.replace("head.norm.", "norms.").replace("head.fc.", "head.")
        out[k2] = v
    return out


def test_davit_official_layout_converts(davit_tiny_pair):
    ref, _ = davit_tiny_pair
    official = _timm_davit_to_official(ref.state_dict())
    assert any(k.startswith("main_blocks.2.2.1.cpe.1.") for k in official) and "norms.weight" in official
    ours = timm.create_model("davit_tiny_va").eval()
    ours.load_state_dict(davit.checkpoint_filter_fn({"model": official}, ours), strict=True)
    _compare(ref, ours, (160, 192))
    bad = dict(official, **{"main_blocks.0.0.0.attn.rel_pos": torch.zeros(1)})
    with pytest.raises(CheckpointKeyError, match="main_blocks.0.0.0.attn.rel_pos"):
        davit.checkpoint_filter_fn(bad, ours)
    missing = {k: v for k, v in official.items() if "cpe.1" not in k}
    with pytest.raises(CheckpointKeyError, match="pos2"):
        davit.checkpoint_filter_fn(missing, ours)


@pytest.mark.parametrize(
    "ours_name,timm_name",
    [
        ("maxvit_large", "maxvit_large_tf_224"),
        ("maxvit_large_512", "maxvit_large_tf_512"),
        ("maxvit_xlarge", "maxvit_xlarge_tf_224"),
        ("maxvit_xlarge_384", "maxvit_xlarge_tf_384"),
        ("maxvit_base_512", "maxvit_base_tf_512"),
        ("davit_large_va", "davit_large"),
        ("davit_huge_va", "davit_huge"),
        ("davit_giant_va", "davit_giant"),
    ],
)
def test_large_variants_keys_and_shapes(ours_name, timm_name):
    with torch.device("meta"):
        ref = timm.create_model(timm_name)
        ours = timm.create_model(ours_name)
    filt = maxvit.checkpoint_filter_fn if ours_name.startswith("maxvit") else davit.checkpoint_filter_fn
    sd = filt(ref.state_dict(), ours)  # raises CheckpointKeyError on any mismatch
    assert set(sd) == set(ours.state_dict())
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())


def test_maxvit_filter_resizes_tables_and_rejects_unknown(maxvit_tiny_pair):
    ref, _ = maxvit_tiny_pair
    with torch.device("meta"):
        ours384 = timm.create_model("maxvit_tiny_384")
    sd = maxvit.checkpoint_filter_fn(ref.state_dict(), ours384)
    k = "stages.0.blocks.0.attn_block.attn.rpb"
    assert sd[k].shape == (2, 23, 23)
    torch.testing.assert_close(
        sd[k], F.interpolate(ref.state_dict()[k.replace("rpb", "rel_pos.relative_position_bias_table")][None], size=(23, 23), mode="bicubic", align_corners=False)[0]
    )
    bad = dict(ref.state_dict(), extra=torch.zeros(1))
    with pytest.raises(CheckpointKeyError, match="extra"):
        maxvit.checkpoint_filter_fn(bad, timm.create_model("maxvit_tiny"))


# ------------------------------------------------------------------------------------------------
# model contract on small configs


@pytest.mark.parametrize(
    "name,kw,taps",
    [
        # ~40 s each on a loaded 2-core machine; test_model_contract.py checks both families in the quick set
        pytest.param("maxvit_tiny", dict(embed_dim=(32, 64, 64, 96), depths=(1, 1, 1, 1), stem_width=16), 5,
                     marks=pytest.mark.slow),
        pytest.param("davit_tiny_va", dict(embed_dims=(32, 64, 64, 96), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 3)), 4,
                     marks=pytest.mark.slow),
    ],
)
def test_contract_small(name, kw, taps):
    torch.manual_seed(0)
    m = timm.create_model(name, **kw).eval()
    x = torch.randn(2, 3, 72, 104)
    with torch.no_grad():
        f = m.forward_features(x)
        assert f.shape == (2, 96, 3, 4)
        final, inter = m.forward_intermediates(x)
        assert len(inter) == taps and torch.equal(final, f)
        assert m.forward_head(f, pre_logits=True).shape == (2, m.head_hidden_size)
    m.train()
    m.set_grad_checkpointing(False)
    torch.manual_seed(0)
    y0 = m(x)
    m.set_grad_checkpointing(True)
    torch.manual_seed(0)
    y1 = m(x)
    torch.testing.assert_close(y0, y1, rtol=1e-5, atol=1e-5)
    y1.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.eval()
    feats = timm.create_model(name, features_only=True, **kw).eval()
    with torch.no_grad():
        outs = feats(x)
    assert [o.shape[1] for o in outs] == feats.feature_info.channels()
    assert [o.shape[-1] for o in outs] == [math.ceil(104 / r) for r in feats.feature_info.reduction()]
    m.reset_classifier(0)
    with torch.no_grad():
        assert m(x).shape == (2, m.head_hidden_size)
    m.reset_classifier(0, "")
    with torch.no_grad():
        assert m(x).dim() == 4
    # pruning drops the head's norm / pre-logits sized for the removed stages (timm behaviour)
    m = timm.create_model(name, **kw).eval()
    m.prune_intermediate_layers([1, 2])
    with torch.no_grad():
        f = m.forward_features(x)
        assert f.shape[1] == m.num_features == m.feature_info[2]["num_chs"]
        assert m.forward_head(f).shape == f.shape


def test_names_and_cfgs():
    ours = sorted(set(maxvit.default_cfgs) | set(davit.default_cfgs))
    assert len(ours) == 21 and all(timm.is_model(n) for n in ours)
    assert all(n.endswith("_va") for n in davit.default_cfgs)
    for n in ours:
        cfg = timm.models.get_pretrained_cfg(n).to_dict()
        for key in ("input_size", "pool_size", "crop_pct", "interpolation", "mean", "std", "first_conv", "classifier", "license", "origin_url"):
            assert cfg.get(key) not in (None, ""), (n, key)
        assert cfg["pool_size"] == (cfg["input_size"][1] // 32, cfg["input_size"][2] // 32)
    tags = [t for t in timm.list_pretrained() if t.split(".")[0] in ours]
    # every timm tag of the TF MaxViT ports and of davit_{tiny,small,base}
    timm_tags = timm.list_pretrained("maxvit_*_tf_*") + [t for t in timm.list_pretrained("davit_*.msft_in1k") if "_va." not in t]
    assert len(tags) == len(timm_tags) == 24
    hub_ids = {timm.models.get_pretrained_cfg(t).hf_hub_id for t in tags}
    assert hub_ids == {"timm/" + t for t in timm_tags}
    for t in tags:  # data settings as timm's cfg of the same weights
        ours_cfg = timm.models.get_pretrained_cfg(t)
        timm_cfg = timm.models.get_pretrained_cfg(ours_cfg.hf_hub_id[len("timm/"):])
        for key in ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "num_classes"):
            if key == "crop_pct" and t.startswith("davit"):
                # the official dingmyu/davit evaluation of these weights (issue #13.4); timm's Hub copy says 0.95
                assert (ours_cfg.crop_pct, timm_cfg.crop_pct) == (0.9, 0.95), t
                continue
            assert getattr(ours_cfg, key) == getattr(timm_cfg, key), (t, key)


def test_pretrained_overlay_file_runs_filter_and_resets_head(davit_tiny_pair, tmp_path):
    """The user route for local weights: ``pretrained=True`` + ``pretrained_cfg_overlay=dict(file=...)``
    runs our filter on a timm-layout file; another class count drops the classifier."""
    from safetensors.torch import save_file

    ref, ours = davit_tiny_pair
    path = str(tmp_path / "davit_tiny_timm.safetensors")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    m = timm.create_model("davit_tiny_va", pretrained=True, pretrained_cfg_overlay=dict(file=path)).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-4)
    m5 = timm.create_model("davit_tiny_va", pretrained=True, num_classes=5, pretrained_cfg_overlay=dict(file=path)).eval()
    assert m5.get_classifier().out_features == 5
    with torch.no_grad():
        torch.testing.assert_close(m5.forward_features(x), m.forward_features(x))
