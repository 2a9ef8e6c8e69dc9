"""Inference: images in, soft masks out.

``predict`` (resize, normalise, one forward, resize back), ``batching`` (chunks with
out-of-memory halving, streams), ``video`` (mattes of frame sequences) and ``temporal``
(flicker suppression across frames), ``detail`` and ``tiles`` (masks at the image's own
pixel scale from boundary tiles) and ``region`` (the subject a guide mask points at).
Builds on ``network`` and ``matting``.
"""
from .batching import is_out_of_memory, iter_predictions, predict_batched
from .detail import refine_detail
from .predict import predict, working_size
from .region import segment_region
from .temporal import STABILIZE_METHODS, TemporalStabilizer
from .video import matte_video, stream_mattes

__all__ = ["STABILIZE_METHODS", "TemporalStabilizer", "is_out_of_memory", "iter_predictions",
           "matte_video", "predict", "predict_batched", "refine_detail", "segment_region",
           "stream_mattes", "working_size"]
