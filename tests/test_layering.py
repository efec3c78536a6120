"""The package's import graph runs one way: ops -> layers -> models -> engine -> detection |
segmentation -> tools. Detection and segmentation sit side by side (same rank): neither imports
the other; what they share (the multi-scale backbone adapter) lives below them, in models.

Every module under ``visionattn/`` is parsed with ``ast`` (imports inside functions count too,
relative imports are resolved), and no module may import a layer above its own. Packages not in
the table (the root ``visionattn/__init__.py``, top-level helpers such as a mixer registry) are
not checked here; importing the root ``visionattn`` counts as importing ``models`` (the root
imports the model families to register them).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Optional

import pytest

PKG = Path(__file__).resolve().parents[1] / "visionattn"

#: Rank of each layer: a module may import only layers of a lower rank (or its own package).
RANKS = {"ops": 0, "layers": 1, "models": 2, "engine": 3, "detection": 4, "segmentation": 4, "tools": 5}
ROOT_RANK = RANKS["models"]


def _module_name(path: Path, pkg: Path = PKG) -> str:
    parts = path.relative_to(pkg.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, pkg: Path = PKG) -> Iterator[tuple]:
    """``(line, imported module)`` for every import statement of the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = _module_name(path, pkg)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or target in ("visionattn",):  # `from . import x` / `from visionattn import x`
                for alias in node.names:
                    yield node.lineno, f"{target}.{alias.name}"
            else:
                yield node.lineno, target


def _rank(module: str) -> Optional[int]:
    parts = module.split(".")
    if parts[0] != "visionattn":
        return None
    if len(parts) == 1:
        return ROOT_RANK
    return RANKS.get(parts[1])


def _layer(module: str) -> Optional[str]:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANKS else None


def _violations(pkg: Path = PKG):
    """``'file:line (layer) imports module'`` for every import of a layer at or above the file's own."""
    found = []
    for path in sorted(pkg.rglob("*.py")):
        own = _module_name(path, pkg)
        own_layer, own_rank = _layer(own), _rank(own)
        if own_layer is None:
            continue
        for line, target in _imports(path, pkg):
            rank = _rank(target)
            if rank is None or _layer(target) == own_layer:
                continue
            if rank >= own_rank:
                found.append(f"{path.relative_to(pkg.parent)}:{line} ({own_layer}) imports {target}")
    return found


def test_import_graph_runs_one_way():
    assert _violations() == []


def test_checker_sees_upward_imports(tmp_path):
    """The check itself: a models module importing from tools inside a function (the old
    ``_manifest.py``), a layer importing the root package and the engine importing detection are
    reported; detection using the engine and a tool using the engine or a sibling are not."""
    fake = tmp_path / "visionattn"
    for sub, text in {"models/_manifest.py": "def f():\n    from ..tools.train import atomic_write_text\n",
                      "layers/block.py": "import visionattn\n",
                      "engine/data.py": "from visionattn.detection import x\n",
                      "segmentation/models.py": "from visionattn.detection.backbone import DetectionBackbone\n",
                      "detection/builders.py": "from ..segmentation import heads\n",
                      "detection/engine.py": "from visionattn.engine.distributed import init_distributed\n",
                      "tools/train.py": "from visionattn.engine.cli import run_cli\nfrom . import validate\n"}.items():
        (fake / sub).parent.mkdir(parents=True, exist_ok=True)
        (fake / sub).write_text(text)
    found = _violations(fake)
    assert len(found) == 5, found
    assert any("models/_manifest.py:2" in f and "visionattn.tools.train" in f for f in found)
    assert any("layers/block.py" in f for f in found) and any("engine/data.py" in f for f in found)
    assert any("segmentation/models.py" in f for f in found) and any("detection/builders.py" in f for f in found)


@pytest.mark.parametrize("tool", ["validate", "coco", "seg", "visualize", "export", "benchmark", "convert_checkpoint", "push_to_hub", "model_table"])
def test_tools_do_not_import_each_other(tool):
    """Every tool is a program of its own job: the shared helpers come from visionattn.engine."""
    path = PKG / "tools" / f"{tool}.py"
    others = [t for _, t in _imports(path) if t.startswith("visionattn.tools.")]
    assert others == []
