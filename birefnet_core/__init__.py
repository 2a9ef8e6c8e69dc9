"""birefnet_core: BiRefNet (Zheng et al., "Bilateral Reference for High-Resolution Dichotomous
Image Segmentation") in plain PyTorch. It loads every official checkpoint unchanged and never
imports ComfyUI.

Public API: load_model, predict, predict_batched, refine_detail (masks at the image's own
pixel scale), segment_region (the subject a guide mask points at), detect_variant, refine_mask,
estimate_foreground, matte_video / stream_mattes, evaluate_pairs (the paper's metrics), and
the commands ``python -m birefnet_core``, ``python -m birefnet_core.evaluate`` and
``python -m birefnet_core.finetune``.

Layout (imports flow down this list, never up):
    network/    the model: backbones, decoder, deformable convolution, variants
    weights/    checkpoints, key remapping, variant detection, known models, downloads
    matting/    foreground colours and mask refinement
    inference/  predict, batching, video and temporal stabilisation
    metrics/    the paper's metrics (NumPy)
    training/   losses, training forward, fine-tuning
    data/       image files in and out
    cli.py, evaluate.py, finetune.py   the commands
"""
from .errors import BiRefNetError, CheckpointError, InputError, ModelNotAvailableError
from .inference import (matte_video, predict, predict_batched, refine_detail, segment_region,
                        stream_mattes)
from .matting import estimate_foreground, refine_mask
from .metrics import evaluate_pairs
from .network import VARIANTS, BiRefNet, BiRefNetVariant, get_variant
from .weights import KNOWN_MODELS, KnownModel, ModelInfo, detect_variant, load_model

__all__ = [
    "BiRefNet", "BiRefNetError", "BiRefNetVariant", "CheckpointError", "InputError",
    "KNOWN_MODELS", "KnownModel", "ModelInfo", "ModelNotAvailableError", "VARIANTS",
    "detect_variant", "estimate_foreground", "get_variant", "load_model", "predict",
    "evaluate_pairs", "matte_video", "predict_batched", "refine_mask", "stream_mattes",
    "refine_detail", "segment_region",
]
