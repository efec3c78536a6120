"""NAT / DiNAT: official and Hugging Face checkpoints convert strictly and give identical outputs.

The official-layout models are built in ``_official_nat`` (official module names, gather-based
neighborhood attention written independently of visionattn), randomised, and their state dicts
converted with ``checkpoint_filter_fn``; outputs are compared on random images.
"""
from __future__ import annotations

import pytest
import timm
import torch

import visionattn
from visionattn.models.nat import checkpoint_filter_fn
from visionattn.models._registry import CheckpointKeyError

from _official_nat import OfficialIsotropic, OfficialNAT, official_to_hf, randomize_

D224_MINI = [[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]]

# name, official constructor kwargs, input (H, W)
CASES = [
    ("nat_small", dict(embed_dim=96, depths=[3, 4, 18, 5], num_heads=[3, 6, 12, 24], mlp_ratio=2.0, layer_scale=1e-5), (64, 80)),
    pytest.param("dinat_mini", dict(embed_dim=64, depths=[3, 4, 6, 5], num_heads=[2, 4, 8, 16], mlp_ratio=3.0,
                                    dilations=D224_MINI), (224, 224), marks=pytest.mark.slow),  # 200x264 below is quick
    ("dinat_mini", dict(embed_dim=64, depths=[3, 4, 6, 5], num_heads=[2, 4, 8, 16], mlp_ratio=3.0, dilations=D224_MINI), (200, 264)),
    (
        "dinat_s_tiny",
        dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], mlp_ratio=4.0, layout="swin",
             dilations=[[1, 8], [1, 4], [1, 2, 1, 2, 1, 2], [1, 1]]),
        (98, 130),
    ),
]


def _official_and_ours(name, kw, seed=0):
    off = randomize_(OfficialNAT(**kw), seed).eval()
    ours = timm.create_model(name).eval()
    ours.load_state_dict(checkpoint_filter_fn(off.state_dict(), ours), strict=True)
    return off, ours


@pytest.mark.parametrize("name,kw,size", CASES)
def test_official_checkpoint_converts_and_matches(name, kw, size):
    off, ours = _official_and_ours(name, kw)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = off(x), ours(x)
    err = (want - got).abs().max().item()
    assert err < 1e-4 * max(1.0, want.abs().max().item()), err


@pytest.mark.parametrize(
    "name,kw",
    [
        ("dinat_isotropic_small", dict(embed_dim=384, num_heads=12, dilation=2)),
        ("vitrpb_small", dict(embed_dim=384, num_heads=12, attention="mhsa")),
    ],
)
def test_official_isotropic_checkpoint_converts_and_matches(name, kw):
    off = randomize_(OfficialIsotropic(**kw), 2).eval()
    ours = timm.create_model(name).eval()
    sd = off.state_dict()
    ours.load_state_dict(checkpoint_filter_fn(sd, ours), strict=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = off(x), ours(x)
    assert (want - got).abs().max().item() < 1e-4 * max(1.0, want.abs().max().item())
    if "relative_position_index" in "".join(sd):
        bad = dict(sd)
        k = next(k for k in sd if k.endswith("relative_position_index"))
        bad[k] = torch.zeros_like(sd[k])
        with pytest.raises(CheckpointKeyError, match="relative_position_index"):
            checkpoint_filter_fn(bad, ours)


@pytest.mark.parametrize("prefix", ["dinat.", pytest.param("nat.", marks=pytest.mark.slow)])
def test_hugging_face_layout_converts_and_matches(prefix):
    kw = dict(embed_dim=96, depths=[3, 4, 18, 5], num_heads=[3, 6, 12, 24], mlp_ratio=2.0, layer_scale=1e-5)
    off = randomize_(OfficialNAT(**kw), 4).eval()
    hf = official_to_hf(off.state_dict(), prefix)
    assert any(k.endswith("layer_scale_parameters") for k in hf) and any(".attention.self.query." in k for k in hf)
    ours = timm.create_model("nat_small").eval()
    ours.load_state_dict(checkpoint_filter_fn(hf, ours), strict=True)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (off(x) - ours(x)).abs().max().item() < 1e-4


def test_wrapped_and_module_prefixed_checkpoints(tmp_path):
    kw = CASES[2][1]  # dinat_mini (CASES[1] is its slow pytest.param)
    off = randomize_(OfficialNAT(**kw), 6).eval()
    ours = timm.create_model("dinat_mini").eval()
    for wrapped in ({"model": off.state_dict()}, {"state_dict": {"module." + k: v for k, v in off.state_dict().items()}}):
        sd = checkpoint_filter_fn(wrapped, ours)
        ours.load_state_dict(sd, strict=True)


def test_strict_errors_name_the_keys():
    kw = CASES[2][1]  # dinat_mini (CASES[1] is its slow pytest.param)
    off = randomize_(OfficialNAT(**kw), 7)
    ours = timm.create_model("dinat_mini")
    sd = off.state_dict()
    missing = dict(sd)
    del missing["levels.2.blocks.3.attn.rpb"]
    with pytest.raises(CheckpointKeyError, match=r"missing.*stages\.2\.blocks\.3\.attn\.rpb"):
        checkpoint_filter_fn(missing, ours)
    extra = dict(sd, **{"levels.0.blocks.0.attn.relative_bias_extra": torch.zeros(1)})
    with pytest.raises(CheckpointKeyError, match="relative_bias_extra"):
        checkpoint_filter_fn(extra, ours)
    unknown = dict(sd, **{"something.else": torch.zeros(1)})
    with pytest.raises(CheckpointKeyError, match=r"unknown keys.*something\.else"):
        checkpoint_filter_fn(unknown, ours)
    wrong_arch = randomize_(OfficialNAT(**dict(kw, embed_dim=96, num_heads=[3, 6, 12, 24])), 8).state_dict()
    with pytest.raises(CheckpointKeyError, match="shape mismatches"):
        checkpoint_filter_fn(wrong_arch, ours)


@pytest.mark.slow  # ~50 s loaded; the same overlay path is quick-tested for DaViT and in test_tool_messages
def test_pretrained_cfg_overlay_loads_official_file_and_resets_head(tmp_path):
    kw = CASES[2][1]  # dinat_mini (CASES[1] is its slow pytest.param)
    off = randomize_(OfficialNAT(**kw), 9).eval()
    path = tmp_path / "dinat_mini_in1k_224.pth"
    torch.save(off.state_dict(), path)
    m = timm.create_model("dinat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (m(x) - off(x)).abs().max().item() < 1e-4
    m10 = timm.create_model("dinat_mini", pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert m10.get_classifier().out_features == 10
    with torch.no_grad():
        f_off = off.norm(off.levels[3](off.levels[2](off.levels[1](off.levels[0](off.patch_embed(x))))))
        assert (m10.forward_features(x) - f_off.permute(0, 3, 1, 2)).abs().max().item() < 1e-4


def test_own_safetensors_round_trip(tmp_path):
    m = timm.create_model("nat_mini", num_classes=7).eval()
    timm.models.save_for_hf(m, tmp_path, model_args=dict(num_classes=7), safe_serialization=True)
    m2 = timm.create_model(
        "nat_mini", num_classes=7, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"), num_classes=7)
    ).eval()
    m3 = timm.create_model("local-dir:" + str(tmp_path), pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x)) and torch.equal(m(x), m3(x))


def test_variant_configs_match_the_official_tables():
    with torch.device("meta"):
        d = timm.create_model("dinat_large_384")
        d11 = timm.create_model("dinat_large_384_11x11")
        n = timm.create_model("nat_small")
        ds = timm.create_model("dinat_small")
    dil = [[blk.attn.dilation for blk in s.blocks] for s in d.stages]
    assert dil == [[1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5]
    assert [[blk.attn.dilation for blk in s.blocks] for s in d11.stages][0] == [1, 8, 1]
    assert {blk.attn.kernel_size for s in d11.stages for blk in s.blocks} == {11}
    assert n.stages[0].blocks[0].ls1.gamma.shape == (96,)  # NAT-S has layer scale, DiNAT-S does not
    assert not hasattr(ds.stages[0].blocks[0].ls1, "gamma")
    cfg = timm.models.get_pretrained_cfg("dinat_large_384")
    assert cfg.input_size == (3, 384, 384) and cfg.crop_pct == 1.0
    assert timm.models.get_pretrained_cfg("dinat_large.in22k_ft_in1k").num_classes == 1000
    assert timm.models.get_pretrained_cfg("dinat_large.in22k").num_classes == 21841


def test_na_padding_for_small_maps_matches_official():
    """Maps smaller than K*d are zero-padded before qkv (NATTEN <= 0.15), including K=11."""
    kw = dict(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], mlp_ratio=2.0, kernel_size=11,
              dilations=[[3], [2], [1], [1]])
    off = randomize_(OfficialNAT(**kw), 10).eval()
    ours = visionattn.models.nat.NAT(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), mlp_ratio=2.0,
                                     kernel_size=11, dilations=[[3], [2], [1], [1]]).eval()
    ours.load_state_dict(checkpoint_filter_fn(off.state_dict(), ours), strict=True)
    for size in [(32, 32), (45, 70)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            assert (off(x) - ours(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("attention", ["na", "mhsa"])
def test_eager_after_export_uses_real_index_tables(attention):
    """Index tables built while torch.export traces must not be cached for later eager calls."""
    from visionattn.layers import pos
    from visionattn.models.nat import NATIsotropic
    from visionattn.ops import neighborhood

    pos._OFFSET_CACHE.clear()
    neighborhood._PLAN_DEVICE_CACHE.clear()
    m = NATIsotropic(embed_dim=32, depth=2, num_heads=2, attention=attention, dilation=2, img_size=64).eval()
    x = torch.randn(1, 3, 80, 112)
    ep = torch.export.export(m, (x,))  # first use of both caches happens while tracing
    with torch.no_grad():
        eager = m(x)
        assert type(eager) is torch.Tensor and torch.isfinite(eager).all()
        torch.testing.assert_close(ep.module()(x), eager)
