"""Decode ``sensor_msgs/Image``- and ``CompressedImage``-style fields into RGB uint8 [H, W, 3].

Plain Python on purpose (no rclpy): the camera adapter and the request validator call it with a
message's attributes, and the tests call it with ``types.SimpleNamespace`` objects.

Every field is checked in O(1) before ``data`` is read, because malformed frames (wrong ``step``,
truncated ``data``, unknown encodings, absurd sizes) are a known way to crash ROS nodes. Failures raise
``ImageDecodeError`` naming the field, the expected value and the received one.

Encodings: ``decode_image`` reads every name in ``SUPPORTED_ENCODINGS`` (what common ROS 2 camera
drivers publish: RGB/BGR(A), mono, OpenCV's ``8UC1``/``8UC3``, packed YUV 4:2:2, 8-bit Bayer) but
accepts only those its ``encodings`` argument allows. The default is ``REQUEST_ENCODINGS``, the six
that ``vla_msgs/SensorData`` promises the server, so the request contract does not widen by accident;
the camera adapter passes ``SUPPORTED_ENCODINGS``.

Layout rules of ``decode_image``:

* ``step`` may exceed ``width * bytes_per_pixel`` (row padding, as V4L2 drivers send when they round
  ``bytesperline`` up); each row is cropped to its pixels. ``data`` may be longer than
  ``height * step``; the excess is ignored. ``exact_layout=True`` refuses both, for contracts that
  promise unpadded, exact buffers (``vla_msgs/SensorData``).
* YUV 4:2:2 needs an even width (two pixels share one U, V pair); Bayer needs at least 3 x 3 pixels
  (OpenCV's demosaicing returns black below that).
* ``mono16`` becomes 8 bit by keeping the top 8 of its ``mono16_bits`` significant bits
  (``value >> (mono16_bits - 8)``, clipped at 255): a fixed, frame-independent mapping, so brightness
  never jumps between frames the way per-frame min/max normalisation would. The default 16 keeps the
  high byte; 10- or 12-bit cameras that put their samples in the low bits need 10 or 12, which only the
  sender knows (a frame's maximum does not tell a dark 16-bit scene from a bright 12-bit one).
  ``is_bigendian`` selects the byte order of the 16-bit samples.
* The result aliases ``data`` when no conversion is needed (unpadded ``rgb8``) and is then read-only
  when ``data`` is immutable; callers that write into it copy first.
"""
from __future__ import annotations

import operator
from typing import Any, Collection, Optional, Tuple

import cv2
import numpy as np

MAX_IMAGE_DIM = 8192
# A compressed stream announcing more pixels is refused from its header: a 3 KB JPEG claiming 8192 x 8192
# held the camera adapter's thread for 4-6 s and 200 MB per buffer (fuzzing found it). 16 MP covers
# 4K (8.3 MP) and 12 MP sensors.
MAX_COMPRESSED_PIXELS = 16 * 1024 * 1024

# What the encodings mean, checked against public sources:
# * ros2/common_interfaces sensor_msgs/include/sensor_msgs/image_encodings.hpp (rolling c0c0bc5, lines 95-103; the
#   Kilted header installed here has the same lines): "uyvy" is fourcc UYVY (bytes U0 Y0 V0 Y1) and "yuv422" is its
#   deprecated name; "yuyv" is fourcc YUYV (bytes Y0 U0 Y1 V0) and "yuv422_yuy2" is its deprecated name; numChannels()
#   is 2 for all four (lines 192-199): 2 bytes per pixel.
# * Drivers: usb_cam (ros-drivers/usb_cam include/usb_cam/formats/yuyv.hpp and uyvy.hpp, line 51) publishes its "yuyv"
#   format as yuv422_yuy2 and "uyvy" as yuv422; v4l2_camera (tier4/ros2_v4l2_camera src/v4l2_camera_device.cpp lines
#   285-289) does the same, sets step to V4L2's bytesperline, which may include row padding, and its own converters
#   read Y0 U Y1 V for yuv422_yuy2 and U Y0 V Y1 for yuv422 (src/v4l2_camera.cpp lines 497-575).
# * ros-perception/vision_opencv cv_bridge/src/cv_bridge.cpp (rolling 8b42d66): yuv422 -> OpenCV's *_UYVY codes, and
#   yuv422_yuy2 -> *_YUY2 (lines 183-193); bayer_rggb -> BayerBG, bayer_bggr -> BayerRG, bayer_gbrg -> BayerGR,
#   bayer_grbg -> BayerGB (lines 196-210): OpenCV names a pattern by the second row's second and third pixels.
#   test_image_codec mosaics pure colours by hand per the ROS pattern and checks these codes give them back.
# * 8UC3 / 8UC1 carry no colour order. cv_bridge's Python cv2_to_imgmsg labels an OpenCV frame (BGR) "8UC3" by default
#   (cv_bridge/python/cv_bridge/core.py lines 239 and 272); cvtColorForDisplay guesses OpenCV's 3-channel 8-bit type as
#   bgr8 and 1-channel as mono8 (cv_bridge.cpp lines 709-716, which compare "CV_8UC3"/"CV_8UC1"), while cvtColor refuses
#   colour conversions from them (line 230). Here, as OpenCV frames are BGR: 8UC3 = bgr8, 8UC1 = mono8.
# * YUV -> RGB is OpenCV's BT.601 limited range (Y 16..235, the ITUR_BT_601_* constants of color_yuv.simd.hpp), the same
#   conversion cv_bridge applies; test_image_codec encodes colours by hand with the BT.601 formulas, decodes within 2.
BYTES_PER_PIXEL = {
    "rgb8": 3,
    "bgr8": 3,
    "rgba8": 4,
    "bgra8": 4,
    "mono8": 1,
    "mono16": 2,
    "8UC3": 3,
    "8UC1": 1,
    "uyvy": 2,
    "yuv422": 2,
    "yuyv": 2,
    "yuv422_yuy2": 2,
    "bayer_rggb8": 1,
    "bayer_bggr8": 1,
    "bayer_gbrg8": 1,
    "bayer_grbg8": 1,
}
SUPPORTED_ENCODINGS = tuple(BYTES_PER_PIXEL)
# What vla_msgs/SensorData promises the server; decode_image's default.
REQUEST_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")

COMPRESSED_CODECS = ("jpeg", "jpg", "png")

_TO_RGB = {
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
    "8UC3": cv2.COLOR_BGR2RGB,
    "8UC1": cv2.COLOR_GRAY2RGB,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "yuyv": cv2.COLOR_YUV2RGB_YUYV,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV,
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}
_YUV422 = frozenset(("uyvy", "yuv422", "yuyv", "yuv422_yuy2"))
_BAYER = frozenset(("bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"))
_BAYER_MIN_SIDE = 3

_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE_MARKERS = frozenset((0x01, *range(0xD0, 0xD9)))
# Real encoders put a handful of segments (APPn, DQT, DHT) before the frame header; the cap keeps a
# hostile stream of tiny segments from turning the header scan into a long Python loop.
_MAX_JPEG_SEGMENTS = 256
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageDecodeError(ValueError):
    """A field of an image message is unusable; ``field`` names it (with any caller prefix)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _field(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def as_byte_view(data: Any, field: str = "data") -> memoryview:
    """A flat unsigned-byte memoryview of ``data`` (bytes, bytearray, array.array, numpy), no copy."""
    try:
        view = memoryview(data)
    except TypeError:
        raise ImageDecodeError(field, f"expected a bytes-like object, received {type(data).__name__}") from None
    if view.format == "B" and view.ndim == 1:
        return view
    if not view.c_contiguous:
        raise ImageDecodeError(field, "expected a contiguous buffer")
    return view.cast("B")


def _as_dimension(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise ImageDecodeError(field, f"expected an integer, received {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ImageDecodeError(field, f"expected an integer, received {type(value).__name__}") from None


def check_image_layout(
    encoding: Any,
    height: Any,
    width: Any,
    step: Any,
    data_nbytes: int,
    *,
    field_prefix: str = "",
    exact_layout: bool = False,
    max_dim: int = MAX_IMAGE_DIM,
    encodings: Collection[str] = REQUEST_ENCODINGS,
) -> Tuple[str, int, int, int]:
    """Check the fields in O(1); return (encoding, height, width, step) as clean values.

    ``encodings`` (names from ``SUPPORTED_ENCODINGS``) is what this caller accepts; any other encoding is
    refused by name, listing them, so a driver's unexpected format is obvious from the log.
    """
    if not isinstance(encoding, str) or encoding not in encodings or encoding not in BYTES_PER_PIXEL:
        raise ImageDecodeError(
            _field(field_prefix, "encoding"),
            f"expected one of {', '.join(encodings)}, received {encoding!r}",
        )
    height = _as_dimension(height, _field(field_prefix, "height"))
    width = _as_dimension(width, _field(field_prefix, "width"))
    step = _as_dimension(step, _field(field_prefix, "step"))
    for name, value in (("height", height), ("width", width)):
        if not 1 <= value <= max_dim:
            raise ImageDecodeError(_field(field_prefix, name), f"expected 1..{max_dim}, received {value}")
        if encoding in _BAYER and value < _BAYER_MIN_SIDE:
            raise ImageDecodeError(
                _field(field_prefix, name),
                f"expected {_BAYER_MIN_SIDE}..{max_dim} for {encoding} (demosaicing needs 3 x 3 pixels), received {value}",
            )
    if encoding in _YUV422 and width % 2:
        raise ImageDecodeError(
            _field(field_prefix, "width"),
            f"expected an even width for {encoding} (two pixels share one U, V pair), received {width}",
        )
    row_bytes = width * BYTES_PER_PIXEL[encoding]
    if exact_layout and step != row_bytes:
        raise ImageDecodeError(
            _field(field_prefix, "step"),
            f"expected {row_bytes} (width {width} x {BYTES_PER_PIXEL[encoding]} bytes for {encoding}), "
            f"received {step}",
        )
    if step < row_bytes:
        raise ImageDecodeError(
            _field(field_prefix, "step"),
            f"expected >= {row_bytes} (width {width} x {BYTES_PER_PIXEL[encoding]} bytes for {encoding}), "
            f"received {step}",
        )
    needed = height * step
    if exact_layout and data_nbytes != needed:
        raise ImageDecodeError(
            _field(field_prefix, "data"),
            f"expected {needed} bytes (height {height} x step {step}), received {data_nbytes}",
        )
    if data_nbytes < needed:
        raise ImageDecodeError(
            _field(field_prefix, "data"),
            f"expected >= {needed} bytes (height {height} x step {step}), received {data_nbytes}",
        )
    return encoding, height, width, step


def decode_image(
    encoding: Any,
    height: Any,
    width: Any,
    step: Any,
    data: Any,
    is_bigendian: Any = False,
    *,
    field_prefix: str = "",
    exact_layout: bool = False,
    max_dim: int = MAX_IMAGE_DIM,
    encodings: Collection[str] = REQUEST_ENCODINGS,
    mono16_bits: int = 16,
) -> np.ndarray:
    """Raw image fields -> RGB uint8 [height, width, 3]; raises ``ImageDecodeError`` naming the field.

    ``encodings`` defaults to the request contract (see the module docstring); ``mono16_bits`` (8..16) is
    the number of significant bits in ``mono16`` samples, which the frame itself does not carry.
    """
    if isinstance(mono16_bits, bool) or not isinstance(mono16_bits, int) or not 8 <= mono16_bits <= 16:
        raise ValueError(f"mono16_bits: expected an integer 8..16, received {mono16_bits!r}")
    view = as_byte_view(data, _field(field_prefix, "data"))
    encoding, height, width, step = check_image_layout(
        encoding, height, width, step, view.nbytes,
        field_prefix=field_prefix, exact_layout=exact_layout, max_dim=max_dim, encodings=encodings,
    )
    bpp = BYTES_PER_PIXEL[encoding]
    if encoding == "mono16":
        sample = np.dtype(">u2" if is_bigendian else "<u2")
        mono16 = np.ndarray((height, width), dtype=sample, buffer=view, strides=(step, bpp))
        mono8 = np.minimum(mono16 >> (mono16_bits - 8), 255).astype(np.uint8)
        return cv2.cvtColor(mono8, cv2.COLOR_GRAY2RGB)
    if bpp == 1:
        pixels = np.ndarray((height, width), dtype=np.uint8, buffer=view, strides=(step, 1))
    else:
        pixels = np.ndarray((height, width, bpp), dtype=np.uint8, buffer=view, strides=(step, bpp, 1))
    if encoding == "rgb8":
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(np.ascontiguousarray(pixels), _TO_RGB[encoding])


def decode_image_msg(msg: Any, *, field_prefix: str = "", exact_layout: bool = False,
                     max_dim: int = MAX_IMAGE_DIM, encodings: Collection[str] = REQUEST_ENCODINGS,
                     mono16_bits: int = 16) -> np.ndarray:
    """``decode_image`` on any object with Image's attributes (an rclpy message, a SimpleNamespace)."""
    return decode_image(
        msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian,
        field_prefix=field_prefix, exact_layout=exact_layout, max_dim=max_dim,
        encodings=encodings, mono16_bits=mono16_bits,
    )


def _compressed_dimensions(view: memoryview) -> Optional[Tuple[int, int]]:
    """(height, width) from a PNG or JPEG header without decoding; None when neither is found."""
    head = bytes(view[:24])
    if head.startswith(_PNG_SIGNATURE) and len(head) >= 24 and head[12:16] == b"IHDR":
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    if not head.startswith(b"\xff\xd8"):
        return None
    pos, size = 2, view.nbytes
    for _ in range(_MAX_JPEG_SEGMENTS):
        if pos + 4 > size or view[pos] != 0xFF:
            return None
        marker = view[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            pos += 2
            continue
        if marker in _JPEG_SOF_MARKERS:
            if pos + 9 > size:
                return None
            return ((view[pos + 5] << 8) | view[pos + 6]), ((view[pos + 7] << 8) | view[pos + 8])
        length = (view[pos + 2] << 8) | view[pos + 3]
        if length < 2:
            return None
        pos += 2 + length
    return None


def decode_compressed(
    image_format: Any,
    data: Any,
    *,
    field_prefix: str = "",
    max_dim: int = MAX_IMAGE_DIM,
    max_pixels: int = MAX_COMPRESSED_PIXELS,
) -> np.ndarray:
    """``CompressedImage`` fields (``image_format`` like "jpeg" or "bgr8; png compressed bgr8") -> RGB uint8.

    The header is read first so an image announcing absurd dimensions (either side above ``max_dim``,
    or more than ``max_pixels``) is refused before OpenCV allocates and decodes for it. ``compressedDepth``
    streams (depth images with an extra header) are refused.
    """
    format_field = _field(field_prefix, "format")
    data_field = _field(field_prefix, "data")
    if not isinstance(image_format, str):
        raise ImageDecodeError(format_field, f"expected a string, received {type(image_format).__name__}")
    lowered = image_format.lower()
    if "compresseddepth" in lowered or not any(codec in lowered for codec in COMPRESSED_CODECS):
        raise ImageDecodeError(format_field, f"expected a jpeg or png format, received {image_format!r}")
    view = as_byte_view(data, data_field)
    if view.nbytes == 0:
        raise ImageDecodeError(data_field, "expected a compressed image, received 0 bytes")
    dims = _compressed_dimensions(view)
    if dims is None:
        raise ImageDecodeError(data_field, "expected a JPEG or PNG stream, found no readable header")
    for name, value in zip(("height", "width"), dims):
        if not 1 <= value <= max_dim:
            raise ImageDecodeError(data_field, f"{name} in header: expected 1..{max_dim}, received {value}")
    if dims[0] * dims[1] > max_pixels:
        raise ImageDecodeError(data_field, f"header announces {dims[0]} x {dims[1]} = {dims[0] * dims[1]} pixels, "
                                           f"at most {max_pixels} are decoded")
    try:
        bgr = cv2.imdecode(np.frombuffer(view, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageDecodeError(data_field, f"OpenCV could not decode the {view.nbytes}-byte stream: {exc}") from None
    if bgr is None:
        raise ImageDecodeError(data_field, f"OpenCV could not decode the {view.nbytes}-byte stream")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_compressed_msg(msg: Any, *, field_prefix: str = "", max_dim: int = MAX_IMAGE_DIM) -> np.ndarray:
    """``decode_compressed`` on any object with CompressedImage's ``format`` and ``data``."""
    return decode_compressed(msg.format, msg.data, field_prefix=field_prefix, max_dim=max_dim)
