#!/usr/bin/env python3
"""Publish converted checkpoint folders (``visionattn-convert`` output) to the Hugging Face Hub.

Each folder holds ``model.safetensors``, ``config.json`` and ``README.md``. The target repo is
``--repo-id`` (one folder only) or the manifest's ``hub_id`` of the folder's
``<architecture>.<tag>`` (read from its ``config.json``), which must lie in our org
(``visionattn/...``; timm's repos are not ours to push to).

* ``--dry-run`` prints what would be uploaded (target repo, every file with its size and
  sha256) and contacts nothing.
* Re-runs are idempotent: when the remote repo already holds every file with the same content
  (``model.safetensors`` compared by its LFS sha256, small files by their git blob id) the folder is
  skipped; otherwise ``HfApi.create_repo(exist_ok=True)`` then ``HfApi.upload_folder``.
* The token comes from the environment (``HF_TOKEN``), never from the command line.
* Only ``model.safetensors``, ``config.json`` and ``README.md`` are uploaded, whatever else the
  folder holds (a training run's ``last.pth.tar``, ``summary.json``, logs).
* A folder is official only when ``visionattn-convert`` wrote it from an official release
  (``config.json`` records ``visionattn.origin = "official"``): only those go to the manifest's
  ``hub_id``. Anything else (a user's run, whatever tag its ``config.json`` carries) needs
  ``--repo-id`` naming the user's own repo, and may never target an official repo.

After a push, record the published checksum in the manifest (``visionattn-convert
--update-manifest`` already did if it was run with it), so the tag's cfg gains ``hf_hub_id``.

Examples::

    visionattn-push hub/dinat_tiny.in1k --dry-run
    HF_TOKEN=... visionattn-push hub/dinat_tiny.in1k hub/nat_mini.in1k
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..models import _manifest
from ..models._hub import sha256_file
from visionattn.engine.cli import UsageError, run_cli

__all__ = ["build_parser", "main", "cli", "plan_upload", "git_blob_id"]

REQUIRED_FILES = ("model.safetensors", "config.json")
#: The only files ever uploaded: weights, config and model card (a run folder also holds the
#: training checkpoint with optimizer state, logs and a summary with local paths: never pushed).
UPLOAD_FILES = ("model.safetensors", "config.json", "README.md")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Upload converted checkpoint folders to the Hugging Face Hub.")
    p.add_argument("folders", nargs="+", type=Path, help="folders written by visionattn-convert")
    p.add_argument("--repo-id", help="target repo (only with one folder; default: the manifest's hub_id)")
    p.add_argument("--manifest", type=Path, help="manifest file (default: the packaged one)")
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded; contact nothing")
    p.add_argument("--private", action="store_true", help="create new repos as private")
    p.add_argument("--revision", default=None, help="branch to push to (default: main)")
    p.add_argument("--commit-message", default=None, help="commit message (default: 'Add <name> weights (sha256 ...)')")
    return p


def git_blob_id(path: Path) -> str:
    """Git's blob id (sha1 of ``b'blob <size>\\0' + content``): what the Hub reports for non-LFS files."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def plan_upload(folder: Path, repo_id: Optional[str], manifest: Optional[Path] = None) -> Dict[str, Any]:
    """Describe the upload of one folder: ``{'folder', 'name', 'repo_id', 'files': [{'path', 'size', 'sha256'}]}``.

    Raises:
        UsageError: missing files, unreadable config.json, no manifest entry / hub id, a
            target outside the ``visionattn`` org without an explicit ``repo_id``, or a folder
            that is not an official conversion without ``repo_id`` / with an official one.
    """
    folder = Path(folder)
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise UsageError(f"{folder} is not a converted checkpoint folder: missing {missing} (run visionattn-convert first)")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except ValueError as e:
        raise UsageError(f"{folder}/config.json is not valid JSON: {e}") from None
    arch = config.get("architecture")
    tag = (config.get("pretrained_cfg") or {}).get("tag")
    name = f"{arch}.{tag}" if tag else str(arch)
    record = config.get("visionattn") if isinstance(config.get("visionattn"), dict) else {}
    official = record.get("origin") == "official"
    if not official:
        data = _manifest.load_manifest(manifest)
        ours = {e.get("hub_id") for e in data["entries"].values() if e.get("hub_id")}
        what = ("your own run (config.json records no official visionattn-convert conversion"
                + (f"; its tag {tag!r} is only the tag of the cfg it started from" if name in data["entries"] else "") + ")")
        if repo_id is None:
            raise UsageError(f"{folder} is {what}: pass --repo-id <your-name>/{arch}.<your-tag> (convert it first with "
                             f"visionattn-convert {folder}/model.safetensors --model {arch} --tag <your-tag> for a model card)")
        if repo_id in ours or repo_id.startswith(_manifest.HUB_ORG + "/"):
            raise UsageError(f"{folder} is {what}; {repo_id} is an official repo, which only takes visionattn-convert "
                             "output of the official release: pass your own --repo-id")
    if repo_id is None:
        data = _manifest.load_manifest(manifest)
        try:
            entry = _manifest.get_entry(name, data)
        except _manifest.ManifestError as e:
            raise UsageError(f"{folder}: {e}; pass --repo-id") from None
        repo_id = entry.get("hub_id")
        if not repo_id:
            raise UsageError(f"{folder}: manifest entry {name} has no hub_id; pass --repo-id")
        if not repo_id.startswith(_manifest.HUB_ORG + "/"):
            raise UsageError(f"{folder}: the manifest's hub_id {repo_id} is not in the {_manifest.HUB_ORG} org; pass --repo-id to push elsewhere")
    files = [
        dict(path=n, size=(folder / n).stat().st_size, sha256=sha256_file(folder / n))
        for n in UPLOAD_FILES
        if (folder / n).is_file()
    ]
    left = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name not in UPLOAD_FILES)
    return dict(folder=str(folder), name=name, repo_id=repo_id, files=files, official=official, not_uploaded=left)


def _remote_matches(api, plan: Dict[str, Any], revision: Optional[str], token: Optional[str]) -> bool:
    """True when the remote repo holds every local file with identical content."""
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        infos = api.get_paths_info(plan["repo_id"], [f["path"] for f in plan["files"]], revision=revision, repo_type="model", token=token)
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        return False
    remote = {getattr(i, "path", None): i for i in infos}
    for f in plan["files"]:
        info = remote.get(f["path"])
        if info is None:
            return False
        lfs = getattr(info, "lfs", None)
        if lfs is not None:
            sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
            if sha != f["sha256"]:
                return False
        elif getattr(info, "blob_id", None) != git_blob_id(Path(plan["folder"]) / f["path"]):
            return False
    return True


def main(argv: Optional[Sequence[str]] = None, api=None) -> Dict[str, Any]:
    """Plan and (unless ``--dry-run``) perform the uploads.

    Args:
        argv: command-line arguments.
        api: a ``huggingface_hub.HfApi``-like object (tests pass a fake); default ``HfApi()``.

    Returns ``{'uploads': [plan + {'action': 'dry-run' | 'skipped' | 'uploaded', 'commit_url'}]}``.

    Raises:
        UsageError: bad folders, ``--repo-id`` with several folders, no ``HF_TOKEN`` for a real push.
    """
    args = build_parser().parse_args(argv)
    if args.repo_id and len(args.folders) != 1:
        raise UsageError("--repo-id names one repo: give exactly one folder with it")
    plans = [plan_upload(f, args.repo_id, args.manifest) for f in args.folders]
    out: List[Dict[str, Any]] = []
    if args.dry_run:
        for plan in plans:
            print(f"[dry-run] {plan['folder']} -> https://huggingface.co/{plan['repo_id']}" + (f"@{args.revision}" if args.revision else ""))
            for f in plan["files"]:
                print(f"    {f['path']:<20} {f['size']:>12} B  sha256 {f['sha256']}")
            if plan["not_uploaded"]:
                print(f"    not uploaded: {', '.join(plan['not_uploaded'])}")
            out.append(dict(plan, action="dry-run", commit_url=None))
        return dict(uploads=out)
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise UsageError("set HF_TOKEN in the environment (a write token of the target org) or use --dry-run")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    for plan in plans:
        if _remote_matches(api, plan, args.revision, token):
            print(f"{plan['repo_id']}: already up to date (same sha256), skipped")
            out.append(dict(plan, action="skipped", commit_url=None))
            continue
        api.create_repo(plan["repo_id"], token=token, private=args.private, repo_type="model", exist_ok=True)
        sha = next((f["sha256"] for f in plan["files"] if f["path"] == "model.safetensors"), "")
        info = api.upload_folder(
            repo_id=plan["repo_id"],
            folder_path=plan["folder"],
            repo_type="model",
            revision=args.revision,
            token=token,
            commit_message=args.commit_message or f"Add {plan['name']} weights (model.safetensors sha256 {sha[:12]})",
            allow_patterns=[f["path"] for f in plan["files"]],
        )
        url = getattr(info, "commit_url", None) or str(info)
        print(f"{plan['repo_id']}: uploaded ({url})")
        out.append(dict(plan, action="uploaded", commit_url=url))
    return dict(uploads=out)


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: print user errors without a traceback."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
