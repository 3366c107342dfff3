"""Validate one inference request and turn it into model-ready arrays, naming the bad field on failure.

Plain Python (no rclpy): ``RequestPayload`` holds references to the message's parts, and everything
is read by attribute, so an rclpy ``InferenceRequest`` (whose ``Image.data`` is ``array.array('B')``
and ``state`` is ``array.array('f')``) and a ``types.SimpleNamespace`` work alike. Buffers are read
through ``memoryview`` / ``np.frombuffer``, never copied into Python lists.

Cheap checks run first (steps, text, state, camera count, LiDAR layout) so a malformed request is
refused before any image is decoded. Field names in messages follow ``vla_msgs/InferenceRequest``:
``denoising_steps``, ``text_cmd``, ``sensor_data.state``, ``sensor_data.images[i].<field>``,
``sensor_data.lidar_range.<field>``.

Images follow the ``vla_msgs/SensorData`` contract by default (``exact_image_layout``): ``step`` equal
to ``width * bytes_per_pixel`` and ``data`` exactly ``height * step`` bytes. Set it to False to accept
row padding and trailing bytes, as ``image_codec`` does on its own.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, List, Optional, Protocol, Sequence, Union

import numpy as np

from vla_inference.sensors.image_codec import MAX_IMAGE_DIM, ImageDecodeError, decode_image
from vla_inference.sensors.image_preprocessing import resize_to_model
from vla_inference.spec.interface import MAX_DENOISING_STEPS, MAX_TEXT_BYTES, RESIZE_MODES

LIDAR_ENCODING = "32FC1"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class InvalidRequestError(ValueError):
    """The request breaks the contract; ``field`` names the offending message field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ImageLike(Protocol):
    """The attributes of ``sensor_msgs/Image`` that validation reads."""

    encoding: str
    height: int
    width: int
    step: int
    data: Any
    is_bigendian: int


@dataclass(frozen=True)
class ValidationLimits:
    """What the served model accepts; built once per configuration of the server."""

    num_cameras: int
    state_dim: int
    lidar_rows: int = 64
    lidar_cols: int = 1024
    image_size: int = 224
    resize_mode: str = "stretch"
    max_text_bytes: int = MAX_TEXT_BYTES
    max_denoising_steps: int = MAX_DENOISING_STEPS
    exact_image_layout: bool = True
    max_image_dim: int = MAX_IMAGE_DIM

    def __post_init__(self) -> None:
        for name in ("num_cameras", "state_dim", "lidar_rows", "lidar_cols", "image_size",
                     "max_text_bytes", "max_denoising_steps", "max_image_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, received {value!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode: expected one of {', '.join(RESIZE_MODES)}, received {self.resize_mode!r}")


@dataclass
class RequestPayload:
    """The parts of an ``InferenceRequest`` that validation reads (references, nothing copied)."""

    images: Sequence[ImageLike]
    lidar_range: Optional[ImageLike]
    text: Union[str, bytes]
    state: Sequence[float]
    denoising_steps: int = 0

    @classmethod
    def from_msg(cls, msg: Any) -> "RequestPayload":
        """From any object shaped like ``vla_msgs/InferenceRequest``."""
        return cls(
            images=msg.sensor_data.images,
            lidar_range=msg.sensor_data.lidar_range,
            text=msg.text_cmd,
            state=msg.sensor_data.state,
            denoising_steps=msg.denoising_steps,
        )


@dataclass
class ValidatedRequest:
    """images: RGB uint8 [size, size, 3] per camera; lidar_range: float32 [rows, cols] metres or None
    (read-only when it aliases the message buffer); state: float32 [state_dim];
    denoising_steps: 0 = the server's default."""

    images: List[np.ndarray] = field(repr=False)
    lidar_range: Optional[np.ndarray] = field(repr=False)
    text: str
    state: np.ndarray
    denoising_steps: int


def _check_steps(value: Any, limits: ValidationLimits) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise InvalidRequestError("denoising_steps", f"expected an integer, received {value!r}")
    steps = operator.index(value)
    if not 0 <= steps <= limits.max_denoising_steps:
        raise InvalidRequestError(
            "denoising_steps", f"expected 0 (server default) or 1..{limits.max_denoising_steps}, received {steps}"
        )
    return steps


# What a ROS string field holds where the sender's bytes were not UTF-8: with it refused, every text
# accepted re-encodes to exactly the bytes the client sent, so the byte limit measures what was sent.
REPLACEMENT_CHARACTER = "\ufffd"


def _check_text(value: Any, limits: ValidationLimits) -> str:
    limit = limits.max_text_bytes
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) > limit:
            raise InvalidRequestError("text_cmd", f"expected at most {limit} UTF-8 bytes, received {len(value)}")
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError("text_cmd", f"not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    elif isinstance(value, str):
        if REPLACEMENT_CHARACTER in value:  # rclpy decodes invalid UTF-8 into U+FFFD instead of failing
            raise InvalidRequestError("text_cmd", f"not valid UTF-8 (the text arrived with a replacement character "
                                                  f"at character {value.index(REPLACEMENT_CHARACTER)})")
        if len(value) > limit:
            raise InvalidRequestError("text_cmd", f"expected at most {limit} UTF-8 bytes, received {len(value)}+")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidRequestError("text_cmd", f"not valid UTF-8 (character {exc.start}: {exc.reason})") from None
        if size > limit:
            raise InvalidRequestError("text_cmd", f"expected at most {limit} UTF-8 bytes, received {size}")
        text = value
    else:
        raise InvalidRequestError("text_cmd", f"expected str or bytes, received {type(value).__name__}")
    if not text.strip():
        raise InvalidRequestError("text_cmd", "expected a non-empty command, received only whitespace or nothing")
    return text


def _check_state(value: Any, limits: ValidationLimits) -> np.ndarray:
    try:
        length = len(value)
    except TypeError:
        raise InvalidRequestError("sensor_data.state",
                                  f"expected a sequence of floats, received {type(value).__name__}") from None
    if length != limits.state_dim:
        raise InvalidRequestError("sensor_data.state", f"expected {limits.state_dim} values, received {length}")
    try:
        state = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidRequestError("sensor_data.state", "expected numbers") from None
    if state.shape != (limits.state_dim,):
        raise InvalidRequestError("sensor_data.state", f"expected shape ({limits.state_dim},), received {state.shape}")
    bad = np.flatnonzero(~np.isfinite(state))
    if bad.size:
        raise InvalidRequestError("sensor_data.state", f"expected finite values, received {state[bad[0]]} at index {bad[0]}")
    too_large = np.flatnonzero(np.abs(state) > _FLOAT32_MAX)
    if too_large.size:
        raise InvalidRequestError("sensor_data.state", f"value at index {too_large[0]} exceeds the float32 range")
    return state.astype(np.float32)


def _check_lidar(image: Optional[ImageLike], limits: ValidationLimits) -> Optional[np.ndarray]:
    """None for "no LiDAR" (absent, or height = width = 0 and no data), else float32 [rows, cols]."""
    prefix = "sensor_data.lidar_range"
    if image is None:
        return None
    try:
        encoding, height, width, step = image.encoding, image.height, image.width, image.step
        data, is_bigendian = image.data, image.is_bigendian
    except AttributeError as exc:
        raise InvalidRequestError(prefix, f"not an image: {exc}") from None
    try:
        view = memoryview(data)
    except TypeError:
        raise InvalidRequestError(f"{prefix}.data", f"expected a bytes-like object, received {type(data).__name__}") from None
    if view.format != "B" or view.ndim != 1:
        if not view.c_contiguous:
            raise InvalidRequestError(f"{prefix}.data", "expected a contiguous buffer")
        view = view.cast("B")
    if height == 0 and width == 0 and view.nbytes == 0:
        return None
    rows, cols = limits.lidar_rows, limits.lidar_cols
    if encoding != LIDAR_ENCODING:
        raise InvalidRequestError(f"{prefix}.encoding", f"expected {LIDAR_ENCODING!r}, received {encoding!r}")
    if height != rows:
        raise InvalidRequestError(f"{prefix}.height", f"expected {rows} (or 0 with width 0 for no LiDAR), received {height}")
    if width != cols:
        raise InvalidRequestError(f"{prefix}.width", f"expected {cols} (or 0 with height 0 for no LiDAR), received {width}")
    if step != cols * 4:
        raise InvalidRequestError(f"{prefix}.step", f"expected {cols * 4} (width {cols} x 4 bytes), received {step}")
    if view.nbytes != rows * step:
        raise InvalidRequestError(f"{prefix}.data",
                                  f"expected {rows * step} bytes (height {rows} x step {step}), received {view.nbytes}")
    ranges = np.frombuffer(view, dtype=">f4" if is_bigendian else "<f4").reshape(rows, cols)
    ok = np.isfinite(ranges) & (ranges >= 0.0)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        row, col = divmod(int(bad[0]), cols)
        raise InvalidRequestError(
            f"{prefix}.data",
            f"expected finite ranges >= 0 m, received {ranges[row, col]} at row {row}, col {col} ({bad.size} bad values)",
        )
    return ranges if ranges.dtype == np.float32 else ranges.astype(np.float32)


def validate_request(payload: RequestPayload, limits: ValidationLimits) -> ValidatedRequest:
    """Check every field of ``payload`` against ``limits``; raise ``InvalidRequestError`` naming the first bad one."""
    steps = _check_steps(payload.denoising_steps, limits)
    text = _check_text(payload.text, limits)
    state = _check_state(payload.state, limits)
    images = payload.images
    try:
        count = len(images)
    except TypeError:
        raise InvalidRequestError("sensor_data.images",
                                  f"expected a sequence of images, received {type(images).__name__}") from None
    if count != limits.num_cameras:
        raise InvalidRequestError(
            "sensor_data.images", f"expected {limits.num_cameras} images (one per camera_names entry), received {count}"
        )
    lidar = _check_lidar(payload.lidar_range, limits)
    rgb_images = []
    for index, image in enumerate(images):
        prefix = f"sensor_data.images[{index}]"
        try:
            rgb = decode_image(
                image.encoding, image.height, image.width, image.step, image.data, image.is_bigendian,
                field_prefix=prefix, exact_layout=limits.exact_image_layout, max_dim=limits.max_image_dim,
            )
        except ImageDecodeError as exc:
            raise InvalidRequestError(exc.field, exc.reason) from None
        except AttributeError as exc:
            raise InvalidRequestError(prefix, f"not an image: {exc}") from None
        rgb_images.append(resize_to_model(rgb, limits.image_size, limits.resize_mode))
    return ValidatedRequest(images=rgb_images, lidar_range=lidar, text=text, state=state, denoising_steps=steps)


class RequestValidator:
    """``validate_request`` bound to one ``ValidationLimits`` (what the serving core holds)."""

    def __init__(self, limits: ValidationLimits) -> None:
        self.limits = limits

    def validate(self, payload: RequestPayload) -> ValidatedRequest:
        return validate_request(payload, self.limits)

