"""Checkpoint manifest, conversion to Hub folders, publishing and every offline loading path.

No network: "official" checkpoints are made here (the official NAT module tree of
``_official_nat``, and the reverse key maps of the family tests for BiFormer, CSWin, Agent and
DaViT; timm's own model for MaxViT), the Hub is a fake ``HfApi`` or ``--dry-run``, and Hub
downloads are served from a cache this file populates in huggingface_hub's layout with
``HF_HUB_OFFLINE``.
"""
from __future__ import annotations

import collections
import copy
import json
import os
import shutil
import sys
import types
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
import torch.nn.functional as F

import visionattn
from visionattn.models import _hub, _manifest
from visionattn.models import agent as agent_mod
from visionattn.models import van as van_mod
from visionattn.models import inline as inline_mod
from visionattn.models import biformer as biformer_mod
from visionattn.models import crossformer as crossformer_mod
from visionattn.models import cswin as cswin_mod
from visionattn.models import davit as davit_mod
from visionattn.models import maxvit as maxvit_mod
from visionattn.models import nat as nat_mod
from visionattn.models._hub import CheckpointFileError, PretrainedDownloadError, UnsafeCheckpointError, read_checkpoint, sha256_file
from visionattn.models._registry import CheckpointKeyError
from visionattn.tools import convert_checkpoint, model_table, push_to_hub
from visionattn.engine.cli import UsageError

from _official_nat import OfficialIsotropic, OfficialNAT, randomize_

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROOT = Path(__file__).resolve().parents[1]
FAMILY_MODULES = dict(
    nat=nat_mod, biformer=biformer_mod, cswin=cswin_mod, maxvit=maxvit_mod, davit=davit_mod, agent=agent_mod, inline=inline_mod,
    van=van_mod, crossformer=crossformer_mod,
)

# small variants: ours as constructor kwargs, the official tree with the same shapes
NAT_KW = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2])
NAT_OFF = dict(NAT_KW, mlp_ratio=3.0)
DINAT_KW = dict(embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4], dilations=[[1], [1, 2], [1], [1]])
MAXVIT_KW = dict(embed_dim=(32, 32, 32, 32), depths=(1, 1, 1, 1), stem_width=16, head_hidden_size=32)
DAVIT_KW = dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32), num_heads=(1, 2, 2, 2))


class Hook:
    """A class pickled into a checkpoint: loading it would need this module's code."""


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


# ------------------------------------------------------------------------------------------------
# The manifest


def _registered_tags():
    names = set()
    for fam, mod in FAMILY_MODULES.items():
        for arch, dc in mod.default_cfgs.items():
            for tag in dc.tags:
                names.add((f"{arch}.{tag}" if tag else arch, fam))
    return names


def test_every_registered_tag_has_an_entry_and_vice_versa():
    registered = _registered_tags()
    entries = {(k, e["family"]) for k, e in _manifest.manifest_entries().items()}
    assert registered == entries
    archs = {n.split(".", 1)[0] for n, _ in registered}
    assert archs == set(visionattn.list_models())  # every model has at least one entry
    counts = collections.Counter(f for _, f in entries)
    assert counts == dict(nat=25, biformer=4, cswin=7, maxvit=21, davit=6, agent=18, inline=15, van=7, crossformer=8)


def test_every_released_checkpoint_has_a_source_a_hub_id_and_reported_metrics():
    for name, e in _manifest.manifest_entries().items():
        if not e["official_urls"]:
            # DaViT L/H/G, VAN B5/B6, InLine's 384 fine-tune configs: never released
            assert e["hub_id"] is None and ("davit" in name or name in ("van_b5", "van_b6", "inline_swin_base_384",
                                                                        "inline_cswin_base_384")), name
            continue
        assert e["hub_id"], name
        if e["family"] in ("maxvit", "davit"):
            assert e["hub_id"].startswith("timm/"), name
        elif e["family"] == "crossformer":  # Google Drive / BaiduCloud pages only: no direct download
            assert e["hub_id"] == f"visionattn/{name}" and e["download_url"] is None, name
            assert "no direct download" in e["notes"][0] and all("a page" in s["note"] for s in e["sources"]), name
        else:
            assert e["hub_id"] == f"visionattn/{name}" and e["download_url"] == e["official_urls"][0], name
        assert e["reported"]["resolution"] == timm.models.get_pretrained_cfg(name).input_size[-1]
        assert e["license"] in ("mit", "apache-2.0", "unknown")
    assert _manifest.get_entry("cswin_base_384.in1k")["reported"]["top1"] == 85.5
    assert _manifest.get_entry("dinat_tiny.in1k")["reported"]["top1"] == 82.7
    assert _manifest.get_entry("agent_cswin_base_384.in1k")["wrapping_key"] == "model"


def test_manifest_is_package_data_in_canonical_form():
    path = _manifest.manifest_path()
    assert path.parent == Path(nat_mod.__file__).parent and path.name == "pretrained.yaml"
    assert path.read_text(encoding="utf-8") == _manifest.dump_manifest(_manifest.load_manifest())
    assert (ROOT / "pretrained" / "README.md").is_file()


def test_cfgs_follow_the_publication_rule():
    e = _manifest.get_entry("dinat_tiny.in1k")
    assert e["converted"]["sha256"] is None
    cfg = _manifest.cfg_for_entry(e, nat_mod._cfg)
    assert cfg["url"] == e["download_url"] and "hf_hub_id" not in cfg
    live = timm.models.get_pretrained_cfg("dinat_tiny.in1k")
    assert live.url == e["download_url"] and live.hf_hub_id is None
    e["converted"]["sha256"] = "ab" * 32
    cfg = _manifest.cfg_for_entry(e, nat_mod._cfg)
    assert cfg["hf_hub_id"] == "visionattn/dinat_tiny.in1k" and cfg["url"] == e["download_url"]
    m = _manifest.get_entry("maxvit_tiny_384.in1k")
    assert timm.models.get_pretrained_cfg("maxvit_tiny_384.in1k").hf_hub_id == m["hub_id"] == "timm/maxvit_tiny_tf_384.in1k"
    assert timm.models.get_pretrained_cfg("cswin_large.in22k").num_classes == 21841
    assert len(timm.models.get_pretrained_cfg("cswin_large.in22k").notes) == 2  # family note + entry note


def test_malformed_manifest_lists_every_problem(tmp_path):
    data = _manifest.load_manifest()
    e = data["entries"]["nat_mini.in1k"]
    e["converted"]["sha256"] = "xyz"
    e["cfg"]["url"] = "http://elsewhere"
    del data["entries"]["nat_tiny.in1k"]["license"]
    data["entries"]["nat_small.in1k"]["family"] = "resnet"
    path = tmp_path / "m.yaml"
    path.write_text(_manifest.dump_manifest(data))
    with pytest.raises(_manifest.ManifestError) as info:
        _manifest.load_manifest(path)
    msg = str(info.value)
    for part in ("nat_mini.in1k: converted.sha256", "cfg may not set ['url']", "nat_tiny.in1k: missing fields ['license']", "'resnet'"):
        assert part in msg
    with pytest.raises(_manifest.ManifestError, match="entries of that architecture"):
        _manifest.get_entry("nat_mini.in21k")


# ------------------------------------------------------------------------------------------------
# Conversion: one official layout per family


@pytest.fixture(scope="module")
def nat_official(tmp_path_factory):
    """An official-layout NAT-Mini-shaped file (flat state dict, as the official .pth) and its model."""
    off = randomize_(OfficialNAT(**NAT_OFF), 5).eval()
    path = tmp_path_factory.mktemp("official") / "nat_mini.pth"
    torch.save(off.state_dict(), path)
    return path, off


@pytest.fixture(scope="module")
def nat_folder(nat_official, tmp_path_factory):
    """nat_mini.in1k converted into a Hub folder."""
    src, _ = nat_official
    out = tmp_path_factory.mktemp("hub") / "nat_mini.in1k"
    res = convert_checkpoint.main([str(src), "--model", "nat_mini.in1k", "--output", str(out), "--verify-size", "64",
                                   "--model-kwargs", json.dumps(NAT_KW)])
    return out, res


def test_nat_conversion_verified_against_the_official_tree(nat_official, nat_folder):
    out, res = nat_folder
    _, off = nat_official
    assert res["reference"].startswith("tests/_official_nat.py") and res["reference_max_rel_err"] < 1e-5
    assert res["roundtrip_max_abs"] == 0.0 and res["sha256"] == sha256_file(out / "model.safetensors")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "nat_mini" and config["pretrained_cfg"]["tag"] == "in1k"
    assert "url" not in config["pretrained_cfg"] and "hf_hub_id" not in config["pretrained_cfg"]
    card = (out / "README.md").read_text()
    for part in ("license: mit", "81.8", "@article{hassani2022neighborhood", "nat_mini.pth", res["sha256"], "hf-hub:visionattn/nat_mini.in1k"):
        assert part in card
    model = timm.create_model("local-dir:" + str(out), pretrained=True)
    x = torch.randn(1, 3, 96, 80)
    torch.testing.assert_close(_logits(model, x), _logits(off, x), rtol=1e-4, atol=1e-4)


def test_dinat_and_vitrpb_conversion(tmp_path):
    off = randomize_(OfficialNAT(**dict(DINAT_KW, mlp_ratio=3.0)), 1)
    torch.save({"model": off.state_dict()}, tmp_path / "d.pth")  # wrapped variant accepted too
    res = convert_checkpoint.main([str(tmp_path / "d.pth"), "--model", "dinat_mini.in1k", "--output", str(tmp_path / "d"),
                                   "--verify-size", "64", "--model-kwargs", json.dumps(DINAT_KW)])
    assert res["reference_max_rel_err"] < 1e-5
    iso = randomize_(OfficialIsotropic(embed_dim=32, num_heads=2, depth=2, attention="mhsa"), 2)
    torch.save(iso.state_dict(), tmp_path / "v.pth")
    res = convert_checkpoint.main([str(tmp_path / "v.pth"), "--model", "vitrpb_small.in1k", "--output", str(tmp_path / "v"),
                                   "--model-kwargs", json.dumps(dict(embed_dim=32, num_heads=2, depth=2))])
    assert res["reference"].startswith("tests/_official_nat.py") and res["reference_max_rel_err"] < 1e-5


def test_biformer_conversion(tmp_path):
    from test_biformer import official_shapes, random_state_dict

    dims, depths = (32, 64, 64, 64), (1, 1, 1, 1)
    sd = random_state_dict(official_shapes(dims, depths), seed=3)
    torch.save({"model": sd, "epoch": 299}, tmp_path / "b.pth")
    kw = dict(embed_dims=dims, depths=depths)
    res = convert_checkpoint.main([str(tmp_path / "b.pth"), "--model", "biformer_tiny.in1k", "--output", str(tmp_path / "b"),
                                   "--verify-size", "112", "--model-kwargs", json.dumps(kw)])
    assert res["wrapping_key_found"] is True and res["reference_max_rel_err"] is None and res["roundtrip_max_abs"] == 0.0
    back = read_checkpoint(tmp_path / "b" / "model.safetensors")
    direct = biformer_mod.checkpoint_filter_fn({"model": sd}, timm.create_model("biformer_tiny", **kw))
    assert back.keys() == direct.keys() and all(torch.equal(back[k], direct[k]) for k in back)


CSWIN_KW = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2))


def _cswin_official(model):
    """Our CSWin state dict -> the official ``models/cswin.py`` keys (reference sec. 3.2), written
    independently of the converter: LePE convs split per branch (two halves unless global)."""
    out = {}
    for k, v in model.state_dict().items():
        parts = k.split(".")
        if k.startswith("stem."):
            out[f"stage1_conv_embed.{0 if parts[1] == 'conv' else 2}.{parts[2]}"] = v
        elif ".downsample." in k:
            out[f"merge{parts[1]}.{'conv' if parts[3] == 'reduction' else 'norm'}.{parts[4]}"] = v
        elif k.startswith("stages."):
            s, j, rest = int(parts[1]), parts[3], ".".join(parts[4:])
            p = f"stage{s + 1}.{j}."
            if rest.startswith("attn.lepe."):
                full = len(model.stages[s].blocks[int(j)].attn.branches()) == 1
                for b, half in enumerate([v] if full else v.chunk(2, 0)):
                    out[p + f"attns.{b}.get_v.{parts[-1]}"] = half
            else:
                out[p + rest.replace("attn.", "")] = v
        elif k.startswith("head.fc."):
            out["head." + parts[-1]] = v
        else:
            out[k] = v
    return out


def test_cswin_conversion_prefers_ema(tmp_path):
    ema_model = randomize_(timm.create_model("cswin_tiny", **CSWIN_KW), 0)
    plain_model = randomize_(timm.create_model("cswin_tiny", **CSWIN_KW), 1)
    ema, plain = _cswin_official(ema_model), _cswin_official(plain_model)
    ckpt = {"epoch": 300, "state_dict": plain, "state_dict_ema": ema, "args": __import__("argparse").Namespace(lr=1e-3)}
    torch.save(ckpt, tmp_path / "c.pth")  # args: an argparse.Namespace, as timm's CheckpointSaver writes
    res = convert_checkpoint.main([str(tmp_path / "c.pth"), "--model", "cswin_tiny.in1k", "--output", str(tmp_path / "c"),
                                   "--verify-size", "64", "--model-kwargs", json.dumps(CSWIN_KW)])
    assert res["wrapping_key_found"] is True
    back = read_checkpoint(tmp_path / "c" / "model.safetensors")
    torch.testing.assert_close(back["stages.0.blocks.0.attn.qkv.weight"], ema["stage1.0.qkv.weight"], rtol=0, atol=0)
    res = convert_checkpoint.main([str(tmp_path / "c.pth"), "--model", "cswin_tiny.in1k", "--output", str(tmp_path / "c"),
                                   "--overwrite", "--no-ema", "--verify-size", "64", "--model-kwargs", json.dumps(CSWIN_KW)])
    back = read_checkpoint(tmp_path / "c" / "model.safetensors")
    assert back.keys() == plain_model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in plain_model.state_dict().items())


def test_agent_conversion_with_a_yacs_config(tmp_path, monkeypatch):
    from test_agent import _official_keys, _randomise, _small

    small = _small(agent_mod.AgentPVT)
    _randomise(small)
    official = _official_keys(small, small.state_dict())
    # the official files carry the Swin-style yacs ``config`` (a CfgNode): read as inert data
    CfgNode = _fake_yacs(monkeypatch)
    torch.save({"model": official, "epoch": 3, "config": CfgNode(MODEL=CfgNode(TYPE="agent_pvt"))}, tmp_path / "a.pth")
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    kw = dict(embed_dims=(8, 16, 16, 24), num_heads=(1, 2, 2, 3), depths=(1, 1, 2, 1), agent_num=(4, 4, 9, 4), img_size=64)
    res = convert_checkpoint.main([str(tmp_path / "a.pth"), "--model", "agent_pvt_tiny.in1k", "--output", str(tmp_path / "a"),
                                   "--verify-size", "64", "--model-kwargs", json.dumps(kw)])
    assert res["wrapping_key_found"] is True
    model = timm.create_model("local-dir:" + str(tmp_path / "a"), pretrained=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_logits(model, x), _logits(small, x), rtol=0, atol=0)


def test_maxvit_and_davit_conversion_verified_against_timm(tmp_path):
    from safetensors.torch import save_file
    from test_maxvit_davit import _timm_davit_to_official

    ref = timm.create_model("maxvit_tiny_tf_224", **MAXVIT_KW)
    randomize_(ref, 4)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "m.safetensors")  # timm's Hub file
    res = convert_checkpoint.main([str(tmp_path / "m.safetensors"), "--model", "maxvit_tiny.in1k", "--output", str(tmp_path / "m"),
                                   "--model-kwargs", json.dumps(MAXVIT_KW)])
    assert res["reference"] == "timm's own maxvit model" and res["reference_max_rel_err"] < 1e-5
    dref = timm.create_model("davit_tiny", **DAVIT_KW)
    randomize_(dref, 5)
    torch.save({"model": _timm_davit_to_official(dref.state_dict())}, tmp_path / "d.pth")
    res = convert_checkpoint.main([str(tmp_path / "d.pth"), "--model", "davit_tiny_va.msft_in1k", "--output", str(tmp_path / "d"),
                                   "--verify-size", "64", "--model-kwargs", json.dumps(DAVIT_KW)])
    assert res["reference"] == "timm's own davit model" and res["reference_max_rel_err"] < 1e-5


def test_update_manifest_publishes_the_entry(nat_official, tmp_path):
    src, _ = nat_official
    manifest = tmp_path / "pretrained.yaml"
    shutil.copy(_manifest.manifest_path(), manifest)
    res = convert_checkpoint.main([str(src), "--model", "nat_mini.in1k", "--output", str(tmp_path / "o"), "--verify-size", "64",
                                   "--model-kwargs", json.dumps(NAT_KW), "--manifest", str(manifest), "--update-manifest",
                                   "--top1", "81.7", "--dataset", "imagenet-1k val"])
    before, after = _manifest.load_manifest(), _manifest.load_manifest(manifest)
    entry = after["entries"]["nat_mini.in1k"]
    assert entry["converted"] == dict(sha256=res["sha256"], top1=81.7, top5=None, resolution=224, dataset="imagenet-1k val")
    assert _manifest.is_published(entry) and _manifest.cfg_for_entry(entry, nat_mod._cfg)["hf_hub_id"] == "visionattn/nat_mini.in1k"
    del before["entries"]["nat_mini.in1k"], after["entries"]["nat_mini.in1k"]
    assert before == after  # nothing else changed
    assert _manifest.get_entry("nat_mini.in1k")["converted"]["sha256"] is None  # the packaged manifest is untouched


def test_converter_refuses_code_in_pickles_and_wrong_architectures(nat_official, tmp_path, capsys):
    payload = {"model": {"w": torch.zeros(1)}, "hook": Hook}  # a class of this module: needs its code
    torch.save(payload, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"weights_only loading refuses \(test_hub.Hook\)"):
        read_checkpoint(tmp_path / "evil.pth")
    assert convert_checkpoint.cli([str(tmp_path / "evil.pth"), "--model", "nat_mini.in1k", "--output", str(tmp_path / "o")]) == 2
    assert "arbitrary code" in capsys.readouterr().err
    src, _ = nat_official
    with pytest.raises(CheckpointKeyError, match="does not match BiFormer"):
        convert_checkpoint.main([str(src), "--model", "biformer_tiny.in1k", "--output", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()
    with pytest.raises(UsageError, match="no manifest entry"):
        convert_checkpoint.main([str(src), "--model", "nat_mini.in21k", "--output", str(tmp_path / "b")])


# ------------------------------------------------------------------------------------------------
# Publishing


class FakeHfApi:
    """Records calls; serves ``get_paths_info`` from what was "uploaded"."""

    def __init__(self):
        self.calls, self.remote = [], {}

    def get_paths_info(self, repo_id, paths, revision=None, repo_type=None, token=None):
        from huggingface_hub.errors import RepositoryNotFoundError
        from huggingface_hub.hf_api import RepoFile

        self.calls.append(("get_paths_info", repo_id))
        if repo_id not in self.remote:
            response = types.SimpleNamespace(status_code=404, headers={}, request=None)  # the fields the error reads
            raise RepositoryNotFoundError(f"{repo_id} not found", response=response)
        files = self.remote[repo_id]
        out = []
        for p in paths:
            if p in files:
                data = files[p]
                if p.endswith(".safetensors"):
                    import hashlib

                    out.append(RepoFile(path=p, size=len(data), oid="x", lfs=dict(size=len(data), oid=hashlib.sha256(data).hexdigest(), pointerSize=130)))
                else:
                    import hashlib

                    out.append(RepoFile(path=p, size=len(data), oid=hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()))
        return out

    def create_repo(self, repo_id, token=None, private=None, repo_type=None, exist_ok=False):
        assert exist_ok and token == "hf_test"
        self.calls.append(("create_repo", repo_id))

    def upload_folder(self, repo_id, folder_path, repo_type=None, revision=None, token=None, commit_message=None, allow_patterns=None):
        self.calls.append(("upload_folder", repo_id))
        self.remote[repo_id] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir() if p.name in allow_patterns}
        return types.SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/1")


def test_push_dry_run_prints_the_plan_and_contacts_nothing(nat_folder, capsys, monkeypatch):
    out, res = nat_folder
    monkeypatch.delenv("HF_TOKEN", raising=False)

    class NoNetwork:
        def __getattr__(self, name):
            raise AssertionError(f"dry run called HfApi.{name}")

    result = push_to_hub.main([str(out), "--dry-run"], api=NoNetwork())
    text = capsys.readouterr().out
    up = result["uploads"][0]
    assert up["repo_id"] == "visionattn/nat_mini.in1k" and up["action"] == "dry-run"
    assert "https://huggingface.co/visionattn/nat_mini.in1k" in text and res["sha256"] in text
    assert str((out / "model.safetensors").stat().st_size) in text
    with pytest.raises(UsageError, match="HF_TOKEN"):
        push_to_hub.main([str(out)], api=NoNetwork())


def test_push_is_idempotent(nat_folder, tmp_path, monkeypatch):
    out, _ = nat_folder
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    api = FakeHfApi()
    assert push_to_hub.main([str(out)], api=api)["uploads"][0]["action"] == "uploaded"
    assert [c[0] for c in api.calls] == ["get_paths_info", "create_repo", "upload_folder"]
    assert push_to_hub.main([str(out)], api=api)["uploads"][0]["action"] == "skipped"
    assert [c[0] for c in api.calls[3:]] == ["get_paths_info"]
    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    (changed / "README.md").write_text("new card")
    assert push_to_hub.main([str(changed)], api=api)["uploads"][0]["action"] == "uploaded"
    timm_folder = tmp_path / "timm"
    shutil.copytree(out, timm_folder)
    cfg = json.loads((timm_folder / "config.json").read_text())
    cfg["architecture"], cfg["pretrained_cfg"]["tag"] = "maxvit_tiny", "in1k"
    (timm_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="not in the visionattn org"):
        push_to_hub.main([str(timm_folder)], api=api)
    with pytest.raises(UsageError, match="missing"):
        push_to_hub.main([str(tmp_path)], api=api)


# ------------------------------------------------------------------------------------------------
# Loading paths, offline


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _populate_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Copy ``folder`` into huggingface_hub's cache layout: blobs/<sha256>, snapshots/<commit>/<file> -> blob, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        blob = repo / "blobs" / sha256_file(f)
        shutil.copyfile(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Hub cache; HF_HUB_OFFLINE. huggingface_hub 2.4 reads both at import, so its constants are patched too."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_id_loads_offline_through_timm(nat_official, nat_folder, offline_cache):
    out, res = nat_folder
    _, off = nat_official
    x = torch.randn(1, 3, 64, 64)
    want = _logits(off, x)
    # the cfg of a published entry (sha256 recorded) carries hf_hub_id
    entry = _manifest.get_entry("nat_mini.in1k")
    entry["converted"]["sha256"] = res["sha256"]
    cfg = _manifest.cfg_for_entry(entry, nat_mod._cfg)
    with pytest.raises(Exception, match="(?i)cache|offline|local"):  # nothing cached yet: the offline error of huggingface_hub
        timm.create_model("nat_mini", pretrained=True, pretrained_cfg=cfg, **NAT_KW)
    _populate_hub_cache(offline_cache, "visionattn/nat_mini.in1k", out)
    m1 = timm.create_model("nat_mini", pretrained=True, pretrained_cfg=cfg, **NAT_KW)
    m2 = timm.create_model("hf-hub:visionattn/nat_mini.in1k", pretrained=True)
    assert m2.pretrained_cfg["hf_hub_id"] == "visionattn/nat_mini.in1k"
    for m in (m1, m2):
        torch.testing.assert_close(_logits(m, x), want, rtol=1e-4, atol=1e-4)


def test_local_dir_file_overlay_and_checkpoint_path(nat_official, nat_folder):
    out, _ = nat_folder
    src, off = nat_official
    x = torch.randn(1, 3, 64, 64)
    want = _logits(off, x)
    models = [
        timm.create_model("local-dir:" + str(out), pretrained=True),
        timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")), **NAT_KW),
        timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(src)), **NAT_KW),  # official file
        timm.create_model("nat_mini", checkpoint_path=str(out / "model.safetensors"), **NAT_KW),
    ]
    for m in models:
        torch.testing.assert_close(_logits(m, x), want, rtol=1e-4, atol=1e-4)


def _truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def test_corrupted_truncated_and_wrong_architecture_files_are_named(nat_official, nat_folder, tmp_path, offline_cache):
    out, _ = nat_folder
    src, _ = nat_official
    bad_st = _truncate(out / "model.safetensors", tmp_path / "t.safetensors")
    bad_pth = _truncate(src, tmp_path / "t.pth")
    garbage = tmp_path / "g.pth"
    garbage.write_bytes(b"<html>not found</html>" * 10)

    def overlay(path, name="nat_mini", **kw):
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **{**NAT_KW, **kw})

    with pytest.raises(CheckpointFileError, match=r"t\.safetensors \(\d+ bytes\) is not a valid safetensors file: it is truncated or corrupted"):
        overlay(bad_st)
    with pytest.raises(CheckpointFileError, match=r"t\.pth \(\d+ bytes\) is truncated or corrupted"):
        overlay(bad_pth)
    with pytest.raises(CheckpointFileError, match="is not a PyTorch or safetensors checkpoint"):
        overlay(garbage)
    with pytest.raises(CheckpointFileError, match="truncated or corrupted"):
        read_checkpoint(bad_st)
    broken_dir = tmp_path / "broken"
    shutil.copytree(out, broken_dir)
    _truncate(out / "model.safetensors", broken_dir / "model.safetensors")
    with pytest.raises(CheckpointFileError, match="truncated or corrupted"):
        timm.create_model("local-dir:" + str(broken_dir), pretrained=True)
    _populate_hub_cache(offline_cache, "visionattn/nat_mini.in1k", broken_dir)
    with pytest.raises(CheckpointFileError, match="Hub repo visionattn/nat_mini.in1k.*truncated or corrupted"):
        timm.create_model("hf-hub:visionattn/nat_mini.in1k", pretrained=True)
    # checkpoint_path= goes through the same reader: the file is named (before: a bare SafetensorError)
    with pytest.raises(CheckpointFileError, match=r"t\.safetensors \(\d+ bytes\) is not a valid safetensors file"):
        timm.create_model("nat_mini", checkpoint_path=str(bad_st), **NAT_KW)
    # wrong architecture: the keys that do not fit are listed
    with pytest.raises(CheckpointKeyError, match="does not match NAT"):
        overlay(out / "model.safetensors", name="dinat_s_tiny", **dict(depths=[1, 1, 1, 1], dilations=[[1]] * 4))
    with pytest.raises(CheckpointKeyError, match="does not match NAT"):
        timm.create_model("nat_mini", checkpoint_path=str(out / "model.safetensors"), **dict(NAT_KW, embed_dim=32))
    with pytest.raises(CheckpointKeyError, match="classifier has 1000 classes: pass num_classes=1000"):
        timm.create_model("nat_mini", checkpoint_path=str(out / "model.safetensors"), num_classes=10, **NAT_KW)


# ------------------------------------------------------------------------------------------------
# One resolution -> another


def _bicubic(table, size):
    return F.interpolate(table[None], size=size, mode="bicubic", align_corners=False)[0]


def test_vitrpb_tables_resize_and_neighborhood_tables_do_not(tmp_path):
    kw = dict(embed_dim=32, num_heads=2, depth=2)
    a = randomize_(timm.create_model("vitrpb_small", img_size=224, **kw), 6).eval()
    b = timm.create_model("vitrpb_small", img_size=384, **kw).eval()
    for sd in (a.state_dict(), randomize_(OfficialIsotropic(attention="mhsa", **kw), 6).state_dict()):
        conv = nat_mod.checkpoint_filter_fn(sd, b)
        b.load_state_dict(conv, strict=True)
        for i in range(2):
            k = f"stages.{i}.blocks.0.attn.rpb"
            assert conv[k].shape == (2, 47, 47)
            torch.testing.assert_close(conv[k], _bicubic(sd[k if k in sd else f"layers.{i}.attn.rpb"], (47, 47)))
    b.load_state_dict(nat_mod.checkpoint_filter_fn(a.state_dict(), b))
    x = torch.randn(1, 3, 384, 384)
    torch.testing.assert_close(_logits(b, x), _logits(a, x), rtol=1e-5, atol=1e-5)  # same rule at load and at run time
    # NA tables depend on the kernel only: the 224 DiNAT_s-L weights load unchanged at 384
    skw = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2])
    s224 = randomize_(timm.create_model("dinat_s_large", dilations=[[1, 8], [1, 4], [1, 2], [1, 1]], **skw), 7)
    s384 = timm.create_model("dinat_s_large_384", dilations=[[1, 13], [1, 6], [1, 3], [1, 1]], **skw)
    conv = nat_mod.checkpoint_filter_fn(s224.state_dict(), s384)
    assert all(torch.equal(conv[k], v) for k, v in s224.state_dict().items())


def test_maxvit_tables_resize_bicubically_to_the_window():
    a = randomize_(timm.create_model("maxvit_tiny", **MAXVIT_KW), 8)
    b = timm.create_model("maxvit_tiny_384", **MAXVIT_KW)
    conv = maxvit_mod.checkpoint_filter_fn(a.state_dict(), b)
    b.load_state_dict(conv, strict=True)
    keys = [k for k in conv if k.endswith("attn.rpb")]
    assert keys
    for k in keys:
        assert a.state_dict()[k].shape[-1] == 13 and conv[k].shape[-1] == 23
        torch.testing.assert_close(conv[k], _bicubic(a.state_dict()[k], (23, 23)))


def test_cswin_and_biformer_weights_are_resolution_free():
    """CSWin-B 224 vs 384 differ only in stripe width (7 -> 12) and img_size; every parameter keeps
    its shape (stage 4 stays one global branch, LePE convs are 3x3). BiFormer has no position
    table at all (depthwise convs; a fixed 7x7 region grid)."""
    kw = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 4))
    a = randomize_(timm.create_model("cswin_base", **kw), 9)
    b = timm.create_model("cswin_base_384", **kw)
    conv = cswin_mod.checkpoint_filter_fn(a.state_dict(), b)
    b.load_state_dict(conv, strict=True)
    assert all(torch.equal(conv[k], v) for k, v in a.state_dict().items())
    bkw = dict(embed_dims=(32, 64, 64, 64), depths=(1, 1, 1, 1))
    b224 = timm.create_model("biformer_tiny", **bkw)
    assert not [n for n, p in b224.named_parameters() if "pos_embed" in n or "rpb" in n or "bias_table" in n]


def test_agent_position_embeddings_resize_like_an_independent_interpolation():
    from test_agent import _randomise, _small

    a = _small(agent_mod.AgentDeiT, img_size=64)
    _randomise(a)
    b = _small(agent_mod.AgentDeiT, img_size=96)
    conv = agent_mod.checkpoint_filter_fn(a.state_dict(), b)
    b.load_state_dict(conv, strict=True)
    pe = a.state_dict()["pos_embed"]  # (1, 1 + 4*4, C): class token first
    grid = pe[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 36, -1)
    torch.testing.assert_close(conv["pos_embed"], torch.cat([pe[:, :1], want], 1))


# ------------------------------------------------------------------------------------------------
# README model table


def test_readme_model_table_is_the_generated_one():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = model_table.render_table(_manifest.load_manifest(), model_table.read_zoo_gmacs(model_table.DEFAULT_ZOO))
    assert model_table.replace_between_markers(text, table) == text, "run: python -m visionattn.tools.model_table --write README.md"
    assert "| `nat_mini.in1k` | 19.98 |" in table and "| `davit_giant_va` | 1406.47 |" in table


def test_wheel_ships_the_manifest():
    """The manifest is package data: pyproject.toml must list it, or an installed wheel has no cfgs."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    data = cfg.get("tool", {}).get("setuptools", {}).get("package-data", {})
    assert "pretrained.yaml" in data.get("visionattn.models", []), (
        'add to pyproject.toml: [tool.setuptools.package-data] "visionattn.models" = ["pretrained.yaml"]'
    )


# ------------------------------------------------------------------------------------------------
# One reader for every path; downloads with explicit file names; sources tried in order (#13, #19)


class _Served:
    """A loopback HTTP server (a thread inside the test) serving ``{path: bytes}``; the query string
    is ignored (``/f/<id>/?dl=1`` share links), anything else is a 404."""

    def __init__(self, files):
        import http.server
        import threading
        import urllib.parse

        files = dict(files)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  (http.server's name)
                data = files.get(urllib.parse.urlparse(self.path).path)
                if data is None:
                    self.send_error(404, "gone")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served():
    servers = []

    def make(files):
        servers.append(_Served(files))
        return servers[-1].base

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """torch.hub's cache folder (``<hub>/checkpoints`` holds URL downloads) in tmp_path."""
    d = tmp_path / "torch_hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(d))
    return d / "checkpoints"


AGENT_KW = dict(embed_dims=(8, 16, 16, 24), num_heads=(1, 2, 2, 3), depths=(1, 1, 2, 1), agent_num=(4, 4, 9, 4), img_size=64)


def _fake_yacs(monkeypatch):
    """A stand-in ``yacs.config.CfgNode`` class, so a test can pickle the official files' ``config``."""
    yacs, yacs_config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__ = "yacs.config"
    CfgNode.__qualname__ = "CfgNode"
    yacs_config.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", yacs)
    monkeypatch.setitem(sys.modules, "yacs.config", yacs_config)
    return CfgNode


@pytest.fixture
def agent_official(tmp_path, monkeypatch):
    """An official Agent-PVT file as the release: ``model`` (what the official evaluation loads),
    ``state_dict_ema`` (other weights), the yacs ``config``. Returns (path, plain model, EMA model)."""
    from test_agent import _official_keys

    plain = timm.create_model("agent_pvt_tiny", **AGENT_KW).eval()
    ema = timm.create_model("agent_pvt_tiny", **AGENT_KW).eval()
    randomize_(plain, 11)
    randomize_(ema, 12)
    CfgNode = _fake_yacs(monkeypatch)
    ckpt = {"model": _official_keys(plain, plain.state_dict()), "state_dict_ema": _official_keys(ema, ema.state_dict()),
            "epoch": 300, "config": CfgNode(MODEL=CfgNode(TYPE="agent_pvt"))}
    path = tmp_path / "agent_pvt_t.pth"
    torch.save(ckpt, path)
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    return path, plain, ema


def test_share_link_urls_download_under_an_explicit_file_name(agent_official, served, hub_dir):
    """#13.3: every Agent URL ends in ``/?dl=1``; torch.hub derived an empty file name from it and
    failed with IsADirectoryError. Served here through a loopback URL of the same shape."""
    path, plain, _ = agent_official
    base = served({"/f/57e0904221824ee7b7af/": path.read_bytes()})
    url = f"{base}/f/57e0904221824ee7b7af/?dl=1"
    model = timm.create_model("agent_pvt_tiny", pretrained=True, pretrained_cfg_overlay=dict(url=url), **AGENT_KW)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_logits(model, x), _logits(plain, x), rtol=0, atol=0)
    cached = sorted(p.name for p in hub_dir.iterdir())
    assert len(cached) == 1 and cached[0].startswith("agent_pvt_tiny.in1k-") and cached[0].endswith(".pth")
    cached = cached[0]
    # timm's (url, file_name) form of a cfg url names the cached file
    timm.create_model("agent_pvt_tiny", pretrained=True, pretrained_cfg_overlay=dict(url=(url, "mine.pth")), **AGENT_KW)
    assert (hub_dir / "mine.pth").is_file()
    # every URL the manifest records has its own explicit, unique cache name
    names = [s["file_name"] for e in _manifest.manifest_entries().values() for s in e["sources"] if "url" in s]
    assert names and all(names) and len(names) == len(set(names))
    official = _manifest.get_entry("agent_pvt_tiny.in1k")["sources"][0]
    assert official["url"].endswith("/?dl=1") and official["file_name"].startswith("agent_pvt_tiny.in1k-") and official["kind"] == "official"
    assert cached == _hub.source_file_name(url, "agent_pvt_tiny.in1k")


def test_every_path_reads_one_file_the_same_way(agent_official, served, hub_dir, offline_cache, tmp_path):
    """#13.4: an official Agent file (yacs ``config``, ``model`` and ``state_dict_ema``) gives the
    weights the official evaluation uses (``model``) through every path; before, the overlay path
    raised UnsafeCheckpointError (timm's reader) and would have taken ``state_dict_ema``."""
    path, plain, ema = agent_official
    x = torch.randn(1, 3, 64, 64)
    want = _logits(plain, x)
    assert not torch.allclose(want, _logits(ema, x))
    direct = timm.create_model("agent_pvt_tiny", **AGENT_KW).eval()
    direct.load_state_dict(agent_mod.checkpoint_filter_fn(read_checkpoint(path), direct))
    base = served({"/f/x/": path.read_bytes()})
    snap = tmp_path / "hubrepo"
    snap.mkdir()
    shutil.copy(path, snap / "pytorch_model.bin")
    json.dump(dict(architecture="agent_pvt_tiny", num_classes=1000, model_args=AGENT_KW,
                   pretrained_cfg=dict(tag="in1k")), open(snap / "config.json", "w"))
    _populate_hub_cache(offline_cache, "someone/agent_pvt_tiny", snap)
    res = convert_checkpoint.main([str(path), "--model", "agent_pvt_tiny.in1k", "--output", str(tmp_path / "conv"),
                                   "--verify-size", "64", "--model-kwargs", json.dumps(AGENT_KW)])
    models = {
        "read_checkpoint + filter": direct,
        "pretrained_cfg_overlay file": timm.create_model("agent_pvt_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **AGENT_KW),
        "checkpoint_path": timm.create_model("agent_pvt_tiny", checkpoint_path=str(path), **AGENT_KW),
        "url": timm.create_model("agent_pvt_tiny", pretrained=True, pretrained_cfg_overlay=dict(url=f"{base}/f/x/?dl=1"), **AGENT_KW),
        "hf-hub": timm.create_model("hf-hub:someone/agent_pvt_tiny", pretrained=True),
        "visionattn-convert": timm.create_model("local-dir:" + res["output"], pretrained=True),
    }
    for how, m in models.items():
        torch.testing.assert_close(_logits(m, x), want, rtol=0, atol=0, msg=f"{how} loaded other weights")
    # CSWin's official evaluation takes the EMA: every path agrees on that too
    ema_model = randomize_(timm.create_model("cswin_tiny", **CSWIN_KW), 0).eval()
    plain_model = randomize_(timm.create_model("cswin_tiny", **CSWIN_KW), 1).eval()
    ckpt = {"state_dict": _cswin_official(plain_model), "state_dict_ema": _cswin_official(ema_model)}
    torch.save(ckpt, tmp_path / "c.pth")
    xc = torch.randn(1, 3, 64, 64)
    for m in (timm.create_model("cswin_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "c.pth")), **CSWIN_KW),
              timm.create_model("cswin_tiny", checkpoint_path=str(tmp_path / "c.pth"), **CSWIN_KW)):
        torch.testing.assert_close(_logits(m, xc), _logits(ema_model, xc), rtol=0, atol=0)


def _manifest_with(monkeypatch, name, **fields):
    data = _manifest.load_manifest()
    data["entries"][name].update(fields)
    monkeypatch.setattr(_manifest, "load_manifest", lambda path=None: copy.deepcopy(data))
    return data["entries"][name]


def test_sources_are_tried_in_order_and_all_failures_are_listed(agent_official, served, hub_dir, monkeypatch):
    """#13.5: a dead official link falls back to the mirrors the manifest records; when all fail,
    one error lists each source with its failure and how to load a local file."""
    path, plain, _ = agent_official
    base = served({"/page/": b"<html>this share link has expired</html>" * 20, "/good/": path.read_bytes()})
    dead = dict(url=f"{base}/dead/?dl=1", file_name="t-dead.pth", kind="official")
    page = dict(url=f"{base}/page/", file_name="t-page.pth", kind="mirror")
    good = dict(url=f"{base}/good/", file_name="t-good.pth", kind="mirror")
    _manifest_with(monkeypatch, "agent_pvt_tiny.in1k", sources=[dead, page, good])
    model = timm.create_model("agent_pvt_tiny", pretrained=True, **AGENT_KW)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_logits(model, x), _logits(plain, x), rtol=0, atol=0)
    assert sorted(p.name for p in hub_dir.iterdir()) == ["t-good.pth"]  # the HTML page was not kept as a checkpoint
    _manifest_with(monkeypatch, "agent_pvt_tiny.in1k", sources=[dead, page])
    with pytest.raises(PretrainedDownloadError) as info:
        timm.create_model("agent_pvt_tiny", pretrained=True, **AGENT_KW)
    msg = str(info.value)
    assert "agent_pvt_tiny.in1k" in msg and "every known source failed" in msg
    assert f"1. {dead['url']} [official]: HTTPError: HTTP Error 404" in msg
    assert f"2. {page['url']} [mirror]: " in msg and "is not a PyTorch or safetensors checkpoint" in msg
    assert "pretrained_cfg_overlay=dict(file=" in msg and "checkpoint_path=" in msg


def test_published_weights_are_checked_against_the_manifest_sha256(nat_folder, offline_cache, monkeypatch):
    """#19.8: a Hub file whose bytes differ from the recorded sha256 is refused."""
    out, res = nat_folder
    _populate_hub_cache(offline_cache, "visionattn/nat_mini.in1k", out)
    entry = _manifest_with(monkeypatch, "nat_mini.in1k", sources=[], converted=dict(
        sha256=res["sha256"], top1=None, top5=None, resolution=None, dataset=None))
    cfg = _manifest.cfg_for_entry(entry, nat_mod._cfg)
    timm.create_model("nat_mini", pretrained=True, pretrained_cfg=cfg, **NAT_KW)  # the recorded digest: loads
    _manifest_with(monkeypatch, "nat_mini.in1k", sources=[], converted=dict(
        sha256="ab" * 32, top1=None, top5=None, resolution=None, dataset=None))
    with pytest.raises(PretrainedDownloadError, match="but the manifest records abab"):
        timm.create_model("nat_mini", pretrained=True, pretrained_cfg=cfg, **NAT_KW)


def _poison(src: Path, dst: Path, index: int = 0) -> str:
    """Copy a safetensors file, overwriting the first 4 bytes of one float tensor with 0xFF (a NaN)."""
    data = bytearray(src.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name = sorted(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")[index]
    start = 8 + n + header[name]["data_offsets"][0]
    data[start:start + 4] = b"\xff\xff\xff\xff"
    dst.write_bytes(bytes(data))
    return name


def test_non_finite_weights_are_refused_on_every_path(nat_folder, tmp_path):
    """#19.8: altered tensor bytes loaded silently and gave NaN logits."""
    out, _ = nat_folder
    folder = tmp_path / "poisoned"
    shutil.copytree(out, folder)
    name = _poison(out / "model.safetensors", folder / "model.safetensors")
    bad = folder / "model.safetensors"
    calls = [
        lambda: timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(bad)), **NAT_KW),
        lambda: timm.create_model("nat_mini", checkpoint_path=str(bad), **NAT_KW),
        lambda: timm.create_model("local-dir:" + str(folder), pretrained=True),
    ]
    for call in calls:
        with pytest.raises(CheckpointFileError, match=rf"non-finite values \(NaN or Inf\) in 1 tensor\(s\): {name}"):
            call()


def test_written_weights_are_readable_by_others(nat_folder):
    """#19.8: safetensors writes through a 0600 temp file; model.safetensors must get the mode of its neighbours."""
    out, _ = nat_folder
    want = 0o666 & ~_umask()
    for p in out.iterdir():
        assert p.stat().st_mode & 0o777 == want, p.name


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


# ------------------------------------------------------------------------------------------------
# A user's own run is not an official checkpoint (#19.3)


@pytest.fixture
def user_run_folder(tmp_path):
    """A CIFAR-10 run folder as the trainer leaves it: model.safetensors + config.json written by
    timm's save_for_hf from a model built from the ``in1k`` cfg (so config.json says tag in1k),
    last.pth.tar with optimizer state, summary.json with local paths."""
    model = randomize_(timm.create_model("dinat_mini", **dict(DINAT_KW, num_classes=10)), 21).eval()
    run = tmp_path / "runs" / "cifar10-dinat"
    run.mkdir(parents=True)
    data_config = dict(input_size=(3, 32, 32), interpolation="bicubic", mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), crop_pct=1.0)
    labels = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    timm.models.save_for_hf(model, run, model_args=dict(DINAT_KW, num_classes=10), safe_serialization=True,
                            data_config=data_config, model_config=dict(label_names=labels))
    args = dict(model="dinat_mini", model_kwargs=DINAT_KW, num_classes=10, data_dir="/home/me/cifar10", pretrained=True)
    opt = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    torch.save({"version": 1, "arch": "dinat_mini", "args": args, "epoch": 3, "model": model.state_dict(), "optimizer": opt},
               run / "last.pth.tar")
    summary = dict(model="dinat_mini", data="CIFAR-10 (torchvision, /home/me/cifar10)", num_classes=10, train_samples=50000,
                   held_out_samples=10000, data_config=data_config, epochs=3, final=dict(top1=71.25, top5=97.5, loss=0.8, count=10000),
                   best=dict(epoch=3, top1=71.25, top5=97.5), files=dict(checkpoint=str(run / "last.pth.tar")), args=args)
    (run / "summary.json").write_text(json.dumps(summary))
    assert json.loads((run / "config.json").read_text())["pretrained_cfg"]["tag"] == "in1k"  # what the trainer wrote before it gave runs their own tag
    return run, model


def test_a_users_run_is_never_pushed_as_official_weights(user_run_folder, tmp_path, monkeypatch, capsys):
    run, model = user_run_folder
    # before: planned visionattn/dinat_mini.in1k, with last.pth.tar and summary.json
    with pytest.raises(UsageError, match="your own run .*tag 'in1k' is only the tag of the cfg it started from.*--repo-id"):
        push_to_hub.main([str(run), "--dry-run"])
    with pytest.raises(UsageError, match="visionattn/dinat_mini.in1k is an official repo"):
        push_to_hub.main([str(run), "--dry-run", "--repo-id", "visionattn/dinat_mini.in1k"])
    plan = push_to_hub.main([str(run), "--dry-run", "--repo-id", "me/dinat_mini.cifar10"])["uploads"][0]
    assert [f["path"] for f in plan["files"]] == ["model.safetensors", "config.json"]
    assert plan["not_uploaded"] == ["last.pth.tar", "summary.json"] and not plan["official"]
    # the converter: a head mismatch names the kwargs to pass instead of a torch size-mismatch traceback
    # (the small test model needs its shape kwargs; only num_classes is left out)
    with pytest.raises(CheckpointKeyError, match=r'classifier differs .*"num_classes": 10'):
        convert_checkpoint.main([str(run / "last.pth.tar"), "--model", "dinat_mini.in1k", "--output", str(tmp_path / "o"),
                                 "--model-kwargs", json.dumps(DINAT_KW)])
    res = convert_checkpoint.main([str(run / "last.pth.tar"), "--model", "dinat_mini.in1k", "--output", str(tmp_path / "o"),
                                   "--model-kwargs", json.dumps(dict(DINAT_KW, num_classes=10)), "--repo-id", "me/dinat_mini.cifar10"])
    assert res["origin"] == "run" and res["model"] == "dinat_mini.cifar10_dinat"
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["pretrained_cfg"]["tag"] == "cifar10_dinat" and config["visionattn"]["origin"] == "run"
    assert config["num_classes"] == 10 and config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["label_names"][0] == "airplane"
    assert not config["pretrained_cfg"].get("pool_size") and "url" not in config["pretrained_cfg"]
    card = (tmp_path / "o" / "README.md").read_text()
    for wrong in ("official release", "verified", "81.8", "Image size:** 224", "Reference:"):
        assert wrong not in card, wrong
    for right in ("CIFAR-10", "**Classes:** 10 (airplane", "32x32", "| final | 71.25 | 97.5 | 10000 |", "hf-hub:me/dinat_mini.cifar10",
                  "not the authors' weights", "Initialised from:** the pretrained weights of `dinat_mini`"):
        assert right in card, right
    back = timm.create_model("local-dir:" + str(tmp_path / "o"), pretrained=True)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(_logits(back, x), _logits(model, x), rtol=0, atol=0)
    with pytest.raises(UsageError, match="your own run"):
        push_to_hub.main([str(tmp_path / "o"), "--dry-run"])
    with pytest.raises(UsageError, match="manifest records only official weights"):
        convert_checkpoint.main([str(run / "last.pth.tar"), "--model", "dinat_mini.in1k", "--output", str(tmp_path / "o2"),
                                 "--model-kwargs", json.dumps(dict(DINAT_KW, num_classes=10)), "--update-manifest"])
    assert not (tmp_path / "o2").exists()
    with pytest.raises(UsageError, match="dinat_mini.in1k is an official tag"):
        convert_checkpoint.main([str(run / "model.safetensors"), "--model", "dinat_mini", "--tag", "in1k", "--output", str(tmp_path / "o3"),
                                 "--model-kwargs", json.dumps(dict(DINAT_KW, num_classes=10))])
    res = convert_checkpoint.main([str(run / "model.safetensors"), "--model", "dinat_mini", "--tag", "CIFAR-10 v2", "--output",
                                   str(tmp_path / "o3"), "--model-kwargs", json.dumps(dict(DINAT_KW, num_classes=10))])
    assert res["model"] == "dinat_mini.cifar_10_v2" and res["origin"] == "run"
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    api = FakeHfApi()
    push_to_hub.main([str(run), "--repo-id", "me/dinat_mini.cifar10"], api=api)
    assert sorted(api.remote["me/dinat_mini.cifar10"]) == ["config.json", "model.safetensors"]


def test_validate_checkpoint_names_truncated_and_non_finite_files(nat_folder, tmp_path, capsys):
    """#19.8: ``validate.py --checkpoint`` read safetensors raw (a bare SafetensorError without the
    path) and evaluated NaN weights."""
    from visionattn.tools import validate

    out, _ = nat_folder
    bad = _truncate(out / "model.safetensors", tmp_path / "t.safetensors")
    with pytest.raises(CheckpointFileError, match=r"t\.safetensors \(\d+ bytes\) is not a valid safetensors file"):
        validate.read_checkpoint(bad)
    assert validate.cli(["--model", "nat_mini", "--checkpoint", str(bad)]) == 2
    assert "t.safetensors" in capsys.readouterr().err
    name = _poison(out / "model.safetensors", tmp_path / "p.safetensors")
    sd, _ = validate.read_checkpoint(tmp_path / "p.safetensors")
    with pytest.raises(CheckpointFileError, match=f"non-finite values .*{name}"):
        validate.build_model("nat_mini", 1000, NAT_KW, sd)


def test_a_dead_official_link_falls_back_to_the_transformers_copy(nat_official, served, hub_dir, offline_cache, monkeypatch, tmp_path):
    """#13.5: nat_mini.in1k records shi-labs.com, then the Hugging Face ``transformers`` copy
    ``shi-labs/nat-mini-in1k-224`` (HF key layout, converted on load)."""
    from _official_nat import official_to_hf

    _, off = nat_official
    recorded = _manifest.get_entry("nat_mini.in1k")["sources"]
    assert [s["kind"] for s in recorded] == ["official", "hf-transformers"]
    assert recorded[1]["hf_hub_id"] == "shi-labs/nat-mini-in1k-224" and recorded[1]["hf_hub_filename"] == "pytorch_model.bin"
    repo = tmp_path / "hf"
    repo.mkdir()
    torch.save(official_to_hf(off.state_dict(), prefix="nat."), repo / "pytorch_model.bin")
    _populate_hub_cache(offline_cache, "shi-labs/nat-mini-in1k-224", repo)
    base = served({})
    dead = dict(url=f"{base}/CLS/nat_mini.pth", file_name="nat_mini.pth", kind="official")
    _manifest_with(monkeypatch, "nat_mini.in1k", sources=[dead, recorded[1]])
    model = timm.create_model("nat_mini", pretrained=True, **NAT_KW)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_logits(model, x), _logits(off, x), rtol=1e-4, atol=1e-4)
