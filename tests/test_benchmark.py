"""tools/benchmark.py and tools/flops.py: GMACs with attention counted, outputs, model selection.

GMACs are checked against numbers obtained another way: fvcore on timm's own MaxViT/DaViT with
fused attention switched off (plain matmuls, no handle of ours involved), hand-computed MACs of
small modules, and the fvcore counts of the official repositories (BiFormer-T 2.228, NAT-Mini 2.71,
measured in /work/shared/reference). No timing assertions.
"""
from __future__ import annotations

import contextlib
import csv
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm
import timm.layers

import visionattn
from visionattn.layers.neighborhood import NeighborhoodAttention2d
from visionattn.tools import benchmark as bm
from visionattn.engine.flops import UNCOUNTED_OK, count_gmacs, unexpected_uncounted


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: with two OpenMP threads on a 2-core machine whose other core is busy,
    every op waits for the busy core (a 50x slowdown was measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def timm_unfused_attention():
    """timm models built inside use explicit q @ k^T / attn @ v (fvcore counts them as matmul)."""
    before = timm.layers.use_fused_attn()
    timm.layers.set_fused_attn(False)
    try:
        yield
    finally:
        timm.layers.set_fused_attn(before)


def plain_fvcore_gmacs(model: nn.Module, size=(1, 3, 224, 224)) -> float:
    """fvcore with its default handles only (none of ours)."""
    from fvcore.nn import FlopCountAnalysis

    fca = FlopCountAnalysis(model.eval(), (torch.randn(*size),))
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    fca.tracer_warnings("none")
    with torch.no_grad():
        return fca.total() / 1e9


@pytest.mark.parametrize(
    "ours, theirs, published",
    [("davit_tiny_va", "davit_tiny", 4.540244736), ("maxvit_tiny", "maxvit_tiny_tf_224", 5.6)],
)
def test_gmacs_match_timm_unfused_and_paper(ours, theirs, published):
    g_ours, unsupported = count_gmacs(timm.create_model(ours))
    with timm_unfused_attention():
        g_timm = plain_fvcore_gmacs(timm.create_model(theirs))
    # timm's MaxViT adds a one-hot einsum for the rel-pos bias lookup (counted by fvcore, 0.006 G)
    assert g_ours == pytest.approx(g_timm, rel=2e-3)
    assert g_ours == pytest.approx(published, rel=5e-3)
    assert unexpected_uncounted(unsupported) == []


def test_sdpa_handle_needed():
    """Without the SDPA handle fvcore misses DaViT-T's fused attention matmuls (0.07 G)."""
    assert plain_fvcore_gmacs(timm.create_model("davit_tiny_va")) == pytest.approx(4.540 - 0.070, abs=0.005)


class _Sdpa(nn.Module):
    def forward(self, x):
        q, k, v = x[..., :8], x[..., 8:16], x[..., 16:]
        return F.scaled_dot_product_attention(q, k, v)


class _Explicit(nn.Module):
    def forward(self, x):
        q, k, v = x[..., :8], x[..., 8:16], x[..., 16:]
        return ((q @ k.transpose(-2, -1)) * 8**-0.5).softmax(-1) @ v


class _Wrap(nn.Module):
    """(B, 3, H, W) image -> tokens (B, heads, H*W, 8+8+Dv) so count_gmacs can feed it."""

    def __init__(self, inner, heads=2, dv=12):
        super().__init__()
        self.inner, self.heads, self.dv = inner, heads, dv

    def forward(self, img):
        B, _, H, W = img.shape
        x = img.flatten(2).transpose(1, 2)[..., :1].expand(B, H * W, self.heads * (16 + self.dv))
        return self.inner(x.reshape(B, H * W, self.heads, 16 + self.dv).transpose(1, 2))


def test_sdpa_handle_equals_explicit_matmuls_and_formula():
    n_tok, heads, dv = 6 * 5, 2, 12
    g_sdpa, un_sdpa = count_gmacs(_Wrap(_Sdpa(), heads, dv), (3, 6, 5), batch_size=3)
    g_expl, _ = count_gmacs(_Wrap(_Explicit(), heads, dv), (3, 6, 5), batch_size=3)
    hand = 3 * heads * n_tok * n_tok * (8 + dv)  # QK^T + AV
    assert g_sdpa * 1e9 == pytest.approx(hand, abs=0.5)
    assert g_expl * 1e9 == pytest.approx(hand, abs=0.5)
    assert "aten::scaled_dot_product_attention" not in un_sdpa


class _NaImage(nn.Module):
    def __init__(self, dim=24, heads=3, k=5, d=2):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 1, bias=False)
        self.na = NeighborhoodAttention2d(dim, heads, kernel_size=k, dilation=d)

    def forward(self, img):
        return self.na(self.embed(img).permute(0, 2, 3, 1))


def test_na2d_handle_hand_computed():
    H, W, C, heads, K, d, B = 12, 10, 24, 3, 5, 2, 2
    g, unsupported = count_gmacs(_NaImage(C, heads, K, d), (3, H, W), batch_size=B)
    tokens = B * H * W
    hand = tokens * 3 * C  # 1x1 conv embedding
    hand += tokens * C * 3 * C + tokens * C * C  # qkv + proj linears
    hand += tokens * heads * K * K * (C // heads) * 2  # QK^T + AV over the K x K neighborhood
    assert g * 1e9 == pytest.approx(hand, abs=0.5)
    assert unexpected_uncounted(unsupported) == []


def test_na2d_counting_leaves_model_untouched():
    import visionattn.layers.neighborhood as nbl
    from visionattn.ops import na2d

    model = _NaImage()
    x = torch.randn(1, 3, 12, 10)
    before = model.eval()(x)
    count_gmacs(model, (3, 12, 10))
    assert nbl.na2d is na2d
    torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("name, official", [("biformer_tiny", 2.228), ("nat_mini", 2.71), ("dinat_s_tiny", 4.51)])
def test_gmacs_match_official_fvcore_counts(name, official):
    g, unsupported = count_gmacs(timm.create_model(name))
    assert g == pytest.approx(official, abs=0.006)
    assert unexpected_uncounted(unsupported) == []


@pytest.mark.slow
def test_tiny_models_count_everything_but_elementwise():
    for name in ["cswin_tiny", "agent_swin_tiny", "agent_pvt_tiny", "agent_deit_tiny", "agent_cswin_tiny", "vitrpb_small"]:
        g, unsupported = count_gmacs(timm.create_model(name))
        assert unexpected_uncounted(unsupported) == [], name
        paper = bm.PAPER_GMACS[name][0]
        assert abs(g - paper) / paper < 0.04, (name, g, paper)


def test_unexpected_uncounted_flags_mac_ops():
    assert unexpected_uncounted({"aten::softmax": 3, "aten::add": 1}) == []
    assert unexpected_uncounted({"aten::unfold": 1, "aten::gelu": 2}) == ["aten::unfold"]
    assert "aten::matmul" not in UNCOUNTED_OK


def test_count_gmacs_rejects_bad_sizes():
    with pytest.raises(ValueError, match="input_size"):
        count_gmacs(nn.Identity(), (224, 224))
    with pytest.raises(ValueError, match="batch_size"):
        count_gmacs(nn.Conv2d(3, 3, 1), (3, 8, 8), batch_size=0)


def test_glob_selection():
    zoo = visionattn.list_models()
    got = bm.resolve_models(["dinat_s_*", "nat_mini", "dinat_s_tiny"])
    assert got == sorted(n for n in zoo if n.startswith("dinat_s_")) + ["nat_mini"]
    assert bm.resolve_models(["resnet1?"]) == timm.list_models("resnet1?")  # falls through to timm
    with pytest.raises(ValueError, match="matches no"):
        bm.resolve_models(["no_such_*"])
    with pytest.raises(ValueError, match="unknown model"):
        bm.resolve_models(["no_such_model"])
    assert bm.family_of("dinat_s_tiny") == "DiNAT-s" and bm.family_of("dinat_tiny") == "DiNAT"


def test_outputs_written(tmp_path):
    prefix = tmp_path / "bench"
    out = bm.main(["--model", "agent_deit_t*", "--bench", "both", "-b", "1", "2", "--img-size", "64",
                   "--num-warm-iter", "0", "--num-bench-iter", "1", "--output", str(prefix)])
    rows = out["rows"]
    assert [(r["model"], r["batch_size"]) for r in rows] == [("agent_deit_tiny", 1), ("agent_deit_tiny", 2)]
    with open(f"{prefix}.csv") as f:
        table = list(csv.DictReader(f))
    assert {"model", "gmacs", "params_m", "infer_img_s", "train_img_s", "infer_peak_mb", "train_peak_mb"} <= set(table[0])
    # hand count at 64 px: 16 patch tokens + cls, 49 agents pooled from the 4x4 grid, dwc 3x3 on the grid
    dim, depth, n_tok, n_ag, grid = 192, 12, 17, 49, 16
    block = n_tok * dim * 3 * dim + n_tok * dim * dim + 2 * n_tok * dim * 4 * dim  # qkv, proj, mlp
    block += 2 * n_ag * n_tok * dim + 2 * n_tok * n_ag * dim  # agent aggregation + broadcast (QK^T + AV each)
    block += grid * dim * 9  # depthwise 3x3 conv on V
    block += grid * dim  # adaptive_avg_pool2d of the queries to the agents (fvcore: one per input element)
    block += 2 * 3 * n_ag * grid * 4  # the two 7x7 -> 4x4 bilinear agent-bias resizes (fvcore: 4 per output)
    hand = grid * 3 * 16 * 16 * dim + depth * block + dim * 1000  # patch embed, blocks, head
    hand += (2 * depth + 1) * n_tok * dim * 5  # fvcore's layer_norm handle: 5 per element
    assert float(table[0]["gmacs"]) * 1e9 == pytest.approx(hand, rel=1e-3)  # the CSV keeps 4 decimals
    assert float(table[0]["params_m"]) == pytest.approx(6.016, abs=0.01)  # official Agent-DeiT-T: 6,015,640
    assert table[0]["gmacs_paper"] == ""  # 64 px is not the paper's resolution
    for r in rows:
        assert r["infer_img_s"] > 0 and r["train_img_s"] > 0 and r["infer_peak_mb"] > 0
        assert math.isclose(r["infer_img_s"], r["batch_size"] * 1000 / r["infer_ms"], rel_tol=1e-2)
    md = (tmp_path / "bench.md").read_text()
    assert "| model |" in md and "agent_deit_tiny" in md and "command:" in md and "torch" in md
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_timm_ratio(tmp_path):
    # the README's own example names its prefix vs_timm: no vs_timm_vs_timm.csv (issue #19.11)
    out = bm.main(["--model", "davit_tiny_va", "--compare-timm", "--bench", "inference", "-b", "1", "--img-size", "64",
                   "--repeats", "1", "--num-bench-iter", "1", "--num-warm-iter", "0", "--no-gmacs", "--no-memory",
                   "--output", str(tmp_path / "vs_timm")])
    (row,) = out["compare_rows"]
    assert row["baseline"] == "timm:davit_tiny" and row["mode"] == "inference"
    assert row["speed_ratio"] == pytest.approx(row["baseline_ms"] / row["ours_ms"], rel=1e-2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vs_timm.csv", "vs_timm.md", "vs_timm_models.csv"]  # no png without GMACs
    with open(tmp_path / "vs_timm.csv") as f:
        assert next(csv.DictReader(f))["baseline"] == "timm:davit_tiny"
    with open(tmp_path / "vs_timm_models.csv") as f:
        assert next(csv.DictReader(f))["model"] == "davit_tiny_va"
    assert "Side by side with timm" in (tmp_path / "vs_timm.md").read_text()


def test_output_paths():
    assert bm.output_paths("runs/b/cmp", compare=True) == {
        "csv": "runs/b/cmp.csv", "compare_csv": "runs/b/cmp_vs_timm.csv", "md": "runs/b/cmp.md", "png": "runs/b/cmp.png"}
    assert bm.output_paths("runs/b/zoo.md")["csv"] == "runs/b/zoo.csv"
    assert bm.output_paths("runs/b/vs_timm")["csv"] == "runs/b/vs_timm.csv"  # no comparison: nothing renamed
    assert bm.output_paths("runs/b/maxvit_vs_timm.csv", compare=True)["compare_csv"] == "runs/b/maxvit_vs_timm.csv"


def test_cpu_run_prints_no_kineto_gpu_error(tmp_path):
    """On a machine without a GPU the CPU memory profiler printed ``ERROR ... gpuGetDeviceCount failed``."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, "-m", "visionattn.tools.benchmark", "--model", "agent_deit_tiny", "--bench",
                          "inference", "--img-size", "32", "--num-warm-iter", "0", "--num-bench-iter", "1", "--no-gmacs",
                          "--threads", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "infer_peak_mb=" in res.stdout and "mem_method=cpu_profiler_alloc" in res.stdout
    assert "gpuGetDeviceCount" not in res.stderr and "ERROR" not in res.stderr, res.stderr
    with pytest.raises(ValueError, match="timm implementation"):
        bm.main(["--model", "nat_mini", "--compare-timm", "--bench", "flops"])


def test_cli_reports_bad_model(capsys):
    assert bm.cli(["--model", "no_such_model", "--bench", "flops"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_unwritable_output_fails_before_any_model_runs(tmp_path, monkeypatch):
    """#19.6: --output to a place that cannot be written stops before the (long) measurement."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    ran = []
    monkeypatch.setattr(bm, "_run", lambda *a, **k: ran.append(1))
    with pytest.raises(ValueError, match="--output"):
        bm.main(["--model", "dinat_mini", "--output", str(blocker / "sub" / "bench")])
    assert not ran
