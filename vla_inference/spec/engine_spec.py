"""The engine split: the I/O contract every backend (ONNX Runtime, TensorRT, PyTorch) serves.

Two engines:

* ``vision`` (stage 1, once per request): cameras, LiDAR, text and state -> the prefix keys/values
  of every expert layer plus the prefix mask.
* ``action_expert`` (stage 2, once per denoising step): noisy actions, flow time, prefix keys/values
  -> velocity. The Euler loop runs outside the engine, so the step count changes at run time
  without rebuilding anything.

Conventions:

* ``images``: RGB, channels first, float32 scaled to [-1, 1] (``normalize_images``).
* ``lidar_range``: metres, 0 = no return.
* masks are ``bool``; ``True`` = present / attend.
* ``prefix_kv``: [B, layers, 2 (key, value), kv_heads, prefix_len, head_dim]; keys already carry
  their rotary position.
* flow time runs from 1 (noise) to 0 (data); ``x_{t+dt} = x_t + dt * v`` with ``dt = -1 / steps``.

Shapes use the symbol ``"batch"`` for the dynamic batch axis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Sequence, Tuple, Union

import numpy as np

from vla_inference.spec.config import VlaConfig

Dim = Union[int, str]
BATCH = "batch"

VISION = "vision"
ACTION_EXPERT = "action_expert"
ENGINES = (VISION, ACTION_EXPERT)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64", "bool"
    shape: Tuple[Dim, ...]

    def concrete_shape(self, batch: int) -> Tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)

    def to_dict(self) -> Dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "TensorSpec":
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class EngineSpec:
    name: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.name)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.name)


def _by_name(specs: Sequence[TensorSpec], name: str, engine: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"engine {engine!r} has no tensor {name!r}")


def prefix_kv_shape(cfg: VlaConfig) -> Tuple[Dim, ...]:
    b = cfg.backbone
    return (BATCH, b.depth, 2, b.num_kv_heads, cfg.prefix_len, b.head_dim)


def vision_spec(cfg: VlaConfig) -> EngineSpec:
    size = cfg.vision.image_size
    return EngineSpec(
        VISION,
        inputs=(
            TensorSpec("images", "float32", (BATCH, cfg.max_cameras, 3, size, size)),
            TensorSpec("camera_mask", "bool", (BATCH, cfg.max_cameras)),
            TensorSpec("lidar_range", "float32", (BATCH, 1, cfg.lidar.rows, cfg.lidar.cols)),
            TensorSpec("lidar_mask", "bool", (BATCH,)),
            TensorSpec("text_tokens", "int64", (BATCH, cfg.text_max_len)),
            TensorSpec("text_mask", "bool", (BATCH, cfg.text_max_len)),
            TensorSpec("state", "float32", (BATCH, cfg.state_dim)),
        ),
        outputs=(
            TensorSpec("prefix_kv", "float32", prefix_kv_shape(cfg)),
            TensorSpec("prefix_mask", "bool", (BATCH, cfg.prefix_len)),
        ),
    )


def action_expert_spec(cfg: VlaConfig) -> EngineSpec:
    h, d = cfg.action_horizon, cfg.action_dim
    return EngineSpec(
        ACTION_EXPERT,
        inputs=(
            TensorSpec("noisy_actions", "float32", (BATCH, h, d)),
            TensorSpec("time", "float32", (BATCH,)),
            TensorSpec("prefix_kv", "float32", prefix_kv_shape(cfg)),
            TensorSpec("prefix_mask", "bool", (BATCH, cfg.prefix_len)),
        ),
        outputs=(TensorSpec("velocity", "float32", (BATCH, h, d)),),
    )


def engine_specs(cfg: VlaConfig) -> Dict[str, EngineSpec]:
    return {VISION: vision_spec(cfg), ACTION_EXPERT: action_expert_spec(cfg)}


def _dtype_name(value: Any) -> str:
    """``"float32"`` for a NumPy array and a torch tensor alike (torch spells it ``torch.float32``)."""
    return str(value.dtype).rsplit(".", 1)[-1]


def _is_array(value: Any) -> bool:
    """A NumPy array or a tensor (anything with a shape, a dtype and elementwise ``isfinite``)."""
    return isinstance(value, np.ndarray) or all(hasattr(value, a) for a in ("shape", "dtype", "isfinite"))


def _all_finite(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return bool(np.isfinite(value).all())
    return bool(value.isfinite().all())


def check_tensor(spec: TensorSpec, value: Any, batch: int) -> None:
    """Raise ``ValueError`` naming the tensor, the expected and the received shape/dtype.

    Takes NumPy arrays (the runtimes' host feeds) and torch tensors (the policy's) alike, so the
    engines and the PyTorch reference refuse the same inputs with the same words. Never
    broadcasts: the shape must match exactly, and floating inputs must be finite.
    """
    if not _is_array(value):
        raise ValueError(f"{spec.name}: expected an array or tensor, received {type(value).__name__}")
    expected = spec.concrete_shape(batch)
    if tuple(value.shape) != expected:
        raise ValueError(f"{spec.name}: expected shape {expected}, received {tuple(value.shape)}")
    if _dtype_name(value) != spec.dtype:
        raise ValueError(f"{spec.name}: expected dtype {spec.dtype}, received {_dtype_name(value)}")
    if spec.dtype.startswith("float") and not _all_finite(value):
        raise ValueError(f"{spec.name}: contains NaN or Inf")


def check_inputs(spec: EngineSpec, feeds: Mapping[str, Any]) -> int:
    """Check a full feed dict (arrays or tensors) against an engine spec; returns the batch size."""
    missing = [t.name for t in spec.inputs if t.name not in feeds]
    if missing:
        raise ValueError(f"{spec.name}: missing inputs {missing}")
    extra = sorted(set(feeds) - {t.name for t in spec.inputs})
    if extra:
        raise ValueError(f"{spec.name}: unexpected inputs {extra}")
    first = feeds[spec.inputs[0].name]
    if not _is_array(first) or len(first.shape) == 0:
        raise ValueError(f"{spec.inputs[0].name}: expected an array with a batch axis")
    batch = int(first.shape[0])
    for tensor in spec.inputs:
        check_tensor(tensor, feeds[tensor.name], batch)
    return batch


def normalize_images(images_uint8: np.ndarray) -> np.ndarray:
    """[..., H, W, 3] uint8 RGB -> [..., 3, H, W] float32 in [-1, 1] (the ``images`` convention)."""
    if images_uint8.dtype != np.uint8 or images_uint8.shape[-1] != 3:
        raise ValueError(f"images: expected uint8 [..., H, W, 3], received {images_uint8.dtype} {images_uint8.shape}")
    chw = np.moveaxis(images_uint8, -1, -3).astype(np.float32)
    return chw * np.float32(1.0 / 127.5) - np.float32(1.0)
