"""Model families; importing this package registers every model with timm."""
from ._backbone import HierarchicalBackbone, Stage, drop_path_rates
from ._registry import CheckpointKeyError, list_models
from . import nat  # noqa: F401  (registers NAT / DiNAT)

__all__ = ["HierarchicalBackbone", "Stage", "drop_path_rates", "CheckpointKeyError", "list_models"]
