"""CrossFormer / CrossFormer++: the LSDA mixer and the DPB against dense re-computations, the
cross-scale embedding, checkpoint conversion from the official key layout, any input size.

Parity with the unmodified official code (github cheerss/CrossFormer) was measured outside the
repository (every parameter perturbed, max relative logit difference < 1e-6 for all eight
variants); these tests need no official code.
"""
from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn.functional as F

import visionattn
from visionattn.layers import ActivationCooling, CrossScaleEmbed, DynamicPosBias, WindowAttention
from visionattn.models import CheckpointKeyError
from visionattn.models.crossformer import CrossFormer, checkpoint_filter_fn



@pytest.fixture(autouse=True)
def _no_grad():
    """Inference only in this module (restored afterwards: other modules train)."""
    with torch.no_grad():
        yield


# ------------------------------------------------------------------------------------------------
# Dense references


def _dpb_dense(dpb: DynamicPosBias, coords: torch.Tensor) -> torch.Tensor:
    """``bias[h, q, k] = MLP(coords[q] - coords[k])[h]``, one MLP call per pair (no table, no gather)."""
    off = (coords[:, None, :] - coords[None, :, :]).float()  # (N, N, 2), query minus key
    x = dpb.proj(off)
    for layer in dpb.layers:
        x = layer(x)
    return x.permute(2, 0, 1)


def _group_of(h: int, w: int, H: int, W: int, G: int, I: int, long: bool):
    """(group id, slot coordinates) of token (h, w) under CrossFormer's rules, by formula."""
    if H <= G or W <= G:  # the map is one group
        return (0,), (h, w)
    if not long:
        return (h // G, w // G), (h % G, w % G)
    R = G * I
    return (h // R, w // R, h % I, w % I), ((h % R) // I, (w % R) // I)


def _lsda_dense(m: WindowAttention, x: torch.Tensor, G: int, I: int, long: bool) -> torch.Tensor:
    """Masked dense attention over the real tokens: a token attends to the tokens of its group."""
    B, H, W, C = x.shape
    heads, hd = m.num_heads, C // m.num_heads
    ids, slots = zip(*[_group_of(h, w, H, W, G, I, long) for h in range(H) for w in range(W)])
    same = torch.tensor([[a == b for b in ids] for a in ids])
    bias = _dpb_dense(m.dpb, torch.tensor(slots))  # (heads, N, N)
    qkv = (x.reshape(B, H * W, C) @ m.qkv.weight.T + m.qkv.bias).reshape(B, H * W, 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = (q @ k.transpose(-2, -1)) * hd**-0.5 + bias
    logits = logits.masked_fill(~same, float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, H, W, C)
    return out @ m.proj.weight.T + m.proj.bias


def _randomise(module: torch.nn.Module, std: float = 0.2) -> None:
    torch.manual_seed(0)
    for p in module.parameters():
        p.add_(torch.randn_like(p) * std)


@pytest.mark.parametrize(
    "H, W, G, I, long",
    [
        (8, 8, 4, 2, True),  # one LDA region, no padding (MaxViT's grid)
        (13, 10, 2, 3, True),  # several regions, padded to 18 x 12
        (9, 11, 4, 1, False),  # SDA, padded
        (9, 11, 3, 2, False),
        (3, 12, 4, 2, True),  # H <= G: the whole map is one group
        (20, 4, 4, 2, False),
    ],
)
def test_lsda_mixer_equals_dense_masked_attention(H, W, G, I, long):
    name = "lda" if long else "sda"
    kw = dict(group_size=G, interval=I) if long else dict(group_size=G)
    m = visionattn.create_mixer(name, 32, 4, **kw).eval()
    _randomise(m)
    x = torch.randn(2, H, W, 32)
    torch.testing.assert_close(m(x), _lsda_dense(m, x, G, I, long), rtol=1e-4, atol=1e-5)


def test_dilated_partition_by_formula_and_round_trip():
    from visionattn.ops.window import dilated_partition, dilated_reverse

    G, I, H, W = 2, 3, 12, 18
    x = torch.arange(H * W, dtype=torch.float32).reshape(1, H, W, 1)
    win = dilated_partition(x, (G, G), I)
    # window (region r, offset a, b) holds tokens (r_h * G*I + i*I + a, r_w * G*I + j*I + b)
    n = 0
    for rh in range(H // (G * I)):
        for rw in range(W // (G * I)):
            for a in range(I):
                for b in range(I):
                    ref = [[x[0, rh * G * I + i * I + a, rw * G * I + j * I + b, 0] for j in range(G)] for i in range(G)]
                    assert win[n, :, :, 0].tolist() == torch.tensor(ref).tolist()
                    n += 1
    assert n == win.shape[0] and torch.equal(dilated_reverse(win, (G, G), I, (H, W)), x)
    with pytest.raises(ValueError, match="not divisible"):
        dilated_partition(x, (G, G), 5)


def test_dpb_table_equals_mlp_of_each_offset():
    dpb = DynamicPosBias(num_heads=3, hidden_dim=8)
    _randomise(dpb)
    for h, w in ((1, 1), (3, 5), (7, 7)):
        coords = torch.tensor([(r, c) for r in range(h) for c in range(w)])
        torch.testing.assert_close(dpb(h, w), _dpb_dense(dpb, coords), rtol=1e-5, atol=1e-6)


def test_window_attention_rejects_bad_lsda_arguments():
    with pytest.raises(ValueError, match="interval"):
        WindowAttention(32, 4, 7, partition="dilated")
    with pytest.raises(ValueError, match="alternatives"):
        WindowAttention(32, 4, 7, partition="block", rel_pos_bias=True, dynamic_pos_bias=True)


def test_cross_scale_embed_concatenates_centred_convs():
    stem = CrossScaleEmbed(3, 32, (4, 8, 16), stride=4, position="stem")
    assert [c.out_channels for c in stem.convs] == [16, 8, 8]
    _randomise(stem, 0.05)
    x = torch.randn(1, 3, 37, 45)
    # reference: each conv on the image zero-padded by (k - 4) / 2 around, plus bottom/right to a
    # multiple of 4 (40 x 48), then LayerNorm over the concatenation
    outs = [F.conv2d(F.pad(x, [(c.kernel_size[0] - 4) // 2, (c.kernel_size[0] - 4) // 2 + 3] * 2), c.weight, c.bias, stride=4)
            for c in stem.convs]
    ref = F.layer_norm(torch.cat(outs, 1).permute(0, 2, 3, 1), (32,), stem.norm.weight, stem.norm.bias)
    torch.testing.assert_close(stem(x), ref)
    assert stem(x).shape == (1, 10, 12, 32)
    down = CrossScaleEmbed(32, 64, (2, 4), stride=2, position="downsample")
    assert [c.out_channels for c in down.convs] == [32, 32] and down(ref[:, :9, :11]).shape == (1, 5, 6, 64)
    with pytest.raises(ValueError, match="position"):
        CrossScaleEmbed(3, 32, position="middle")
    with pytest.raises(ValueError, match="kernel"):
        CrossScaleEmbed(3, 32, (4, 7), stride=4)


# ------------------------------------------------------------------------------------------------
# Conversion from the official key layout (hand-written from the official module tree:
# models/crossformer.py CrossFormer -> PatchEmbed.projs / Stage.blocks / PatchMerging.reductions)


def _official_state_dict(embed_dim, depths, heads, patch=(4, 8, 16, 32), merge=(2, 4), acl=False, iclr_buffers=False):
    g = torch.Generator().manual_seed(0)
    sd = {}

    def put(k, *shape):
        sd[k] = torch.randn(*shape, generator=g)

    def dims(d, n):
        return [d // 2 ** (i + 1) for i in range(n - 1)] + [d // 2 ** (n - 1)]

    for i, (k, d) in enumerate(zip(patch, dims(embed_dim, len(patch)))):
        put(f"patch_embed.projs.{i}.weight", d, 3, k, k)
        put(f"patch_embed.projs.{i}.bias", d)
    put("patch_embed.norm.weight", embed_dim)
    put("patch_embed.norm.bias", embed_dim)
    for s, (depth, h) in enumerate(zip(depths, heads)):
        C = embed_dim * 2**s
        P = C // 16
        for j in range(depth):
            b = f"layers.{s}.blocks.{j}."
            for n in ("norm1", "norm2"):
                put(b + n + ".weight", C)
                put(b + n + ".bias", C)
            put(b + "attn.qkv.weight", 3 * C, C)
            put(b + "attn.qkv.bias", 3 * C)
            put(b + "attn.proj.weight", C, C)
            put(b + "attn.proj.bias", C)
            put(b + "attn.pos.pos_proj.weight", P, 2)
            put(b + "attn.pos.pos_proj.bias", P)
            for t in (1, 2, 3):
                put(b + f"attn.pos.pos{t}.0.weight", P)
                put(b + f"attn.pos.pos{t}.0.bias", P)
                put(b + f"attn.pos.pos{t}.2.weight", h if t == 3 else P, P)
                put(b + f"attn.pos.pos{t}.2.bias", h if t == 3 else P)
            if iclr_buffers:
                put(b + "attn.biases", 169, 2)
                sd[b + "attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
            put(b + "mlp.fc1.weight", 4 * C, C)
            put(b + "mlp.fc1.bias", 4 * C)
            put(b + "mlp.fc2.weight", C, 4 * C)
            put(b + "mlp.fc2.bias", C)
            if acl and (j + 1) % 3 == 0 and j < depth - 1:
                put(b + "ex_conv.weight", C, 1, 3, 3)
                put(b + "ex_conv.bias", C)
                put(b + "ex_ln.weight", C)
                put(b + "ex_ln.bias", C)
        if s < len(depths) - 1:
            put(f"layers.{s}.downsample.norm.weight", C)
            put(f"layers.{s}.downsample.norm.bias", C)
            for i, (k, d) in enumerate(zip(merge, dims(2 * C, len(merge)))):
                put(f"layers.{s}.downsample.reductions.{i}.weight", d, C, k, k)
                put(f"layers.{s}.downsample.reductions.{i}.bias", d)
    C = embed_dim * 2 ** (len(depths) - 1)
    put("norm.weight", C)
    put("norm.bias", C)
    put("head.weight", 1000, C)
    put("head.bias", 1000)
    return sd


@pytest.mark.parametrize("acl, iclr", [(False, True), (True, False)])
def test_official_layout_converts_strictly(acl, iclr):
    kw = dict(embed_dim=32, depths=(1, 1, 4, 2), num_heads=(2, 4, 8, 16))
    sd = _official_state_dict(kw["embed_dim"], kw["depths"], kw["num_heads"], acl=acl, iclr_buffers=iclr)
    model = CrossFormer(**kw, activation_cooling=acl).eval()
    out = checkpoint_filter_fn({"model": sd}, model)
    model.load_state_dict(out, strict=True)
    assert torch.equal(model.stages[1].downsample.convs[1].weight, sd["layers.0.downsample.reductions.1.weight"])
    assert torch.equal(model.stages[2].blocks[0].attn.dpb.layers[2][2].weight, sd["layers.2.blocks.0.attn.pos.pos3.2.weight"])
    if acl:  # block 2's ACL runs before block 3
        assert isinstance(model.stages[2].blocks[3].pos, ActivationCooling)
        assert torch.equal(model.stages[2].blocks[3].pos.conv.weight, sd["layers.2.blocks.2.ex_conv.weight"])
    assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()
    # our own keys load unchanged; a missing key is named
    assert checkpoint_filter_fn(model.state_dict(), model).keys() == model.state_dict().keys()
    del sd["layers.2.blocks.1.attn.pos.pos2.0.bias"]
    with pytest.raises(CheckpointKeyError, match=re.escape("stages.2.blocks.1.attn.dpb.layers.1.0.bias")):
        checkpoint_filter_fn(sd, model)


# ------------------------------------------------------------------------------------------------
# Models


@pytest.mark.parametrize("name, acl", [("crossformer_tiny", 0), ("crossformerpp_small", 5)])
def test_variant_structure_follows_the_official_config(name, acl):
    with torch.device("meta"):
        m = timm.create_model(name)
    blocks = [b for s in m.stages for b in s.blocks]
    assert sum(isinstance(b.pos, ActivationCooling) for b in blocks) == acl
    kinds = [(b.attn.partition, b.attn.window_size[0], b.attn.interval) for b in m.stages[0].blocks]
    assert kinds[0][0] == "block" and (len(kinds) < 2 or kinds[1][0] == "dilated")
    assert all(b.attn.dpb is not None and b.attn.rpb is None and b.attn.fit_map for b in blocks)


@pytest.mark.parametrize("size", [(32, 32), (45, 77)])
def test_any_input_size_and_padding_does_not_leak(size):
    m = CrossFormer(embed_dim=32, depths=(1, 2, 2, 1), num_heads=(1, 2, 4, 8), group_size=(4, 4, 7, 7), interval=(4, 2, 1, 1),
                    activation_cooling=True).eval()
    _randomise(m, 0.02)
    x = torch.randn(1, 3, *size)
    feats = m.forward_intermediates(x, intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in feats] == [(-(-size[0] // r), -(-size[1] // r)) for r in (4, 8, 16, 32)]
    assert torch.isfinite(m(x)).all()


def test_too_small_input_names_the_minimum():
    m = CrossFormer(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
    with pytest.raises(ValueError, match="32x32"):
        m(torch.randn(1, 3, 31, 64))


@pytest.mark.slow
def test_gmacs_within_two_percent_of_the_paper():
    from visionattn.engine.flops import count_gmacs, unexpected_uncounted

    g, uns = count_gmacs(timm.create_model("crossformer_tiny"))
    assert not unexpected_uncounted(uns)
    assert abs(g / 2.9 - 1) < 0.02, g
