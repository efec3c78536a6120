"""visionattn: attention-based hierarchical vision backbones for timm.

``import visionattn`` registers every model with timm, after which
``timm.create_model("dinat_tiny", pretrained=True)`` works; :func:`list_models` lists ours.
It also makes timm's posterize augmentation accept 0 bits again (black image, as with Pillow < 10),
which the shipped ``rand-m9-mstd0.5-inc1`` recipes reach: see :mod:`visionattn.augment`.
"""
from . import layers, ops  # noqa: F401
from .models import CheckpointKeyError, list_models  # noqa: F401  (registers the models)
from .mixers import create_mixer, get_mixer, list_mixers, register_mixer  # noqa: F401
from .models import MixerNet, list_mixer_models  # noqa: F401
from . import augment as _augment

_augment.install()  # timm's posterize ops: 0 bits -> black image instead of Pillow >= 10's ValueError

__version__ = "0.1.0"
__all__ = [
    "list_models", "CheckpointKeyError", "ops", "layers", "__version__",
    "list_mixers", "register_mixer", "get_mixer", "create_mixer", "MixerNet", "list_mixer_models",
]
