"""Export to ONNX, and run exported files with the same ``predict`` contract.

``graph`` (``export_onnx``: the inference forward as a graph of standard ONNX operators, with
fixed or dynamic size; Swin traces its padded-window form, ``SwinStage.forward_padded``),
``runtime`` (``load_onnx_model``: an onnxruntime session behind the module
interface ``predict`` reads) and the command ``python -m birefnet_core.export``. onnx and
onnxruntime are optional: imported only when a function here needs them.
Builds on ``network``, ``weights`` and ``inference``.
"""
from .graph import DEFAULT_OPSET, ExportError, ExportReport, export_onnx
from .runtime import OnnxBiRefNet, is_onnx_file, load_onnx_model, read_export_metadata

__all__ = ["DEFAULT_OPSET", "ExportError", "ExportReport", "OnnxBiRefNet", "export_onnx",
           "is_onnx_file", "load_onnx_model", "read_export_metadata"]
