"""VAN: large-kernel attention against an explicit shift-and-sum computation of the paper's
equations, the NHWC BatchNorm against ``nn.BatchNorm2d``, and whole models against a test-side
re-statement of the official module tree (``_official_van.py``) through the official key layout.

References written here (not the code under test):
* ``_ref_lka``: Eq. 1-2 of Guo et al. (arXiv:2202.09741): each depthwise convolution as an explicit
  sum over its taps of zero-filled shifted maps (float64), the 1x1 convolution as ``einsum``,
  times the input; ``_ref_mixer`` wraps it as the official ``Attention`` (1x1, GELU, LKA, 1x1, +x).
* ``OfficialVAN``: the official module names and forward order in NCHW with ``Conv2d`` 1x1s.
"""
from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import visionattn
from visionattn.detection import freeze_batch_norm
from visionattn.layers.lka import LKA, BatchNormNHWC, DWConvMlp, LargeKernelAttention, lka_kernels
from visionattn.models._registry import CheckpointKeyError
from visionattn.models.van import VAN, checkpoint_filter_fn

from _official_van import OfficialVAN, randomise_

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = dict(embed_dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), mlp_ratios=(8, 8, 4, 4))


# ------------------------------------------------------------------------------------------------
# references


def _shift_sum_dw(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """Depthwise 'same' convolution of NHWC ``x`` with ``w (C, 1, k, k)`` as a sum over taps."""
    B, H, W, C = x.shape
    k = w.shape[-1]
    r = dilation * (k // 2)
    out = torch.zeros_like(x) + b
    for i in range(k):
        for j in range(k):
            dy, dx = i * dilation - r, j * dilation - r  # output (y, x) reads input (y + dy, x + dx)
            if abs(dy) >= H or abs(dx) >= W:
                continue  # the tap reads only zero padding
            shifted = torch.zeros_like(x)
            ys, yd = slice(max(dy, 0), H + min(dy, 0)), slice(max(-dy, 0), H + min(-dy, 0))
            xs, xd = slice(max(dx, 0), W + min(dx, 0)), slice(max(-dx, 0), W + min(-dx, 0))
            shifted[:, yd, xd] = x[:, ys, xs]
            out = out + shifted * w[:, 0, i, j]
    return out


def _ref_lka(m: LKA, u: torch.Tensor) -> torch.Tensor:
    a = _shift_sum_dw(u, m.conv0.weight, m.conv0.bias)
    a = _shift_sum_dw(a, m.conv_spatial.weight, m.conv_spatial.bias, dilation=m.conv_spatial.dilation[0])
    a = torch.einsum("bhwc,dc->bhwd", a, m.conv1.weight) + m.conv1.bias
    return u * a


def _ref_mixer(m: LargeKernelAttention, x: torch.Tensor) -> torch.Tensor:
    y = torch.einsum("bhwc,dc->bhwd", x, m.proj_1.weight) + m.proj_1.bias
    y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))  # exact GELU
    y = _ref_lka(m.lka, y)
    y = torch.einsum("bhwc,dc->bhwd", y, m.proj_2.weight) + m.proj_2.bias
    return x + y


@pytest.fixture
def f64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


# ------------------------------------------------------------------------------------------------
# the mixer


@pytest.mark.parametrize("H, W", [(1, 1), (5, 3), (9, 13), (23, 20)])
def test_lka_mixer_matches_explicit_equations_forward_backward(f64, H, W):
    torch.manual_seed(0)
    m = LargeKernelAttention(6)
    for p in m.parameters():
        nn.init.normal_(p, 0, 0.3)
    x = torch.randn(2, H, W, 6, requires_grad=True)
    y, ref = m(x), _ref_mixer(m, x)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad((y * g).sum(), [x, m.lka.conv_spatial.weight])
    rx, rw = torch.autograd.grad((ref * g).sum(), [x, m.lka.conv_spatial.weight])
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-10)


def test_lka_decomposition_and_errors():
    assert lka_kernels(21, 3) == (5, 7)
    m = LKA(4)
    assert m.conv0.kernel_size == (5, 5) and m.conv_spatial.kernel_size == (7, 7) and m.conv_spatial.dilation == (3, 3)
    assert m.conv_spatial.padding == (9, 9) and m.conv0.groups == m.conv_spatial.groups == 4
    assert lka_kernels(35, 5) == (9, 7)
    with pytest.raises(ValueError, match="even dilated kernel"):
        LKA(4, kernel_size=12, dilation=3)
    with pytest.raises(ValueError, match="positive ints"):
        LKA(4, kernel_size=0)
    with pytest.raises(ValueError, match="odd"):
        DWConvMlp(4, 8, kernel_size=2)


def test_lka_mixer_in_registry_builds_any_backbone():
    spec = visionattn.get_mixer("lka")
    assert "VAN" in spec.paper and spec.cost
    m = visionattn.create_mixer("lka", 16, 2, kernel_size=35, dilation=5, shortcut=False)
    assert m.lka.conv0.kernel_size == (9, 9) and not m.shortcut
    net = visionattn.MixerNet(mixers="lka", num_classes=3, depths=(1, 1, 1, 1), embed_dim=16, head_dim=8)
    assert net(torch.randn(1, 3, 40, 36)).shape == (1, 3)


def test_dwconv_mlp_matches_reference(f64):
    torch.manual_seed(0)
    m = DWConvMlp(4, 12)
    x = torch.randn(2, 5, 7, 4)
    h = x @ m.fc1.weight.T + m.fc1.bias
    h = _shift_sum_dw(h, m.dwconv.weight, m.dwconv.bias)
    ref = F.gelu(h) @ m.fc2.weight.T + m.fc2.bias
    torch.testing.assert_close(m(x), ref)


# ------------------------------------------------------------------------------------------------
# BatchNorm on NHWC tokens


def test_batchnorm_nhwc_equals_batchnorm2d_and_survives_freeze_and_syncbn():
    torch.manual_seed(0)
    ours, ref = BatchNormNHWC(6), nn.BatchNorm2d(6)
    with torch.no_grad():
        for p, q in zip(ours.bn.parameters(), ref.parameters()):
            p.copy_(torch.randn_like(p))
            q.copy_(p)
    x = torch.randn(3, 5, 4, 6)
    for _ in range(2):  # training: batch statistics and the running-statistics update
        torch.testing.assert_close(ours(x), ref(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
    torch.testing.assert_close(ours.bn.running_var, ref.running_var)
    ours.eval(), ref.eval()
    want = ref(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(ours(x), want)
    frozen = freeze_batch_norm(ours)  # the detection adapter's frozen_bn: the inner BatchNorm2d is swapped
    assert type(frozen.bn).__name__ == "FrozenBatchNorm2d"
    torch.testing.assert_close(frozen(x), want)
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(BatchNormNHWC(6))
    assert isinstance(sync.bn, nn.SyncBatchNorm)


# ------------------------------------------------------------------------------------------------
# whole models against the official module tree


def _official_and_ours(kw=TINY, seed=0):
    off = randomise_(OfficialVAN(**kw), seed).eval()
    ours = VAN(**kw).eval()
    ours.load_state_dict(checkpoint_filter_fn({"epoch": 3, "state_dict": off.state_dict()}, ours), strict=True)
    return off, ours


def test_official_layout_converts_strictly_and_matches():
    """float32 (the float64 dilated depthwise convolutions take a slow path on CPU)."""
    torch.manual_seed(0)
    off, ours = _official_and_ours()
    for size in [(2, 3, 64, 64), (1, 3, 97, 45)]:
        x = torch.randn(*size)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), off(x), rtol=1e-5, atol=1e-5)
            taps = ours.forward_intermediates(x, intermediates_only=True)
            for t, o in zip(taps, off.stage_outputs(x)):  # the taps are the normalised stage outputs
                torch.testing.assert_close(t, o, rtol=1e-5, atol=1e-5)


def test_official_keys_from_the_module_tree():
    """The re-statement holds exactly the official key layout (hand-written from the official
    ``models/van.py`` module tree), and every key converts."""
    sd = OfficialVAN(**TINY).state_dict()
    block = {
        f"block1.0.{k}" for k in [
            "layer_scale_1", "layer_scale_2", "attn.proj_1.weight", "attn.proj_1.bias", "attn.proj_2.weight", "attn.proj_2.bias",
            "attn.spatial_gating_unit.conv0.weight", "attn.spatial_gating_unit.conv0.bias",
            "attn.spatial_gating_unit.conv_spatial.weight", "attn.spatial_gating_unit.conv_spatial.bias",
            "attn.spatial_gating_unit.conv1.weight", "attn.spatial_gating_unit.conv1.bias",
            "mlp.fc1.weight", "mlp.fc1.bias", "mlp.dwconv.dwconv.weight", "mlp.dwconv.dwconv.bias", "mlp.fc2.weight", "mlp.fc2.bias",
        ] + [f"norm{i}.{b}" for i in (1, 2) for b in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    }
    assert {k for k in sd if k.startswith("block1.0.")} == block
    stems = {f"patch_embed{i}.{m}.{b}" for i in range(1, 5) for m, b in [("proj", "weight"), ("proj", "bias"), ("norm", "weight")]}
    assert stems <= set(sd) and {"norm4.weight", "norm4.bias", "head.weight", "head.bias"} <= set(sd)
    ours = VAN(**TINY)
    out = checkpoint_filter_fn(sd, ours)
    assert len(out) == len(sd) == len(ours.state_dict())
    assert out["stages.0.blocks.0.attn.lka.conv1.weight"].shape == (8, 8)  # 1x1 conv -> Linear


def test_unknown_and_missing_keys_are_listed():
    sd = OfficialVAN(**TINY).state_dict()
    sd["block1.0.attn.extra.weight"] = torch.zeros(1)
    del sd["norm2.weight"]
    with pytest.raises(CheckpointKeyError) as e:
        checkpoint_filter_fn(sd, VAN(**TINY))
    assert "block1.0.attn.extra.weight" in str(e.value) and "stages.1.norm.weight" in str(e.value)


def test_pretrained_path_loads_official_file(tmp_path):
    """The user path: ``timm.create_model(..., pretrained=True)`` on an official-layout file
    (wrapped under ``state_dict`` with training metadata, as the released files are)."""
    off = randomise_(OfficialVAN(), 1).eval()  # the van_b0 configuration
    path = tmp_path / "van_tiny_754.pth.tar"
    torch.save({"epoch": 300, "arch": "van_tiny", "state_dict": off.state_dict(), "metric": 75.4}, path)
    m = timm.create_model("van_b0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 72, 56)
    with torch.no_grad():
        torch.testing.assert_close(m(x), off(x), rtol=1e-4, atol=1e-5)


def test_variant_configs_and_cfg():
    for name, dims, depths in [("van_b0", (32, 64, 160, 256), (3, 3, 5, 2)), ("van_b5", (96, 192, 480, 768), (3, 3, 24, 3))]:
        with torch.device("meta"):
            m = timm.create_model(name)
        assert [s["num_chs"] for s in m.feature_info] == list(dims)
        assert [len(s.blocks) for s in m.stages] == list(depths)
        assert isinstance(m.stages[0].blocks[0].norm1, BatchNormNHWC) and m.stages[0].blocks[0].ls1.gamma.shape == (dims[0],)
    cfg = timm.models.get_pretrained_cfg("van_b0.in1k")
    assert cfg.crop_pct == 0.9 and cfg.interpolation == "bicubic" and cfg.license == "apache-2.0"
    assert "VAN-Tiny-original" in cfg.url and cfg.min_input_size == (3, 32, 32)
    assert not timm.models.get_pretrained_cfg("van_b6").url  # no released weights


def test_group_matcher_puts_stage_norm_with_its_last_block():
    """Layer-wise LR decay: the stage-end LayerNorm joins its stage's last block (timm's MATCH_PREV_GROUP)."""
    from timm.models import group_parameters

    m = VAN(**TINY)
    groups = group_parameters(m, m.group_matcher())
    order = {n: i for i, (_, names) in enumerate(sorted(groups.items(), key=lambda kv: kv[0])) for n in names}
    assert order["stages.1.norm.weight"] == order["stages.1.blocks.1.attn.proj_1.weight"]
    assert order["stages.1.norm.weight"] < order["stages.2.blocks.0.attn.proj_1.weight"]


# ------------------------------------------------------------------------------------------------
# fvcore GMACs (slow: traces five models at 224)

# two-decimal GMACs of the official definitions as open-mmlab/mmclassification 0.x configs/van/README.md
# lists them (the VAN-Classification README rounds to one decimal: 0.9, 2.5, 5.0, 9.0; B4 is not in it)
REPORTED_GMACS = {"van_b0": 0.88, "van_b1": 2.52, "van_b2": 5.03, "van_b3": 8.99, "van_b4": 12.22}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REPORTED_GMACS))
def test_fvcore_gmacs_within_2_percent_of_reported(name):
    from visionattn.engine.flops import count_gmacs, unexpected_uncounted

    g, unsupported = count_gmacs(timm.create_model(name), (3, 224, 224))
    assert unexpected_uncounted(unsupported) == []
    assert abs(g - REPORTED_GMACS[name]) / REPORTED_GMACS[name] < 0.02, f"{name}: {g:.3f} GMACs"
