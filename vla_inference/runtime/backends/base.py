"""What every backend offers: a Polygraphy-style runner plus the two pipeline stages.

A backend serves the two engines of one model directory (``vision`` and ``action_expert``, see
``vla_inference.spec.engine_spec``) in one precision:

* ``load()`` / ``infer(engine_name, feeds)`` / ``release()``: the runner. ``infer`` checks the feeds
  against the manifest's tensor specs (names, shapes, dtypes, finiteness) before the runtime sees
  them, so a bad tensor is named instead of crashing inside a kernel.
* ``prepare(num_samples, slots, view_rows)`` / ``encode_prefix(feeds, slot, sample_rows)`` /
  ``denoise(prefix, noise, steps)``: the two stages ``InferencePipeline`` drives. Stage 1's feeds
  hold one row per camera view of the request (``runtime.sample_views``) and ``sample_rows[k]``
  names the row sample k denoises on. The defaults here run the Euler loop on the host
  through ``infer``; GPU backends override them to keep tensors on the device, replay CUDA graphs
  and put the stages on separate streams. ``slot`` names one of ``slots`` prefix buffers, so a
  backend with static device buffers can double-buffer the prefix while the next request's
  stage 1 runs.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence

import numpy as np

from vla_inference.spec.engine_spec import ACTION_EXPERT, ENGINES, VISION, EngineSpec, check_inputs, engine_specs
from vla_inference.spec.flow import euler_integrate
from vla_inference.spec.manifest import EngineFile, Manifest


class BackendUnavailableError(RuntimeError):
    """The backend's runtime (a Python package or a device) is not present on this machine."""

    def __init__(self, backend: str, dependency: str, detail: str = "") -> None:
        self.backend = backend
        self.dependency = dependency
        message = f"backend {backend!r} is unavailable: it needs {dependency}"
        super().__init__(f"{message} ({detail})" if detail else message)


class InferenceError(RuntimeError):
    """A backend produced unusable output (NaN/Inf) for inputs that passed validation."""


@dataclass
class HostPrefix:
    """Stage-1 output kept in host memory, one row per sample (K), taken from its view's row."""

    prefix_kv: np.ndarray
    prefix_mask: np.ndarray


class Backend(abc.ABC):
    """Base runner. Subclasses implement ``_load``, ``_infer`` and ``_release``."""

    name: ClassVar[str] = "base"

    def __init__(self, manifest: Manifest, precision: str = "fp32", source_precision: Optional[str] = None) -> None:
        """``source_precision`` names the manifest's files when it differs from ``precision``
        (TensorRT builds fp16 from the fp32 ONNX; PyTorch runs bf16 from fp32 weights)."""
        self.manifest = manifest
        self.config = manifest.config
        self.precision = precision
        self.source_precision = source_precision or precision
        self.specs: Dict[str, EngineSpec] = engine_specs(self.config)
        self.num_samples = 1
        self.view_rows = 1
        self._loaded = False

    def engine_files(self) -> Dict[str, EngineFile]:
        """The manifest's ONNX file per engine for ``source_precision`` (``ModelDirError`` if absent)."""
        return {name: self.manifest.engine(self.source_precision, name) for name in ENGINES}

    # -- runner ---------------------------------------------------------------------------------
    @property
    def is_loaded(self) -> bool:
        return self._loaded

    @property
    def device(self) -> str:
        """Where the engines run: ``"cpu"`` or ``"cuda"``."""
        return "cpu"

    def load(self) -> None:
        """Create sessions/engines; idempotent."""
        if not self._loaded:
            self._load()
            self._loaded = True

    def release(self) -> None:
        """Free sessions, device buffers and streams; idempotent."""
        if self._loaded:
            self._release()
            self._loaded = False

    def infer(self, engine_name: str, feeds: Mapping[str, np.ndarray], check: bool = True) -> Dict[str, np.ndarray]:
        """Run one engine on host arrays and return its outputs as host arrays."""
        if not self._loaded:
            raise RuntimeError(f"backend {self.name!r}: infer() before load()")
        if engine_name not in self.specs:
            raise ValueError(f"engine_name: expected one of {list(ENGINES)}, received {engine_name!r}")
        if check:
            check_inputs(self.specs[engine_name], feeds)
        return self._infer(engine_name, feeds)

    def describe(self) -> Dict[str, Any]:
        """What the benchmark records about this backend."""
        return {"backend": self.name, "device": self.device, "precision": self.precision}

    def __enter__(self) -> "Backend":
        self.load()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, engine_name: str, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def _release(self) -> None: ...

    # -- pipeline stages ------------------------------------------------------------------------
    def prepare(self, num_samples: int, slots: int, view_rows: int = 1) -> None:
        """Fix the sample batch K, the number of prefix buffers and the most view rows a request's
        stage 1 may carry (``runtime.sample_views``) before serving."""
        if num_samples < 1 or slots < 1 or view_rows < 1:
            raise ValueError(f"num_samples, slots and view_rows must be >= 1, received {num_samples}, {slots}, "
                             f"{view_rows}")
        self.num_samples = num_samples
        self.view_rows = view_rows

    def check_sample_rows(self, feeds: Mapping[str, np.ndarray], sample_rows: Optional[Sequence[int]]) -> np.ndarray:
        """``sample_rows`` as an index array [K] into the feeds' view rows (all 0 when None)."""
        views = int(feeds["images"].shape[0])
        if views > self.view_rows:
            raise ValueError(f"feeds: {views} view rows, the backend was prepared for at most {self.view_rows}")
        if sample_rows is None:
            sample_rows = [0] * self.num_samples
        rows = np.asarray(sample_rows, dtype=np.int64)
        if rows.shape != (self.num_samples,) or rows.min() < 0 or rows.max() >= views:
            raise ValueError(f"sample_rows: expected {self.num_samples} rows in [0, {views}), received {rows.tolist()}")
        return rows

    def encode_prefix(self, feeds: Mapping[str, np.ndarray], slot: int,
                      sample_rows: Optional[Sequence[int]] = None) -> Any:
        """Stage 1: the vision engine on the request's view rows, then each sample's row (once per request)."""
        check_inputs(self.specs[VISION], feeds)
        rows = self.check_sample_rows(feeds, sample_rows)
        out = self._infer(VISION, feeds)
        if not np.isfinite(out["prefix_kv"]).all():
            raise InferenceError(f"backend {self.name!r}: the vision engine produced NaN/Inf in prefix_kv")
        return HostPrefix(np.take(out["prefix_kv"], rows, axis=0), np.take(out["prefix_mask"], rows, axis=0))

    def denoise(self, prefix: Any, noise: np.ndarray, steps: int) -> np.ndarray:
        """Stage 2: Euler-integrate ``noise`` [K, H, D] from t=1 to t=0; returns float32 [K, H, D]."""
        x = np.asarray(noise, dtype=np.float32)
        feeds = {
            "noisy_actions": x,
            "time": np.ones((x.shape[0],), dtype=np.float32),
            "prefix_kv": prefix.prefix_kv,
            "prefix_mask": prefix.prefix_mask,
        }
        check_inputs(self.specs[ACTION_EXPERT], feeds)

        def velocity(actions: np.ndarray, t: np.float32) -> np.ndarray:
            feeds["noisy_actions"] = actions
            feeds["time"] = np.full((actions.shape[0],), t, dtype=np.float32)
            return self._infer(ACTION_EXPERT, feeds)["velocity"]

        return euler_integrate(velocity, x, steps)
