"""Agent attention: the mixer against a direct implementation of the paper's equations (forward
and backward), Swin's shifted windows against dense masked attention, checkpoint conversion from
the official key layouts, resolution transfer, parameter counts and small-config model checks.

References written here (not the code under test):
* ``_ref_agent``: agent attention from the equations of Han et al. (arXiv:2312.08874, Sec. 3.2-3.3,
  Eq. 3-5): agents as explicit region means of the patch queries (adaptive-pool regions
  ``[floor(i*H/p), ceil((i+1)*H/p))``), both softmaxes as ``exp / sum``, bilinear / linear
  interpolation of the bias tables from the ``align_corners=False`` sampling formula, the DWC as an
  explicit sum over the 3x3 taps.
* ``_ref_swin``: window attention as dense ``HW x HW`` attention in the rolled frame, keys allowed
  iff same window, same Swin region and not padding; bias looked up from the relative offset.
* ``_official_keys``: the official state-dict key layouts (reference ``biformer_cswin_agent.md``
  sec. 3.3) produced from our keys by the inverse of the documented mapping.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import visionattn.models.agent  # noqa: F401  (registers the agent_* models)
from visionattn.layers.agent import AgentAttention
from visionattn.layers.window import WindowAttention
from visionattn.models._registry import CheckpointKeyError
from visionattn.models.agent import AgentDeiT, AgentPVT, AgentSwin, checkpoint_filter_fn

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _f64():
    torch.set_default_dtype(torch.float64)  # the references are compared at float64 precision
    yield
    torch.set_default_dtype(torch.float32)


# ------------------------------------------------------------------------------------------------
# references


def _interp_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D linear interpolation with align_corners=False (half-pixel centres)."""
    M = torch.zeros(n_out, n_in)
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        t = src - i0
        M[o, i0] += 1 - t
        M[o, i1] += t
    return M


def _pool_regions(n: int, p: int):
    return [(math.floor(i * n / p), math.ceil((i + 1) * n / p)) for i in range(p)]


def _ref_agent(mod: AgentAttention, x: torch.Tensor, H: int, W: int, P: int = 0) -> torch.Tensor:
    """Agent attention of ``x (B, P + H*W, C)`` from the paper's equations, with ``mod``'s parameters."""
    B, N, C = x.shape
    m, n = mod.num_heads, mod.agent_num
    d, p = C // m, int(round(n**0.5))
    s = d**-0.5
    if mod.split_qkv:
        q = x @ mod.q.weight.T + mod.q.bias
        kv = x @ mod.kv.weight.T + mod.kv.bias
        k, v = kv[..., :C], kv[..., C:]
    else:
        qkv = x @ mod.qkv.weight.T + mod.qkv.bias
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    qg = q[:, P:].reshape(B, H, W, C)
    agents = []
    for (r0, r1) in _pool_regions(H, p):
        for (c0, c1) in _pool_regions(W, p):
            agents.append(qg[:, r0:r1, c0:c1].mean(dim=(1, 2)))
    A = torch.stack(agents, 1)  # (B, n, C), agent index row-major over the p x p grid
    Mh7, Mw7 = _interp_weights(7, H), _interp_weights(7, W)
    H0, W0 = mod.resolution
    Mh, Mw = _interp_weights(H0, H), _interp_weights(W0, W)
    an = torch.einsum("hr,mark,wk->mahw", Mh7, mod.an_bias, Mw7)
    na = torch.einsum("hr,mark,wk->mahw", Mh7, mod.na_bias, Mw7)
    ah = torch.einsum("hr,mar->mah", Mh, mod.ah_bias[0, :, :, :, 0])
    aw = torch.einsum("wk,mak->maw", Mw, mod.aw_bias[0, :, :, 0, :])
    ha = torch.einsum("hr,mra->mha", Mh, mod.ha_bias[0, :, :, 0, :])
    wa = torch.einsum("wk,mka->mwa", Mw, mod.wa_bias[0, :, 0, :, :])
    B1 = (an + ah[..., :, None] + aw[..., None, :]).reshape(m, n, H * W)  # agent -> key
    B2 = (na.permute(0, 2, 3, 1) + ha[:, :, None, :] + wa[:, None, :, :]).reshape(m, H * W, n)  # query -> agent
    if P:
        B1 = torch.cat([mod.ac_bias[0], B1], -1)
        B2 = torch.cat([mod.ca_bias[0], B2], -2)
    out = torch.zeros(B, N, C)
    for h in range(m):
        sl = slice(h * d, (h + 1) * d)
        qa, ka, va, aa = q[..., sl], k[..., sl], v[..., sl], A[..., sl]
        e1 = torch.exp(s * aa @ ka.transpose(1, 2) + B1[h])  # agent aggregation, Eq. 4
        agent_v = (e1 / e1.sum(-1, keepdim=True)) @ va
        e2 = torch.exp(s * qa @ aa.transpose(1, 2) + B2[h])  # agent broadcast, Eq. 4
        out[..., sl] = (e2 / e2.sum(-1, keepdim=True)) @ agent_v
    vg = F.pad(v[:, P:].reshape(B, H, W, C), (0, 0, 1, 1, 1, 1))
    dwc = torch.zeros(B, H, W, C) + mod.dwc.bias
    for dy in range(3):
        for dx in range(3):
            dwc = dwc + vg[:, dy:dy + H, dx:dx + W] * mod.dwc.weight[:, 0, dy, dx]
    out = torch.cat([out[:, :P], out[:, P:] + dwc.reshape(B, H * W, C)], 1)
    return out @ mod.proj.weight.T + mod.proj.bias


def _randomise(mod):
    with torch.no_grad():
        for prm in mod.parameters():
            prm.copy_(torch.randn_like(prm) * 0.3)


# ------------------------------------------------------------------------------------------------
# the mixer


@pytest.mark.parametrize(
    "H, W, res, split",
    [(6, 6, (6, 6), False), (5, 7, (4, 6), False), (9, 4, (7, 7), True), (3, 2, (8, 8), False)],
)
def test_mixer_nhwc_matches_paper_equations_forward_backward(H, W, res, split):
    torch.manual_seed(0)
    mod = AgentAttention(16, 2, agent_num=4, resolution=res, split_qkv=split)
    _randomise(mod)
    x = torch.randn(2, H, W, 16, requires_grad=True)
    y = mod(x)
    x2 = x.detach().clone().requires_grad_()
    yr = _ref_agent(mod, x2.reshape(2, H * W, 16), H, W).reshape(2, H, W, 16)
    torch.testing.assert_close(y, yr, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), [x] + list(mod.parameters()))
    grads_r = torch.autograd.grad((yr * g).sum(), [x2] + list(mod.parameters()))
    for a, b in zip(grads, grads_r):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("H, W, res", [(4, 4, 4), (5, 3, 4)])
def test_mixer_with_class_token_matches_paper_equations(H, W, res):
    torch.manual_seed(1)
    mod = AgentAttention(12, 3, agent_num=9, resolution=res, num_prefix_tokens=1)
    _randomise(mod)
    x = torch.randn(2, 1 + H * W, 12, requires_grad=True)
    y = mod(x, grid=(H, W))
    x2 = x.detach().clone().requires_grad_()
    yr = _ref_agent(mod, x2, H, W, P=1)
    torch.testing.assert_close(y, yr, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    ga = torch.autograd.grad((y * g).sum(), [x, mod.ac_bias, mod.ca_bias, mod.ah_bias])
    gb = torch.autograd.grad((yr * g).sum(), [x2, mod.ac_bias, mod.ca_bias, mod.ah_bias])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_mixer_scale_is_head_dim_and_errors():
    mod = AgentAttention(24, 3, agent_num=9)
    assert mod.scale == 8**-0.5
    with pytest.raises(ValueError, match="perfect square"):
        AgentAttention(24, 3, agent_num=10)
    with pytest.raises(ValueError, match="divisible"):
        AgentAttention(25, 3)
    with pytest.raises(ValueError, match="grid"):
        mod(torch.randn(1, 16, 24))
    cls_mod = AgentAttention(24, 3, agent_num=9, num_prefix_tokens=1)
    with pytest.raises(ValueError, match="prefix"):
        cls_mod(torch.randn(1, 4, 4, 24))
    with pytest.raises(ValueError, match="tokens but grid"):
        cls_mod(torch.randn(1, 16, 24), grid=(4, 4))


# ------------------------------------------------------------------------------------------------
# Swin windows with shift


def _ref_swin(mod: WindowAttention, x: torch.Tensor, shift: int) -> torch.Tensor:
    B, H, W, C = x.shape
    P = mod.window_size[0]
    Hp, Wp = -(-H // P) * P, -(-W // P) * P
    xp = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    valid = torch.zeros(Hp, Wp, dtype=torch.bool)
    valid[:H, :W] = True
    xr = torch.roll(xp, (-shift, -shift), (1, 2))
    vr = torch.roll(valid, (-shift, -shift), (0, 1)).flatten()
    rows = torch.arange(Hp)[:, None].expand(Hp, Wp).flatten()
    cols = torch.arange(Wp)[None, :].expand(Hp, Wp).flatten()

    def region(i, n):
        if shift == 0:
            return torch.zeros_like(i)
        return torch.where(i < n - P, 0, torch.where(i < n - shift, 1, 2))

    same = (rows[:, None] // P == rows[None, :] // P) & (cols[:, None] // P == cols[None, :] // P)
    same &= region(rows, Hp)[:, None] == region(rows, Hp)[None, :]
    same &= region(cols, Wp)[:, None] == region(cols, Wp)[None, :]
    allowed = same & vr[None, :]
    m, d = mod.num_heads, C // mod.num_heads
    qkv = xr.reshape(B, Hp * Wp, C) @ mod.qkv.weight.T + mod.qkv.bias
    q, k, v = qkv.split(C, -1)
    dr = (rows[None, :] % P) - (rows[:, None] % P) + P - 1
    dc = (cols[None, :] % P) - (cols[:, None] % P) + P - 1
    out = torch.zeros(B, Hp * Wp, C)
    for h in range(m):
        sl = slice(h * d, (h + 1) * d)
        logits = q[..., sl] @ k[..., sl].transpose(1, 2) * d**-0.5 + mod.rpb[h][dr, dc]
        logits = logits.masked_fill(~allowed, float("-inf"))
        out[..., sl] = logits.softmax(-1) @ v[..., sl]
    out = torch.roll(out.reshape(B, Hp, Wp, C), (shift, shift), (1, 2))[:, :H, :W]
    return out @ mod.proj.weight.T + mod.proj.bias


@pytest.mark.parametrize("H, W, shift", [(8, 8, 2), (8, 12, 2), (7, 10, 2), (8, 8, 0), (6, 5, 0)])
def test_shifted_window_attention_matches_dense_masked_reference(H, W, shift):
    torch.manual_seed(2)
    mod = WindowAttention(8, 2, 4, partition="block", shift_size=shift)
    _randomise(mod)
    x = torch.randn(2, H, W, 8)
    # Swin masks other regions with -100 (not -inf); at these logit scales exp(-100) is negligible
    torch.testing.assert_close(mod(x), _ref_swin(mod, x, shift), rtol=1e-9, atol=1e-9)


def test_shift_requires_block_partition():
    with pytest.raises(ValueError, match="shift_size"):
        WindowAttention(8, 2, 4, partition="grid", shift_size=2)


# ------------------------------------------------------------------------------------------------
# official key layouts (inverse of the documented mapping), conversion


def _official_keys(model, sd):
    """Our state dict -> the official layout of the family (reference sec. 3.3)."""
    out = {}
    if isinstance(model, AgentPVT):
        for k, v in sd.items():
            if k.startswith("stem."):
                k2 = "pos_embed1" if k == "stem.pos_embed" else "patch_embed1." + k[5:]
            elif ".downsample." in k:
                i = int(k.split(".")[1])
                rest = k.split(".downsample.")[1]
                k2 = f"pos_embed{i + 1}" if rest == "pos_embed" else f"patch_embed{i + 1}.{rest}"
            elif k.startswith("stages."):
                _, i, _, j, rest = k.split(".", 4)
                k2 = f"block{int(i) + 1}.{j}.{rest}"
            elif k.startswith("head.fc."):
                k2 = "head." + k[8:]
            out[k2] = v
    elif isinstance(model, AgentDeiT):
        for k, v in sd.items():
            if k.startswith("stages."):
                _, i, _, _, rest = k.split(".", 4)
                k2 = f"blocks.{i}.{rest}"
            elif k.startswith("stem."):
                k2 = "patch_embed." + k[5:]
            elif k.startswith("head.fc."):
                k2 = "head." + k[8:]
            else:
                k2 = k
            out[k2] = v
    elif isinstance(model, AgentSwin):
        for k, v in sd.items():
            if k.startswith("stem."):
                k2 = "patch_embed." + k[5:]
            elif ".downsample." in k:
                i = int(k.split(".")[1])
                k2 = f"layers.{i - 1}.downsample." + k.split(".downsample.")[1]
            elif k.startswith("stages."):
                _, i, _, j, rest = k.split(".", 4)
                k2 = f"layers.{i}.blocks.{j}.{rest}"
                if rest == "attn.rpb":
                    heads, s, _ = v.shape
                    out[k2.replace("rpb", "relative_position_bias_table")] = v.flip(1, 2).reshape(heads, s * s).t()
                    P = (s + 1) // 2
                    c = torch.stack(torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")).flatten(1)
                    rel = (c[:, :, None] - c[:, None, :]).permute(1, 2, 0) + P - 1
                    out[k2.replace("rpb", "relative_position_index")] = rel[..., 0] * (2 * P - 1) + rel[..., 1]
                    if model.stages[int(i)].blocks[int(j)].attn.shift_size[0]:  # official: shifted blocks only
                        out[f"layers.{i}.blocks.{j}.attn_mask"] = torch.zeros(1)
                    continue
            elif k.startswith("head.fc."):
                k2 = "head." + k[8:]
            else:
                k2 = k
            out[k2] = v
    return out


def _small(cls, **kw):
    base = {
        AgentPVT: dict(embed_dims=(8, 16, 16, 24), num_heads=(1, 2, 2, 3), depths=(1, 1, 2, 1), agent_num=(4, 4, 9, 4), img_size=64),
        AgentDeiT: dict(embed_dim=24, depth=3, num_heads=3, agent_num=4, agent_layers=2, img_size=64),
        AgentSwin: dict(embed_dim=8, depths=(1, 1, 4, 1), num_heads=(1, 2, 2, 4), agent_num=(4, 4, 4, 4), agent_blocks=(1, 1, 1, 0), img_size=256),
    }[cls]
    torch.manual_seed(3)
    return cls(**{**base, **kw}).eval()


@pytest.mark.parametrize("cls", [AgentPVT, AgentDeiT, AgentSwin])
def test_official_layout_converts_strictly(cls):
    model = _small(cls)
    _randomise(model)
    sd = model.state_dict()
    off = _official_keys(model, sd)
    conv = checkpoint_filter_fn({"model": off, "epoch": 1}, model)
    assert model.pretrained_state_key == "model"
    assert set(conv) == set(sd)
    for k in sd:
        torch.testing.assert_close(conv[k], sd[k], rtol=0, atol=0)
    bad = dict(off, extra_weight=torch.zeros(1))
    with pytest.raises(CheckpointKeyError, match="extra_weight"):
        checkpoint_filter_fn({"model": bad}, model)
    first = next(iter(off))
    with pytest.raises(CheckpointKeyError, match="missing"):
        checkpoint_filter_fn({k: v for k, v in off.items() if k != first}, model)


def test_swin_attn_mask_only_on_shifted_blocks_and_ema_choice():
    model = _small(AgentSwin)
    # img 256: stage-3 map 16 > window 8 -> blocks 1 and 3 are shifted, stage 4 (8 <= 8) never
    shifts = [[b.attn.shift_size[0] if isinstance(b.attn, WindowAttention) else None for b in s.blocks] for s in model.stages]
    assert shifts == [[None], [None], [None, 4, 0, 4], [0]]
    off = _official_keys(model, model.state_dict())
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in off.items()}
    sd = checkpoint_filter_fn({"model": off, "state_dict_ema": ema}, model, prefer_ema=True)
    assert model.pretrained_state_key == "state_dict_ema"
    torch.testing.assert_close(sd["norm.weight"], model.state_dict()["norm.weight"] + 1)
    with pytest.raises(KeyError, match="state_dict_ema"):
        checkpoint_filter_fn({"model": off}, model, prefer_ema=True)


@pytest.mark.parametrize("name, count", [("agent_swin_tiny", 245), ("agent_pvt_tiny", 198), ("agent_deit_tiny", 272)])
def test_official_key_counts(name, count):
    """The inverse mapping of our tiny models gives exactly the official entry counts (reference sec. 3.3)."""
    with torch.device("meta"):
        m = timm.create_model(name)
    assert len(_official_keys(m, m.state_dict())) == count


def test_cswin_agent_keys_convert():
    with torch.device("meta"):
        m = timm.create_model("agent_cswin_tiny")
    sd = m.state_dict()
    off = {}
    for k, v in sd.items():
        if ".attn." in k and isinstance(m.stages[int(k.split(".")[1])].blocks[int(k.split(".")[3])].attn, AgentAttention):
            _, i, _, j, _, rest = k.split(".", 5)
            if rest.startswith(("qkv.", "proj.")):
                off[f"stage{int(i) + 1}.{j}.{rest}"] = v
            else:
                off[f"stage{int(i) + 1}.{j}.attns.0.{rest.replace('dwc.', 'get_v.')}"] = v
        elif ".attn.lepe." in k:
            _, i, _, j, _, _, kind = k.split(".")
            C = v.shape[0]
            if int(i) == 3:
                off[f"stage4.{j}.attns.0.get_v.{kind}"] = v
            else:
                off[f"stage{int(i) + 1}.{j}.attns.0.get_v.{kind}"] = v[: C // 2]
                off[f"stage{int(i) + 1}.{j}.attns.1.get_v.{kind}"] = v[C // 2:]
        elif ".attn." in k:
            _, i, _, j, _, rest = k.split(".", 5)
            off[f"stage{int(i) + 1}.{j}.{rest}"] = v
        elif k.startswith("stages.") and ".blocks." in k:
            _, i, _, j, rest = k.split(".", 4)
            off[f"stage{int(i) + 1}.{j}.{rest}"] = v
        elif ".downsample." in k:
            i = k.split(".")[1]
            rest = k.split(".downsample.")[1].replace("reduction", "conv")
            off[f"merge{i}.{rest}"] = v
        elif k.startswith("stem."):
            off[k.replace("stem.conv", "stage1_conv_embed.0").replace("stem.norm", "stage1_conv_embed.2")] = v
        elif k.startswith("head.fc."):
            off["head." + k[8:]] = v
        else:
            off[k] = v
    assert len(off) == 442  # official Agent-CSwin-T entries
    conv = checkpoint_filter_fn({"model": off}, m)
    assert set(conv) == set(sd)


# ------------------------------------------------------------------------------------------------
# resolution transfer and any input size


@pytest.mark.parametrize("cls, sizes", [(AgentPVT, (64, 96)), (AgentDeiT, (64, 96)), (AgentSwin, (256, 320))])
def test_checkpoint_of_one_resolution_loads_into_model_of_another(cls, sizes):
    """Loading the weights of a model built at size a into one built at size b reproduces the
    a-model run at size b (identical interpolation at load and at run time). Swin window tables
    change size with the window (8 -> 10), so for Swin only the load is checked."""
    a = _small(cls, img_size=sizes[0])
    _randomise(a)
    b = _small(cls, img_size=sizes[1])
    sd = checkpoint_filter_fn({"model": _official_keys(a, a.state_dict())}, b)
    b.load_state_dict(sd)
    if cls is not AgentSwin:
        x = torch.randn(1, 3, sizes[1], sizes[1])
        with torch.no_grad():
            torch.testing.assert_close(b(x), a(x), rtol=1e-9, atol=1e-9)


def test_non_square_input_is_not_flattened_wrongly():
    """A non-square map must attend like the same map transposed (agents pool over (H, W), not sqrt(N))."""
    torch.manual_seed(4)
    mod = AgentAttention(8, 2, agent_num=4, resolution=(6, 6))
    _randomise(mod)
    with torch.no_grad():
        for t in (mod.an_bias, mod.na_bias, mod.ah_bias, mod.aw_bias, mod.ha_bias, mod.wa_bias):
            t.zero_()
        w = mod.dwc.weight.clone()
        mod.dwc.weight.copy_((w + w.transpose(-1, -2)) / 2)  # symmetric under transpose
    x = torch.randn(1, 3, 8, 8)
    y = mod(x)
    yt = mod(x.transpose(1, 2).contiguous()).transpose(1, 2)
    torch.testing.assert_close(y, yt, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# registry, parameter counts, cfgs


NAMES = [
    "agent_deit_tiny", "agent_deit_small", "agent_deit_small_448", "agent_deit_base",
    "agent_pvt_tiny", "agent_pvt_small", "agent_pvt_medium", "agent_pvt_medium_256", "agent_pvt_large",
    "agent_swin_tiny", "agent_swin_small", "agent_swin_small_288", "agent_swin_base", "agent_swin_base_384",
    "agent_cswin_tiny", "agent_cswin_small", "agent_cswin_base", "agent_cswin_base_384",
]  # fmt: skip
# measured from the official definitions (reference params_official.json), millions, 3 decimals
OFFICIAL_M = {
    "agent_deit_tiny": 6.016, "agent_deit_small": 22.647, "agent_deit_small_448": 23.070, "agent_deit_base": 87.205,
    "agent_pvt_tiny": 11.570, "agent_pvt_small": 20.635, "agent_pvt_medium": 35.922, "agent_pvt_medium_256": 36.084,
    "agent_pvt_large": 48.738, "agent_swin_tiny": 28.903, "agent_swin_small": 49.667, "agent_swin_small_288": 49.708,
    "agent_swin_base": 88.095, "agent_swin_base_384": 88.305, "agent_cswin_tiny": 20.459, "agent_cswin_small": 32.814,
    "agent_cswin_base": 73.250, "agent_cswin_base_384": 73.328,
}  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_param_count_and_cfg(name):
    with torch.device("meta"):
        m = timm.create_model(name)
    n = sum(p.numel() for p in m.parameters()) / 1e6
    assert round(n, 3) == round(OFFICIAL_M[name], 3), f"{name}: {n:.4f}M"
    # the repository's copy of the official counts (tests/data/param_counts.json names its source)
    ref = json.loads((Path(__file__).parent / "data" / "param_counts.json").read_text())
    assert ref[name][0] == pytest.approx(OFFICIAL_M[name])
    cfg = timm.models.get_pretrained_cfg(name)
    assert cfg.url.startswith("https://cloud.tsinghua.edu.cn/f/") and cfg.input_size[1] in (224, 256, 288, 384, 448)


def test_agent_layout_of_variants():
    with torch.device("meta"):
        swin_b = timm.create_model("agent_swin_base")
        deit_b = timm.create_model("agent_deit_base")
        pvt = timm.create_model("agent_pvt_tiny")
        cs = timm.create_model("agent_cswin_tiny")
    kinds = [[type(b.attn).__name__[0] for b in s.blocks] for s in swin_b.stages]
    assert kinds[2] == ["A", "A"] + ["W"] * 16 and kinds[3] == ["W", "W"] and kinds[0] == ["A", "A"]
    assert [s.blocks[0].attn.agent_num for s in swin_b.stages[:2]] == [9, 16]
    assert swin_b.stages[2].blocks[0].attn.ah_bias.shape == (1, 16, 49, 14, 1)
    d = [type(s.blocks[0].attn).__name__ for s in deit_b.stages]
    assert d == ["AgentAttention"] * 4 + ["Attention"] * 8 and deit_b.stages[0].blocks[0].attn.agent_num == 81
    assert all(isinstance(b.attn, AgentAttention) and b.attn.split_qkv for s in pvt.stages for b in s.blocks)
    assert [isinstance(s.blocks[0].attn, AgentAttention) for s in cs.stages] == [True, True, False, False]


def test_deit_head_reads_class_token_and_taps():
    m = _small(AgentDeiT)
    x = torch.randn(2, 3, 50, 70)
    with torch.no_grad():
        f = m.forward_features(x)
        assert f.shape == (2, 1 + 4 * 5, 24)  # (B, 1 + h*w, C), class token first, as timm's DeiT
        torch.testing.assert_close(m(x), m.head.fc(f[:, 0]))
        taps = m.forward_intermediates(x, intermediates_only=True)
        assert [t.shape for t in taps] == [(2, 24, 4, 5)] * 3


# ------------------------------------------------------------------------------------------------
# fvcore GMACs (slow: traces four models)

# fvcore GMACs of the official definitions at 224 (reference biformer_cswin_agent.md sec. 4.3)
OFFICIAL_GMACS = {"agent_deit_tiny": 1.176, "agent_pvt_tiny": 2.000, "agent_swin_tiny": 4.528, "agent_cswin_tiny": 4.315}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OFFICIAL_GMACS))
def test_fvcore_gmacs_within_2_percent_of_official(name):
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

    def sdpa(inputs, outputs):  # QK^T + AV multiply-accumulates, as fvcore counts the official matmuls
        q, k, v = (get_shape(inputs[i]) for i in range(3))
        return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])

    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        m = timm.create_model(name).eval()
        fca = FlopCountAnalysis(m, torch.zeros(1, 3, 224, 224)).set_op_handle("aten::scaled_dot_product_attention", sdpa)
        fca.unsupported_ops_warnings(False)
        fca.uncalled_modules_warnings(False)
        g = fca.total() / 1e9
    finally:
        torch.set_default_dtype(prev)
    assert abs(g - OFFICIAL_GMACS[name]) / OFFICIAL_GMACS[name] < 0.02, f"{name}: {g:.3f} GMACs"
