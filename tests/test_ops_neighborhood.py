"""na2d: window rule, values and gradients against an independent gather implementation."""
from __future__ import annotations

import pytest
import torch

from visionattn.ops import na2d, na2d_reference, neighborhood_indices, window_start
from visionattn.ops.neighborhood import _axis_plan

from _na_reference import gather_na2d, natten014_window_start

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_window_start_matches_natten_014_closed_form_exhaustively():
    n = 0
    for L in range(1, 48):
        for K in (1, 3, 5, 7, 9, 11, 13):
            for d in range(1, L // K + 1):
                s = window_start(L, K, d)
                for i in range(L):
                    assert int(s[i]) * d + i % d == natten014_window_start(i, L, K, d), (L, K, d, i)
                    n += 1
    assert n > 20000


def test_neighborhood_indices_properties():
    keys, bias = neighborhood_indices(23, 7, 3)
    assert keys.shape == bias.shape == (23, 7)
    assert bool(((keys % 3) == (torch.arange(23)[:, None] % 3)).all())  # same residue class
    assert keys.min() >= 0 and keys.max() < 23
    assert bias.min() >= 0 and bias.max() <= 12


CASES = [
    # H, W, K, d
    (7, 7, 7, 1),
    (14, 14, 7, 1),
    (14, 14, 7, 2),
    (13, 17, 5, 2),
    (23, 22, 7, 3),
    (12, 12, 11, 1),
    (12, 20, 3, 4),
    (15, 16, 3, 5),
    (21, 9, 7, 1),
    (28, 28, 7, 4),
    (9, 31, 3, 1),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("H,W,K,d", CASES)
@pytest.mark.parametrize("with_rpb", [True, False])
def test_na2d_forward_backward_match_gather(device, H, W, K, d, with_rpb):
    g = torch.Generator().manual_seed(H * 1000 + W * 10 + K + d)
    B, nh, hd = 2, 3, 8
    q, k, v = (torch.randn(B, H, W, nh, hd, generator=g, dtype=torch.float64).to(device).requires_grad_() for _ in range(3))
    rpb = torch.randn(nh, 2 * K - 1, 2 * K - 1, generator=g, dtype=torch.float64).to(device).requires_grad_() if with_rpb else None
    ins = [q, k, v] + ([rpb] if with_rpb else [])
    want = gather_na2d(q.cpu(), k.cpu(), v.cpu(), K, d, rpb.cpu() if with_rpb else None)
    grad_out = torch.randn(want.shape, generator=g, dtype=torch.float64)
    want_grads = torch.autograd.grad((want * grad_out).sum(), ins)
    for backend in ("torch", "reference"):
        got = na2d(q, k, v, K, d, rpb, backend=backend)
        assert got.shape == (B, H, W, nh, hd)
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-10)
        got_grads = torch.autograd.grad((got * grad_out.to(device)).sum(), ins)
        for gg, wg in zip(got_grads, want_grads):
            torch.testing.assert_close(gg.cpu(), wg.cpu(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("tile", [1, 2, 3, (2, 9), 50])
def test_tile_size_does_not_change_the_result(tile):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 19, 26, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(2, 9, 9, generator=g, dtype=torch.float64)
    want = gather_na2d(q, k, v, 5, 2, rpb)
    torch.testing.assert_close(na2d(q, k, v, 5, 2, rpb, tile_size=tile), want, rtol=0, atol=1e-10)


def test_value_head_dim_may_differ_and_scale_is_used():
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(1, 10, 10, 2, 4, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, 10, 10, 2, 6, generator=g, dtype=torch.float64)
    out = na2d(q, k, v, 3, 2, scale=0.7)
    assert out.shape == (1, 10, 10, 2, 6)
    torch.testing.assert_close(out, na2d_reference(q, k, v, 3, 2, scale=0.7), rtol=0, atol=1e-12)


def test_rpb_indexing_convention():
    """With q = 0 the attention is softmax(rpb) over the window: check one border query by hand."""
    H = W = 9
    K, d = 3, 2
    q = torch.zeros(1, H, W, 1, 2, dtype=torch.float64)
    k = torch.zeros_like(q)
    v = torch.zeros(1, H, W, 1, 1, dtype=torch.float64)
    v[0, 4, 6, 0, 0] = 1.0  # a key at row 4, col 6
    rpb = torch.randn(1, 5, 5, dtype=torch.float64)
    out = na2d(q, k, v, K, d, rpb)
    # Query (0, 8): rows window of 0 with K=3, d=2 is {0, 2, 4}; cols window of 8 is {4, 6, 8}.
    # Key (4, 6) sits at offsets ((4-0)/2, (6-8)/2) = (2, -1) -> table index (2+2, -1+2) = (4, 1).
    rows, cols = [0, 2, 4], [4, 6, 8]
    logits = torch.stack([rpb[0, (r - 0) // d + K - 1, (c - 8) // d + K - 1] for r in rows for c in cols])
    want = logits.softmax(0)[rows.index(4) * 3 + cols.index(6)]
    torch.testing.assert_close(out[0, 0, 8, 0, 0], want)


def test_memory_is_linear_in_tokens():
    """The tiled plan and its work grow linearly with H*W (no (H*W)^2 term)."""
    def work(L):
        q_idx, k_idx, inv, off, n, T, halo = _axis_plan(L, 7, 1, 7)
        return len(q_idx) * halo  # per-axis (queries x keys) pairs evaluated

    w = [work(L) for L in (56, 112, 224)]
    assert w[1] <= 2.2 * w[0] and w[2] <= 2.2 * w[1]
    # A 224x224 map (50k tokens) runs; dense attention would need a 10 GB score matrix per head.
    q = torch.randn(1, 224, 224, 1, 8)
    out = na2d(q, q, q, 7, 3)
    assert out.shape == q.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_close_to_fp32(dtype):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 14, 14, 2, 16, generator=g) for _ in range(3))
    rpb = torch.randn(2, 13, 13, generator=g)
    want = na2d(q, k, v, 7, 2, rpb)
    got = na2d(q.to(dtype), k.to(dtype), v.to(dtype), 7, 2, rpb.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=0, atol=3e-2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_size=4), "odd"),
        (dict(kernel_size=7, dilation=3), "exceeds the feature map size"),
        (dict(kernel_size=3, dilation=0), "dilation must be >= 1"),
        (dict(kernel_size=3, rpb=torch.zeros(2, 3, 3)), r"rpb must have shape"),
        (dict(kernel_size=3, backend="cuda-magic"), "unknown backend"),
        (dict(kernel_size=3, rpb=torch.zeros(2, 5, 5), backend="natten"), "no relative position bias"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    q = torch.randn(1, 10, 12, 2, 4)
    with pytest.raises(ValueError, match=match):
        na2d(q, q, q, **kwargs)


def test_shape_dtype_mismatch_errors():
    q = torch.randn(1, 8, 8, 2, 4)
    with pytest.raises(ValueError, match="share"):
        na2d(q, torch.randn(1, 8, 9, 2, 4), q, 3)
    with pytest.raises(ValueError, match="one dtype"):
        na2d(q, q.double(), q, 3)
    with pytest.raises(ValueError, match=r"\(B, H, W, heads, head_dim\)"):
        na2d(q[0], q[0], q[0], 3)


# ------------------------------------------------------------------------------------------------
# flex_attention backend and backend choice

FLEX_CASES = [
    # H, W, K, d: odd / non-square maps, K up to 11, dilations up to 4, full-window maps
    (7, 7, 7, 1),
    (13, 17, 5, 2),
    (23, 22, 7, 3),
    (12, 12, 11, 1),
    (22, 25, 11, 2),
    (12, 20, 3, 4),
    (28, 28, 7, 4),
    (9, 31, 3, 1),
]


@pytest.mark.parametrize("H,W,K,d", FLEX_CASES)
@pytest.mark.parametrize("with_rpb", [True, False])
def test_flex_eager_matches_gather_and_reference(H, W, K, d, with_rpb):
    """The flex mask_mod / score_mod encode the exact NATTEN window and rpb indexing (float64)."""
    g = torch.Generator().manual_seed(H * 31 + W * 7 + K + d)
    q, k, v = (torch.randn(2, H, W, 3, 8, generator=g, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(3, 2 * K - 1, 2 * K - 1, generator=g, dtype=torch.float64) if with_rpb else None
    want = gather_na2d(q, k, v, K, d, rpb)
    got = na2d(q, k, v, K, d, rpb, backend="flex-eager")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    torch.testing.assert_close(got, na2d_reference(q, k, v, K, d, rpb), rtol=0, atol=1e-10)


@pytest.mark.parametrize("H,W,K,d", [(13, 17, 5, 2), (23, 22, 7, 3), (22, 25, 11, 2), (56, 56, 7, 8), (30, 19, 3, 4)])
def test_flex_block_mask_covers_exactly_the_touched_blocks(H, W, K, d):
    """Block sparsity vs windows from the test-side NATTEN 0.14 formula: a key block is listed for a
    query block iff some query of it has a window key in that key block."""
    from visionattn.ops.neighborhood import FLEX_BLOCK_SIZE, _flex_plan
    from _na_reference import _axis_keys

    order, inverse, row, col, win_row, win_col, kv_num, kv_idx = _flex_plan(H, W, K, K, d, d, FLEX_BLOCK_SIZE)
    order = torch.tensor(order)
    kr, kc = _axis_keys(H, K, d), _axis_keys(W, K, d)  # (H, K), (W, K)
    N = H * W
    member_r = torch.zeros(H, H, dtype=torch.bool)
    member_r[torch.arange(H)[:, None], kr] = True
    member_c = torch.zeros(W, W, dtype=torch.bool)
    member_c[torch.arange(W)[:, None], kc] = True
    dense = (member_r[:, None, :, None] & member_c[None, :, None, :]).reshape(N, N)
    dense = dense[order][:, order]  # into the flex token order
    nb = -(-N // FLEX_BLOCK_SIZE)
    pad = nb * FLEX_BLOCK_SIZE - N
    blocks = torch.nn.functional.pad(dense, (0, pad, 0, pad)).view(nb, FLEX_BLOCK_SIZE, nb, FLEX_BLOCK_SIZE).any(3).any(1)
    for qb in range(nb):
        listed = set(kv_idx[qb][: kv_num[qb]])
        assert listed == set(torch.nonzero(blocks[qb]).flatten().tolist()), (qb, listed)
    assert sorted(order.tolist()) == list(range(N))
    assert [order[i] for i in inverse] == list(range(N))


def test_flex_on_cpu_refuses_gradients_clearly():
    q = torch.randn(1, 10, 12, 2, 4, requires_grad=True)
    with pytest.raises(ValueError, match="no backward on CPU"):
        na2d(q, q, q, 3, backend="flex")
    with torch.no_grad():
        assert na2d(q, q, q, 3, backend="flex-eager").shape == q.shape


def test_auto_backend_rule_on_cpu():
    from visionattn.ops.neighborhood import choose_backend

    q = torch.randn(1, 10, 12, 2, 4)
    rpb = torch.zeros(2, 5, 5)
    assert choose_backend(q, q, q, rpb) == "torch"
    assert choose_backend(q, q, q, None) == "torch"


def test_full_window_map_uses_sdpa_with_bias_and_matches_gather():
    """K == H == W: NA is full attention plus the relative bias (fused SDPA path), with gradients."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 11, 11, 2, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rpb = torch.randn(2, 21, 21, generator=g, dtype=torch.float64, requires_grad=True)
    got = na2d(q, k, v, 11, 1, rpb)
    want = gather_na2d(q, k, v, 11, 1, rpb)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    for a, b in zip(torch.autograd.grad(got.sum(), [q, k, v, rpb]), torch.autograd.grad(want.sum(), [q, k, v, rpb])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_layer_compiles_fullgraph_without_graph_breaks():
    from visionattn.layers.neighborhood import NeighborhoodAttention2d

    m = NeighborhoodAttention2d(16, 2, 5, 2, backend="torch")
    explain = torch._dynamo.explain(m)(torch.randn(1, 13, 12, 16))
    assert explain.graph_break_count == 0, explain.break_reasons


@pytest.mark.slow
@pytest.mark.parametrize("H,W,K,d", [(23, 22, 7, 3), (12, 12, 11, 1)])
def test_compiled_flex_forward_matches_gather_on_cpu(H, W, K, d):
    """torch.compile(flex_attention) (inductor CPU template): forward values, float32."""
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, H, W, 2, 16, generator=g) for _ in range(3))
    rpb = torch.randn(2, 2 * K - 1, 2 * K - 1, generator=g)
    with torch.no_grad():
        got = na2d(q, k, v, K, d, rpb, backend="flex")
    torch.testing.assert_close(got, gather_na2d(q, k, v, K, d, rpb), rtol=0, atol=2e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex backward needs CUDA in torch <= 2.14")
@pytest.mark.parametrize("H,W,K,d", [(23, 22, 7, 3), (22, 25, 11, 2), (28, 28, 7, 4)])
def test_compiled_flex_values_and_gradients_on_cuda(H, W, K, d):
    g = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(2, H, W, 2, 32, generator=g).cuda().requires_grad_() for _ in range(3))
    rpb = torch.randn(2, 2 * K - 1, 2 * K - 1, generator=g).cuda().requires_grad_()
    ins = [q, k, v, rpb]
    got = na2d(q, k, v, K, d, rpb, backend="flex")
    want = gather_na2d(*(t.double().cpu() for t in (q, k, v)), K, d, rpb.double().cpu())
    torch.testing.assert_close(got.double().cpu(), want, rtol=0, atol=2e-5)
    go = torch.randn(want.shape, generator=g, dtype=torch.float64)
    gg = torch.autograd.grad((got * go.float().cuda()).sum(), ins)
    wg = torch.autograd.grad((want * go).sum(), [t for t in ins])
    for a, b in zip(gg, wg):
        torch.testing.assert_close(a.double().cpu(), b.cpu(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("H,W,K,d", [(23, 22, 7, 3), (13, 17, 5, 2)])
def test_tiled_inference_path_matches_gather(H, W, K, d):
    """Under no_grad the tiled path updates its buffers in place; the numbers must not change."""
    g = torch.Generator().manual_seed(17)
    q, k, v = (torch.randn(2, H, W, 3, 8, generator=g, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(3, 2 * K - 1, 2 * K - 1, generator=g, dtype=torch.float64)
    rpb_before = rpb.clone()
    with torch.no_grad():
        got = na2d(q, k, v, K, d, rpb, backend="torch")
        got0 = na2d(q, k, v, K, d, None, backend="torch")
    torch.testing.assert_close(got, gather_na2d(q, k, v, K, d, rpb), rtol=0, atol=1e-10)
    torch.testing.assert_close(got0, gather_na2d(q, k, v, K, d, None), rtol=0, atol=1e-10)
    assert torch.equal(rpb, rpb_before)


def test_layer_backends_agree_and_unknown_backend_is_rejected():
    from visionattn.layers.neighborhood import NeighborhoodAttention2d

    torch.manual_seed(0)
    m = NeighborhoodAttention2d(16, 2, 5, 3, backend="torch").double()
    x = torch.randn(2, 11, 17, 16, dtype=torch.float64)  # padded to 15 rows inside the layer
    with torch.no_grad():
        want = m(x)
        for backend in ("reference", "flex-eager"):
            m.backend = backend
            torch.testing.assert_close(m(x), want, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="unknown backend"):
        NeighborhoodAttention2d(16, 2, 5, backend="cuda")


@pytest.mark.parametrize("K, d, qkv_bias, rel_pos_bias", [(5, 1, True, True), (3, 3, True, True), (5, 2, False, False)])
def test_layer_exported_with_dynamic_hw_matches_eager_padding_included(K, d, qkv_bias, rel_pos_bias):
    """Under ``torch.export`` with a symbolic height/width the layer takes its export path (the
    gather formulation, windows as tensor arithmetic, the padded keys/values appended as the qkv
    bias instead of a branch on the size). One graph then matches the eager tiled path at maps
    smaller than ``K * d`` on either axis (padded, as NATTEN 0.14) and larger, odd sizes included."""
    from torch.export import Dim

    from visionattn.layers.neighborhood import NeighborhoodAttention2d

    torch.manual_seed(0)
    layer = NeighborhoodAttention2d(16, 2, K, d, qkv_bias=qkv_bias, rel_pos_bias=rel_pos_bias).eval()
    if rel_pos_bias:
        torch.nn.init.normal_(layer.rpb, std=1.0)  # a table far from zero, so a wrong bias index shows
    x = torch.randn(2, 13, 17, 16)
    ep = torch.export.export(layer, (x,), dynamic_shapes=({0: Dim("b", max=8), 1: Dim("h", min=2, max=512),
                                                           2: Dim("w", min=2, max=512)},), strict=False)
    graph = ep.module()
    span = K * d
    for B, H, W in ((1, 2, 3), (2, span - 1, span + 4), (3, 13, 17), (1, 2 * span + 3, span), (2, 31, 2)):
        x = torch.randn(B, H, W, 16)
        with torch.no_grad():
            torch.testing.assert_close(graph(x), layer(x), rtol=1e-5, atol=1e-5, msg=lambda m: f"{(B, H, W)}: {m}")


def test_na2d_exported_with_dynamic_hw_matches_reference():
    """:func:`na2d` called directly under ``torch.export`` with a symbolic height/width (maps of at
    least ``K * d``) takes the gather path: one graph equals the dense reference at every size."""
    from torch.export import Dim

    class Op(torch.nn.Module):
        def forward(self, q, k, v, rpb):
            return na2d(q, k, v, 5, 2, rpb)

    torch.manual_seed(0)
    rpb = torch.randn(2, 9, 9)
    q, k, v = (torch.randn(2, 12, 14, 2, 8) for _ in range(3))
    hw = {0: Dim("b", max=4), 1: Dim("h", min=10, max=256), 2: Dim("w", min=10, max=256)}
    ep = torch.export.export(Op(), (q, k, v, rpb), dynamic_shapes=(hw, hw, hw, None), strict=False)
    for B, H, W in ((1, 10, 10), (2, 17, 11), (1, 23, 31)):
        q, k, v = (torch.randn(B, H, W, 2, 8) for _ in range(3))
        torch.testing.assert_close(ep.module()(q, k, v, rpb), na2d_reference(q, k, v, 5, 2, rpb), rtol=1e-5, atol=1e-5)
