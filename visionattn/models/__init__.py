"""Model families; importing this package registers every model with timm."""
from ._backbone import HierarchicalBackbone, Stage, drop_path_rates
from ._hub import CheckpointFileError, PretrainedDownloadError
from ._registry import CheckpointKeyError, list_models
from . import agent, biformer, crossformer, cswin, davit, inline, maxvit, nat  # noqa: F401  (importing a family registers its models)
from . import van  # noqa: F401
from . import mixernet  # noqa: F401  (MixerNet presets: registered with timm, listed by list_mixer_models)
from .mixernet import MixerNet, list_mixer_models

__all__ = [
    "HierarchicalBackbone", "Stage", "drop_path_rates", "CheckpointKeyError", "CheckpointFileError", "PretrainedDownloadError",
    "list_models", "MixerNet", "list_mixer_models",
]
