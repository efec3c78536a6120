"""visionattn: attention-based hierarchical vision backbones for timm.

``import visionattn`` registers every model with timm, after which
``timm.create_model("dinat_tiny", pretrained=True)`` works; :func:`list_models` lists ours.
"""
from . import layers, ops  # noqa: F401
from .models import CheckpointKeyError, list_models  # noqa: F401  (registers the models)
from .mixers import create_mixer, get_mixer, list_mixers, register_mixer  # noqa: F401
from .models import MixerNet, list_mixer_models  # noqa: F401

__version__ = "0.1.0"
__all__ = [
    "list_models", "CheckpointKeyError", "ops", "layers", "__version__",
    "list_mixers", "register_mixer", "get_mixer", "create_mixer", "MixerNet", "list_mixer_models",
]
