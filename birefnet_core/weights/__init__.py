"""Weights: from a file, a state dict or a model name to a ready network.

``checkpoint`` reads files safely (safetensors, or ``torch.load(weights_only=True)``) and maps
every official key layout to ours, ``detect`` tells the variant from keys and shapes,
``known_models`` lists the released models (repository, file, resolution, patch order),
``hub`` downloads them, and ``loading.load_model`` puts it all together.
"""
from .detect import detect_variant
from .hub import default_models_dir, resolve_checkpoint
from .known_models import KNOWN_MODELS, KnownModel
from .loading import ModelInfo, load_model

__all__ = ["KNOWN_MODELS", "KnownModel", "ModelInfo", "default_models_dir", "detect_variant",
           "load_model", "resolve_checkpoint"]
