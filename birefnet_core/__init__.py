"""birefnet_core: BiRefNet (Zheng et al., "Bilateral Reference for High-Resolution Dichotomous
Image Segmentation") in plain PyTorch. It loads every official checkpoint unchanged and never
imports ComfyUI.

Public API: load_model, predict, predict_batched, detect_variant, refine_mask,
estimate_foreground, matte_video / stream_mattes, evaluate_pairs (the paper's metrics), and
the CLIs ``python -m birefnet_core``, ``python -m birefnet_core.evaluate`` and
``python -m birefnet_core.finetune``.
"""
from . import batching, temporal
from .batching import predict_batched
from .errors import BiRefNetError, CheckpointError, InputError, ModelNotAvailableError
from .foreground import estimate_foreground
from .inference import predict
from .known_models import KNOWN_MODELS, KnownModel
from .metrics import evaluate_pairs
from .loading import ModelInfo, load_model
from .model import BiRefNet
from .refine import refine_mask
from .variants import VARIANTS, BiRefNetVariant, detect_variant, get_variant
from .video import matte_video, stream_mattes

__all__ = [
    "BiRefNet", "BiRefNetError", "BiRefNetVariant", "CheckpointError", "InputError",
    "KNOWN_MODELS", "KnownModel", "ModelInfo", "ModelNotAvailableError", "VARIANTS",
    "detect_variant", "estimate_foreground", "get_variant", "load_model", "predict",
    "evaluate_pairs", "matte_video", "predict_batched", "refine_mask", "stream_mattes",
]
