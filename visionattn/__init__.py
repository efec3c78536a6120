"""visionattn: attention-based hierarchical vision backbones for timm.

``import visionattn`` registers every model with timm, after which
``timm.create_model("dinat_tiny", pretrained=True)`` works; :func:`list_models` lists ours.
"""
from . import layers, ops  # noqa: F401
from .models import CheckpointKeyError, list_models  # noqa: F401  (registers the models)

__version__ = "0.1.0"
__all__ = ["list_models", "CheckpointKeyError", "ops", "layers", "__version__"]
