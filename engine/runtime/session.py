"""onnxruntime sessions with an honest provider choice.

Why check ``session.get_providers()``: onnxruntime-gpu lists CUDAExecutionProvider as *available*
even on a machine without a usable GPU and then silently runs on the CPU; only the providers of
the created session tell what actually runs. A user who asked for CUDA gets a warning, not an error,
when it falls back.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ModelError

PROVIDERS = ("auto", "cpu", "cuda")


@dataclass
class Session:
    """An inference session, the provider it really runs on, and the model's metadata."""
    ort_session: object
    provider: str
    metadata: dict
    input_name: str
    output_name: str

    def run(self, x):
        return self.ort_session.run([self.output_name], {self.input_name: x})[0]


def _threads() -> int:
    return max(1, min(os.cpu_count() or 1, int(os.environ.get("SOM_THREADS", "0")) or (os.cpu_count() or 1)))


_CUDA_FAILED = False
"""Set once a CUDA session failed to start in this process: later sessions go straight to the CPU."""


def make_session(path: Path, provider: str = "auto", threads: Optional[int] = None, arena: bool = True) -> Session:
    """Load ``path`` on ``provider`` ('auto': CUDA if it really works, else CPU).

    ``arena=False`` turns off onnxruntime's CPU memory arena, which keeps (and rounds up) the largest
    allocation a session ever made: right for networks run on large images a few times (goodness),
    wrong for small batches run thousands of times (CorrASL, ORN), where the arena saves the
    allocation cost."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - environment problem
        raise ModelError(f"onnxruntime is not installed ({exc}); in QGIS use Raster ▸ SAR-Optical Matcher ▸ "
                         "Install dependencies…, from a terminal run the setup script (make setup)") from None
    if provider not in PROVIDERS:
        raise ModelError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    want = []
    global _CUDA_FAILED
    try_cuda = (provider in ("auto", "cuda") and not _CUDA_FAILED
                and "CUDAExecutionProvider" in ort.get_available_providers())
    if try_cuda:
        want.append("CUDAExecutionProvider")
    want.append("CPUExecutionProvider")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or _threads()
    so.inter_op_num_threads = 1
    if not arena:
        so.enable_cpu_mem_arena = False
    so.log_severity_level = 3
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if try_cuda:  # onnxruntime-gpu prints a page of errors where CUDA libraries are missing
                so.log_severity_level = 4
                ort.set_default_logger_severity(4)
            try:
                sess = ort.InferenceSession(str(path), sess_options=so, providers=want)
            finally:
                if try_cuda:
                    ort.set_default_logger_severity(3)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ModelError(f"model file {Path(path).name} could not be loaded ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]}); it is corrupt or not an ONNX model") from None
    used = sess.get_providers()[0]
    if try_cuda and used != "CUDAExecutionProvider":
        _CUDA_FAILED = True
    actual = "cuda" if used == "CUDAExecutionProvider" else "cpu"
    if provider == "cuda" and actual != "cuda":
        warnings.warn("CUDA was requested but is not usable here; running the models on the CPU", RuntimeWarning,
                      stacklevel=2)
    meta = {}
    for k, v in sess.get_modelmeta().custom_metadata_map.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    return Session(sess, actual, meta, sess.get_inputs()[0].name, sess.get_outputs()[0].name)
