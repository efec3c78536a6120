"""timm's model contract, applied to every model visionattn registers.

Heavy variants are checked on the meta device (shapes only); a real forward runs for every model
up to ``REAL_MAX_PARAMS`` at small non-square sizes, at the default size for the smallest model of
each family, and ``torch.export`` runs for the smallest model of each family.
"""
from __future__ import annotations

import json
import os
import warnings

import pytest
import timm
import torch

import visionattn

HERE = os.path.dirname(__file__)
PARAMS = {k: v for k, v in json.load(open(os.path.join(HERE, "data", "param_counts.json"))).items() if not k.startswith("_")}
MODELS = visionattn.list_models()
REAL_MAX_PARAMS = 60e6


def _family(name):
    return timm.models._registry._model_to_module[name]


def _meta_params(name, **kw):
    with torch.device("meta"):
        m = timm.create_model(name, **kw)
    return m, sum(p.numel() for p in m.parameters())


_SIZES = {n: _meta_params(n, num_classes=1000)[1] for n in MODELS}
SMALLEST = {}
for n in MODELS:
    f = _family(n)
    if f not in SMALLEST or _SIZES[n] < _SIZES[SMALLEST[f]]:
        SMALLEST[f] = n
REAL_FAST_MAX_PARAMS = 23e6
# Real forwards: small models always, mid-size ones marked slow (all of them still run in CI).
REAL = [
    pytest.param(n, marks=() if _SIZES[n] <= REAL_FAST_MAX_PARAMS or n in SMALLEST.values() else pytest.mark.slow)
    for n in MODELS
    if _SIZES[n] <= REAL_MAX_PARAMS
]


def test_registry_lists_every_family_and_overwrites_nothing():
    assert len(MODELS) >= 23 and "dinat_tiny" in MODELS and "nat_mini" in MODELS
    import subprocess
    import sys

    code = "import timm, json; print(json.dumps(sorted(timm.list_models())))"
    before = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout))
    assert not (before & set(MODELS)), f"visionattn re-registers timm names: {sorted(before & set(MODELS))}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert visionattn.list_models("dinat_*")


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_matches_official(name):
    assert name in PARAMS, f"{name} has no official parameter count in tests/data/param_counts.json"
    want, dec = PARAMS[name]
    _, n = _meta_params(name, num_classes=1000)
    assert round(n / 1e6, dec) == round(want, dec), f"{name}: {n / 1e6:.4f}M, official {want}M"


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg_complete(name):
    cfg = timm.models.get_pretrained_cfg(name)
    assert cfg is not None, f"{name} has no pretrained cfg"
    for field in ("input_size", "pool_size", "crop_pct", "interpolation", "mean", "std", "first_conv", "classifier", "license", "origin_url"):
        assert getattr(cfg, field, None), f"{name}: pretrained cfg lacks {field}"
    with torch.device("meta"):
        m = timm.create_model(name)
    sd = m.state_dict()
    assert cfg.first_conv + ".weight" in sd and cfg.classifier + ".weight" in sd
    tags = timm.models.get_arch_pretrained_cfgs(name)
    assert tags, f"{name}: no pretrained tag"
    for tag, c in tags.items():
        # Architectures whose weights were never released say so in their notes instead.
        assert c.url or c.hf_hub_id or c.file or "no weights released" in str(c.notes), f"{tag}: no weight source"


@pytest.mark.parametrize("name", MODELS)
def test_meta_forward_shapes_default_and_odd_size(name):
    cfg = timm.models.get_pretrained_cfg(name)
    with torch.device("meta"):
        m = timm.create_model(name, num_classes=11)
        for hw in (cfg.input_size[1:], (200, 264)):
            x = torch.empty(2, 3, *hw)
            assert m(x).shape == (2, 11)
            feats, inter = m.forward_intermediates(x)
            assert feats.shape == m.forward_features(x).shape
            if tuple(hw) == tuple(cfg.input_size[1:]):
                assert tuple(feats.shape[-2:]) == tuple(cfg.pool_size) and feats.shape[1] == m.num_features
            assert len(inter) == len(m.feature_info)
            for t, info in zip(inter, m.feature_info):
                assert t.shape[1] == info["num_chs"]
                assert t.shape[-2] == -(-hw[0] // info["reduction"]) and t.shape[-1] == -(-hw[1] // info["reduction"])


@pytest.mark.parametrize("name", REAL)
def test_real_forward_features_head_and_checkpointing(name):
    torch.manual_seed(0)
    m = timm.create_model(name).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        logits = m(x)
        feats, inter = m.forward_intermediates(x)
        assert torch.isfinite(logits).all() and logits.shape == (2, m.num_classes)
        torch.testing.assert_close(feats, m.forward_features(x))
        torch.testing.assert_close(m.forward_head(feats), logits)
        pre = m.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, m.head_hidden_size)
        last = m.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        assert len(last) == 1
    m.set_grad_checkpointing(True)
    xg = x.clone().requires_grad_()
    out = m(xg)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), logits, rtol=1e-5, atol=1e-5)
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    m.set_grad_checkpointing(False)
    m.reset_classifier(0)
    with torch.no_grad():
        assert m(x).shape == (2, m.num_features)
    m.reset_classifier(0, "")
    with torch.no_grad():
        assert m(x).dim() == 4


@pytest.mark.parametrize("name", REAL)
def test_features_only(name):
    m = timm.create_model(name, features_only=True).eval()
    info = m.feature_info
    x = torch.randn(1, 3, 96, 128)
    outs = m(x)
    assert len(outs) == len(info.out_indices) >= 3
    for o, c, r in zip(outs, info.channels(), info.reduction()):
        assert o.shape[1] == c and o.shape[-2] == -(-96 // r) and o.shape[-1] == -(-128 // r)
    # every kept parameter feeds a feature map (DDP refuses parameters without gradients, e.g. a
    # classifier head's norm/pre-logits left behind by features_only)
    sum(o.square().mean() for o in outs).backward()
    assert [k for k, p in m.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", sorted(SMALLEST.values()))
def test_smallest_of_family_at_default_size_train_step_and_export(name):
    cfg = timm.models.get_pretrained_cfg(name)
    m = timm.create_model(name, num_classes=5)
    x = torch.randn(2, *cfg.input_size)
    m.train()
    loss = torch.nn.functional.cross_entropy(m(x), torch.tensor([1, 3]))
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    m.eval()
    xs = torch.randn(1, 3, 64, 96)
    ep = torch.export.export(m, (xs,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(xs), m(xs), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(SMALLEST.values()))
def test_too_small_input_raises(name):
    m = timm.create_model(name).eval()
    with pytest.raises(ValueError, match="smaller than the minimum"):
        m(torch.randn(1, 3, 8, 8))


# ------------------------------------------------------------------------------------------------
# Bad input and memory formats (issues #13.7, #19.2)


def _expected_taps(m, B, hw):
    return [(B, info["num_chs"], -(-hw[0] // info["reduction"]), -(-hw[1] // info["reduction"])) for info in m.feature_info]


@pytest.mark.parametrize("name", MODELS)
def test_empty_batch_meta(name):
    """0 images give empty outputs of the usual shapes (inference and training), for every model."""
    with torch.device("meta"):
        m = timm.create_model(name, num_classes=7)
        x = torch.empty(0, 3, 64, 96)
        for training in (False, True):
            m.train(training)
            assert m(x).shape == (0, 7)
        m.eval()
        feats, inter = m.forward_intermediates(x)
        assert feats.shape[0] == 0 and feats.shape[1:] == m.forward_features(torch.empty(1, 3, 64, 96)).shape[1:]
        assert [tuple(t.shape) for t in inter] == _expected_taps(m, 0, (64, 96))


@pytest.mark.parametrize("name", sorted(SMALLEST.values()))
def test_empty_batch_real_train_and_features_only(name):
    m = timm.create_model(name, num_classes=7).train()
    x = torch.randn(0, 3, 64, 96, requires_grad=True)
    y = m(x)
    assert y.shape == (0, 7)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    f = timm.create_model(name, features_only=True).eval()
    with torch.no_grad():
        outs = f(torch.randn(0, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [
        (0, c, -(-64 // r), -(-96 // r)) for c, r in zip(f.feature_info.channels(), f.feature_info.reduction())
    ]


@pytest.mark.parametrize("name", sorted(SMALLEST.values()))
def test_integer_images_raise_a_clear_error(name):
    m = timm.create_model(name).eval()
    with pytest.raises(TypeError, match="floating-point images.*uint8"):
        m(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(TypeError, match="floating-point images"):
        m.forward_intermediates(torch.zeros(1, 3, 64, 64, dtype=torch.int64))


@pytest.mark.parametrize("name", REAL)
def test_channels_last_input_and_model_give_identical_outputs(name):
    """``x.to(memory_format=channels_last)`` and ``model.to(memory_format=channels_last)`` (timm's
    ``--channels-last``) change strides only: same outputs, same parameters and state-dict shapes."""
    torch.manual_seed(0)
    m = timm.create_model(name).eval()
    x = torch.randn(2, 3, 64, 80)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    params = {k: id(p) for k, p in m.named_parameters()}
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = m(x)
        torch.testing.assert_close(m(xc), ref, rtol=1e-5, atol=1e-5)
        m = m.to(memory_format=torch.channels_last)
        assert {k: id(p) for k, p in m.named_parameters()} == params
        assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == shapes
        torch.testing.assert_close(m(xc), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
