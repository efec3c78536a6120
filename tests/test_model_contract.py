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

import _zoo
import visionattn
from visionattn.models._backbone import PlainBackbone

HERE = os.path.dirname(__file__)
PARAMS = {k: v for k, v in json.load(open(os.path.join(HERE, "data", "param_counts.json"))).items() if not k.startswith("_")}
MODELS = visionattn.list_models()
REAL_MAX_PARAMS = 60e6


def _plain(m):
    """A plain (isotropic) model, shaped like timm's VisionTransformer."""
    return isinstance(m, PlainBackbone)


# Every model built once per session on the meta device (tests/_zoo.py, shared with
# test_factory_contract.py): its parameter count orders the quick/slow split and is the count
# test_parameter_count_matches_official checks; the read-only cfg test reuses the module.
_META = _zoo.meta_models()
_SIZES = {n: size for n, (_, size) in _META.items()}
SMALLEST = _zoo.smallest_per_family()
REAL_FAST_MAX_PARAMS = 15e6  # (23e6 before VAN, InLine and CrossFormer joined; keeps the quick set within 15 min)
# Meta-device (shape-only) checks: every model; the quick set keeps those up to 15M parameters and
# the smallest of each family, the rest run in the slow set (CI runs both). A meta forward still
# costs seconds of Python per model (plans, reshapes), and 118 models x 4 checks kept the quick set
# over 15 minutes.
META_FAST_MAX_PARAMS = 15e6
MODELS_META = [pytest.param(n, marks=() if _SIZES[n] <= META_FAST_MAX_PARAMS or n in SMALLEST.values() else pytest.mark.slow)
               for n in MODELS]
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
    n = _SIZES[name]
    assert round(n / 1e6, dec) == round(want, dec), f"{name}: {n / 1e6:.4f}M, official {want}M"


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg_complete(name):
    cfg = timm.models.get_pretrained_cfg(name)
    assert cfg is not None, f"{name} has no pretrained cfg"
    m = _META[name][0]  # built with num_classes=1000, the default of every pretrained cfg
    # plain (ViT-like) models have no pooled map: pool_size None, as timm's ViT cfgs
    fields = ("input_size", "min_input_size", "crop_pct", "interpolation", "mean", "std", "first_conv", "classifier", "license", "origin_url")
    for field in fields + (() if _plain(m) else ("pool_size",)):
        assert getattr(cfg, field, None), f"{name}: pretrained cfg lacks {field}"
    if _plain(m):
        assert cfg.pool_size is None
    sd = m.state_dict()
    convs = (cfg.first_conv,) if isinstance(cfg.first_conv, str) else cfg.first_conv  # CrossFormer: one per stem kernel
    assert all(c + ".weight" in sd for c in convs) and cfg.classifier + ".weight" in sd
    tags = timm.models.get_arch_pretrained_cfgs(name)
    assert tags, f"{name}: no pretrained tag"
    for tag, c in tags.items():
        # Architectures whose weights were never released say so in their notes instead; so do
        # weights released only on pages (Google Drive / BaiduCloud shares, CrossFormer)
        notes = str(c.notes)
        assert c.url or c.hf_hub_id or c.file or "no weights released" in notes or "no direct download" in notes, f"{tag}: no weight source"


@pytest.mark.parametrize("name", MODELS_META)
def test_meta_forward_shapes_default_and_odd_size(name):
    cfg = timm.models.get_pretrained_cfg(name)
    with torch.device("meta"):
        m = timm.create_model(name, num_classes=11)
        for hw in (cfg.input_size[1:], (200, 264)):
            x = torch.empty(2, 3, *hw)
            assert m(x).shape == (2, 11)
            feats, inter = m.forward_intermediates(x)
            assert feats.shape == m.forward_features(x).shape
            if _plain(m):
                r = m.feature_info[-1]["reduction"]
                assert feats.shape == (2, m.num_prefix_tokens + -(-hw[0] // r) * -(-hw[1] // r), m.num_features)
            elif tuple(hw) == tuple(cfg.input_size[1:]):
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
        assert m(x).dim() == (3 if _plain(m) else 4)  # plain models: the (B, P + N, C) tokens, as timm's ViT


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


# The three slowest (over 10 s each on a 2-core machine) run in the slow set.
DEFAULT_SIZE_SLOW = {"maxvit_tiny", "cswin_tiny", "crossformerpp_small"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow if n in DEFAULT_SIZE_SLOW else ())
                                  for n in sorted(SMALLEST.values())])
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
# Tracing and scripting (issue #13 items 1-2, issue #19 item 10): the smallest model of every
# family and sub-family, at a size that is no multiple of any window / region / stripe (so every
# padding branch is in the traced graph). Each traced or scripted model is held to the eager one.

TRACE_NAMES = [
    "nat_mini", "dinat_mini", "dinat_s_tiny", "nat_isotropic_small", "vitrpb_small", "biformer_tiny",
    "maxvit_tiny", "cswin_tiny", "davit_tiny_va", "agent_pvt_tiny", "agent_deit_tiny", "agent_swin_tiny",
    "agent_cswin_tiny", "van_b0", "crossformer_tiny",
]
# The quick set traces one model per mixer and body; these four combine a mixer and a body that
# other quick cases cover (DiNA = NA's op with a dilation; NA in the plain and Swin-layout bodies;
# agent attention in the CSWin body) and run in the slow set (CI runs both).
TRACE_SLOW = {"dinat_mini", "dinat_s_tiny", "nat_isotropic_small", "agent_cswin_tiny"}
TRACE_MODELS = [pytest.param(n, marks=pytest.mark.slow if n in TRACE_SLOW else ()) for n in TRACE_NAMES]
TRACE_SIZE = (1, 3, 72, 88)


def _eager(name, seed=0, **kw):
    torch.manual_seed(seed)
    return timm.create_model(name, **kw).eval()


@pytest.mark.parametrize("name", TRACE_MODELS)
def test_fx_features_only_matches_eager(name):
    """``features_only=True, feature_cls='fx'`` (timm's FeatureGraphNet) taps the stage outputs
    (NHWC tokens, as for timm's Swin) and equals the eager model's intermediates."""
    torch.manual_seed(0)
    fx = timm.create_model(name, features_only=True, feature_cls="fx").eval()
    ref = _eager(name)
    sd = {k.split(".", 1)[1]: v for k, v in fx.state_dict().items()}
    ref.load_state_dict(sd, strict=False)
    x = torch.randn(*TRACE_SIZE)
    with torch.no_grad():
        got = fx(x)
        want = ref.forward_intermediates(x, indices=fx.feature_info.out_indices, intermediates_only=True)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if g.dim() == 4 and g.shape != w.shape:  # NHWC stage output vs NCHW intermediate
            g = g.permute(0, 3, 1, 2)
        if g.dim() == 3:  # Agent-DeiT: (B, 1 + h*w, C) tokens vs the (B, C, h, w) patch map
            g = g[:, 1:].transpose(1, 2).reshape(w.shape)
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TRACE_MODELS)
def test_torchvision_create_feature_extractor_matches_eager(name):
    """torchvision's ``create_feature_extractor`` without timm's tracer arguments (our shape logic
    is ``torch.fx.wrap``-ed), at a padded size and again at a second size: the graph decides
    padding at run time. MaxViT needs timm's leaf modules, as timm's own MaxViT does (timm's
    ``Conv2dSame`` / ``AvgPool2dSame`` branch on the input size)."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    m = _eager(name)
    kw = {}
    if name.startswith("maxvit"):
        from timm.layers import get_notrace_functions, get_notrace_modules

        kw = dict(tracer_kwargs=dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions()))
    last = get_graph_node_names(m, **kw)[1][-1]
    fe = create_feature_extractor(m, return_nodes=[last], **kw)
    for size in (TRACE_SIZE, (2, 3, 64, 64)):
        x = torch.randn(*size)
        with torch.no_grad():
            torch.testing.assert_close(fe(x)[last], m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TRACE_MODELS)
def test_torchscript_matches_eager(name):
    """``torch.jit.script`` under ``timm.layers.set_scriptable(True)`` (timm's torchscript test)."""
    with timm.layers.set_scriptable(True):
        m = _eager(name)
    s = torch.jit.script(m)
    for size in (TRACE_SIZE, (2, 3, 64, 64)):
        x = torch.randn(*size)
        with torch.no_grad():
            torch.testing.assert_close(s(x), m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TRACE_MODELS)
def test_jit_trace_matches_eager(name):
    """``torch.jit.trace`` (its own consistency check on) equals eager at the traced size, other batch sizes included."""
    m = _eager(name)
    x = torch.randn(*TRACE_SIZE)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = torch.jit.trace(m, x)
        x2 = torch.randn(2, *TRACE_SIZE[1:])
        torch.testing.assert_close(t(x2), m(x2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["nat_mini", "vitrpb_small"])
def test_training_after_inference_mode(name):
    """Index tables cached by a forward under ``torch.inference_mode()`` must not be inference
    tensors: a later training step at the same size saves them for backward (timm's FX tests run
    ``test_model_forward_fx`` in inference mode, then ``test_model_backward_fx``)."""
    m = timm.create_model(name)
    x = torch.randn(*TRACE_SIZE)
    with torch.inference_mode():
        m.eval()(x)
    m.train()
    m(x).mean().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["nat_mini", "biformer_tiny", "maxvit_tiny", "cswin_tiny", "agent_deit_tiny", "agent_swin_tiny"])
def test_fx_graph_then_torchscript(name):
    """An FX feature graph can be scripted (timm's ``test_model_forward_fx_torchscript``)."""
    from timm.layers import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    with timm.layers.set_scriptable(True):
        m = _eager(name)
    tk = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    last = get_graph_node_names(m, tracer_kwargs=tk)[1][-1]
    s = torch.jit.script(create_feature_extractor(m, return_nodes=[last], tracer_kwargs=tk))
    x = torch.randn(*TRACE_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(s(x)[last], m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "davit_tiny_va" else pytest.mark.slow) for n in TRACE_NAMES])
def test_compile_without_graph_breaks(name):
    """Dynamo captures the whole forward as one graph (issue #19 item 7): ``fullgraph=True`` with
    the ``eager`` backend (dynamo's tracing only, no code generation, to keep this cheap), at a
    padded size and at a second size."""
    import torch._dynamo

    m = _eager(name)
    torch._dynamo.reset()
    compiled = torch.compile(m, backend="eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        for size in (TRACE_SIZE, (1, 3, 64, 64)):
            x = torch.randn(*size)
            torch.testing.assert_close(compiled(x), m(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Bad input and memory formats (issues #13.7, #19.2)


def _expected_taps(m, B, hw):
    return [(B, info["num_chs"], -(-hw[0] // info["reduction"]), -(-hw[1] // info["reduction"])) for info in m.feature_info]


@pytest.mark.parametrize("name", MODELS_META)
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


@pytest.mark.parametrize("name", MODELS_META)
def test_channels_last_conversion_meta(name):
    """Every model (the heavy ones too) converts to channels_last keeping its parameter shapes."""
    with torch.device("meta"):
        m = timm.create_model(name, num_classes=3)
        shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        m = m.to(memory_format=torch.channels_last)
        assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == shapes
        assert m(torch.empty(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)).shape == (1, 3)


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


# ------------------------------------------------------------------------------------------------
# img_size= everywhere, min_input_size in the cfgs (issue #19.10)


@pytest.mark.parametrize("name", MODELS_META)
def test_img_size_accepted_and_min_input_size(name):
    """``img_size=`` is accepted by every model and recorded in its cfg; ``min_input_size`` is the
    smallest size that runs (one pixel less raises the ValueError naming the minimum)."""
    cfg = timm.models.get_pretrained_cfg(name)
    with torch.device("meta"):
        m = timm.create_model(name, img_size=256, num_classes=3)
        assert m.pretrained_cfg["input_size"] == (3, 256, 256)
        f = m.forward_features(torch.empty(1, 3, 256, 256))
        if not _plain(m):
            assert tuple(f.shape[-2:]) == tuple(m.pretrained_cfg["pool_size"])
        mn = cfg.min_input_size
        assert mn is not None and mn[0] == 3 and mn[1] == mn[2] == m.min_input_size, f"{name}: min_input_size {mn}"
        assert m(torch.empty(2, 3, mn[1], mn[2])).shape == (2, 3)
        with pytest.raises(ValueError, match="smaller than the minimum"):
            m(torch.empty(1, 3, mn[1] - 1, mn[2]))
        with pytest.raises(ValueError, match="smaller than its min_input_size"):
            timm.create_model(name, img_size=mn[1] - 1)
    with torch.device("meta"):
        feat = timm.create_model(name, img_size=(192, 192), features_only=True)  # (H, W) as timm's save_for_hf writes it
        pair = timm.create_model(name, img_size=(192, 192), num_classes=3)  # a pair, as timm users pass it
    assert feat.pretrained_cfg["input_size"] == (3, 192, 192)
    assert pair.pretrained_cfg["input_size"] == (3, 192, 192)
    with torch.device("meta"):
        try:  # a non-square pair: taken, or refused because the model's tables are square at construction
            rect = timm.create_model(name, img_size=(192, 160), num_classes=3)
        except ValueError as e:
            assert "not square" in str(e) and "img_size=192" in str(e), str(e)
        else:
            assert rect.pretrained_cfg["input_size"] == (3, 192, 160)


@pytest.mark.parametrize("name", sorted(SMALLEST.values()))
def test_runs_at_min_input_size(name):
    m = timm.create_model(name, num_classes=3).eval()
    s = timm.models.get_pretrained_cfg(name).min_input_size
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(1, *s))).all()


# ------------------------------------------------------------------------------------------------
# Plain models shaped like timm's VisionTransformer (issue #19.4)

PLAIN_NAMES = [n for n in MODELS if n.startswith(("agent_deit_", "nat_isotropic_", "dinat_isotropic_", "vitrpb_"))]
# quick set: the smallest plain model of each kind; the rest in the slow set
_PLAIN_QUICK = {min((n for n in PLAIN_NAMES if n.startswith(p)), key=_SIZES.get)
                for p in ("agent_deit_", "nat_isotropic_", "dinat_isotropic_", "vitrpb_")}
PLAIN = [pytest.param(n, marks=() if n in _PLAIN_QUICK else pytest.mark.slow) for n in PLAIN_NAMES]


def _layout(out, width):
    """Nested structure of an output: container types and tensor shapes, the model width as 'C'."""
    if isinstance(out, torch.Tensor):
        return tuple("C" if d == width else d for d in out.shape)
    return (type(out).__name__, [_layout(o, width) for o in out])


@pytest.mark.parametrize("name", PLAIN)
def test_plain_models_follow_timm_vit_layout(name):
    """Same layout as timm's own ViT/DeiT on the same input: tokens ``(B, P + N, C)`` from
    forward_features, NCHW and NLC intermediates, prefix tokens on request, pool_size None."""
    with torch.device("meta"):
        m = timm.create_model(name, num_classes=5)
        vit = timm.create_model("vit_tiny_patch16_224", num_classes=5, class_token=m.num_prefix_tokens == 1,
                                global_pool="token" if m.num_prefix_tokens else "avg", dynamic_img_size=True)
        assert _plain(m) and m.num_prefix_tokens in (0, 1) and m.global_pool == vit.global_pool
        x = torch.empty(2, 3, 96, 128)
        ours, ref = m.forward_features(x), vit.forward_features(x)
        assert ours.shape[:2] == ref.shape[:2] and ours.shape[2] == m.num_features
        assert m.forward_head(ours, pre_logits=True).shape == (2, m.head_hidden_size)
        assert m(x).shape == vit(x).shape
        for fmt in ("NCHW", "NLC"):
            for prefix in (False, True):
                a = m.forward_intermediates(x, indices=2, output_fmt=fmt, return_prefix_tokens=prefix, intermediates_only=True)
                b = vit.forward_intermediates(x, indices=2, output_fmt=fmt, return_prefix_tokens=prefix, intermediates_only=True)
                assert _layout(a, m.num_features) == _layout(b, vit.num_features), (fmt, prefix)
        with pytest.raises(ValueError, match="output_fmt"):
            m.forward_intermediates(x, output_fmt="NHWC")
    assert timm.models.get_pretrained_cfg(name).pool_size is None


@pytest.mark.parametrize("name", sorted({n for n in PLAIN_NAMES if _SIZES[n] <= REAL_FAST_MAX_PARAMS}))
def test_plain_model_tokens_real(name):
    """The class token is ``feats[:, 0]`` (what the head reads), ``'avg'`` pools the patch tokens
    only, and NLC / NCHW intermediates are the same patch tokens as the final ones."""
    torch.manual_seed(0)
    m = timm.create_model(name, num_classes=5).eval()
    x = torch.randn(2, 3, 48, 80)
    P = m.num_prefix_tokens
    with torch.no_grad():
        f = m.forward_features(x)
        assert f.shape == (2, P + 3 * 5, m.num_features)
        pooled = f[:, 0] if m.global_pool == "token" else f[:, P:].mean(1)
        torch.testing.assert_close(m(x), m.head.fc(pooled))
        nlc = m.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True)
        patches = nlc[0][0] if P else nlc[0]
        torch.testing.assert_close(patches, f[:, P:])
        if P:
            torch.testing.assert_close(nlc[0][1], f[:, :P])
        nchw = m.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0]
        torch.testing.assert_close(nchw, f[:, P:].reshape(2, 3, 5, -1).permute(0, 3, 1, 2))
        m.reset_classifier(0, "avg")
        torch.testing.assert_close(m(x), f[:, P:].mean(1))
