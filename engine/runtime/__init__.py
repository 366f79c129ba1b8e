"""Run the shipped ONNX models: find and verify the files, create sessions, correlate features.

No torch here: only onnxruntime and numpy. See ``models/MODEL_CARD.md`` for what the files are.
"""
from .correlate import fft_correlate
from .registry import MODELS_DIR, ModelFile, available_sizes, default_set, load_manifest, verify
from .session import make_session

__all__ = ["MODELS_DIR", "ModelFile", "available_sizes", "default_set", "fft_correlate", "load_manifest", "make_session",
           "verify"]
