"""ONNX export (``visionattn-export``, issue #17): the exported graph, run by ONNX Runtime, gives
PyTorch eager's outputs; dynamic axes really are dynamic; only standard ONNX operators; the
tool's errors.

The reference of every check is PyTorch eager on the same weights (built here with the same
seed, independently of the tool's own check); the graph is read back with ``onnx`` and run with
``onnxruntime`` in the test. Quick cases use MixerNet with one block per stage (seconds to
export); the smallest model of every family (one block per stage, each family's own mixers,
stems and heads) is in the ``slow`` set, and the full-size zoo in ``benchmarks/export.py``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import visionattn  # noqa: E402,F401
from visionattn.tools import export as export_tool  # noqa: E402

TINY = ["depths=[1,1,1,1]", "embed_dim=16"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _kwargs(items):
    return export_tool.parse_model_kwargs(items)


def _eager(name, items, seed=0, img_size=None, **kw):
    """The model the tool exported: same seed, kwargs and ``img_size`` (a square one is given to
    the constructors that take it, as the tool does)."""
    from visionattn.engine.model import create_model

    torch.manual_seed(seed)
    if img_size is not None and not isinstance(img_size, int):
        img_size = img_size[0] if img_size[0] == img_size[1] else None  # the tool passes square sizes only
    return create_model(name, None, _kwargs(items), img_size=img_size, **kw).eval()


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _standard_ops_only(path):
    """Every node (graph and local functions) in the default ONNX domain, read with onnx here."""
    proto = onnx.load(str(path), load_external_data=False)
    nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
    local = {(f.domain, f.name) for f in proto.functions}
    bad = {(n.domain, n.op_type) for n in nodes if n.domain not in ("", "ai.onnx") and (n.domain, n.op_type) not in local}
    return not bad, bad


def _compare(sess, model, batch, h, w, seed=1):
    x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model(x)
    ref = list(ref) if isinstance(ref, (list, tuple)) else [ref]
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref):
        assert o.shape == tuple(r.shape)
    return max(float(np.abs(o - r.numpy()).max()) for o, r in zip(outs, ref))


def test_classifier_dynamic_batch_and_hw_match_eager(tmp_path, capsys):
    out = tmp_path / "mhsa.onnx"
    items = ["mixers=mhsa"] + TINY
    rc = export_tool.cli(["--model", "mixernet_tiny", "--model-kwargs", *items, "--img-size", "64",
                          "--output", str(out), "--repeats", "1"])
    assert rc == 0, capsys.readouterr()
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["exporter"] == "dynamo" and rep["dynamic_axes"] == ["batch", "height", "width"]
    assert rep["custom_ops"] == [] and rep["ok"] and rep["latency"]["ort_ms"] > 0
    ok, bad = _standard_ops_only(out)
    assert ok, bad
    sess = _session(out)
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["logits"]
    assert sess.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    model = _eager("mixernet_tiny", items, img_size=64)
    for b in (1, 3):
        for h, w in ((64, 64), (40, 56)):  # 40x56: tokens 10x14, not the export size
            assert _compare(sess, model, b, h, w) < 1e-4, (b, h, w)


def test_van_exports_with_dynamic_hw_at_sizes_no_stride_divides(tmp_path, capsys):
    """A hierarchical model whose only size decisions are the padding helpers of ops/_trace.py
    (VAN: patch embeddings padded to the stride) gets a dynamic height/width: the helpers pad
    unconditionally under torch.export. The range starts above the sizes whose stride-32 map is
    1x1 (torch specialises size-1 axes), and the graph matches eager at sizes no stride divides."""
    out = tmp_path / "van.onnx"
    items = ["depths=[1,1,1,1]", "embed_dims=[8,16,16,32]", "kernel_size=9", "dilation=3"]
    rc = export_tool.cli(["--model", "van_b0", "--model-kwargs", *items, "--img-size", "96",
                          "--output", str(out), "--repeats", "0"])
    assert rc == 0, capsys.readouterr()
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["dynamic_axes"] == ["batch", "height", "width"] and rep["custom_ops"] == []
    (hlo, hhi), (wlo, whi) = rep["hw_range"]
    assert 33 <= hlo <= 65 and 33 <= wlo <= 65 and hhi == whi == export_tool.MAX_SIDE
    sess = _session(out)
    model = _eager("van_b0", items)
    for b, h, w in ((1, 96, 96), (2, 67, 101), (3, 130, 75)):
        assert _compare(sess, model, b, h, w) < 1e-4, (b, h, w)


def test_dynamic_hw_trace_past_its_time_limit_falls_back_to_fixed_hw(tmp_path, capsys, monkeypatch):
    """A dynamic height/width trace that runs past ``--hw-timeout`` is given up (the sympy
    reasoning of large windowed graphs can take many minutes): the model is exported with a fixed
    height/width and the report says why."""
    real = export_tool._torch_export

    def slow_hw(model, x, kind, *args, **kwargs):
        if kind == "hw":
            time.sleep(30)
        return real(model, x, kind, *args, **kwargs)

    monkeypatch.setattr(export_tool, "_torch_export", slow_hw)
    out = tmp_path / "m.onnx"
    t0 = time.perf_counter()
    rc = export_tool.cli(["--model", "mixernet_tiny", "--model-kwargs", "mixers=dwconv", *TINY, "--img-size", "32",
                          "--hw-timeout", "1", "--repeats", "0", "--output", str(out)])
    assert rc == 0, capsys.readouterr()
    assert time.perf_counter() - t0 < 25
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["dynamic_axes"] == ["batch"] and "did not finish within 1 s" in rep["dynamic_hw_note"]


def test_features_only_neighborhood_dynamic_hw_pads_small_maps(tmp_path, capsys):
    """Neighborhood attention exports with a dynamic height/width (its windows are tensor
    arithmetic on the map size under torch.export); one named output per tap, equal to timm's
    feature extractor at the export size and at sizes whose stage maps are smaller than the
    window (padded) and larger."""
    out = tmp_path / "na_feats.onnx"
    items = ["mixers=na"] + TINY
    rc = export_tool.cli(["--model", "mixernet_tiny", "--model-kwargs", *items, "--img-size", "50", "70",
                          "--features-only", "--out-indices", "1", "3", "--output", str(out), "--repeats", "0"])
    text = capsys.readouterr().out
    assert rc == 0, text
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["dynamic_axes"] == ["batch", "height", "width"] and rep["custom_ops"] == [] and rep["ok"]
    assert _standard_ops_only(out)[0]
    sess = _session(out)
    assert [o.name for o in sess.get_outputs()] == ["stages_1", "stages_3"]
    model = _eager("mixernet_tiny", items, img_size=(50, 70), features_only=True, out_indices=(1, 3))
    (hlo, _), (wlo, _) = rep["hw_range"]
    for b, h, w in ((1, 50, 70), (3, 50, 70), (2, max(hlo, 70), max(wlo, 45)), (1, 250, 170)):
        # at 70x45 the stride-16/32 maps (5x3, 3x2) are smaller than the 7x7 window: padded
        assert _compare(sess, model, b, h, w) < 1e-4, (b, h, w)


def test_fixed_hw_model_is_exported_with_a_dynamic_batch_and_says_why(tmp_path, capsys):
    """Agent attention's tables are sized for one map (a ``== size`` guard), so height/width are
    fixed (and said so); the batch is dynamic and another size is refused by ONNX Runtime."""
    out = tmp_path / "agent.onnx"
    items = ["mixers=agent"] + TINY
    rc = export_tool.cli(["--model", "mixernet_tiny", "--model-kwargs", *items, "--img-size", "64",
                          "--output", str(out), "--repeats", "0"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "height/width cannot be dynamic" in text and "skipped: the graph has a fixed 64x64 input" in text
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["dynamic_axes"] == ["batch"] and rep["dynamic_hw_note"] and rep["custom_ops"] == []
    sess = _session(out)
    model = _eager("mixernet_tiny", items, img_size=64)
    for b in (1, 3):
        assert _compare(sess, model, b, 64, 64) < 1e-4
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        sess.run(None, {"input": np.zeros((1, 3, 96, 96), np.float32)})


def test_unknown_model_is_a_usage_error(tmp_path, capsys):
    assert export_tool.cli(["--model", "dinat_tinyy", "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'dinat_tinyy'" in err and "dinat_tiny" in err and "Traceback" not in err


def test_unwritable_output_fails_before_export(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert export_tool.cli(["--model", "mixernet_tiny", "--output", str(blocker / "m.onnx")]) == 2
    assert "cannot write there" in capsys.readouterr().err
    assert export_tool.cli(["--model", "mixernet_tiny", "--output", str(tmp_path / "m.txt")]) == 2
    assert "ending in .onnx" in capsys.readouterr().err


def test_size_below_min_input_size(tmp_path, capsys):
    rc = export_tool.cli(["--model", "nat_mini", "--model-kwargs", "depths=[1,1,1,1]", "--img-size", "24",
                          "--output", str(tmp_path / "m.onnx")])
    assert rc == 2
    assert "24x24 is below the model's min_input_size 32x32" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_dynamic_hw_refused_where_the_model_cannot(tmp_path, capsys):
    rc = export_tool.cli(["--model", "mixernet_tiny", "--model-kwargs", "mixers=agent", *TINY, "--img-size", "64",
                          "--dynamic", "hw", "--output", str(tmp_path / "m.onnx")])
    assert rc == 2
    assert "--dynamic hw: the model's graph cannot take a dynamic height/width" in capsys.readouterr().err


def test_check_failure_exits_nonzero(tmp_path, capsys):
    """A tolerance no float32 graph meets: the check fails, the exit status says so."""
    out = tmp_path / "m.onnx"
    rc = export_tool.cli(["--model", "mixernet_tiny", "--model-kwargs", "mixers=dwconv", *TINY, "--img-size", "32",
                          "--dynamic", "none", "--atol", "0", "--repeats", "0", "--output", str(out)])
    cap = capsys.readouterr()
    rep = json.loads(out.with_suffix(".json").read_text())
    if all(c["max_abs_diff"] == 0 for c in rep["checks"]):
        pytest.skip("ONNX Runtime matched eager bit for bit")
    assert rc == 1 and not rep["ok"]
    assert "ONNX Runtime does not match PyTorch" in cap.err and "> atol 0" in cap.err


def test_odd_check_size_divisible_by_no_window():
    h, w = export_tool.odd_check_size((224, 224), 32)
    for stride in (4, 8, 16):
        for side in (h, w):
            t = -(-side // stride)
            assert t % 7 and t % 8, (side, stride, t)
    assert min(export_tool.odd_check_size((32, 32), 32)) >= 32


# Smallest model of every family, one block per stage (each family's own mixers, stems, heads,
# downsamplers), exported at a size no window, region or stripe divides. ``--dynamic batch``: the
# attempt at a dynamic height/width (which most of these graphs do not allow, see
# benchmarks/results/export.md) costs a second trace; the quick tests cover both outcomes of it,
# and the neighborhood-attention families' dynamic height/width has its own test below.
FAMILIES = {
    "nat_mini": ["depths=[1,1,1,1]"],
    "dinat_mini": ["depths=[1,1,1,1]", "dilations=[[2],[2],[1],[1]]"],
    "dinat_s_tiny": ["depths=[1,1,1,1]", "dilations=[[2],[2],[1],[1]]"],
    "nat_isotropic_small": ["depth=2"],
    "vitrpb_small": ["depth=2"],
    "biformer_tiny": ["depths=[1,1,1,1]"],
    "maxvit_tiny": ["depths=[1,1,1,1]"],
    "cswin_tiny": ["depths=[1,1,1,1]"],
    "davit_tiny_va": ["depths=[1,1,1,1]"],
    "agent_pvt_tiny": ["depths=[1,1,1,1]"],
    "agent_deit_tiny": ["depth=2"],
    "agent_swin_tiny": ["depths=[1,1,1,1]"],
    "agent_cswin_tiny": ["depths=[1,1,1,1]"],
    "bra_mixernet_tiny": TINY,
    "van_b0": ["depths=[1,1,1,1]"],
    "inline_deit_tiny": ["depth=2"],
    "inline_pvt_tiny": ["depths=[1,1,1,1]"],
    "inline_swin_tiny": ["depths=[1,1,1,1]"],
    "inline_cswin_tiny": ["depths=[1,1,1,1]"],
    "crossformer_tiny": ["depths=[1,1,1,1]"],
    "crossformerpp_small": ["depths=[1,1,1,1]"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_exports_with_standard_ops_and_matches_eager(name, tmp_path, capsys):
    items = FAMILIES[name]
    size = (70, 90)
    out = tmp_path / f"{name}.onnx"
    rc = export_tool.cli(["--model", name, "--model-kwargs", *items, "--img-size", *map(str, size),
                          "--dynamic", "batch", "--output", str(out), "--repeats", "0"])
    assert rc == 0, capsys.readouterr()
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["custom_ops"] == [] and _standard_ops_only(out)[0]
    sess = _session(out)
    assert rep["dynamic_axes"] == ["batch"]
    model = _eager(name, items, img_size=size)
    for b in (1, 3):
        assert _compare(sess, model, b, *size) < 1e-4, b


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nat_mini", "dinat_mini", "dinat_s_tiny", "nat_isotropic_small"])
def test_neighborhood_families_export_with_dynamic_hw(name, tmp_path, capsys):
    """Every family built on neighborhood attention (hierarchical NAT/DiNAT, DiNAT-s with Swin's
    patch merging, isotropic NAT) exports with a dynamic height/width: one graph equals eager at
    the export size, at sizes no stride divides and where DiNA's ``K * d`` exceeds a stage's map
    (padded)."""
    items = FAMILIES[name]
    out = tmp_path / f"{name}.onnx"
    # 160: its odd check size (142x118) stays above the range minimum torch may need (65 for
    # DiNAT-s, whose last map must not be 1x1)
    rc = export_tool.cli(["--model", name, "--model-kwargs", *items, "--img-size", "160", "--dynamic", "hw",
                          "--output", str(out), "--repeats", "0"])
    assert rc == 0, capsys.readouterr()
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["dynamic_axes"] == ["batch", "height", "width"] and rep["custom_ops"] == [] and rep["ok"]
    sess = _session(out)
    model = _eager(name, items, img_size=160)
    (hlo, _), (wlo, _) = rep["hw_range"]
    for b, h, w in ((1, 160, 160), (2, max(hlo, 70), max(wlo, 90)), (1, 161, max(wlo, 75))):
        assert _compare(sess, model, b, h, w) < 1e-4, (b, h, w)


@pytest.mark.slow
def test_torchscript_exporter_dynamic_batch(tmp_path, capsys):
    """The fallback path (``--exporter torchscript``): a trace, batch dynamic, height/width fixed."""
    out = tmp_path / "ts.onnx"
    items = ["mixers=swin"] + TINY
    rc = export_tool.cli(["--model", "mixernet_tiny", "--model-kwargs", *items, "--img-size", "64", "--exporter",
                          "torchscript", "--output", str(out), "--repeats", "0"])
    assert rc == 0, capsys.readouterr()
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["exporter"] == "torchscript" and rep["dynamic_axes"] == ["batch"] and rep["custom_ops"] == []
    sess = _session(out)
    model = _eager("mixernet_tiny", items, img_size=64)
    for b in (1, 3):
        assert _compare(sess, model, b, 64, 64) < 1e-4
