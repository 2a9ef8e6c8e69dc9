"""An exported file run by onnxruntime behind the interface ``predict`` reads.

``OnnxBiRefNet`` is an ``nn.Module`` whose forward takes normalised images and returns logits,
with the ``info`` (``ModelInfo``) that ``predict`` reads for the working size and the
normalisation: ``predict``, ``predict_batched`` and the commands pre- and post-process for it
exactly as for the PyTorch model. It holds one empty float32 CPU parameter so that ``predict``
prepares float32 inputs on the CPU; onnxruntime moves them to its own device.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import BiRefNetError, CheckpointError, InputError
from ..network import cpu_features
from ..weights.loading import ModelInfo
from .graph import decode_export_metadata

GRAPH_OPTIMIZATIONS = ("all", "extended", "basic", "none")
# Which engine a CPU user should run (README, "Export"; python bench/bench_onnx.py --only speed),
# for help texts that cannot probe the CPU; ``cpu_advice`` follows the CPU it runs on.
CPU_ADVICE = ("on a CPU, run the checkpoint itself: with --dtype bf16 where the CPU runs "
              "bfloat16 natively (Swin-T at 1024x1024 took 2.24 s on the project's AMD EPYC "
              "against 4.84 s for this file in onnxruntime, 4.06 s PyTorch float32), else "
              "--dtype int8 or fp32 (dtype auto picks bf16 or fp32 by the CPU); the .onnx file "
              "is for runtimes without PyTorch (onnxruntime elsewhere, TensorRT)")


def cpu_advice() -> str:
    """Which engine to run on this CPU, by its bfloat16 probe (network.cpu_features)."""
    support = cpu_features.cpu_bf16()
    if support.native:
        return ("this CPU runs bfloat16 natively: run the checkpoint itself with --dtype bf16 "
                "(dtype auto picks it): Swin-T at 1024x1024 took 2.24 s on the project's AMD "
                "EPYC against 4.84 s for this file in onnxruntime; the .onnx file is for "
                "runtimes without PyTorch (onnxruntime elsewhere, TensorRT)")
    return (f"this CPU has no native bfloat16 ({support.evidence}), so bf16 would be slower "
            f"than fp32 here: run the checkpoint itself with --dtype int8 ({INT8_NOTE}) or "
            "fp32 (dtype auto); the .onnx file is for runtimes without PyTorch (onnxruntime "
            "elsewhere, TensorRT)")


# int8 against float32 where bfloat16 is not native (README "Which dtype on a CPU"): on the
# Intel Xeon, python bench/bench_cpu_paths.py --dtypes fp32 int8 bf16 --cpu-time.
INT8_NOTE = ("on an Intel Xeon without native bfloat16, Swin-T at 1024x1024 on one thread took "
             "6.11 s in int8 against 7.03 s in fp32 and 9.43 s in bf16, int8 masks within "
             "0.005 of fp32's")


class OnnxRuntimeMissingError(BiRefNetError, ImportError):
    """onnxruntime is needed to run an exported file but is not installed."""


def is_onnx_file(source: str | os.PathLike) -> bool:
    return str(source).lower().endswith(".onnx")


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise OnnxRuntimeMissingError(
            "running an .onnx file needs onnxruntime: pip install onnxruntime (CPU) or "
            "onnxruntime-gpu (CUDA); or pass a checkpoint (.safetensors/.pth) instead") from None
    return onnxruntime


def read_export_metadata(metadata: dict[str, str], source: str) -> dict:
    """The birefnet.* metadata of an exported file, decoded; a clear error if absent."""
    return decode_export_metadata(metadata, source)


def _providers(onnxruntime, device: str) -> list[str]:
    available = onnxruntime.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise InputError("device cuda was asked for, but this onnxruntime has no CUDA provider "
                         f"(it has {', '.join(available)}): pip install onnxruntime-gpu, or use "
                         "device cpu")
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"an .onnx file runs on cpu or cuda, not {device!r}")
    return ["CPUExecutionProvider"]


class OnnxBiRefNet(nn.Module):
    """Normalised images (B, 3, H, W) -> logits (B, 1, H, W), computed by onnxruntime."""

    def __init__(self, session, path: str, metadata: dict) -> None:
        super().__init__()
        self.session, self.path, self.export = session, path, metadata
        self.input_name = session.get_inputs()[0].name
        self.register_parameter("placement", nn.Parameter(torch.empty(0), requires_grad=False))
        resolution = metadata["size"] if not metadata["dynamic_size"] else metadata["resolution"]
        self.info = ModelInfo(variant=metadata["variant"], patch_order=metadata["patch_order"],
                              resolution=tuple(resolution), mean=metadata["mean"],
                              std=metadata["std"], source=path,
                              known_model=metadata.get("model"))

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        if not self.export["dynamic_size"] and size != tuple(self.export["size"]):
            height, width = self.export["size"]
            raise InputError(f"{Path(self.path).name} was exported for {height}x{width} only, "
                             f"not {size[0]}x{size[1]}: run it at --resolution {height}x{width} "
                             "or export with --dynamic")
        if size[0] % 32 or size[1] % 32:
            raise InputError(f"height and width must be multiples of 32, got {size}")
        feed = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = torch.from_numpy(self.session.run(None, {self.input_name: feed})[0])
        if self.export["output"] == "mask":     # probabilities: back to logits for predict
            out = torch.logit(out.double()).float()
        return out.to(x.device)


def load_onnx_model(path: str | os.PathLike, *, device: str = "auto",
                    graph_optimization: str = "all", threads: int | None = None) -> OnnxBiRefNet:
    """Open an exported file for ``predict``. device: auto (CUDA when onnxruntime-gpu sees a
    GPU, else CPU), cpu or cuda. graph_optimization: onnxruntime's level (all, extended,
    basic, none). threads: intra-op threads (default: onnxruntime's, one per core)."""
    onnxruntime = _import_onnxruntime()
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise CheckpointError(f"no such ONNX file: {source}")
    if graph_optimization not in GRAPH_OPTIMIZATIONS:
        raise ValueError(f"graph_optimization must be one of {GRAPH_OPTIMIZATIONS}")
    options = onnxruntime.SessionOptions()
    level = onnxruntime.GraphOptimizationLevel
    options.graph_optimization_level = {
        "all": level.ORT_ENABLE_ALL, "extended": level.ORT_ENABLE_EXTENDED,
        "basic": level.ORT_ENABLE_BASIC, "none": level.ORT_DISABLE_ALL}[graph_optimization]
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = onnxruntime.InferenceSession(source, options,
                                               providers=_providers(onnxruntime, device))
    except Exception as error:      # noqa: BLE001 - onnxruntime raises its own types
        raise CheckpointError(f"onnxruntime cannot open {source}: {error}") from error
    metadata = read_export_metadata(session.get_modelmeta().custom_metadata_map, source)
    return OnnxBiRefNet(session, source, metadata).eval()
