"""``export_onnx``: a loaded BiRefNet -> one ONNX file of standard operators.

The graph is the inference forward of the loaded model (BatchNorm already folded by
``load_model``; the deformable convolutions take their ``grid_sample`` path while exporting):
input ``image`` (B, 3, H, W) float32, normalised with the mean and std in the metadata; output
``logits`` (B, 1, H, W) float32, or ``mask`` (sigmoid applied inside) when asked. The batch is
always dynamic; height and width are fixed, or dynamic multiples of 32 with ``dynamic=True``.
A float16 graph computes in float16 between float32 input and output.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import BiRefNetError, CheckpointError
from ..network.compiled import compile_state
from ..network.model import BiRefNet

FORMAT_VERSION = "1"
METADATA_PREFIX = "birefnet."
DEFAULT_OPSET = 18          # GridSample and LayerNormalization as onnxruntime and TensorRT read
MIN_OPSET = 17              # LayerNormalization is a standard operator from 17 on
_SINGLE_FILE_LIMIT = 1800 << 20   # protobuf's 2 GB limit, with room for the graph itself


class ExportError(BiRefNetError):
    """A model or option that cannot be exported, or an export that failed."""


class _InferenceGraph(nn.Module):
    """float32 normalised images -> float32 logits (or probabilities), model dtype inside."""

    def __init__(self, model: BiRefNet, dtype: torch.dtype, sigmoid: bool) -> None:
        super().__init__()
        self.model, self.dtype, self.sigmoid = model, dtype, sigmoid

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.model(image.to(self.dtype)).float()
        return torch.sigmoid(logits) if self.sigmoid else logits


@dataclass(frozen=True)
class ExportReport:
    path: Path
    files: tuple[Path, ...]          # the .onnx and, above ~1.8 GB of weights, its .data
    bytes: int
    seconds: float
    metadata: dict[str, str]


def export_metadata(model: BiRefNet, *, dtype: str, dynamic: bool,
                    size: tuple[int, int], sigmoid: bool, opset: int) -> dict[str, str]:
    """What a runtime needs to feed the file and read its output (all strings)."""
    info = model.info
    name = info.known_model or Path(info.source).stem
    return {f"{METADATA_PREFIX}{key}": value for key, value in {
        "format_version": FORMAT_VERSION,
        "model": name,
        "variant": info.variant,
        "patch_order": info.patch_order,
        "mean": json.dumps(list(info.mean)),
        "std": json.dumps(list(info.std)),
        "resolution": json.dumps(list(info.resolution)),
        "input": "image: (batch, 3, H, W) float32 RGB in [0, 1], then (x - mean) / std",
        "output": "mask" if sigmoid else "logits",
        "dtype": dtype,
        "dynamic_size": "true" if dynamic else "false",
        "size": json.dumps(list(size)),
        "opset": str(opset),
        "source": Path(info.source).name,
        "torch": torch.__version__,
    }.items()}


_NEEDED_FIELDS = ("variant", "patch_order", "mean", "std", "resolution", "output",
                  "dynamic_size", "size", "dtype")
_LIST_FIELDS = {"mean": 3, "std": 3, "resolution": 2, "size": 2}     # field: its length


def _number_list(fields: dict[str, str], key: str, source: str) -> tuple[float | int, ...]:
    """A JSON list of numbers written by :func:`export_metadata`; a CheckpointError if not."""
    try:
        value = json.loads(fields[key])
    except ValueError:
        value = None
    if (not isinstance(value, list) or len(value) != _LIST_FIELDS[key]
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise CheckpointError(f"{source}: its metadata {METADATA_PREFIX}{key} must be a list of "
                              f"{_LIST_FIELDS[key]} numbers, not {fields[key]!r}; export the file "
                              "again with python -m birefnet_core.export")
    return tuple(value)


def decode_export_metadata(metadata: dict[str, str], source: str) -> dict:
    """The birefnet.* metadata of an exported file, decoded (what :func:`export_metadata`
    wrote); a CheckpointError naming the fix if any field is absent or malformed."""
    fields = {k[len(METADATA_PREFIX):]: v for k, v in metadata.items()
              if k.startswith(METADATA_PREFIX)}
    missing = [k for k in _NEEDED_FIELDS if k not in fields]
    if missing:
        raise CheckpointError(f"{source} carries no BiRefNet export metadata "
                              f"({', '.join(missing)} missing): export it with python -m "
                              "birefnet_core.export")
    decoded: dict = dict(fields)
    for key in _LIST_FIELDS:
        decoded[key] = _number_list(fields, key, source)
    decoded["dynamic_size"] = fields["dynamic_size"] == "true"
    return decoded


def _dynamic_shapes(dynamic: bool) -> dict:
    batch = torch.export.Dim("batch", min=1, max=1024)
    if not dynamic:
        return {"image": {0: batch}}
    # Height and width are multiples of 32 (the network's stride): H = 32 h, W = 32 w.
    rows, cols = torch.export.Dim("h", min=2, max=1024), torch.export.Dim("w", min=2, max=1024)
    return {"image": {0: batch, 2: 32 * rows, 3: 32 * cols}}


def trace_size(model: BiRefNet, size: tuple[int, int], dynamic: bool) -> tuple[int, int]:
    """The size a graph is traced at. A dynamic graph must not see any size-1 dimension while
    tracing: the exporter fixes such a dimension to 1 (it cannot tell it from a broadcast), and
    a Swin stage with one window at the trace size then fails at every size with more (traced
    at 256x256, Swin-T's deepest half-size stage has one 7x7 window; at 512 it has four). So
    dynamic Swin graphs are traced where the half-size pass's deepest map (H/64) holds at least
    two windows per side, and every dynamic graph at 512 or more."""
    if not dynamic:
        return size
    least = 512
    window = getattr(model.variant.backbone, "window_size", None)
    if window is not None:
        least = max(least, -(-64 * (window + 1) // 32) * 32)
    return tuple(max(side, least) for side in size)


def check_export_options(size: tuple[int, int], opset: int, dtype: str) -> None:
    if len(size) != 2 or any(s <= 0 or s % 32 for s in size):
        raise ExportError(f"size must be two positive multiples of 32, got {size}")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: LayerNormalization needs {MIN_OPSET} or "
                          f"newer (default {DEFAULT_OPSET})")
    if dtype not in ("fp32", "fp16"):
        raise ExportError(f"dtype must be fp32 or fp16, not {dtype!r}")


@contextmanager
def _quiet_exporter(verbose: bool) -> Iterator[None]:
    """The exporter prints a progress line per stage and warns about deprecated internals."""
    if verbose:
        yield
        return
    with warnings.catch_warnings(), open(os.devnull, "w") as sink, redirect_stdout(sink):
        warnings.simplefilter("ignore")
        yield


def export_onnx(model: BiRefNet, path: str | os.PathLike, *, dtype: str = "fp32",
                size: tuple[int, int] | None = None, dynamic: bool = False,
                opset: int = DEFAULT_OPSET, sigmoid: bool = False,
                verbose: bool = False) -> ExportReport:
    """Export a model loaded by ``load_model`` (float32, on the CPU, folded) to ``path``.

    size: the traced (and, unless ``dynamic``, the only) height and width; default the
    model's working resolution. The file is checked with ``onnx.checker`` and written
    atomically: a failed export leaves nothing behind.
    """
    try:
        import onnx
    except ImportError:
        raise ExportError("exporting needs the onnx and onnxscript packages: "
                          "pip install onnx onnxscript") from None
    if not hasattr(model, "info"):
        raise ExportError("export a model loaded with birefnet_core.load_model (it carries "
                          "the normalisation and patch order the file must record)")
    if model.info.int8 or compile_state(model) != "off":
        raise ExportError("export a model loaded without int8 and without compile (the file "
                          "holds the plain float32 network; choose --dtype for the graph)")
    size = tuple(size) if size is not None else tuple(model.info.resolution)
    check_export_options(size, opset, dtype)
    target = Path(path)
    if next(model.parameters()).dtype != torch.float32 or next(model.parameters()).is_cuda:
        raise ExportError("export a float32 model on the CPU (load_model's defaults); the "
                          "dtype option makes the float16 graph")
    network = copy.deepcopy(model).half() if dtype == "fp16" else model
    graph = _InferenceGraph(network, torch.float16 if dtype == "fp16" else torch.float32,
                            sigmoid).eval()
    metadata = export_metadata(model, dtype=dtype, dynamic=dynamic, size=size,
                               sigmoid=sigmoid, opset=opset)
    # Batch 2 and a size without single windows: a dimension of 1 would be traced as fixed.
    example = torch.rand(2, 3, *trace_size(model, size, dynamic))
    started = time.perf_counter()
    try:
        # Swin stages trace their padded-window form by themselves (SwinStage.forward checks
        # torch.compiler.is_compiling(), which is true while torch.export traces).
        with torch.no_grad(), _quiet_exporter(verbose):
            program = torch.onnx.export(
                graph, (example,), None, dynamo=True, opset_version=opset,
                input_names=["image"], output_names=["mask" if sigmoid else "logits"],
                dynamic_shapes=_dynamic_shapes(dynamic), optimize=True)
    except Exception as error:               # noqa: BLE001 - any exporter failure is reported
        raise ExportError(f"exporting {metadata['birefnet.model']} failed: "
                          f"{type(error).__name__}: {error}") from error
    program.model.metadata_props.update(metadata)
    weight_bytes = sum(t.numel() * t.element_size() for t in network.state_dict().values())
    files = _save_atomically(program, target, onnx, external=weight_bytes > _SINGLE_FILE_LIMIT)
    return ExportReport(target, files, sum(f.stat().st_size for f in files),
                        time.perf_counter() - started, metadata)


def _save_atomically(program, target: Path, onnx, external: bool) -> tuple[Path, ...]:
    """Save into a temporary folder beside ``target``, check there, then move into place.
    ``external``: weights in a .data file beside it (needed above protobuf's 2 GB)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        staged = staging / target.name
        program.save(staged, external_data=external)
        onnx.checker.check_model(str(staged), full_check=True)
        moved = []
        for file in sorted(staging.iterdir(), key=lambda f: f.name == target.name):
            os.replace(file, target.parent / file.name)     # the .onnx itself last
            moved.append(target.parent / file.name)
        return tuple(moved)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
