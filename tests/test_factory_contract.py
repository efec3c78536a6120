"""timm 1.0.31's factory contract, checked without timm's test harness (``tests/timm_contract.py``):

* ``create_model(name, device=..., dtype=...)``: every parameter and buffer on ``device``, every
  floating-point one in ``dtype``, integer/bool buffers (relative-position indices, masks) keep
  their dtype; unknown kwargs still raise TypeError;
* ``reset_classifier`` builds the new head on the model's device/dtype, in the model's train/eval mode;
* ``model.to(bfloat16)`` after a float32 forward gives bfloat16 outputs (no stale fp32 caches);
* ``model.in_chans`` is the stem's input channels;
* ``pretrained=True`` with ``in_chans != 3``: the 3-channel stem of the checkpoint is adapted as
  timm's ``adapt_input_conv`` does (1 channel: sum over RGB; C channels: RGB repeated and scaled
  by 3 / C), for plain, ``num_classes=0`` and ``features_only`` models.
"""
from __future__ import annotations

import math

import pytest
import timm
import torch

import _zoo
import visionattn

# the smallest model of each family and a tiny config of it for real (CPU) tensors
SMALL = {
    "nat_mini": dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2]),
    "dinat_mini": dict(embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4], dilations=[[1], [1, 2], [1], [1]]),
    "nat_isotropic_small": dict(embed_dim=16, depth=2, num_heads=2),
    "vitrpb_small": dict(embed_dim=16, depth=2, num_heads=2),
    "biformer_tiny": dict(depths=(1, 1, 2, 1)),
    "maxvit_tiny": dict(embed_dim=(32, 32, 32, 32), depths=(1, 1, 1, 1), stem_width=16, head_hidden_size=32),
    "cswin_tiny": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2)),
    "davit_tiny_va": dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32), num_heads=(1, 2, 2, 2)),
    "agent_pvt_tiny": dict(embed_dims=(8, 16, 16, 24), num_heads=(1, 2, 2, 3), depths=(1, 1, 2, 1), agent_num=(4, 4, 9, 4), img_size=64),
    "agent_swin_tiny": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2), agent_blocks=(1, 1, 1, 0)),
}
NAMES = sorted(SMALL)


def _input_size(model):
    return model.pretrained_cfg["input_size"]


_QUICK_FACTORY = set(_zoo.smallest_per_family().values())  # tests/_zoo.py


# The smallest model of each family in the quick set, the rest in the slow set (CI runs both): the
# dtype/device plumbing is per family code, and 118 meta builds cost about 100 s of the quick set.
@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in _QUICK_FACTORY else pytest.mark.slow)
                                  for n in visionattn.list_models()])
def test_factory_device_dtype_on_meta(name):
    """Every model: ``device='meta', dtype=bfloat16`` without a device context."""
    ref = timm.create_model(name, device="meta")  # float32 reference for the buffers' dtypes
    model = timm.create_model(name, device="meta", dtype=torch.bfloat16)
    tensors = dict([*model.named_parameters(), *model.named_buffers()])
    ref_tensors = dict([*ref.named_parameters(), *ref.named_buffers()])
    assert tensors.keys() == ref_tensors.keys()
    misplaced = [n for n, t in tensors.items() if t.device.type != "meta"]
    assert not misplaced, f"not on meta: {misplaced[:5]}"
    for n, t in tensors.items():
        want = torch.bfloat16 if ref_tensors[n].is_floating_point() else ref_tensors[n].dtype
        assert t.dtype == want, f"{n}: {t.dtype} != {want}"
    assert model.in_chans == _input_size(model)[0] == 3
    with pytest.raises(TypeError):
        timm.create_model(name, device="meta", not_a_model_arg=1)


def test_factory_rejects_integer_dtype():
    with pytest.raises(TypeError, match="floating-point"):
        timm.create_model("nat_mini", device="meta", dtype=torch.int64)


@pytest.mark.parametrize("name", NAMES)
def test_reset_classifier_keeps_device_dtype_and_mode(name):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=0, **SMALL[name]).eval()
    model.to(dtype=torch.float64)
    model.reset_classifier(0)
    model.reset_classifier(5)
    fc = model.get_classifier()
    params = list(fc.parameters())
    assert params and all(p.device.type == "meta" and p.dtype == torch.float64 for p in params)
    assert not any(m.training for m in model.modules())
    model.train()
    model.reset_classifier(7)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_after_float32_forward(name):
    torch.manual_seed(0)
    model = timm.create_model(name, **SMALL[name]).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model(x).dtype == torch.float32
        model.to(torch.bfloat16)
        assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16
        assert model.forward_features(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_factory_real_device_matches_default_build():
    """``device='cpu', dtype=float64`` gives the default build's weights (same seed), cast."""
    kw = SMALL["nat_mini"]
    torch.manual_seed(0)
    ref = timm.create_model("nat_mini", **kw)
    torch.manual_seed(0)
    model = timm.create_model("nat_mini", device="cpu", dtype=torch.float64, **kw)
    sd, ref_sd = model.state_dict(), ref.state_dict()
    for k, v in ref_sd.items():
        assert sd[k].dtype == (torch.float64 if v.is_floating_point() else v.dtype), k
        assert torch.equal(sd[k].to(v.dtype), v), k


def _adapted(w: torch.Tensor, in_chans: int) -> torch.Tensor:
    """timm's documented stem adaptation, written out: 1 channel sums RGB; C > 1 channels repeat
    RGB cyclically and scale by 3 / C."""
    if in_chans == 1:
        return w.sum(dim=1, keepdim=True)
    reps = math.ceil(in_chans / 3)
    return torch.cat([w] * reps, dim=1)[:, :in_chans] * (3 / in_chans)


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_in_chans_adapts_the_stem(name, tmp_path):
    kw = SMALL[name]
    torch.manual_seed(0)
    src = timm.create_model(name, **kw)
    path = tmp_path / "weights.pth"
    torch.save(src.state_dict(), path)
    stem = src.pretrained_cfg["first_conv"] + ".weight"
    ref = src.state_dict()
    overlay = dict(file=str(path))

    model = timm.create_model(name, pretrained=True, in_chans=1, num_classes=5, pretrained_cfg_overlay=overlay, **kw)
    assert model.in_chans == 1
    sd = model.state_dict()
    torch.testing.assert_close(sd[stem], _adapted(ref[stem], 1))
    for k, v in ref.items():
        if k != stem and not k.startswith("head.fc"):
            assert torch.equal(sd[k], v), k
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 5)

    model = timm.create_model(name, pretrained=True, in_chans=4, num_classes=0, pretrained_cfg_overlay=overlay, **kw)
    torch.testing.assert_close(model.state_dict()[stem], _adapted(ref[stem], 4))
    assert model(torch.randn(1, 4, 64, 64)).shape == (1, model.num_features)

    taps = dict(out_indices=(0, 1)) if "depth" in kw else {}  # the 12-block taps of the isotropic models
    feats = timm.create_model(name, pretrained=True, in_chans=1, features_only=True, pretrained_cfg_overlay=overlay, **kw, **taps)
    outs = feats(torch.randn(1, 1, 64, 64))
    assert [o.shape[1] for o in outs] == feats.feature_info.channels()


def test_pretrained_stem_of_other_kernel_still_rejected(tmp_path):
    """Only the input-channel dim of the stem may differ: any other stem mismatch is named."""
    kw = SMALL["nat_mini"]
    src = timm.create_model("nat_mini", **kw)
    sd = src.state_dict()
    stem = src.pretrained_cfg["first_conv"] + ".weight"
    sd[stem] = torch.zeros(sd[stem].shape[0], 3, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(KeyError, match=stem.replace(".", r"\.")):
        timm.create_model("nat_mini", pretrained=True, in_chans=1, pretrained_cfg_overlay=dict(file=str(path)), **kw)
