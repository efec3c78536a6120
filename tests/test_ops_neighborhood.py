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
