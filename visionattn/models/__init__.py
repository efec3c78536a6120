"""Model families; importing this package registers every model with timm."""
from ._backbone import HierarchicalBackbone, Stage, drop_path_rates
from ._hub import CheckpointFileError, PretrainedDownloadError
from ._registry import CheckpointKeyError, list_models
from . import agent, biformer, cswin, davit, maxvit, nat  # noqa: F401  (importing a family registers its models)

__all__ = [
    "HierarchicalBackbone", "Stage", "drop_path_rates", "CheckpointKeyError", "CheckpointFileError", "PretrainedDownloadError",
    "list_models",
]
