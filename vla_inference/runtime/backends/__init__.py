"""Backend registry: ``create_backend(name, manifest, **options)``.

Backend modules are imported lazily, so a machine without PyTorch or TensorRT can still serve
with ONNX Runtime; asking for a backend whose runtime is missing raises
``BackendUnavailableError`` naming the backend and the dependency.

Callers that configure any backend from one parameter set (the inference node) may pass the
common options ``COMMON_OPTIONS`` to every backend: a backend that has no use for one (ONNX
Runtime and ``engine_cache_dir``, TensorRT and ``intra_op_threads``; ``num_samples`` and
``view_rows`` only matter to TensorRT, which builds its optimization profiles for them, so passing
the served values at creation spares a reload in ``prepare``) ignores it. Any other option the
backend does not take is an error.
"""
from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any, Dict, Optional, Tuple

from vla_inference.runtime.backends.base import Backend, BackendUnavailableError, HostPrefix, InferenceError
from vla_inference.spec.interface import BACKENDS
from vla_inference.spec.manifest import Manifest

# name -> (module, class, what to install when the import fails)
_REGISTRY: Dict[str, Tuple[str, str, str]] = {
    "onnxruntime": ("vla_inference.runtime.backends.onnxruntime_backend", "OnnxRuntimeBackend", "the `onnxruntime` package"),
    "tensorrt": (
        "vla_inference.runtime.backends.tensorrt_backend",
        "TensorRTBackend",
        "TensorRT's Python bindings (`tensorrt`) and `cuda-python`",
    ),
    "torch": ("vla_inference.runtime.backends.torch_backend", "TorchBackend", "PyTorch (`torch`)"),
}
_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}
COMMON_OPTIONS = frozenset({"precision", "device", "intra_op_threads", "engine_cache_dir", "num_samples", "view_rows"})
LOG = logging.getLogger(__name__)



AUTO = "auto"
DEVICES = (AUTO, "cpu", "cuda")


def _cuda_visible() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_placement(backend: str, device: str, precision: str) -> Tuple[str, Optional[str]]:
    """(device, precision or None for the backend's default) for ``auto`` settings: TensorRT runs on
    CUDA, PyTorch on CUDA when a GPU is visible, ONNX Runtime on the CPU; ``auto`` precision is the
    backend's default (ONNX Runtime fp32, TensorRT fp16, PyTorch bf16 on CUDA and fp32 on the CPU).
    Explicit values pass through, so a user's ``device:=cpu`` is never overridden."""
    if device not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, received {device!r}")
    key = _ALIASES.get(backend, backend)
    if device == AUTO:
        device = {"tensorrt": "cuda", "torch": "cuda" if _cuda_visible() else "cpu"}.get(key, "cpu")
    return device, None if precision == AUTO else precision


def create_backend(name: str, manifest: Manifest, **options: Any) -> Backend:
    """Instantiate (not load) backend ``name`` for ``manifest``; options go to its constructor."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ValueError(f"backend: expected one of {list(BACKENDS)}, received {name!r}")
    module_name, class_name, dependency = _REGISTRY[key]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(key, dependency, str(exc)) from exc
    backend_class = getattr(module, class_name)
    accepted = inspect.signature(backend_class.__init__).parameters
    for option in sorted(set(options) - set(accepted)):
        if option not in COMMON_OPTIONS:
            raise TypeError(f"backend {key!r} has no option {option!r}")
        LOG.debug("backend %r ignores option %s=%r", key, option, options[option])
        del options[option]
    return backend_class(manifest, **options)


__all__ = ["AUTO", "BACKENDS", "COMMON_OPTIONS", "DEVICES", "Backend", "BackendUnavailableError", "HostPrefix",
           "InferenceError", "create_backend", "resolve_placement"]
