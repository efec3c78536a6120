"""Inspection (visionattn.visualize, visionattn-viz): attention weights captured from the mixers'
own forward, checked against window / route / stripe geometry computed here independently, against
softmaxes recomputed from the q / k the projections produced, and the ERF of an NA-only model
against its theoretical receptive field."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

import visionattn  # noqa: F401
from visionattn.layers import (AgentAttention, BiLevelRoutingAttention, ChannelGroupAttention,
                               CrossShapedWindowAttention, NeighborhoodAttention2d, WindowAttention)
from visionattn.visualize import attention_maps, cam_target, capture_attention, effective_receptive_field, grad_cam


def _run(module, x, *args):
    """Flag-off output, flag-on output and the records of one call."""
    module.eval()
    with torch.no_grad():
        ref = module(x, *args)
        with capture_attention(module) as records:
            out = module(x, *args)
    return ref, out, records


def _na_keys(L, K, d, i):
    """Keys of query ``i`` along one axis (NATTEN semantics, written independently): the query's
    dilation class ``r``, its class-local index, a window of ``K`` class members shifted to stay
    inside the class."""
    r = i % d
    members = list(range(r, L, d))
    ip = members.index(i)
    start = min(max(ip - K // 2, 0), len(members) - K)
    return set(members[start:start + K])


def _support(w):
    """Positions where any head has a nonzero weight."""
    return set(map(tuple, (w.abs().sum(0) > 0).nonzero().tolist()))


def _check_queries(rec, H, W, allowed, exact=True):
    """Every query: each head sums to 1, weights zero exactly outside ``allowed(y, x)`` (a set of
    (row, col)) and positive inside."""
    for y in range(H):
        for x in range(W):
            w = rec.query_weights(y, x)
            torch.testing.assert_close(w.sum((1, 2)), torch.ones(w.shape[0]), atol=1e-5, rtol=0)
            keys = allowed(y, x)
            inside = torch.zeros(H, W, dtype=torch.bool)
            for (r, c) in keys:
                inside[r, c] = True
            outside = w[:, ~inside]
            if exact:
                assert (outside == 0).all(), (y, x)
            else:
                assert outside.abs().max() < 1e-30, (y, x)
            assert (w[:, inside] > 0).all(), (y, x)


@pytest.mark.parametrize("K,d,H,W", [(3, 2, 9, 11), (5, 1, 6, 7)])
def test_na_weights_follow_the_window(K, d, H, W):
    torch.manual_seed(0)
    m = NeighborhoodAttention2d(16, 2, kernel_size=K, dilation=d)
    ref, out, records = _run(m, torch.randn(2, H, W, 16))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (rec,) = records
    assert rec.kind == "neighborhood" and rec.size == (H, W)
    _check_queries(rec, H, W, lambda y, x: {(r, c) for r in _na_keys(H, K, d, y) for c in _na_keys(W, K, d, x)})


def test_na_map_equals_softmax_recomputed_from_q_and_k():
    torch.manual_seed(1)
    K, d, H, W, heads, C = 3, 2, 8, 9, 2, 16
    m = NeighborhoodAttention2d(C, heads, kernel_size=K, dilation=d).eval()
    qkv = []
    m.qkv.register_forward_hook(lambda mod, i, o: qkv.append(o))
    ref, out, records = _run(m, torch.randn(1, H, W, C))
    q, k, _ = qkv[-1].reshape(1, H, W, 3, heads, C // heads).unbind(3)
    for (y, x) in [(0, 0), (3, 4), (7, 8), (5, 1)]:
        keys = sorted((r, c) for r in _na_keys(H, K, d, y) for c in _na_keys(W, K, d, x))
        for h in range(heads):
            logits = torch.stack([(q[0, y, x, h] * k[0, r, c, h]).sum() * m.scale + m.rpb[h, (r - y) // d + K - 1, (c - x) // d + K - 1]
                                  for r, c in keys])
            want = torch.zeros(H, W)
            want[tuple(zip(*keys))] = logits.softmax(0)
            torch.testing.assert_close(records[0].query_weights(y, x)[h], want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("H,W", [(8, 8), (7, 9)])
def test_routing_weights_follow_the_routed_regions(H, W):
    torch.manual_seed(2)
    n, topk, C, heads = 4, 3, 16, 2
    m = BiLevelRoutingAttention(C, heads, num_regions=n, topk=topk, qkv_bias=True).eval()
    qkv = []
    m.qkv.register_forward_hook(lambda mod, i, o: qkv.append(o))
    ref, out, records = _run(m, torch.randn(1, H, W, C))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (rec,) = records
    q, k, _ = qkv[-1][0].split([C, C, C], dim=-1)
    # regions of ceil(L / n) tokens; descriptors = means over the real tokens; routing = top-k of q_r . k_r
    rh, rw = -(-H // n), -(-W // n)
    nh, nw = -(-H // rh), -(-W // rw)
    rid = torch.tensor([[(y // rh) * nw + x // rw for x in range(W)] for y in range(H)])
    qr = torch.stack([q[rid == r].mean(0) for r in range(nh * nw)])
    kr = torch.stack([k[rid == r].mean(0) for r in range(nh * nw)])
    routes = (qr @ kr.T).topk(topk, dim=-1).indices
    assert sorted(map(sorted, routes.tolist())) == sorted(map(sorted, rec.data["idx"][0].tolist()))
    _check_queries(rec, H, W, lambda y, x: {(r, c) for r in range(H) for c in range(W) if int(rid[r, c]) in routes[int(rid[y, x])].tolist()})


@pytest.mark.parametrize("H,W", [(6, 6), (7, 10)])
def test_cswin_weights_follow_the_two_stripes(H, W):
    torch.manual_seed(3)
    sw, heads = 2, 4
    m = CrossShapedWindowAttention(16, heads, stripe_width=sw)
    ref, out, records = _run(m, torch.randn(1, H, W, 16))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (rec,) = records

    def stripe(L, i):  # symmetric padding: pad // 2 before the first stripe
        before = ((-L) % sw) // 2
        s = (i + before) // sw
        return set(range(max(s * sw - before, 0), min((s + 1) * sw - before, L)))

    for y in range(H):
        for x in range(W):
            w = rec.query_weights(y, x)
            assert w.shape[0] == heads
            torch.testing.assert_close(w.sum((1, 2)), torch.ones(heads), atol=1e-5, rtol=0)
            vertical = {(r, c) for r in range(H) for c in stripe(W, x)}
            horizontal = {(r, c) for r in stripe(H, y) for c in range(W)}
            for h in range(heads):
                assert _support(w[h:h + 1]) == (vertical if h < heads // 2 else horizontal), (y, x, h)


@pytest.mark.parametrize("partition,H,W", [("block", 7, 8), ("grid", 7, 8), ("block", 6, 6)])
def test_maxvit_block_and_grid_windows(partition, H, W):
    torch.manual_seed(4)
    P = 3
    m = WindowAttention(16, 2, P, partition=partition, mask_padding=True)
    ref, out, records = _run(m, torch.randn(1, H, W, 16))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (rec,) = records
    Hp, Wp = -(-H // P) * P, -(-W // P) * P

    def axis(L, Lp, i):
        if partition == "block":  # P adjacent tokens
            return {j for j in range(i // P * P, i // P * P + P) if j < L}
        step = Lp // P  # P tokens spaced Lp / P apart
        return {j for j in range(i % step, Lp, step) if j < L}

    _check_queries(rec, H, W, lambda y, x: {(r, c) for r in axis(H, Hp, y) for c in axis(W, Wp, x)})


@pytest.mark.parametrize("partition,mask_padding", [("dilated", True), ("dilated", False), ("block", False)])
def test_crossformer_group_windows(partition, mask_padding):
    """CrossFormer's SDA (block) and LDA (dilated) groups with the dynamic position bias: each
    query's weights lie exactly on its group, computed here from the paper's definition (LDA:
    tokens ``I`` apart inside a ``(G*I) x (G*I)`` region), and sum to 1 unless unmasked padded
    keys took part (``mask_padding=False``, the official behaviour), whose weight is dropped."""
    torch.manual_seed(7)
    G, I, H, W = 2, 3, 7, 8
    m = WindowAttention(16, 2, G, partition=partition, interval=I if partition == "dilated" else 0, rel_pos_bias=False,
                        dynamic_pos_bias=True, mask_padding=mask_padding)
    ref, out, records = _run(m, torch.randn(1, H, W, 16))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (rec,) = records

    def axis(i):
        if partition == "block":
            return {j for j in range(i // G * G, i // G * G + G)}
        region = i // (G * I) * (G * I)
        return {region + t * I + i % I for t in range(G)}

    for y in range(H):
        for x in range(W):
            w = rec.query_weights(y, x)
            group = {(r, c) for r in axis(y) for c in axis(x)}
            inside = torch.zeros(H, W, dtype=torch.bool)
            for (r, c) in group:
                if r < H and c < W:
                    inside[r, c] = True
            assert (w[:, ~inside] == 0).all() and (w[:, inside] > 0).all(), (y, x)
            total = w.sum((1, 2))
            if mask_padding or len(group) == inside.sum():
                torch.testing.assert_close(total, torch.ones(2), atol=1e-5, rtol=0)
            else:  # padded keys of the group kept part of the weight
                assert (total < 1 - 1e-6).all(), (y, x)


def test_swin_shifted_windows():
    torch.manual_seed(5)
    H = W = 6
    P, S = 3, 1
    m = WindowAttention(16, 2, P, partition="block", shift_size=S)
    ref, out, records = _run(m, torch.randn(1, H, W, 16))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)

    def group(i):  # rolled coordinate -> (window, Swin region label inside it)
        j = (i - S) % H
        return j // P, 0 if j < H - P else (1 if j < H - S else 2)

    # Swin masks other regions with -100 (not -inf): their weight is ~exp(-100), not exactly 0
    _check_queries(records[0], H, W, lambda y, x: {(r, c) for r in range(H) for c in range(W)
                                                   if group(r) == group(y) and group(c) == group(x)}, exact=False)


def test_global_agent_and_channel_records():
    torch.manual_seed(6)
    H, W, C = 5, 6, 16
    x = torch.randn(1, H, W, C)
    # global attention with relative position bias: every key, sums to 1
    _, _, (rec,) = _run(WindowAttention(C, 2, (H, W), partition="global"), x)
    _check_queries(rec, H, W, lambda y, xx: {(r, c) for r in range(H) for c in range(W)})
    # agent attention: composed query -> agent -> key map equals the product recomputed from q, k
    m = AgentAttention(C, 2, agent_num=4, resolution=(H, W)).eval()
    qkv = []
    m.qkv.register_forward_hook(lambda mod, i, o: qkv.append(o))
    ref, out, (rec,) = _run(m, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    q, k, _ = qkv[-1].reshape(1, H * W, 3, C).unbind(2)
    agents = torch.nn.functional.adaptive_avg_pool2d(q.reshape(1, H, W, C).permute(0, 3, 1, 2), 2).flatten(2).transpose(1, 2)  # (1, 4, C)
    b1, b2 = m.agent_biases(H, W)
    d = C // 2
    for h in range(2):
        sl = slice(h * d, (h + 1) * d)
        a1 = (agents[0, :, sl] @ k[0, :, sl].T * m.scale + b1[h]).softmax(-1)  # (4, N)
        a2 = (q[0, :, sl] @ agents[0, :, sl].T * m.scale + b2[h]).softmax(-1)  # (N, 4)
        for (y, xx) in [(0, 0), (2, 3), (4, 5)]:
            want = (a2[y * W + xx] @ a1).view(H, W)
            torch.testing.assert_close(rec.query_weights(y, xx)[h], want, atol=1e-6, rtol=1e-5)
            assert abs(float(want.detach().sum()) - 1) < 1e-5
    # DaViT channel attention: (B, G, Cg, Cg), rows sum to 1, equal to the softmax recomputed from the projection
    m = ChannelGroupAttention(C, 4).eval()
    qkv.clear()
    m.qkv.register_forward_hook(lambda mod, i, o: qkv.append(o))
    ref, out, (rec,) = _run(m, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert rec.kind == "channel" and not rec.spatial
    _, qc, kc = qkv[-1].reshape(H * W, 3, 4, 4).unbind(1)  # chunks: values, queries, keys
    for g in range(4):
        want = ((qc[:, g] * m.scale).T @ kc[:, g]).softmax(-1)
        torch.testing.assert_close(rec.data["attn"][0, g], want, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="no spatial query map"):
        rec.query_weights(0, 0)


@pytest.mark.parametrize("prefix", [0, 1])
def test_inline_linear_weights_equal_the_papers_formula(prefix):
    """InLine attention (Han et al. 2024, Eq. 5): ``A_ij = (q_i.k_j - mean_s q_i.k_s) * scale / N
    + 1/N`` recomputed here from the projections' q and k; every row sums to 1; capture keeps the
    output (the module computes it as ``q (K_c^T V)`` without the matrix)."""
    from visionattn.layers import InLineAttention

    torch.manual_seed(8)
    H, W, C, heads = 4, 5, 16, 2
    m = InLineAttention(C, heads, num_prefix_tokens=prefix).eval()
    qkv = []
    m.qkv.register_forward_hook(lambda mod, i, o: qkv.append(o))
    N = prefix + H * W
    x = torch.randn(2, N, C)
    ref, out, (rec,) = _run(m, x, (H, W))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert rec.kind == "linear" and rec.size == (H, W)
    q, k, _ = qkv[-1][0].reshape(N, 3, C).unbind(1)
    d = C // heads
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        dots = q[:, sl] @ k[:, sl].T  # (N, N)
        want = (dots - dots.mean(1, keepdim=True)) * d ** -0.5 / N + 1.0 / N
        torch.testing.assert_close(rec.data["attn"][0, h], want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(want.sum(1), torch.ones(N), atol=1e-5, rtol=0)
        for (y, xx) in [(0, 0), (3, 4)]:  # query_weights: the patch keys of the query's row
            torch.testing.assert_close(rec.query_weights(y, xx)[h], want[prefix + y * W + xx, prefix:].view(H, W))


TINY = {
    "nat_mini": dict(depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 1, 2, 2)),
    "biformer_tiny": dict(depths=(1, 1, 1, 1), embed_dims=(32, 32, 64, 64)),
    "cswin_tiny": dict(depths=(1, 1, 1, 1), img_size=64, embed_dim=16, num_heads=(2, 2, 2, 2)),
    "maxvit_tiny": dict(depths=(1, 1, 1, 1), img_size=64, embed_dim=(32, 32, 64, 64), stem_width=16),
    "davit_tiny_va": dict(depths=(1, 1, 1, 1), embed_dims=(32, 32, 64, 64), num_heads=(1, 1, 2, 2)),
    "agent_swin_tiny": dict(depths=(1, 1, 2, 1), img_size=64, embed_dim=16, num_heads=(1, 1, 2, 2)),
    "agent_pvt_tiny": dict(depths=(1, 1, 1, 1), img_size=64, embed_dims=(16, 32, 32, 64), num_heads=(1, 1, 2, 2)),
    "agent_deit_tiny": dict(depth=3, agent_layers=2, img_size=64, embed_dim=64, num_heads=2),
    "crossformer_tiny": dict(depths=(1, 2, 1, 1), embed_dim=16, num_heads=(1, 1, 2, 2)),
    "inline_swin_tiny": dict(depths=(1, 1, 2, 1), img_size=64, embed_dim=16, num_heads=(1, 1, 2, 2)),
}
SLOW_FAMILIES = {"maxvit_tiny", "davit_tiny_va", "agent_swin_tiny"}  # their mixers are covered quickly above


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_FAMILIES else n for n in sorted(TINY)])
def test_capture_on_every_family_keeps_the_output(name):
    """Flag-on output == flag-off output on a map no window divides; every spatial map sums to 1
    (up to keys outside the grid); the model is restored afterwards."""
    torch.manual_seed(0)
    model = timm.create_model(name, **TINY[name]).eval()
    x = torch.randn(1, 3, 70, 66)
    with torch.no_grad():
        ref = model(x)
    maps, out = attention_maps(model, x, (35.0, 10.0))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert maps and all(m["record"].spatial == (m["weights"] is not None) for m in maps)
    for m in maps:
        if m["weights"] is not None:
            s = m["weights"].sum((1, 2))
            assert ((s > 0.05) & (s < 1 + 1e-5)).all(), (m["record"].name, s)
    assert not any("forward" in mod.__dict__ for mod in model.modules())
    assert all(getattr(mod, "fused_attn", True) == timm.layers.use_fused_attn() for mod in model.modules()
               if isinstance(mod, timm.layers.Attention))


def test_capture_errors():
    model = timm.create_model("mixernet_tiny", mixers="pool", depths=(1, 1, 1, 1)).eval()
    with pytest.raises(ValueError, match="no attention mixer"):
        with capture_attention(model):
            pass
    model = timm.create_model("nat_mini", depths=(1, 1, 1, 1)).eval()
    with pytest.raises(ValueError, match="outside the 64x64 image"):
        attention_maps(model, torch.randn(1, 3, 64, 64), (64, 3))


def test_erf_of_na_only_model_is_zero_outside_its_receptive_field():
    """MixerNet with a 4x4 patch stem, 2x2 patch merging and NA (K=3) blocks: the centre unit of each
    stage sees exactly the pixels its theoretical receptive field (computed here from the kernel
    sizes, strides and NA windows) holds; every other pixel has gradient exactly 0."""
    torch.manual_seed(0)
    K, S = 3, 48
    model = timm.create_model("mixernet_tiny", mixers="na", mixer_kwargs={"kernel_size": K}, depths=(1, 1, 2),
                              embed_dim=16, stem="patch", downsample="merge", num_classes=0).eval()
    maps = effective_receptive_field(model, torch.randn(2, 3, S, S))
    # per axis: stage grids 12, 6, 3; NA over one axis is the product window -> axis-separable sets
    grids, blocks = [S // 4, S // 8, S // 16], [1, 1, 2]

    def na(tokens, L):
        return {k for t in tokens for k in _na_keys(L, K, 1, t)}

    for stage, erf in enumerate(maps):
        L = grids[stage]
        tokens = {L // 2}
        for s in range(stage, -1, -1):  # back through the stages, last first
            for _ in range(blocks[s]):
                tokens = na(tokens, grids[s])
            if s > 0:  # 2x2 merge: token t of stage s covers tokens 2t, 2t+1 of stage s-1
                tokens = {2 * t + j for t in tokens for j in (0, 1)}
        pixels = sorted(p for t in tokens for p in range(4 * t, 4 * t + 4))
        rf = torch.zeros(S, dtype=torch.bool)
        rf[pixels] = True
        inside = rf[:, None] & rf[None, :]
        assert (erf[~inside] == 0).all(), stage
        assert (erf[inside] > 0).float().mean() > 0.9, stage


def test_grad_cam_hierarchical_and_plain():
    torch.manual_seed(0)
    for name in ("nat_mini", "agent_deit_tiny"):
        model = timm.create_model(name, num_classes=5, **TINY[name]).eval()
        x = torch.randn(1, 3, 64, 64)
        if name == "nat_mini":
            cam, cls = grad_cam(model, x, 3, stage=-2)
            assert cam.shape == (64, 64) and cls == 3 and np.isfinite(cam).all() and 0 <= cam.min() <= cam.max() <= 1
        with pytest.raises(ValueError, match="outside the classifier"):
            grad_cam(model, x, 7)
        layer, reshape = cam_target(model, (64, 64))
        acts = []
        layer.register_forward_hook(lambda mod, i, o: acts.append(o))
        with torch.no_grad():
            model(x)
        assert reshape(acts[-1]).shape[-2:] == ((2, 2) if name == "nat_mini" else (4, 4))  # the last grid, NCHW


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("what", ["attention", "erf", "cam"])
def test_cli_writes_its_pngs(what, image_file, tmp_path):
    from visionattn.tools.visualize import cli

    out = tmp_path / "viz"
    args = [what, "--model", "biformer_tiny", "--model-kwargs", "depths=[1,1,1,1]", "embed_dims=[32,32,64,64]", "--num-classes", "4",
            "--image", str(image_file), "--img-size", "64", "--output", str(out)]
    extra = {"attention": ["--query", "5", "45"], "erf": ["--stages", "0", "1"], "cam": []}[what]
    assert cli(args + extra) == 0
    assert (out / f"{what}.png").stat().st_size > 1000
    summary = json.loads((out / f"{what}.json").read_text())
    if what == "attention":
        assert [layer["kind"] for layer in summary["layers"]] == ["routing"] * 3 + ["global"]
        assert summary["layers"][0]["token"] == [2, 14]  # pixel (5, 45) of 40x50 -> (8, 57.6) of 64x64 -> /4
    if what == "erf":
        assert summary["stages"] == [0, 1]


def test_cli_errors(image_file, tmp_path, capsys):
    from visionattn.tools.visualize import cli

    base = ["attention", "--model", "nat_mini", "--model-kwargs", "depths=[1,1,1,1]", "--output", str(tmp_path)]
    assert cli(base + ["--image", str(image_file), "--query", "40", "3"]) == 2
    assert "outside the image" in capsys.readouterr().err
    assert cli(base + ["--image", str(tmp_path / "missing.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["attention", "--model", "nat_minii", "--image", str(image_file), "--output", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err
