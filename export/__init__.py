"""`python -m export`: FOMM → ONNX graphs (checked against torch on onnxruntime) and TensorRT engines."""
from export.onnx_export import ExportError, ExportResult, cached_export, export_fomm

__all__ = ["ExportError", "ExportResult", "cached_export", "export_fomm"]
