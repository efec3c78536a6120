"""The mixer registry (visionattn.mixers) and the composable MixerNet (visionattn.models.mixernet)."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import visionattn
from visionattn import mixers as mx
from visionattn.layers import CrossShapedWindowAttention, NeighborhoodAttention2d, WindowAttention
from visionattn.layers.baseline import DepthwiseConvMixer, PoolMixer
from visionattn.models.mixernet import PRESETS, MixerNet, resolve_mixers
# the zoo's fvcore counter, re-exported by tools.benchmark both before and after the engine split moved flops.py
from visionattn.engine.flops import count_gmacs, unexpected_uncounted

BUILTIN = [
    "agent", "bra", "cswin", "davit_channel", "dina", "dwconv", "identity", "maxvit_block", "maxvit_grid",
    "mhsa", "na", "pool", "swin", "swin_shift", "lka",
]
# square, odd and not divisible by the 7-token windows / regions / stripes, tiny
SIZES = [(14, 14), (9, 13), (5, 3), (1, 2)]
SMALL = dict(depths=(1, 1, 2, 1), embed_dim=32, head_dim=16)


def test_registry_lists_every_family_mixer_with_docs():
    assert set(BUILTIN) <= set(visionattn.list_mixers())
    for name in BUILTIN:
        spec = visionattn.get_mixer(name)
        assert spec.description and spec.cost and spec.paper, name
        # every documented kwarg is a real kwarg of the factory and vice versa
        assert sorted(spec.kwargs) == sorted(spec.accepted_kwargs()), name


@pytest.mark.parametrize("name", BUILTIN)
def test_mixer_contract_any_size_with_gradients(name):
    torch.manual_seed(0)
    m = visionattn.create_mixer(name, 32, 2)
    for H, W in SIZES:
        x = torch.randn(2, H, W, 32, requires_grad=True)
        y = m(x)
        assert y.shape == x.shape, (name, H, W)
        (y * torch.randn_like(y)).sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, (name, H, W)
        for pname, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (name, pname, H, W)
        m.zero_grad()
        # batch independence: another sample does not leak into this one
        y0 = m(x[:1].detach())
        torch.testing.assert_close(y0, y[:1].detach(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", [n for n in BUILTIN if n != "identity"])
def test_mixer_mixes_tokens(name):
    """A token mixer's output at one token depends on other tokens (identity is the only exception)."""
    torch.manual_seed(0)
    m = visionattn.create_mixer(name, 32, 2)
    x = torch.randn(1, 8, 8, 32, requires_grad=True)
    m(x)[0, 4, 4].sum().backward()
    g = x.grad[0].abs().sum(-1)
    g[4, 4] = 0
    assert g.sum() > 0


def _nchw(mixer: nn.Module) -> nn.Module:
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = mixer

        def forward(self, x):
            return self.m(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    return Wrap()


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        # the documented cost formulas, computed by hand for N = 14*14 tokens, C = 32
        ("mhsa", {}, 4 * 196 * 32**2 + 2 * 196**2 * 32),
        ("dwconv", {}, 196 * 32 * 49),
        ("na", {}, 4 * 196 * 32**2 + 2 * 196 * 49 * 32),
        ("swin", {}, 4 * 196 * 32**2 + 2 * 196 * 49 * 32),
        ("davit_channel", {}, 4 * 196 * 32**2 + 2 * 196 * 32**2 // 2),
        ("pool", {}, 0),
        ("identity", {}, 0),
        ("lka", {}, 3 * 196 * 32**2 + 196 * 32 * (25 + 49)),
    ],
)
def test_flops_follow_documented_cost(name, kwargs, expected):
    gmacs, unsupported = count_gmacs(_nchw(visionattn.create_mixer(name, 32, 2, **kwargs)), (32, 14, 14))
    assert unexpected_uncounted(unsupported) == []
    assert round(gmacs * 1e9) == expected


@pytest.mark.parametrize("name", BUILTIN)
def test_every_mixer_covered_by_flop_handles(name):
    model = MixerNet(mixers=name, num_classes=10, **SMALL)
    gmacs, unsupported = count_gmacs(model, (3, 64, 48))
    assert gmacs > 0 and unexpected_uncounted(unsupported) == [], unsupported


def test_per_stage_and_per_block_mixing_builds_what_was_asked():
    mixers = ["dwconv", "na", ["na", "mhsa"] * 3, "mhsa"]
    model = timm.create_model("mixernet_tiny", mixers=mixers, mixer_kwargs=[None, {"kernel_size": 5}, {"na": {"kernel_size": 3}}, {}])
    assert model.mixer_names == [["dwconv"] * 2, ["na"] * 2, ["na", "mhsa"] * 3, ["mhsa"] * 2]
    s = model.stages
    assert all(isinstance(b.attn, DepthwiseConvMixer) for b in s[0].blocks)
    assert [b.attn.kernel_size for b in s[1].blocks] == [5, 5]
    for j, b in enumerate(s[2].blocks):
        if j % 2 == 0:
            assert isinstance(b.attn, NeighborhoodAttention2d) and b.attn.kernel_size == 3
        else:
            assert isinstance(b.attn, WindowAttention) and b.attn.partition == "global"
    assert all(isinstance(b.attn, WindowAttention) and b.attn.partition == "global" for b in s[3].blocks)
    # a shorter per-stage list repeats over the stage's blocks
    assert resolve_mixers(["dwconv", "na", ["na", "mhsa"], "mhsa"], (2, 2, 6, 2)) == model.mixer_names
    # one name per block, flat, is the same model
    flat = [n for stage in model.mixer_names for n in stage]
    assert resolve_mixers(flat, (2, 2, 6, 2)) == model.mixer_names
    assert model(torch.randn(1, 3, 40, 56)).shape == (1, 1000)


def test_presets_build_their_mixers():
    m = timm.create_model("swin_mixernet_tiny", **SMALL)
    attn = [b.attn for st in m.stages for b in st.blocks]
    assert [a.shift_size for a in attn] == [(0, 0), (0, 0), (0, 0), (3, 3), (0, 0)]
    m = timm.create_model("cswin_mixernet_tiny", **SMALL)
    assert [type(b.attn) for st in m.stages for b in st.blocks] == [CrossShapedWindowAttention] * 5
    assert m.stages[3].blocks[0].attn.full and m.stages[0].blocks[0].attn.stripe_width == 1
    m = timm.create_model("dwconv_na_mhsa_mixernet_tiny")
    assert m.mixer_names == [["dwconv"] * 2, ["na"] * 2, ["na"] * 6, ["mhsa"] * 2]
    assert isinstance(timm.create_model("pool_mixernet_tiny", **SMALL).stages[0].blocks[0].attn, PoolMixer)


def test_presets_registered_without_clobbering_and_with_cfg():
    names = visionattn.list_mixer_models()
    assert set(PRESETS) | {"mixernet_tiny"} == set(names)
    assert not set(names) & set(visionattn.list_models())  # the paper models' list is unchanged
    for n in names:
        assert timm.is_model(n)
        cfg = timm.models.get_pretrained_cfg(n)
        assert cfg.num_classes == 1000 and cfg.input_size == (3, 224, 224) and not cfg.url and not cfg.hf_hub_id


@pytest.mark.parametrize("name", ["dwconv_na_mhsa_mixernet_tiny", "na_mhsa_mixernet_tiny", "bra_mixernet_tiny"])
def test_hybrid_presets_timm_features(name):
    torch.manual_seed(0)
    m = timm.create_model(name, num_classes=10, **SMALL).eval()
    x = torch.randn(2, 3, 72, 40)
    with torch.no_grad():
        feats, inter = m.forward_intermediates(x)
        assert [t.shape[1] for t in inter] == [32, 64, 128, 256]
        assert [tuple(t.shape[-2:]) for t in inter] == [(18, 10), (9, 5), (5, 3), (3, 2)]
        torch.testing.assert_close(feats, m.forward_features(x))
        torch.testing.assert_close(m.forward_head(feats), m(x))
    m.train()
    m.set_grad_checkpointing(True)
    m(x).sum().backward()
    fo = timm.create_model(name, features_only=True, out_indices=(1, 3), **SMALL)
    outs = fo(x)
    assert [o.shape[1] for o in outs] == [64, 256] and fo.feature_info.reduction() == [8, 32]


@pytest.fixture
def custom_mixer():
    class ShiftMix(nn.Module):
        """Token-shift mixer: rolls half the channels by one row (a user-defined mixer)."""

        def __init__(self, dim, num_heads, shift=1):
            super().__init__()
            self.shift = shift
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            c = x.shape[-1] // 2
            return self.proj(torch.cat([torch.roll(x[..., :c], self.shift, dims=1), x[..., c:]], dim=-1))

    spec = visionattn.register_mixer("test_shift", ShiftMix, description="test", kwargs={"shift": "rows"})
    yield spec
    mx._MIXERS.pop("test_shift", None)


def test_user_registered_mixer_end_to_end(custom_mixer):
    assert "test_shift" in visionattn.list_mixers()
    m = timm.create_model("mixernet_tiny", mixers=["test_shift", "na", "test_shift", "mhsa"], mixer_kwargs={"test_shift": {"shift": 2}}, num_classes=5, **{k: v for k, v in SMALL.items()})
    assert type(m.stages[0].blocks[0].attn).__name__ == "ShiftMix" and m.stages[0].blocks[0].attn.shift == 2
    assert m(torch.randn(2, 3, 50, 37)).shape == (2, 5)
    fo = timm.create_model("mixernet_tiny", features_only=True, mixers="test_shift", **SMALL)
    assert [o.shape[1] for o in fo(torch.randn(1, 3, 64, 64))] == [32, 64, 128, 256]
    from visionattn.detection.backbone import DetectionBackbone

    det = DetectionBackbone("mixernet_tiny", model_kwargs=dict(mixers="test_shift", **SMALL), out_channels=32)
    out = det(torch.randn(1, 3, 96, 64))
    assert [tuple(v.shape) for v in out.values()][:4] == [(1, 32, 24, 16), (1, 32, 12, 8), (1, 32, 6, 4), (1, 32, 3, 2)]


def test_register_mixer_refuses_duplicates_and_bad_factories(custom_mixer):
    with pytest.raises(ValueError, match="already registered"):
        visionattn.register_mixer("test_shift", custom_mixer.factory)
    with pytest.raises(ValueError, match=r"\(dim, num_heads"):
        visionattn.register_mixer("test_bad", lambda dim: nn.Identity())
    with pytest.raises(ValueError, match="identifier"):
        visionattn.register_mixer("bad name", custom_mixer.factory)
    assert "test_bad" not in visionattn.list_mixers()


def test_unknown_mixer_and_bad_kwarg_errors_list_accepted():
    with pytest.raises(mx.UnknownMixerError) as e:
        timm.create_model("mixernet_tiny", mixers=["dwconv", "nat", "na", "mhsa"])
    assert "'nat'" in str(e.value) and "bra" in str(e.value) and "swin_shift" in str(e.value)
    with pytest.raises(TypeError) as e:
        timm.create_model("na_mixernet_tiny", mixer_kwargs={"window_size": 8})
    msg = str(e.value)
    assert "'window_size'" in msg and "kernel_size" in msg and "dilation" in msg and "stage 0 block 0" in msg
    with pytest.raises(TypeError, match="no kwargs"):
        visionattn.create_mixer("identity", 8, 1, foo=1)
    with pytest.raises(ValueError, match="one entry per stage"):
        MixerNet(mixers=["na", "mhsa"])
    with pytest.raises(ValueError, match=r"mixers\[3\] must be a mixer name or a non-empty list of names"):
        MixerNet(mixers=["na", "na", ["na", "mhsa"], []])
    with pytest.raises(ValueError, match="list of 4 dicts"):
        MixerNet(mixer_kwargs=[{}, {}])
