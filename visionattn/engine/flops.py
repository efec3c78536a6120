"""Multiply-accumulate (MAC) counting with fvcore, attention included.

fvcore's ``FlopCountAnalysis`` (facebookresearch/fvcore ``fvcore/nn/flop_count.py``) traces the
model with ``torch.jit.trace`` and counts one fused multiply-add as one "flop", so its totals are
MACs — the convention of the papers' "FLOPs" and of timm's ``gmacs``. Out of the box it gives
**zero** to ``aten::scaled_dot_product_attention`` (fused attention, used by every mixer of this
zoo) and to any custom op, so attention models are undercounted (MaxViT-T 5.42 instead of 5.60,
DaViT-T 4.47 instead of 4.54). This module adds handles:

* ``aten::scaled_dot_product_attention``: q ``(..., Lq, D)``, k ``(..., Lk, D)``, v
  ``(..., Lk, Dv)``, ``n`` = product of the leading dims::

      MACs = n * Lq * Lk * D  (Q K^T)  +  n * Lq * Lk * Dv  (A V)

  — exactly what fvcore counts for the same attention written as two ``matmul`` s (timm's
  ``set_fused_attn(False)`` path), so fused and unfused models give the same totals.
* neighborhood attention (:func:`visionattn.ops.na2d`): its pure-PyTorch backend multiplies
  query *tiles* with their key *halos*, which fvcore would count as dense tile-by-halo matmuls
  (more than the attention does). While counting, every ``na2d`` call of the
  ``visionattn.layers``/``visionattn.models`` modules is routed through the opaque op
  ``visionattn_flops::na2d`` whose handle counts what NATTEN's own fvcore handle counts
  (``natten/flops.py``, used by the NAT/DiNAT papers through ``add_natten_handle``)::

      MACs = B * H * W * heads * (kh * kw) * (D + Dv)

  (``Q K^T`` over the ``kh x kw`` neighborhood plus ``A V``), on the (padded) map the layer feeds.
* Bi-level routing attention (:func:`visionattn.ops.bra2d`) needs no extra handle: its region
  routing is a counted ``matmul``, its gather is data movement (the official BiFormer count with
  fvcore ignores it too), and its token attention is one SDPA call over the gathered regions.

Ops that stay uncounted are the ones every paper ignores: softmax and element-wise arithmetic,
activations, average pooling, padding, selection (``topk``). :data:`UNCOUNTED_OK` lists them;
:func:`count_gmacs` returns the uncounted ops it met so callers can audit that nothing else is
missing (``tests/test_benchmark.py`` does).

Source of the method: ``../shared/reference/training_coco_flops.md`` §4 (fvcore 0.1.5 op
lists, handle formula, validated totals), NAT ``classification/extras.py`` (fvcore + NATTEN
handle), BiFormer ``main.py`` and DaViT ``train.py`` (fvcore).
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "UNCOUNTED_OK",
    "sdpa_flop_jit",
    "na2d_flop_jit",
    "flop_count_analysis",
    "count_gmacs",
    "unexpected_uncounted",
]

#: Ops fvcore leaves uncounted that are element-wise, softmax-like, pooling, padding or
#: selection: the papers' FLOP counts ignore them too. Anything else uncounted is a bug in the
#: counting (a MAC-heavy op without a handle).
UNCOUNTED_OK = frozenset(
    {
        "aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::rsub", "aten::mul", "aten::mul_",
        "aten::div", "aten::div_", "aten::neg", "aten::exp", "aten::sqrt", "aten::rsqrt", "aten::pow",
        "aten::reciprocal", "aten::abs", "aten::sign", "aten::ceil", "aten::floor", "aten::round",
        "aten::fill_", "aten::clone", "aten::copy_", "aten::where", "aten::masked_fill_",
        "aten::softmax", "aten::_softmax", "aten::log_softmax",
        "aten::gelu", "aten::gelu_", "aten::silu", "aten::silu_", "aten::sigmoid", "aten::sigmoid_",
        "aten::tanh", "aten::tanh_", "aten::hardswish", "aten::hardswish_", "aten::relu6", "aten::hardtanh",
        "aten::mean", "aten::sum", "aten::avg_pool2d", "aten::max_pool2d", "aten::pad",
        "aten::reflection_pad2d", "aten::replication_pad2d", "aten::topk", "aten::sort",
        "aten::index_select", "aten::scatter", "aten::scatter_", "aten::linalg_vector_norm", "aten::norm",
        "aten::clamp_min", "aten::clamp_max", "aten::maximum", "aten::minimum", "aten::eq", "aten::ne",
        "aten::lt", "aten::gt", "aten::le", "aten::ge", "aten::logical_not", "aten::bitwise_not",
        "aten::full", "aten::full_like", "aten::zeros_like", "aten::ones_like", "aten::new_zeros",
        "aten::arange", "aten::repeat", "aten::tile", "aten::expand_as", "aten::flip", "aten::type_as",
        "aten::scalar_tensor", "aten::floor_divide", "aten::remainder", "aten::bernoulli_",
        "aten::dropout", "aten::feature_dropout", "aten::masked_fill", "aten::lift_fresh", "aten::movedim",
        # resampling of position/bias tables when a model runs away from its native size (the
        # papers count at the native size, where these do not occur)
        "aten::upsample_bicubic2d", "aten::upsample_linear1d",
    }
)


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``.

    Shapes: q ``(..., Lq, D)``, k ``(..., Lk, D)``, v ``(..., Lk, Dv)``; the leading dims
    (batch, heads, windows, ...) broadcast; ``n`` is the product of the broadcast leading dims.
    Returns ``n*Lq*Lk*D + n*Lq*Lk*Dv`` MACs (``Q K^T`` and ``A V``; softmax, scale and mask
    addition are element-wise and not counted, as in the papers).
    """
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))
    lead = torch.broadcast_shapes(tuple(q[:-2]), tuple(k[:-2]), tuple(v[:-2]))
    n = _prod(lead)
    lq, d = q[-2], q[-1]
    lk, dv = k[-2], v[-1]
    return n * lq * lk * d + n * lq * lk * dv


def _const_int(value: Any) -> Optional[int]:
    try:
        out = value.toIValue()
    except Exception:  # not a constant in the traced graph
        return None
    return int(out) if isinstance(out, (int, float)) else None


def na2d_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle for ``visionattn_flops::na2d`` (neighborhood attention, see module doc).

    Inputs (as traced): q ``(B, H, W, heads, D)``, k, v ``(B, H, W, heads, Dv)``, rpb or None,
    ``kh, kw, dh, dw`` ints, ``scale``. Returns ``B*H*W*heads*kh*kw*(D + Dv)`` MACs, the
    count of NATTEN's ``add_natten_handle`` (QK and AV; the rpb addition is element-wise).
    """
    from fvcore.nn.jit_handles import get_shape

    q = get_shape(inputs[0])
    v = get_shape(inputs[2])
    kh, kw = _const_int(inputs[4]), _const_int(inputs[5])
    if kh is None or kw is None:
        raise ValueError("na2d_flop_jit: kernel size is not a trace constant; cannot count neighborhood attention")
    return _prod(q) * kh * kw + _prod(v) * kh * kw


_NA2D_OP = None


def _na2d_counting_op():
    """The opaque ``visionattn_flops::na2d`` op (defined once, on first use)."""
    global _NA2D_OP
    if _NA2D_OP is None:
        from visionattn.ops import neighborhood as _nb

        @torch.library.custom_op("visionattn_flops::na2d", mutates_args=())
        def _na2d_op(
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            rpb: Optional[torch.Tensor],
            kh: int,
            kw: int,
            dh: int,
            dw: int,
            scale: float,
        ) -> torch.Tensor:
            return _nb.na2d(q, k, v, (kh, kw), (dh, dw), rpb, scale, backend="torch").clone()

        @_na2d_op.register_fake
        def _(q, k, v, rpb, kh, kw, dh, dw, scale):
            return q.new_empty(q.shape[:-1] + v.shape[-1:])

        _NA2D_OP = _na2d_op
    return _NA2D_OP


def _pair(x: Any) -> Tuple[int, int]:
    if isinstance(x, (tuple, list)):
        return int(x[0]), int(x[1])
    return int(x), int(x)


@contextlib.contextmanager
def _na2d_as_one_op() -> Iterator[None]:
    """Route the ``na2d`` of every loaded ``visionattn.layers``/``models`` module through the
    counting op while the context is active (restored afterwards, also on errors)."""
    from visionattn.ops import neighborhood as _nb

    real = _nb.na2d
    op = _na2d_counting_op()

    def counted_na2d(q, k, v, kernel_size, dilation=1, rpb=None, scale=None, backend="auto", tile_size=None):
        (kh, kw), (dh, dw) = _pair(kernel_size), _pair(dilation)
        s = q.shape[-1] ** -0.5 if scale is None else float(scale)
        return op(q, k, v, rpb, kh, kw, dh, dw, s)

    patched = []
    for name, mod in list(sys.modules.items()):
        if mod is None or not name.startswith(("visionattn.layers", "visionattn.models")):
            continue
        if getattr(mod, "na2d", None) is real:
            patched.append(mod)
            mod.na2d = counted_na2d
    try:
        yield
    finally:
        for mod in patched:
            mod.na2d = real


def flop_count_analysis(model: nn.Module, inputs: Tuple[torch.Tensor, ...]):
    """A configured ``fvcore.nn.FlopCountAnalysis`` with the attention handles of this module.

    Call ``.total()`` / ``.by_module()`` / ``.unsupported_ops()`` inside :func:`_na2d_as_one_op`
    (:func:`count_gmacs` does) when the model has neighborhood attention. Warnings are silenced;
    audit ``unsupported_ops()`` instead.
    """
    from fvcore.nn import FlopCountAnalysis

    fca = FlopCountAnalysis(model, inputs)
    fca.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
    fca.set_op_handle("visionattn_flops::na2d", na2d_flop_jit)
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    fca.tracer_warnings("none")
    return fca


def count_gmacs(
    model: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    batch_size: int = 1,
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
) -> Tuple[float, Dict[str, int]]:
    """GMACs (10^9 multiply-accumulates) of one forward pass, attention included.

    Args:
        model: any ``nn.Module`` taking one NCHW image tensor (put into eval mode here; its
            training flag is restored afterwards).
        input_size: ``(C, H, W)`` of one image.
        batch_size: images per forward (the papers count at batch 1; MACs scale linearly).
        device: where to trace (default: the model's device). CPU is fine and the usual choice.
        dtype: input dtype.

    Returns:
        ``(gmacs, unsupported_ops)``: the total in GMACs for the whole batch, and fvcore's
        ``{op name: occurrences}`` of ops it did not count. Check the latter with
        :func:`unexpected_uncounted`.

    Raises:
        ValueError: ``input_size`` is not three positive ints or ``batch_size < 1``.
    """
    if len(tuple(input_size)) != 3 or any(int(s) < 1 for s in input_size):
        raise ValueError(f"count_gmacs: input_size must be (C, H, W) positive ints, got {tuple(input_size)}")
    if batch_size < 1:
        raise ValueError(f"count_gmacs: batch_size must be >= 1, got {batch_size}")
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    x = torch.randn(batch_size, *[int(s) for s in input_size], device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _na2d_as_one_op():
            fca = flop_count_analysis(model, (x,))
            total = fca.total()
            unsupported = dict(fca.unsupported_ops())
    finally:
        model.train(was_training)
    return total / 1e9, unsupported


def unexpected_uncounted(unsupported: Dict[str, int]) -> List[str]:
    """Names in ``unsupported`` (from :func:`count_gmacs`) that are not in :data:`UNCOUNTED_OK`,
    i.e. ops that may hide multiply-accumulates; an empty list means the count is complete."""
    return sorted(op for op in unsupported if op not in UNCOUNTED_OK)
