"""Fuzz vla_inference_node and the sensor adapters with mutated messages, as real processes over real DDS.

    python -m vla_inference.lab.fuzz --target server|camera|lidar|camera_compressed|all --duration 60 --seed 0 \
        --out out/fuzz
    python -m vla_inference.lab.fuzz --target camera --replay out/fuzz/crashes/camera-1   # a crash, again

Why: every node here decodes bytes that any peer on the graph may publish, and a node that dies on one bad
message takes the robot's policy down with it. The campaign starts the target as its own process (the
installed console script, so nothing of the fuzzer shares its interpreter), brings it up (the server through
its lifecycle services), and for ``--duration`` seconds publishes, at ``--rate`` per second:

* raw mutations of a good message's CDR bytes, published as a serialized message (``Publisher.publish``
  takes ``bytes``): ``bit_flip``, ``byte_flip``, ``truncate``, ``extend``, ``huge_length`` (a sequence or
  string length prefix set to 2**32-1, 2**31, ...), ``length_skew`` (a length prefix a few off, so every
  field after it is read shifted) and ``encapsulation`` (the 4-byte CDR header). The length prefixes are
  found by walking the message's type description (``cdr_layout``), checked against the serialized bytes;
* field-level mutations of valid messages, each named as its kind (``image_step``, ``cloud_row_step``,
  ``text_huge``, ...), which the target must refuse: the server with INVALID_REQUEST (a share of them through
  the /vla/inference/infer service, counted as ``svc:<kind>``), the adapters by dropping the frame (an output
  for such a frame is a contract violation);
* good messages, as a control (the server must serve them; an adapter's output shows it still converts).

Every second the target process must still be running; at the end a good message must still be served (the
server: one request on the topic and one through the service, both OK; an adapter: a good frame in gives an
adapted frame out). A crash saves the last messages sent as ``.cdr`` files (``--replay`` sends them again),
restarts the target and goes on. The JSON record (``<out>/<target>.json``, ``<out>/summary.json``) holds
messages sent per kind, the server's answers by status and kind, the adapters' own received / published /
dropped counts (from /diagnostics), crashes, violations and the target's log findings.

Targets: ``server`` (vla_inference_node), ``camera`` (camera_adapter_node, raw Image), ``lidar``
(lidar_adapter_node) and ``camera_compressed`` (camera_adapter_node with ``compressed: true``: JPEG / PNG
streams, damaged ones included, reach OpenCV's decoders). CI runs ``CI_DURATION_S`` (60 s) per target
(test/test_fuzz.py); the documented longer run is ``--target all --duration 600`` (``LONG_DURATION_S``).
Without ``--domain-id`` the CLI picks a private DDS domain, so garbage is never published into a live
robot's graph by accident.
"""
from __future__ import annotations

import argparse
import array
import itertools
import json
import logging
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

LOG = logging.getLogger(__name__)

CI_DURATION_S = 60.0
LONG_DURATION_S = 600.0
TARGETS = ("server", "camera", "lidar")  # what the issue names; "all" in the CLI adds EXTRA_TARGETS
EXTRA_TARGETS = ("camera_compressed",)  # the camera adapter with compressed: true (JPEG / PNG through OpenCV)
DEFAULT_RATE_HZ = {"server": 40.0, "camera": 80.0, "lidar": 60.0, "camera_compressed": 60.0}

RAW_KINDS = ("bit_flip", "byte_flip", "truncate", "extend", "huge_length", "length_skew", "encapsulation")
GOOD_KIND = "good"
SERVICE_PREFIX = "svc:"
FINAL_CHECK = "final_check"
HUGE_LENGTHS = (0xFFFFFFFF, 0xFFFFFFFE, 0x80000000, 0x7FFFFFFF, 0x40000000, 0x10000000, 0x01000000, 0x00100000)
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
# Representation identifiers of the 2-byte encapsulation header (DDS-XTypes 7.6.3.1.2): CDR_BE, CDR_LE,
# PL_CDR_BE, PL_CDR_LE, CDR2_BE, CDR2_LE, D_CDR2_BE, D_CDR2_LE, PL_CDR2_BE, PL_CDR2_LE, XML, and junk.
ENCAPSULATIONS = (b"\x00\x00", b"\x00\x01", b"\x00\x02", b"\x00\x03", b"\x00\x06", b"\x00\x07", b"\x00\x08",
                  b"\x00\x09", b"\x00\x0a", b"\x00\x0b", b"\x00\x04", b"\xff\xff")
STRUCTURE_BIAS = 0.8  # share of flips aimed at the bytes that are not pixel / point payload
RING_SIZE = 32  # messages kept for a crash reproducer
CHECK_PERIOD_S = 1.0
MAX_RESTARTS = 3
STALL_S = 10.0  # no /diagnostics heartbeat from a running target for this long: a stall
RSS_SAMPLE_PERIOD_S = 10.0
REPLAY_REPEATS = 3
# The CLI's private domains: the upper range ROS 2 documents as safe on Linux, clear of the default 0 (a live
# robot, a soak run) and of the 1..100 the test sessions draw from (test/conftest.py).
PRIVATE_DOMAINS = range(215, 233)
REPLAY_SETTLE_S = 10.0  # after a replay, keep watching: the frames may still be queued in the target
CDR_HEADER = 4

# Log lines of the target worth counting: DDS refusing a malformed sample, and Python tracebacks.
LOG_PATTERNS = {
    "sequence_size_rejections": re.compile(r"sequence size exceeds remaining buffer"),
    "fastcdr_exceptions": re.compile(r"Fast CDR exception"),
    "deserialization_errors": re.compile(r"[Dd]eserializ\w* (of data )?failed|Error deserializ"),
    "tracebacks": re.compile(r"^Traceback \(most recent call last\)", re.M),
}


# -- CDR layout -------------------------------------------------------------------------------------------
class LayoutError(ValueError):
    """The walk of a message's type does not account for its serialized bytes (another CDR version?)."""


@dataclass(frozen=True)
class LengthPrefix:
    """A uint32 length of a sequence or string: ``offset`` into the serialized bytes (header included)."""

    offset: int
    path: str
    value: int


@dataclass(frozen=True)
class CdrLayout:
    """Where a serialized message keeps its length prefixes, and which byte ranges are bulk payload
    (primitive sequences longer than ``BULK_MIN_BYTES``: pixels, points), so flips can aim elsewhere."""

    size: int
    prefixes: Tuple[LengthPrefix, ...]
    bulk: Tuple[Tuple[int, int], ...]
    padding: Tuple[Tuple[int, int], ...] = ()  # alignment gaps and final padding: the serializer leaves them uninitialised

    @property
    def structure(self) -> Tuple[Tuple[int, int], ...]:
        """The complement of ``bulk`` in [0, size): headers, dimensions, strings, short sequences."""
        spans, start = [], 0
        for begin, end in self.bulk:
            if begin > start:
                spans.append((start, begin))
            start = max(start, end)
        if start < self.size:
            spans.append((start, self.size))
        return tuple(spans)


BULK_MIN_BYTES = 16
_PRIMITIVE_SIZES = {
    "boolean": 1, "octet": 1, "char": 1, "uint8": 1, "int8": 1, "int16": 2, "uint16": 2, "wchar": 2,
    "int32": 4, "uint32": 4, "float": 4, "int64": 8, "uint64": 8, "double": 8,
}


def _align(position: int, size: int) -> int:
    # XCDR version 1 (what rmw_fastrtps_cpp writes): primitives aligned to their size, at most 8, from the payload start.
    alignment = min(size, 8)
    return -(-position // alignment) * alignment


class _Walker:
    def __init__(self) -> None:
        self.prefixes: List[LengthPrefix] = []
        self.bulk: List[Tuple[int, int]] = []
        self.padding: List[Tuple[int, int]] = []

    def align(self, pos: int, size: int) -> int:
        aligned = _align(pos, size)
        if aligned > pos:
            self.padding.append((pos + CDR_HEADER, aligned + CDR_HEADER))
        return aligned

    def message(self, msg: Any, pos: int, path: str) -> int:
        from rosidl_parser.definition import EMPTY_STRUCTURE_REQUIRED_MEMBER_NAME

        names = list(msg.get_fields_and_field_types())
        types = type(msg).SLOT_TYPES
        if not names:  # an empty message is serialized with its one placeholder byte
            return pos + 1 if EMPTY_STRUCTURE_REQUIRED_MEMBER_NAME else pos
        for name, type_ in zip(names, types):
            pos = self.value(getattr(msg, name), type_, pos, f"{path}.{name}" if path else name)
        return pos

    def value(self, value: Any, type_: Any, pos: int, path: str) -> int:
        from rosidl_parser.definition import AbstractSequence, AbstractString, Array, BasicType, NamespacedType

        if isinstance(type_, BasicType):
            size = _PRIMITIVE_SIZES.get(type_.typename)
            if size is None:
                raise LayoutError(f"{path}: no CDR size known for {type_.typename}")
            return self.align(pos, size) + size
        if isinstance(type_, AbstractString):
            pos = self.align(pos, 4)
            length = len(value.encode("utf-8")) + 1  # the terminating NUL is counted and sent
            self.prefixes.append(LengthPrefix(pos + CDR_HEADER, path, length))
            return pos + 4 + length
        if isinstance(type_, NamespacedType):
            return self.message(value, pos, path)
        if isinstance(type_, AbstractSequence):
            pos = self.align(pos, 4)
            self.prefixes.append(LengthPrefix(pos + CDR_HEADER, path, len(value)))
            return self.elements(value, type_.value_type, pos + 4, path)
        if isinstance(type_, Array):
            return self.elements(value, type_.value_type, pos, path)
        raise LayoutError(f"{path}: cannot walk {type(type_).__name__}")

    def elements(self, values: Any, type_: Any, pos: int, path: str) -> int:
        from rosidl_parser.definition import BasicType

        if isinstance(type_, BasicType) and type_.typename in _PRIMITIVE_SIZES:
            size = _PRIMITIVE_SIZES[type_.typename]
            if not len(values):
                return pos
            start = self.align(pos, size)
            end = start + size * len(values)
            if end - start > BULK_MIN_BYTES:
                self.bulk.append((start + CDR_HEADER, end + CDR_HEADER))
            return end
        for index, item in enumerate(values):
            pos = self.value(item, type_, pos, f"{path}[{index}]")
        return pos


def cdr_layout(msg: Any, raw: Optional[bytes] = None) -> CdrLayout:
    """Length prefixes and bulk ranges of ``msg`` serialized (``raw``, serialized here when None).

    The walk is checked against the bytes: every prefix must hold the length the message has, and the walk
    must end where the payload ends (up to 3 bytes of final padding); else ``LayoutError``.
    """
    if raw is None:
        from rclpy.serialization import serialize_message

        raw = serialize_message(msg)
    if raw[:2] != b"\x00\x01":
        raise LayoutError(f"expected a little-endian CDR header, received {raw[:4].hex()}")
    walker = _Walker()
    end = walker.message(msg, 0, "")
    if not 0 <= len(raw) - CDR_HEADER - end <= 3:
        raise LayoutError(f"the walk ends at payload byte {end}; the payload has {len(raw) - CDR_HEADER}")
    for prefix in walker.prefixes:
        found = int.from_bytes(raw[prefix.offset:prefix.offset + 4], "little")
        if found != prefix.value:
            raise LayoutError(f"{prefix.path}: expected length {prefix.value} at byte {prefix.offset}, found {found}")
    padding = walker.padding + ([(end + CDR_HEADER, len(raw))] if len(raw) > end + CDR_HEADER else [])
    return CdrLayout(len(raw), tuple(walker.prefixes), tuple(sorted(walker.bulk)), tuple(padding))


def serialize(msg: Any) -> Tuple[bytes, Optional[CdrLayout]]:
    """``serialize_message`` with the padding bytes zeroed (Fast CDR leaves stale memory there), so a seed
    gives the same bytes every run; and the layout (None when the walk fails)."""
    from rclpy.serialization import serialize_message

    raw = serialize_message(msg)
    try:
        layout = cdr_layout(msg, raw)
    except LayoutError as exc:
        LOG.debug("cdr walk failed (%s)", exc)
        return raw, None
    buf = bytearray(raw)
    for begin, end in layout.padding:
        buf[begin:end] = bytes(end - begin)
    return bytes(buf), layout


def scan_layout(raw: bytes, lengths: Iterable[int]) -> CdrLayout:
    """The fallback when ``cdr_layout`` cannot walk a type: 4-byte aligned words equal to a known length."""
    wanted = set(lengths)
    prefixes = tuple(LengthPrefix(offset, "?", value) for offset in range(CDR_HEADER, len(raw) - 3, 4)
                     if (value := int.from_bytes(raw[offset:offset + 4], "little")) in wanted)
    return CdrLayout(len(raw), prefixes, ())


# -- mutations --------------------------------------------------------------------------------------------
class Mutator:
    """Byte-level mutations of serialized messages; deterministic for a given ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def mutate(self, kind: str, raw: bytes, layout: CdrLayout) -> bytes:
        buf = bytearray(raw)
        getattr(self, f"_{kind}")(buf, layout)
        return bytes(buf)

    def _position(self, layout: CdrLayout, size: int) -> int:
        """A byte to mutate: mostly in the structure (a length, a dimension, an encoding), else anywhere."""
        spans = layout.structure
        if spans and self.rng.random() < STRUCTURE_BIAS:
            begin, end = self.rng.choices(spans, weights=[e - b for b, e in spans])[0]
            return min(self.rng.randrange(begin, end), size - 1)
        return self.rng.randrange(size)

    def _bit_flip(self, buf: bytearray, layout: CdrLayout) -> None:
        for _ in range(self.rng.randint(1, 8)):
            buf[self._position(layout, len(buf))] ^= 1 << self.rng.randrange(8)

    def _byte_flip(self, buf: bytearray, layout: CdrLayout) -> None:
        for _ in range(self.rng.randint(1, 16)):
            value = self.rng.choice(INTERESTING_BYTES) if self.rng.random() < 0.5 else self.rng.randrange(256)
            buf[self._position(layout, len(buf))] = value

    def _truncate(self, buf: bytearray, layout: CdrLayout) -> None:
        cut = self._position(layout, len(buf)) if self.rng.random() < 0.5 else self.rng.randrange(len(buf))
        del buf[cut:]

    def _extend(self, buf: bytearray, layout: CdrLayout) -> None:
        size = self.rng.randint(1, 64) if self.rng.random() < 0.5 else self.rng.randint(65, 65536)
        buf.extend(self.rng.randbytes(size))

    def _huge_length(self, buf: bytearray, layout: CdrLayout) -> None:
        if not layout.prefixes:
            return self._byte_flip(buf, layout)
        prefix = self.rng.choice(layout.prefixes)
        value = self.rng.choice(HUGE_LENGTHS + (len(buf), len(buf) - prefix.offset, prefix.value * 2 + 1))
        buf[prefix.offset:prefix.offset + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")

    def _length_skew(self, buf: bytearray, layout: CdrLayout) -> None:
        if not layout.prefixes:
            return self._bit_flip(buf, layout)
        prefix = self.rng.choice(layout.prefixes)
        value = 0 if self.rng.random() < 0.15 else max(0, prefix.value + self.rng.choice((-8, -4, -3, -2, -1, 1, 2, 3, 4, 8)))
        buf[prefix.offset:prefix.offset + 4] = value.to_bytes(4, "little")

    def _encapsulation(self, buf: bytearray, layout: CdrLayout) -> None:
        buf[0:2] = self.rng.choice(ENCAPSULATIONS)
        if self.rng.random() < 0.3:  # the options bytes: the last two bits count final padding
            buf[2:4] = self.rng.randbytes(2)


@dataclass
class Sample:
    """One message to publish: ``kind`` names it in the counts; ``expect`` is what the target must do.

    expect: "invalid" (the server answers INVALID_REQUEST or rate-limits it), "drop" (an adapter publishes
    nothing for it), "valid" (the server serves it), None (anything but a crash).
    """

    kind: str
    payload: bytes
    expect: Optional[str] = None
    request_id: Optional[int] = None
    marker: str = ""
    message: Any = field(default=None, repr=False)  # set for samples sent through a service, which takes no bytes


def raw_kind_sample(mutator: Mutator, rng: random.Random, msg: Any, marker: str = "") -> Sample:
    """A raw mutation of ``msg`` of a random kind in ``RAW_KINDS``."""
    raw, layout = serialize(msg)
    if layout is None:  # scan for the lengths the message is known to hold instead
        layout = scan_layout(raw, (len(getattr(msg, "data", b"")), len(getattr(msg, "header").frame_id) + 1))
    kind = rng.choice(RAW_KINDS)
    return Sample(kind, mutator.mutate(kind, raw, layout), marker=marker)


# -- message builders -------------------------------------------------------------------------------------
def _np_rng(rng: random.Random) -> np.random.Generator:
    return np.random.default_rng(rng.getrandbits(63))


def image_msg(encoding: str, height: int, width: int, data: bytes, *, step: Optional[int] = None, frame_id: str = "",
              bytes_per_pixel: Optional[int] = None, is_bigendian: int = 0) -> Any:
    """A sensor_msgs/Image with whatever layout the caller gives (no checks: this builds bad ones too)."""
    from sensor_msgs.msg import Image

    from vla_inference.sensors.image_codec import BYTES_PER_PIXEL

    bpp = bytes_per_pixel or BYTES_PER_PIXEL.get(encoding, 1)
    msg = Image(height=height, width=width, encoding=encoding, step=width * bpp if step is None else step,
                is_bigendian=is_bigendian)
    msg.header.frame_id = frame_id
    msg.data = data
    return msg


def random_image(rng: random.Random, encodings: Sequence[str], *, max_side: int = 64, frame_id: str = "",
                 padding: bool = False) -> Any:
    """A valid random frame: any of ``encodings``, sides 3..max_side (even width for YUV 4:2:2), optional row padding."""
    from vla_inference.sensors.image_codec import BYTES_PER_PIXEL

    encoding = rng.choice(list(encodings))
    height, width = rng.randint(3, max_side), rng.randint(3, max_side)
    if encoding in ("uyvy", "yuv422", "yuyv", "yuv422_yuy2"):
        width += width % 2
    bpp = BYTES_PER_PIXEL[encoding]
    step = width * bpp + (rng.choice((1, 3, 64)) if padding else 0)
    return image_msg(encoding, height, width, _np_rng(rng).bytes(height * step), step=step, frame_id=frame_id,
                     is_bigendian=rng.choice((0, 1)) if encoding == "mono16" else 0)


def cloud_msg(points: np.ndarray, *, frame_id: str = "", height: int = 1, is_dense: bool = True,
              row_padding: int = 0) -> Any:
    """A sensor_msgs/PointCloud2 of ``points`` [N, 3] with x, y, z, intensity FLOAT32 (point_step 16)."""
    from sensor_msgs.msg import PointCloud2, PointField

    count = len(points)
    width = count // height if height else 0
    cloud = np.zeros((count, 4), dtype="<f4")
    cloud[:, :3] = points
    cloud[:, 3] = 1.0
    rows = cloud.view(np.uint8).reshape(height, width * 16)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((height, row_padding), np.uint8)], axis=1)
    fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
              for i, name in enumerate(("x", "y", "z", "intensity"))]
    msg = PointCloud2(height=height, width=width, fields=fields, is_bigendian=False, point_step=16,
                      row_step=width * 16 + row_padding, is_dense=is_dense)
    msg.header.frame_id = frame_id
    msg.data = np.ascontiguousarray(rows).tobytes()
    return msg


def random_points(rng: random.Random, count: int) -> np.ndarray:
    """Points inside the shipped projection's field of view (ranges 0.5..15 m, elevation within +-14 deg)."""
    gen = _np_rng(rng)
    ranges = gen.uniform(0.5, 15.0, count)
    azimuth = gen.uniform(-math.pi, math.pi, count)
    elevation = np.radians(gen.uniform(-14.0, 14.0, count))
    return np.stack([ranges * np.cos(elevation) * np.cos(azimuth), ranges * np.cos(elevation) * np.sin(azimuth),
                     ranges * np.sin(elevation)], axis=1).astype(np.float32)


# -- targets ----------------------------------------------------------------------------------------------
class Driver:
    """The fuzzer's own rclpy node in a private context, spun in a background thread."""

    def __init__(self, domain_id: Optional[int]) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from vla_inference.nodes.entry_point import transport_environment

        # The same large-message transport the nodes use (a ~1 MB request must go in one piece).
        os.environ.update(transport_environment(os.environ))
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(f"vla_fuzz_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True, name="vla_fuzz_spin")
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass
        except Exception:  # noqa: BLE001 - a dying spin thread must say why, the campaign then times out its waits
            LOG.exception("the fuzzer's executor stopped")

    def wait_future(self, future: Any, timeout_s: float, abort: Callable[[], Optional[str]]) -> Any:
        """The future's result; TimeoutError after ``timeout_s``, RuntimeError when ``abort`` gives a reason."""
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        deadline = time.monotonic() + timeout_s
        while not done.wait(0.1):
            reason = abort()
            if reason is not None:
                future.cancel()
                raise RuntimeError(reason)
            if time.monotonic() > deadline:
                future.cancel()
                raise TimeoutError(f"no answer within {timeout_s:g} s")
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self._thread.join(5.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def wait_until(condition: Callable[[], bool], timeout_s: float, abort: Callable[[], Optional[str]],
               what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        reason = abort()
        if reason is not None:
            raise RuntimeError(f"{what}: {reason}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.05)


class FuzzTarget:
    """What differs between targets: the process, the input and output topics, the samples, the checks."""

    name = ""
    executable = ""
    module = ""
    node_name = ""
    namespace = ""
    parameters: Dict[str, str] = {}

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.mutator = Mutator(self.rng)
        self.serial = itertools.count(1)
        self._lock = threading.Lock()
        self.heartbeat_at: Optional[float] = None
        self.stalled = False
        self.target_counts: Dict[str, str] = {}
        self.outputs = 0
        self.violations: List[Dict[str, Any]] = []
        self.violation_count = 0

    # process
    def command(self) -> List[str]:
        """The installed console script (as ``ros2 run`` finds it), else ``python -m`` the module."""
        try:
            from ament_index_python.packages import PackageNotFoundError, get_package_prefix

            path = Path(get_package_prefix("vla_inference")) / "lib" / "vla_inference" / self.executable
            if os.access(path, os.X_OK):
                return [str(path)]
        except (ImportError, PackageNotFoundError):
            pass
        return [sys.executable, "-m", self.module]

    def ros_arguments(self) -> List[str]:
        args = ["--ros-args"]
        if self.namespace:
            args += ["-r", f"__ns:={self.namespace}"]
        for key, value in self.parameters.items():
            args += ["-p", f"{key}:={value}"]
        return args

    # graph
    def attach(self, driver: Driver) -> None:
        raise NotImplementedError

    def bring_up(self, driver: Driver, abort: Callable[[], Optional[str]]) -> None:
        raise NotImplementedError

    def next_sample(self) -> Sample:
        raise NotImplementedError

    def send(self, sample: Sample) -> None:
        raise NotImplementedError

    def final_check(self, driver: Driver, abort: Callable[[], Optional[str]]) -> Tuple[bool, str]:
        raise NotImplementedError

    def report(self) -> Dict[str, Any]:
        return {}

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.hardware_id == self.node_name and (not self.namespace or self.namespace in status.name):
                with self._lock:
                    self.heartbeat_at = time.monotonic()
                    self.target_counts = {kv.key: kv.value for kv in status.values}

    def _attach_diagnostics(self, driver: Driver) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        driver.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)

    def _violation(self, **details: Any) -> None:
        with self._lock:
            self.violation_count += 1
            if len(self.violations) < 20:
                self.violations.append(details)

    def _marker(self, family: str, kind: str) -> str:
        return f"fuzz/{family}/{kind}/{next(self.serial)}"


class ServerTarget(FuzzTarget):
    """vla_inference_node: InferenceRequest on the request topic, answers on the response topic."""

    name = "server"
    executable = "vla_inference_node"
    module = "vla_inference.nodes.inference_node"
    node_name = "vla_inference_node"
    # The rate limit runs before validation, so it is at its maximum to let the fuzz reach the validator; a
    # cheap inference (2 steps, 2 samples, 1 thread) leaves the fuzzer CPU on a small machine; a long
    # deadline keeps the final check's answer OK under that load.
    parameters = {"max_request_rate_hz": "100.0", "denoising_steps": "2", "num_samples": "2", "intra_op_threads": "1",
                  "deadline_ms": "20000.0"}
    FIELD_KINDS = ("image_count", "image_step", "image_data_short", "image_data_long", "image_encoding",
                   "image_huge_dims", "image_zero_dims", "text_huge", "text_blank", "text_invalid_utf8", "state_length",
                   "state_nonfinite", "lidar_layout", "lidar_nonfinite", "steps_range")
    ALLOWED = {"invalid": ("INVALID_REQUEST", "REJECTED_RATE_LIMIT"),
               "valid": ("OK", "SUPERSEDED", "DEADLINE_EXCEEDED", "REJECTED_RATE_LIMIT")}
    SERVICE_SHARE = 0.2  # of the good and field-mutated requests; at most SERVICE_IN_FLIGHT calls outstanding, else the topic
    SERVICE_IN_FLIGHT = 2
    TEXTS = ("reach the red block", "push the blue cube left", "pick up the green block", "grüner Würfel 🤖 nach links")

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        from vla_inference.synthetic import generate_scene, make_observation

        observation = make_observation(generate_scene(seed % 1000), num_cameras=3, with_lidar=True)
        self._full_images = [np.ascontiguousarray(image) for image in observation.images]
        self._lidar = np.ascontiguousarray(observation.lidar_range, dtype=np.float32)
        self._state_dim = len(observation.state)
        self._ids = itertools.count(1 << 40)
        self._sent: Dict[int, Tuple[str, Optional[str]]] = {}
        self.statuses: Counter = Counter()
        self.by_kind: Dict[str, Counter] = {}
        self.unattributed = 0
        self._answers: Dict[int, Any] = {}
        self._publisher: Any = None
        self._service: Any = None
        self._calls: List[Tuple[Any, float]] = []
        self.service_lost = 0

    # messages
    def good_request(self, full: bool = False) -> Any:
        """A valid request: small random frames of any request encoding (``full``: the 224x224 scene + LiDAR)."""
        from rclpy.time import Time

        from vla_inference.client.vla_client import build_request, range_image_msg, rgb_image_msg
        from vla_inference.sensors.image_codec import REQUEST_ENCODINGS

        rng = self.rng
        if full:
            images = [rgb_image_msg(image, "camera") for image in self._full_images]
        else:
            images = [random_image(rng, REQUEST_ENCODINGS, max_side=48, frame_id="camera") for _ in range(3)]
        lidar = range_image_msg(self._lidar) if full or rng.random() < 0.1 else None
        text = rng.choice(self.TEXTS) + ("" if rng.random() < 0.5 else " " + "x" * rng.randint(1, 300))
        state = _np_rng(rng).normal(0.0, 0.3, self._state_dim).astype(np.float32)
        request_id = next(self._ids)
        return build_request(request_id, images, text, state, lidar, Time(), denoising_steps=rng.choice((0, 1, 2, 3)),
                             frame_id=self.frame_id(request_id))

    @staticmethod
    def frame_id(request_id: int) -> str:
        """The id again, in the header the server echoes: a raw mutation that rewrote the request_id (to a
        recent one, say) no longer matches it, so its answer is not counted against another request's kind."""
        return f"fuzz/{request_id}"

    def next_sample(self) -> Sample:
        roll = self.rng.random()
        full = self.rng.random() < 0.12
        request = self.good_request(full=full)
        if roll < 0.5:
            if roll < 0.15:
                kind, expect, payload = GOOD_KIND, "valid", serialize(request)[0]
            else:
                kind, expect = self.rng.choice(self.FIELD_KINDS), "invalid"
                payload = self._field_mutation(kind, request)
            sample = Sample(kind, payload, expect, request.request_id)
            if kind != "text_invalid_utf8" and self.rng.random() < self.SERVICE_SHARE:
                # The same contract through /vla/inference/infer (the service takes a message, not bytes).
                sample = Sample(f"{SERVICE_PREFIX}{kind}", payload, expect, request.request_id, message=request)
        else:
            sample = raw_kind_sample(self.mutator, self.rng, request)
            sample.request_id = request.request_id
        with self._lock:
            self._sent[request.request_id] = (sample.kind, sample.expect)
        return sample

    def _field_mutation(self, kind: str, request: Any) -> bytes:
        """``request`` broken in one field as ``kind`` says, serialized; the server must refuse it."""
        from vla_inference.client.vla_client import range_image_msg
        from vla_inference.sensors.image_codec import BYTES_PER_PIXEL, REQUEST_ENCODINGS

        rng = self.rng
        data = request.sensor_data
        image = rng.choice(data.images)
        bpp = BYTES_PER_PIXEL[image.encoding]
        if kind == "image_count":
            count = rng.choice((0, 1, 2, 4, 5, 16, 64))
            data.images = (list(data.images) * 22)[:count]
        elif kind == "image_step":
            image.step = rng.choice((0, 1, image.width * bpp - 1, image.width * bpp + 1, 2 * image.width * bpp,
                                     0xFFFFFFFF, 0x80000000))
        elif kind == "image_data_short":
            image.data = bytes(image.data)[:rng.randrange(len(image.data))]
        elif kind == "image_data_long":
            image.data = bytes(image.data) + rng.randbytes(rng.choice((1, 3, 4096)))
        elif kind == "image_encoding":
            image.encoding = rng.choice(("", "32FC1", "16UC1", "rgb16", "yuv422", "bayer_rggb8", "8UC3", "RGB8", "rgb8 ",
                                         "jpeg", "x" * 4096, "".join(rng.choices("abcdefgh0123456789_", k=12))))
            assert image.encoding not in REQUEST_ENCODINGS  # the adapter takes more; the request contract does not
        elif kind == "image_huge_dims":
            huge = rng.choice((8193, 100_000, 0x7FFFFFFF, 0xFFFFFFFF))
            setattr(image, rng.choice(("height", "width")), huge)
        elif kind == "image_zero_dims":
            setattr(image, rng.choice(("height", "width")), 0)
        elif kind == "text_huge":
            size = 513 + rng.choice((0, 1, 100, 5000, 60_000)) + (1 << 20 if rng.random() < 0.03 else 0)
            request.text_cmd = "a" * size
        elif kind == "text_blank":
            request.text_cmd = rng.choice(("", " ", "\t\n", " " * 300))
        elif kind == "text_invalid_utf8":
            return self._invalid_utf8(request)
        elif kind == "state_length":
            data.state = array.array("f", [0.0] * rng.choice((0, 1, self._state_dim - 1, self._state_dim + 1, 1000)))
        elif kind == "state_nonfinite":
            state = array.array("f", data.state)
            state[rng.randrange(len(state))] = rng.choice((math.nan, math.inf, -math.inf))
            data.state = state
        elif kind == "lidar_layout":
            self._break_lidar(request)
        elif kind == "lidar_nonfinite":
            ranges = self._lidar.copy()
            ranges.reshape(-1)[rng.randrange(ranges.size)] = rng.choice((math.nan, math.inf, -math.inf, -1.0))
            data.lidar_range = range_image_msg(ranges)
        elif kind == "steps_range":
            request.denoising_steps = rng.choice((51, 100, 1000, 65535))
        else:
            raise ValueError(f"unknown field mutation {kind!r}")
        return serialize(request)[0]

    def _break_lidar(self, request: Any) -> None:
        from vla_inference.client.vla_client import range_image_msg

        lidar = range_image_msg(self._lidar)
        choice = self.rng.randrange(6)
        if choice == 0:
            lidar.height -= 1
        elif choice == 1:
            lidar.width = self.rng.choice((1023, 1025, 0xFFFFFFFF))
        elif choice == 2:
            lidar.step = self.rng.choice((0, 4095, 4097))
        elif choice == 3:
            lidar.encoding = self.rng.choice(("32FC2", "16UC1", "64FC1", "mono8", ""))
        elif choice == 4:
            lidar.data = bytes(lidar.data)[:-self.rng.choice((1, 4, 4096))]
        else:
            lidar.height = lidar.width = 0  # "no LiDAR" must come without data
        request.sensor_data.lidar_range = lidar

    def _invalid_utf8(self, request: Any) -> bytes:
        request.text_cmd = "reach the MARKER block"
        raw = serialize(request)[0]
        junk = self.rng.choice((b"\xffr\xfed\xc3(", b"\x80\x80\x80\x80\x80\x80", b"ab\xe2\x82cd", b"\xed\xa0\x80xyz",
                                b"\xc0\xafxyzw", b"\xf8\x88\x80\x80\x80z"))
        assert raw.count(b"MARKER") == 1 and len(junk) == 6
        return raw.replace(b"MARKER", junk)

    # graph
    def attach(self, driver: Driver) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from vla_inference import qos
        from vla_inference.spec import interface
        from vla_msgs.msg import InferenceRequest, InferenceResponse
        from vla_msgs.srv import Infer

        self._publisher = driver.node.create_publisher(InferenceRequest, interface.REQUEST_TOPIC, qos.INFERENCE_QOS)
        # Deeper than the server's KeepLast(1) so answers are not overwritten here (the writer may still drop some).
        monitor = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self._subscription = driver.node.create_subscription(InferenceResponse, interface.RESPONSE_TOPIC,
                                                             self._on_response, monitor)
        self._service = driver.node.create_client(Infer, interface.INFER_SERVICE)
        self._attach_diagnostics(driver)

    def publish(self, payload: bytes) -> None:
        self._publisher.publish(payload)

    def send(self, sample: Sample) -> None:
        if sample.message is None or not self._service_slot():
            if sample.message is not None:  # no free service slot: the topic carries it, under its topic kind
                sample.kind = sample.kind[len(SERVICE_PREFIX):]
                with self._lock:
                    self._sent[sample.request_id] = (sample.kind, sample.expect)
            self.publish(sample.payload)
            return
        from vla_msgs.srv import Infer

        future = self._service.call_async(Infer.Request(request=sample.message))
        future.add_done_callback(self._on_service_answer)
        self._calls.append((future, time.monotonic()))

    def _service_slot(self) -> bool:
        """Room for one more service call: finished calls leave; calls unanswered for 90 s are given up."""
        now = time.monotonic()
        for future, started in list(self._calls):
            if future.done():
                self._calls.remove((future, started))
            elif now - started > 90.0:
                future.cancel()
                self._service.remove_pending_request(future)
                self._calls.remove((future, started))
                self.service_lost += 1
        return self._service.service_is_ready() and len(self._calls) < self.SERVICE_IN_FLIGHT

    def _on_service_answer(self, future: Any) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        self._on_response(future.result().response)

    def _on_response(self, msg: Any) -> None:
        from vla_inference.serving.inference_server import Status

        try:
            status = Status(msg.status).name
        except ValueError:
            status = f"UNKNOWN_{msg.status}"
        with self._lock:
            self.statuses[status] += 1
            sent = self._sent.get(msg.request_id) if msg.header.frame_id == self.frame_id(msg.request_id) else None
            if sent is None:
                self.unattributed += 1
                return
            kind, expect = sent
            self.by_kind.setdefault(kind, Counter())[status] += 1
            if kind == FINAL_CHECK:
                self._answers[msg.request_id] = msg
        allowed = self.ALLOWED.get(expect or "", None)
        if status == "INTERNAL_ERROR" or (allowed is not None and status not in allowed):
            self._violation(kind=kind, request_id=msg.request_id, status=status, message=msg.message[:300])

    def bring_up(self, driver: Driver, abort: Callable[[], Optional[str]]) -> None:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState, GetState

        change = driver.node.create_client(ChangeState, f"/{self.node_name}/change_state")
        get = driver.node.create_client(GetState, f"/{self.node_name}/get_state")
        wait_until(lambda: change.service_is_ready() and get.service_is_ready(), 90.0, abort, "lifecycle services")
        for transition, label, timeout_s in ((Transition.TRANSITION_CONFIGURE, "configure", 180.0),
                                             (Transition.TRANSITION_ACTIVATE, "activate", 30.0)):
            request = ChangeState.Request()
            request.transition.id = transition
            if not driver.wait_future(change.call_async(request), timeout_s, abort).success:
                raise RuntimeError(f"{self.node_name}: '{label}' failed (see its log)")
        state = driver.wait_future(get.call_async(GetState.Request()), 10.0, abort).current_state.label
        if state != "active":
            raise RuntimeError(f"{self.node_name}: ended in state {state!r}, expected 'active'")
        driver.node.destroy_client(change)
        driver.node.destroy_client(get)
        wait_until(lambda: self._publisher.get_subscription_count() > 0 and self._subscription.get_publisher_count() > 0,
                   30.0, abort, "request / response topics matched")

    def final_check(self, driver: Driver, abort: Callable[[], Optional[str]]) -> Tuple[bool, str]:
        """One good request on the topic and one through the service must be answered OK."""
        from vla_inference.serving.inference_server import Status
        from vla_msgs.srv import Infer

        deadline = time.monotonic() + 90.0
        topic = "no answer on the topic"
        while time.monotonic() < deadline and abort() is None:
            request = self.good_request(full=True)
            request.denoising_steps = 0
            with self._lock:
                self._sent[request.request_id] = (FINAL_CHECK, "valid")
            self.publish(serialize(request)[0])
            answer = self._await_answer(request.request_id, 15.0, abort)
            if answer is None:
                continue
            if answer.status == Status.OK and len(answer.action_seq) == answer.action_horizon * answer.action_dim > 0:
                topic = "topic OK"
                break
            topic = f"topic answered status {answer.status}: {answer.message}"
            if answer.status not in (Status.REJECTED_RATE_LIMIT, Status.SUPERSEDED):  # try again; anything else fails
                return False, topic
        if topic != "topic OK":
            return False, topic
        try:
            wait_until(self._service.service_is_ready, 30.0, abort, "infer service")
            request = self.good_request(full=True)
            request.denoising_steps = 0
            result = driver.wait_future(self._service.call_async(Infer.Request(request=request)), 60.0, abort).response
        except (RuntimeError, TimeoutError) as exc:
            return False, f"{topic}; service: {exc}"
        if result.status != Status.OK:
            return False, f"{topic}; service answered status {result.status}: {result.message}"
        return True, f"{topic}; service OK ({result.action_horizon}x{result.action_dim} actions)"

    def _await_answer(self, request_id: int, timeout_s: float, abort: Callable[[], Optional[str]]) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and abort() is None:
            with self._lock:
                answer = self._answers.get(request_id)
            if answer is not None:
                return answer
            time.sleep(0.05)
        return None

    def report(self) -> Dict[str, Any]:
        with self._lock:
            return {"responses": dict(self.statuses), "responses_by_kind": {k: dict(v) for k, v in self.by_kind.items()},
                    "unattributed_responses": self.unattributed, "service_calls_lost": self.service_lost}


class AdapterTarget(FuzzTarget):
    """A sensor adapter: frames in on ``in_topic`` (sensor-data QoS), adapted frames out on ``out_topic``."""

    in_topic = ""
    out_topic = ""
    out_shape: Tuple[int, int, str] = (0, 0, "")
    FIELD_KINDS: Tuple[str, ...] = ()
    VALID_FIELD_KINDS: Tuple[str, ...] = ()  # field mutations the adapter may accept; every other one it must drop

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.namespace = f"/vla_fuzz_{os.getpid()}_{seed}"
        self.outputs_by_family: Counter = Counter()
        self._final_marker = ""
        self._final_output: Any = None
        self._in_type: Any = None
        self._publisher: Any = None
        self._subscription: Any = None

    def attach(self, driver: Driver) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        self._publisher = driver.node.create_publisher(self._in_type, f"{self.namespace}/{self.in_topic}",
                                                       qos_profile_sensor_data)
        self._subscription = driver.node.create_subscription(Image, f"{self.namespace}/{self.out_topic}", self._on_output,
                                                             qos_profile_sensor_data)
        self._attach_diagnostics(driver)

    def publish(self, payload: bytes) -> None:
        self._publisher.publish(payload)

    def send(self, sample: Sample) -> None:
        self.publish(sample.payload)

    def _on_output(self, msg: Any) -> None:
        marker = msg.header.frame_id
        parts = marker.split("/")
        family, kind = (parts[1], parts[2]) if len(parts) == 4 and parts[0] == "fuzz" else ("", "")
        if family not in ("good", "field", "raw", "final"):  # a raw mutation that hit the marker
            family, kind = "unattributed", ""
        with self._lock:
            self.outputs += 1
            self.outputs_by_family[family] += 1
            if marker == self._final_marker:
                self._final_output = msg
        if family == "field" and kind not in self.VALID_FIELD_KINDS:
            self._violation(kind=kind, marker=marker, what="an adapted frame came out of a frame that must be dropped")
        rows, cols, encoding = self.out_shape
        if (msg.height, msg.width, msg.encoding, len(msg.data)) != (rows, cols, encoding, msg.step * rows):
            self._violation(kind=kind, marker=marker, what=f"output {msg.height}x{msg.width} {msg.encoding!r} "
                                                            f"step {msg.step} with {len(msg.data)} bytes")

    def bring_up(self, driver: Driver, abort: Callable[[], Optional[str]]) -> None:
        wait_until(lambda: self._publisher.get_subscription_count() > 0 and self._subscription.get_publisher_count() > 0,
                   60.0, abort, f"{self.node_name} topics matched")

    def good_message(self, marker: str) -> Any:
        raise NotImplementedError

    def field_mutation(self, kind: str, marker: str) -> Any:
        raise NotImplementedError

    def next_sample(self) -> Sample:
        roll = self.rng.random()
        if roll < 0.15:
            marker = self._marker("good", GOOD_KIND)
            return Sample(GOOD_KIND, serialize(self.good_message(marker))[0], None, marker=marker)
        if roll < 0.5:
            kind = self.rng.choice(self.FIELD_KINDS)
            marker = self._marker("field", kind)
            expect = None if kind in self.VALID_FIELD_KINDS else "drop"
            return Sample(kind, serialize(self.field_mutation(kind, marker))[0], expect, marker=marker)
        marker = self._marker("raw", "mutated")
        msg = self.good_message(marker)
        return raw_kind_sample(self.mutator, self.rng, msg, marker)

    def final_check(self, driver: Driver, abort: Callable[[], Optional[str]]) -> Tuple[bool, str]:
        """A good frame in (published until the adapter's output with its marker comes back) -> adapted frame out."""
        with self._lock:
            self._final_marker = self._marker("final", "check")
            self._final_output = None
        payload = serialize(self.good_message(self._final_marker))[0]
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and abort() is None:
            self.publish(payload)  # best effort: a frame may be lost, so send until one comes back
            time.sleep(0.2)
            with self._lock:
                out = self._final_output
            if out is not None:
                rows, cols, encoding = self.out_shape
                if (out.height, out.width, out.encoding) != (rows, cols, encoding):
                    return False, f"adapted frame is {out.height}x{out.width} {out.encoding}, expected {rows}x{cols} {encoding}"
                return True, f"good frame in -> {out.height}x{out.width} {out.encoding} out"
        return False, "no adapted frame for a good input within 30 s"

    def report(self) -> Dict[str, Any]:
        with self._lock:
            return {"outputs": self.outputs, "outputs_by_family": dict(self.outputs_by_family)}


class CameraTarget(AdapterTarget):
    """camera_adapter_node: sensor_msgs/Image on image_raw -> rgb8 224x224 on image."""

    name = "camera"
    executable = "camera_adapter_node"
    module = "vla_inference.nodes.camera_adapter_node"
    node_name = "camera_adapter"
    in_topic, out_topic = "image_raw", "image"
    out_shape = (224, 224, "rgb8")
    FIELD_KINDS = ("image_step", "image_data_short", "image_data_long", "image_encoding", "image_huge_dims",
                   "image_zero_dims", "image_odd_yuv", "image_tiny_bayer", "image_float_nan", "image_big")
    VALID_FIELD_KINDS = ("image_data_long", "image_big")

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        from sensor_msgs.msg import Image

        self._in_type = Image

    def good_message(self, marker: str) -> Any:
        from vla_inference.sensors.image_codec import SUPPORTED_ENCODINGS

        return random_image(self.rng, SUPPORTED_ENCODINGS, max_side=96, frame_id=marker, padding=self.rng.random() < 0.3)

    def field_mutation(self, kind: str, marker: str) -> Any:
        from vla_inference.sensors.image_codec import BYTES_PER_PIXEL, SUPPORTED_ENCODINGS

        rng = self.rng
        image = self.good_message(marker)
        bpp = BYTES_PER_PIXEL[image.encoding]
        if kind == "image_step":
            image.step = rng.choice((0, 1, image.width * bpp - 1, 0xFFFFFFFF, 0x80000000))
        elif kind == "image_data_short":
            image.data = bytes(image.data)[:rng.randrange(image.height * image.step)]
        elif kind == "image_data_long":
            image.data = bytes(image.data) + rng.randbytes(rng.choice((1, 7, 4096)))
        elif kind == "image_encoding":
            image.encoding = rng.choice(("", "32FC1", "16UC1", "rgb16", "yuv420", "nv12", "RGB8", "bayer_rggb16", "jpeg",
                                         "x" * 4096, "".join(rng.choices("abcdefgh0123456789_", k=10))))
            assert image.encoding not in SUPPORTED_ENCODINGS
        elif kind == "image_huge_dims":
            setattr(image, rng.choice(("height", "width")), rng.choice((8193, 100_000, 0x7FFFFFFF, 0xFFFFFFFF)))
        elif kind == "image_zero_dims":
            setattr(image, rng.choice(("height", "width")), 0)
        elif kind == "image_odd_yuv":
            encoding = rng.choice(("uyvy", "yuv422", "yuyv", "yuv422_yuy2"))
            height, width = rng.randint(1, 32), 2 * rng.randint(0, 16) + 1
            image = image_msg(encoding, height, width, rng.randbytes(height * width * 2), frame_id=marker)
        elif kind == "image_tiny_bayer":
            encoding = rng.choice(("bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"))
            height, width = rng.choice(((1, 1), (2, 2), (1, 64), (64, 2), (2, 3)))
            image = image_msg(encoding, height, width, rng.randbytes(height * width), frame_id=marker)
        elif kind == "image_float_nan":
            height, width = rng.randint(1, 32), rng.randint(1, 32)
            values = np.full(height * width, rng.choice((math.nan, math.inf, -math.inf)), np.float32)
            image = image_msg(rng.choice(("32FC1", "64FC1")), height, width, values.tobytes(), bytes_per_pixel=4,
                              frame_id=marker)
        elif kind == "image_big":  # large but legal: 1920x1080 bgr8 / 4096x4 mono16 / 8192x1 mono8
            encoding, height, width = rng.choice((("bgr8", 1080, 1920), ("mono16", 4, 4096), ("mono8", 1, 8192),
                                                  ("mono8", 8192, 1)))
            image = image_msg(encoding, height, width, bytes(height * width * BYTES_PER_PIXEL[encoding]), frame_id=marker)
        else:
            raise ValueError(f"unknown field mutation {kind!r}")
        return image


class LidarTarget(AdapterTarget):
    """lidar_adapter_node: sensor_msgs/PointCloud2 on points -> 64x1024 32FC1 range image on range_image."""

    name = "lidar"
    executable = "lidar_adapter_node"
    module = "vla_inference.nodes.lidar_adapter_node"
    node_name = "lidar_adapter"
    in_topic, out_topic = "points", "range_image"
    out_shape = (64, 1024, "32FC1")
    FIELD_KINDS = ("cloud_row_step", "cloud_point_step", "cloud_field_beyond", "cloud_field_datatype", "cloud_field_count",
                   "cloud_xyz_type", "cloud_missing_xyz", "cloud_duplicate_field", "cloud_many_fields", "cloud_overlap",
                   "cloud_huge_dims", "cloud_data_short", "cloud_nonfinite", "cloud_bigendian", "cloud_empty")
    VALID_FIELD_KINDS = ("cloud_nonfinite", "cloud_bigendian", "cloud_empty")

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        from sensor_msgs.msg import PointCloud2

        self._in_type = PointCloud2

    def good_message(self, marker: str, min_points: int = 0) -> Any:
        rng = self.rng
        roll = rng.random()
        if roll < 0.05:
            count = 64 * 1024  # a full spinning-LiDAR scan, ~1 MB
        elif roll < 0.5:
            count = rng.randint(min_points, 64)
        else:
            count = rng.randint(max(min_points, 1), 4096)
        if rng.random() < 0.3 and count >= 16:  # organised, as a spinning LiDAR driver publishes it
            height = rng.choice([h for h in (2, 4, 8, 16) if count % h == 0] or [1])
        else:
            height = 1
        return cloud_msg(random_points(rng, count), frame_id=marker, height=height, is_dense=rng.random() < 0.5,
                         row_padding=rng.choice((0, 0, 0, 4, 12)))

    def field_mutation(self, kind: str, marker: str) -> Any:
        from sensor_msgs.msg import PointField

        rng = self.rng
        cloud = self.good_message(marker, min_points=1)
        fields = list(cloud.fields)
        if kind == "cloud_row_step":
            cloud.row_step = rng.choice((0, 1, cloud.width * cloud.point_step - 1))
        elif kind == "cloud_point_step":
            cloud.point_step = rng.choice((0, 1, 8, 11, 0xFFFFFFFF, 0x80000000))
        elif kind == "cloud_field_beyond":
            target = rng.choice(fields)
            target.offset = rng.choice((13, 14, 16, 100, 0xFFFFFFFF)) if target.name != "intensity" else rng.choice((13, 16))
        elif kind == "cloud_field_datatype":
            rng.choice(fields).datatype = rng.choice((0, 9, 100, 255))
        elif kind == "cloud_field_count":
            target = rng.choice(fields)
            target.count = rng.choice((0, 2, 0xFFFFFFFF)) if target.name != "intensity" else rng.choice((2, 0xFFFFFFFF))
        elif kind == "cloud_xyz_type":
            rng.choice(fields[:3]).datatype = rng.choice((PointField.FLOAT64, PointField.INT32, PointField.UINT8))
        elif kind == "cloud_missing_xyz":
            del fields[rng.randrange(3)]
        elif kind == "cloud_duplicate_field":
            fields[3].name = rng.choice(("x", "y", "z"))
        elif kind == "cloud_many_fields":
            fields += [PointField(name=f"f{i}", offset=12, datatype=PointField.UINT8, count=1)
                       for i in range(rng.choice((62, 100, 2000)))]
        elif kind == "cloud_overlap":
            fields[1].offset = rng.choice((2, 6))
        elif kind == "cloud_huge_dims":
            cloud.height, cloud.width = rng.choice(((1, 0xFFFFFFFF), (0xFFFFFFFF, 1), (65536, 65536), (1, (1 << 22) + 1),
                                                     (cloud.height, cloud.width + 1)))
        elif kind == "cloud_data_short":
            cloud.data = bytes(cloud.data)[:rng.randrange(cloud.height * cloud.row_step)]
        elif kind == "cloud_nonfinite":
            values = np.frombuffer(bytes(cloud.data), dtype="<f4").copy()
            values[rng.randrange(values.size)::rng.choice((1, 3, 7))] = rng.choice((math.nan, math.inf, -math.inf))
            cloud.data = values.tobytes()
            cloud.is_dense = rng.random() < 0.5
        elif kind == "cloud_bigendian":
            cloud.is_bigendian = True
        elif kind == "cloud_empty":
            cloud.height, cloud.width, cloud.row_step = rng.choice(((1, 0, 0), (0, 0, 0), (0, 5, 80)))
            cloud.data = b""
        else:
            raise ValueError(f"unknown field mutation {kind!r}")
        cloud.fields = fields
        return cloud


class CompressedCameraTarget(AdapterTarget):
    """camera_adapter_node with ``compressed: true``: sensor_msgs/CompressedImage (JPEG, PNG) -> rgb8 224x224.

    The decoders are OpenCV's (libjpeg, libpng): damaged streams go to them once the node's header check passes.
    """

    name = "camera_compressed"
    executable = "camera_adapter_node"
    module = "vla_inference.nodes.camera_adapter_node"
    node_name = "camera_adapter"
    parameters = {"compressed": "true"}
    in_topic, out_topic = "image_raw/compressed", "image"
    out_shape = (224, 224, "rgb8")
    FIELD_KINDS = ("stream_corrupt", "stream_truncated", "header_dims_lie", "header_huge_dims", "header_zero_dims",
                   "format_unknown", "data_empty", "data_random", "jpeg_segment_flood")
    # A decoder may still make a picture of a damaged stream (libjpeg fills what is missing with grey).
    VALID_FIELD_KINDS = ("stream_corrupt", "stream_truncated", "header_dims_lie")
    FORMATS = {".jpg": ("jpeg", "jpg", "bgr8; jpeg compressed bgr8"), ".png": ("png", "rgb8; png compressed bgr8")}

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        from sensor_msgs.msg import CompressedImage

        self._in_type = CompressedImage

    def good_message(self, marker: str, extension: Optional[str] = None) -> Any:
        import cv2
        from sensor_msgs.msg import CompressedImage

        rng = self.rng
        extension = extension or rng.choice((".jpg", ".png"))
        height, width = rng.randint(8, 96), rng.randint(8, 96)
        bgr = _np_rng(rng).integers(0, 256, (height, width, 3), dtype=np.uint8)
        bgr[: height // 2] //= 4  # some structure, so JPEG has more than noise to code
        params = [cv2.IMWRITE_JPEG_QUALITY, rng.randint(20, 95)] if extension == ".jpg" else []
        ok, encoded = cv2.imencode(extension, bgr, params)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {extension} test frame")
        msg = CompressedImage(format=rng.choice(self.FORMATS[extension]))
        msg.header.frame_id = marker
        msg.data = encoded.tobytes()
        return msg

    @staticmethod
    def _dimension_offsets(data: bytes) -> Optional[int]:
        """Where the height (then width) sits: PNG's IHDR (4-byte big-endian) or JPEG's SOF (2-byte)."""
        if data.startswith(b"\x89PNG"):
            return 16
        for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            index = data.find(marker)
            if index >= 0:
                return index + 5
        return None

    def _set_dimensions(self, data: bytearray, height: int, width: int) -> None:
        offset = self._dimension_offsets(bytes(data))
        if offset is None:
            return
        if data.startswith(b"\x89PNG"):  # IHDR: width then height, and its CRC kept right so libpng reads on
            data[offset:offset + 8] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
            data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
        else:  # SOF: height then width
            data[offset:offset + 4] = min(height, 0xFFFF).to_bytes(2, "big") + min(width, 0xFFFF).to_bytes(2, "big")

    def field_mutation(self, kind: str, marker: str) -> Any:
        rng = self.rng
        msg = self.good_message(marker)
        data = bytearray(msg.data)
        if kind == "stream_corrupt":
            for _ in range(rng.randint(1, 32)):
                data[rng.randrange(2, len(data))] = rng.randrange(256)
        elif kind == "stream_truncated":
            del data[rng.randrange(len(data)):]
        elif kind == "header_dims_lie":  # within max_dim: the decoder allocates for it and fills it from a small stream
            self._set_dimensions(data, rng.choice((4096, 8192, 3)), rng.choice((8192, 1, 4000)))
        elif kind == "header_huge_dims":
            huge = rng.choice((8193, 65535, 0x7FFFFFFF))
            self._set_dimensions(data, *rng.choice(((huge, 16), (16, huge), (huge, huge))))
        elif kind == "header_zero_dims":
            self._set_dimensions(data, *rng.choice(((0, 16), (16, 0), (0, 0))))
        elif kind == "format_unknown":
            msg.format = rng.choice(("", "tiff", "bmp", "webp", "rgb8", "16UC1; compressedDepth png", "png compresseddepth"))
        elif kind == "data_empty":
            data = bytearray()
        elif kind == "data_random":
            data = bytearray(b"\x00" + rng.randbytes(rng.choice((1, 23, 1000))))
        elif kind == "jpeg_segment_flood":  # more tiny COM segments before the frame header than the scan reads
            msg.format = "jpeg"
            data = bytearray(b"\xff\xd8" + b"\xff\xfe\x00\x02" * rng.choice((257, 1000, 20000)) + bytes(data[2:]))
        else:
            raise ValueError(f"unknown field mutation {kind!r}")
        msg.data = bytes(data)
        return msg


TARGET_CLASSES = {"server": ServerTarget, "camera": CameraTarget, "lidar": LidarTarget,
                  "camera_compressed": CompressedCameraTarget}


# -- the campaign -----------------------------------------------------------------------------------------
@dataclass
class FuzzReport:
    """The JSON record of one target's campaign."""

    target: str
    seed: int
    duration_s: float
    rate_hz: float
    domain_id: Optional[int]
    sent: Dict[str, int] = field(default_factory=dict)
    sent_bytes: int = 0
    publish_errors: int = 0
    crashes: int = 0
    crash_details: List[Dict[str, Any]] = field(default_factory=list)
    liveness_checks: int = 0
    max_heartbeat_gap_s: float = 0.0
    stalls: int = 0
    peak_rss_mb: float = 0.0
    rss_mb_timeline: List[Tuple[float, float]] = field(default_factory=list)  # (s since start, MB): growth vs spikes
    violations: int = 0
    violation_examples: List[Dict[str, Any]] = field(default_factory=list)
    final_ok: bool = False
    final_detail: str = ""
    target_counts: Dict[str, str] = field(default_factory=dict)
    exit_code: Optional[int] = None
    log_findings: Dict[str, int] = field(default_factory=dict)
    log: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def passed(self) -> bool:
        return (not self.error and self.crashes == 0 and self.final_ok and self.violations == 0
                and self.log_findings.get("tracebacks", 0) == 0)


class TargetProcess:
    """The target node as its own process group, its output in one log file."""

    def __init__(self, command: List[str], log_path: Path, env: Dict[str, str]) -> None:
        self.command = command
        self.log_path = log_path
        self.env = env
        self.popen: Optional[subprocess.Popen] = None
        self._log: Any = None
        self.starts = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab" if self.starts else "wb")
        self.starts += 1
        self.popen = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                      env=self.env, start_new_session=True, close_fds=True)
        LOG.info("started %s (pid %d)", " ".join(self.command), self.popen.pid)

    def exit_code(self) -> Optional[int]:
        return None if self.popen is None else self.popen.poll()

    def abort_reason(self) -> Optional[str]:
        code = self.exit_code()
        return None if code is None else f"the target exited with code {code}"

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.popen.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024.0
        except (OSError, AttributeError, ValueError):
            pass
        return 0.0

    def stop(self, timeouts_s: Sequence[float] = (10.0, 5.0, 5.0)) -> Optional[int]:
        """SIGINT, then SIGTERM, then SIGKILL to the group; the exit code (negative: the signal that ended it)."""
        if self.popen is None:
            return None
        for sig, timeout_s in zip((signal.SIGINT, signal.SIGTERM, signal.SIGKILL), timeouts_s):
            if self.popen.poll() is not None:
                break
            self._signal(sig)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                continue
        self._signal(signal.SIGKILL)  # anything the node spawned goes with it
        self._log.close()
        return self.popen.poll()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def scan_log(path: Path) -> Dict[str, int]:
    """How often each of ``LOG_PATTERNS`` occurs in the target's log."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    return {name: len(pattern.findall(text)) for name, pattern in LOG_PATTERNS.items()}


def save_reproducer(ring: Iterable[Sample], directory: Path) -> List[str]:
    """The last messages sent before a crash, as ``.cdr`` files (oldest first) plus an index."""
    directory.mkdir(parents=True, exist_ok=True)
    index = []
    for number, sample in enumerate(ring):
        path = directory / f"{number:03d}_{sample.kind}.cdr"
        path.write_bytes(sample.payload)
        index.append({"file": path.name, "kind": sample.kind, "bytes": len(sample.payload), "marker": sample.marker,
                      "request_id": sample.request_id})
    (directory / "index.json").write_text(json.dumps(index, indent=1))
    return [str(directory / entry["file"]) for entry in index]


def child_environment(domain_id: Optional[int]) -> Dict[str, str]:
    env = dict(os.environ)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    return env


def run_target(target_name: str, duration_s: float = CI_DURATION_S, seed: int = 0, out: Path = Path("out/fuzz"),
               rate_hz: Optional[float] = None, domain_id: Optional[int] = None,
               replay: Optional[Sequence[Path]] = None) -> FuzzReport:
    """Fuzz one target for ``duration_s`` seconds (or replay ``.cdr`` files) and write ``<out>/<target>.json``.

    ``domain_id`` None inherits ROS_DOMAIN_ID from the environment.
    """
    target: FuzzTarget = TARGET_CLASSES[target_name](seed)
    rate = rate_hz or DEFAULT_RATE_HZ[target_name]
    out.mkdir(parents=True, exist_ok=True)
    report = FuzzReport(target_name, seed, duration_s, rate, domain_id, log=str(out / f"{target_name}.log"))
    process = TargetProcess(target.command() + target.ros_arguments(), out / f"{target_name}.log",
                            child_environment(domain_id))
    driver = Driver(domain_id)
    sent: Counter = Counter()
    try:
        target.attach(driver)
        process.start()
        target.bring_up(driver, process.abort_reason)
        LOG.info("%s is up; fuzzing for %g s at %g msg/s", target_name, duration_s, rate)
        if replay is not None:
            samples: Optional[Iterable[Sample]] = [Sample(f"replay:{path.name}", path.read_bytes())
                                                   for path in replay for _ in range(REPLAY_REPEATS)]
        else:
            samples = None
        ring = _campaign(target, process, driver, report, sent, duration_s, rate, out, samples)
        if process.exit_code() is None:
            time.sleep(1.0)  # let the last requests drain before the check
            report.final_ok, report.final_detail = target.final_check(driver, process.abort_reason)
        else:
            report.final_detail = f"the target is not running ({process.abort_reason()})"
        _check(target, process, driver, report, ring, out, restart=False)  # a crash while it drained counts too
    except (RuntimeError, TimeoutError) as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        LOG.error("%s: %s\n%s", target_name, report.error, process.log_tail())
    finally:
        report.exit_code = process.stop()
        driver.close()
    report.sent = dict(sorted(sent.items()))
    report.violations = target.violation_count
    report.violation_examples = target.violations
    report.target_counts = target.target_counts
    report.log_findings = scan_log(process.log_path)
    report.extra = target.report()
    (out / f"{target_name}.json").write_text(json.dumps(asdict(report), indent=1, default=str))
    return report


def _campaign(target: FuzzTarget, process: TargetProcess, driver: Driver, report: FuzzReport, sent: Counter,
              duration_s: float, rate: float, out: Path, samples: Optional[Iterable[Sample]]) -> Deque[Sample]:
    """The publish loop: paced at ``rate``; the process polled every second; a crash saved, then restarted.
    Returns the last messages sent (for a crash found later)."""
    ring: Deque[Sample] = deque(maxlen=RING_SIZE)
    source = iter(samples) if samples is not None else None
    start = time.monotonic()
    end = start + duration_s if source is None else math.inf
    next_check = start + CHECK_PERIOD_S
    number = 0
    while time.monotonic() < end:
        if source is not None:
            sample = next(source, None)
            if sample is None:
                break
        else:
            sample = target.next_sample()
        try:
            target.send(sample)
        except Exception as exc:  # noqa: BLE001 - an RMW error on our side is counted, not fatal
            report.publish_errors += 1
            LOG.warning("publish of a %s sample failed: %s", sample.kind, exc)
        ring.append(sample)
        sent[sample.kind] += 1  # after send: a service sample without a free slot went by topic
        report.sent_bytes += len(sample.payload)
        number += 1
        now = time.monotonic()
        if now >= next_check:
            next_check = now + CHECK_PERIOD_S
            if not _check(target, process, driver, report, ring, out):
                return ring
        time.sleep(max(0.0, start + number / rate - time.monotonic()))
    settle_until = time.monotonic() + (REPLAY_SETTLE_S if source is not None else 0.0)
    while _check(target, process, driver, report, ring, out) and time.monotonic() < settle_until:
        time.sleep(CHECK_PERIOD_S)
    return ring


def _check(target: FuzzTarget, process: TargetProcess, driver: Driver, report: FuzzReport, ring: Deque[Sample],
           out: Path, restart: bool = True) -> bool:
    """One liveness check; False when the campaign must stop (crashed more than ``MAX_RESTARTS`` times, or
    crashed with ``restart`` False)."""
    report.liveness_checks += 1
    rss = round(process.rss_mb(), 1)
    report.peak_rss_mb = max(report.peak_rss_mb, rss)
    if report.liveness_checks % int(RSS_SAMPLE_PERIOD_S / CHECK_PERIOD_S) == 0:
        report.rss_mb_timeline.append((report.liveness_checks * CHECK_PERIOD_S, rss))
    now = time.monotonic()
    heartbeat = target.heartbeat_at
    if heartbeat is not None:
        gap = now - heartbeat
        if gap > STALL_S and not target.stalled:
            report.stalls += 1
            LOG.warning("%s: no /diagnostics heartbeat for %.1f s", target.name, gap)
        target.stalled = gap > STALL_S
        report.max_heartbeat_gap_s = round(max(report.max_heartbeat_gap_s, gap), 2)
    code = process.exit_code()
    if code is None:
        return True
    report.crashes += 1
    crash_dir = out / "crashes" / f"{target.name}-{report.crashes}"
    files = save_reproducer(ring, crash_dir)
    detail = {"exit_code": code, "after_messages": sum(1 for _ in ring), "reproducer": str(crash_dir),
              "last_kinds": [s.kind for s in list(ring)[-5:]], "log_tail": process.log_tail(40)}
    report.crash_details.append(detail)
    LOG.error("%s crashed (exit code %s); the last %d messages are in %s\n%s", target.name, code, len(files), crash_dir,
              detail["log_tail"])
    ring.clear()
    if not restart or report.crashes > MAX_RESTARTS:
        return False
    process.stop()
    target.heartbeat_at = None
    process.start()
    target.bring_up(driver, process.abort_reason)
    return True


# -- CLI --------------------------------------------------------------------------------------------------
STATUS_COLUMNS = ("OK", "INVALID_REQUEST", "REJECTED_RATE_LIMIT", "SUPERSEDED", "DEADLINE_EXCEEDED", "INTERNAL_ERROR",
                  "NOT_READY")
STATUS_SHORT = {"OK": "ok", "INVALID_REQUEST": "invalid", "REJECTED_RATE_LIMIT": "rate", "SUPERSEDED": "supers",
                "DEADLINE_EXCEEDED": "deadl", "INTERNAL_ERROR": "intern", "NOT_READY": "notrdy"}


def summary_table(report: FuzzReport) -> str:
    """A plain-text table: messages sent per kind (and the server's answers per kind), then the verdict."""
    lines = [f"== {report.target}: {sum(report.sent.values())} messages ({report.sent_bytes / 1e6:.1f} MB) in "
             f"{report.duration_s:g} s, seed {report.seed}"]
    by_kind = report.extra.get("responses_by_kind")
    if by_kind is not None:
        header = f"{'kind':<24}{'sent':>7}" + "".join(f"{STATUS_SHORT[s]:>8}" for s in STATUS_COLUMNS) + f"{'none':>7}"
        lines.append(header)
        for kind, count in report.sent.items():
            answers = by_kind.get(kind, {})
            none = count - sum(answers.values())
            lines.append(f"{kind:<24}{count:>7}" + "".join(f"{answers.get(s, 0):>8}" for s in STATUS_COLUMNS)
                         + f"{none:>7}")
        lines.append(f"responses by status: {report.extra.get('responses', {})}; "
                     f"unattributed: {report.extra.get('unattributed_responses', 0)}")
    else:
        lines.append(f"{'kind':<24}{'sent':>7}")
        lines += [f"{kind:<24}{count:>7}" for kind, count in report.sent.items()]
        counts = {k: v for k, v in report.target_counts.items() if k != "last_error"}
        lines.append(f"adapter counts: {counts}; outputs seen: {report.extra.get('outputs_by_family', {})}")
    lines.append(f"crashes: {report.crashes}   violations: {report.violations}   stalls: {report.stalls}   "
                 f"max heartbeat gap: {report.max_heartbeat_gap_s:.1f} s   peak RSS: {report.peak_rss_mb:.0f} MB   "
                 f"exit code at stop: {report.exit_code}")
    lines.append(f"target log: {report.log_findings}")
    lines.append(f"final check: {'PASS' if report.final_ok else 'FAIL'} ({report.final_detail})"
                 + (f"   error: {report.error}" if report.error else ""))
    for example in report.violation_examples[:5]:
        lines.append(f"  violation: {example}")
    lines.append(f"verdict: {'PASS' if report.passed else 'FAIL'}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=(*TARGETS, *EXTRA_TARGETS, "all"), default="all",
                        help=f"all = {', '.join(TARGETS + EXTRA_TARGETS)}")
    parser.add_argument("--duration", type=float, default=CI_DURATION_S, help="seconds of fuzzing per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/fuzz"))
    parser.add_argument("--rate", type=float, default=None, help="messages per second (default: per target)")
    parser.add_argument("--domain-id", type=int, default=None,
                        help="DDS domain of the campaign; default a random one of 215..232 (never a live robot's)")
    parser.add_argument("--replay", type=Path, nargs="+", default=None,
                        help="publish these .cdr files (a crash reproducer) instead of fuzzing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    domain_id = args.domain_id if args.domain_id is not None else random.SystemRandom().choice(PRIVATE_DOMAINS)
    LOG.info("DDS domain %d", domain_id)
    targets = TARGETS + EXTRA_TARGETS if args.target == "all" else (args.target,)
    replay = None
    if args.replay is not None:
        replay = sorted(p for path in args.replay for p in (path.glob("*.cdr") if path.is_dir() else [path]))
    reports = [run_target(name, args.duration, args.seed, args.out, args.rate, domain_id, replay) for name in targets]
    (args.out / "summary.json").write_text(json.dumps([asdict(r) | {"passed": r.passed} for r in reports], indent=1,
                                                      default=str))
    for report in reports:
        print()
        print(summary_table(report))
    print(f"\nJSON records in {args.out}")
    return 0 if all(r.passed for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
