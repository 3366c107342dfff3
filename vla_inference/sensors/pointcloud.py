"""Extract float32 xyz from ``sensor_msgs/PointCloud2``-style fields, vectorised and defensively.

Plain Python (no rclpy): the LiDAR adapter passes a message's attributes; tests pass
``types.SimpleNamespace`` objects. The layout description is checked in O(1) (O(number of fields),
capped) before ``data`` is read, because a bad ``row_step``, ``point_step`` or field offset is a known
way to crash a node reading the buffer.

Accepted layouts: x, y, z as FLOAT32 with count 1 at any offsets and in any order, any other fields
(ignored, but their extents are still checked against ``point_step``), any ``point_step`` that holds
every field, and ``row_step`` >= ``width * point_step`` (row padding skipped). ``data`` may be longer
than ``height * row_step``; the excess is ignored. ``is_bigendian`` sets the byte order.

Points with a NaN or Inf coordinate are dropped. That is normal for ``is_dense == False`` clouds
(no-return beams); a cloud that claims ``is_dense`` yet holds them is still parsed, and
``ParsedCloud.dense_violation`` says so, for the caller to count or warn about.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Dict, Sequence

import numpy as np

INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
DATATYPE_SIZES = {INT8: 1, UINT8: 1, INT16: 2, UINT16: 2, INT32: 4, UINT32: 4, FLOAT32: 4, FLOAT64: 8}
DATATYPE_NAMES = {
    INT8: "INT8", UINT8: "UINT8", INT16: "INT16", UINT16: "UINT16",
    INT32: "INT32", UINT32: "UINT32", FLOAT32: "FLOAT32", FLOAT64: "FLOAT64",
}

XYZ_FIELDS = ("x", "y", "z")
# A 128-beam spinning LiDAR at 2048 columns is 262k points; the cap leaves room for dense
# solid-state sensors while refusing widths that only a corrupt header produces.
MAX_POINTS = 1 << 22
MAX_FIELDS = 64


class PointCloudError(ValueError):
    """The cloud's layout is unusable; ``field`` names the offending message field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ParsedCloud:
    """xyz: float32 [N, 3] finite points; dropped_non_finite: points removed for NaN/Inf;
    dense_violation: the message claimed ``is_dense`` yet held non-finite points."""

    xyz: np.ndarray
    dropped_non_finite: int
    dense_violation: bool


def _as_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise PointCloudError(field, f"expected an integer, received {value!r}")
    return operator.index(value)


def _xyz_offsets(fields: Sequence[Any], point_step: int) -> Dict[str, int]:
    """Check every field description against ``point_step``; return the x, y, z byte offsets."""
    try:
        count = len(fields)
    except TypeError:
        raise PointCloudError("fields", f"expected a sequence, received {type(fields).__name__}") from None
    if count > MAX_FIELDS:
        raise PointCloudError("fields", f"expected at most {MAX_FIELDS} fields, received {count}")
    offsets: Dict[str, int] = {}
    for index, field in enumerate(fields):
        name = getattr(field, "name", None)
        label = f"fields[{index}]" + (f" ({name!r})" if isinstance(name, str) else "")
        offset = _as_int(getattr(field, "offset", None), f"{label}.offset")
        datatype = _as_int(getattr(field, "datatype", None), f"{label}.datatype")
        field_count = _as_int(getattr(field, "count", None), f"{label}.count")
        if datatype not in DATATYPE_SIZES:
            raise PointCloudError(f"{label}.datatype", f"expected 1..8 (INT8..FLOAT64), received {datatype}")
        if offset < 0 or field_count < 0:
            raise PointCloudError(label, f"expected offset and count >= 0, received {offset} and {field_count}")
        end = offset + DATATYPE_SIZES[datatype] * field_count
        if end > point_step:
            raise PointCloudError(
                f"{label}.offset",
                f"field ends at byte {end}, beyond point_step {point_step}",
            )
        if name in XYZ_FIELDS:
            if name in offsets:
                raise PointCloudError(label, f"duplicate field {name!r}")
            if datatype != FLOAT32 or field_count != 1:
                raise PointCloudError(
                    label,
                    f"expected FLOAT32 with count 1, received {DATATYPE_NAMES[datatype]} with count {field_count}",
                )
            offsets[name] = offset
    missing = [name for name in XYZ_FIELDS if name not in offsets]
    if missing:
        raise PointCloudError("fields", f"missing required FLOAT32 field(s) {', '.join(missing)}")
    ordered = sorted(offsets.items(), key=lambda item: item[1])
    for (first, first_offset), (second, second_offset) in zip(ordered, ordered[1:]):
        if second_offset - first_offset < 4:
            raise PointCloudError("fields", f"{first!r} and {second!r} overlap at offsets {first_offset}, {second_offset}")
    return offsets


def parse_xyz(
    fields: Sequence[Any],
    height: Any,
    width: Any,
    point_step: Any,
    row_step: Any,
    data: Any,
    is_bigendian: Any = False,
    is_dense: Any = False,
    *,
    max_points: int = MAX_POINTS,
) -> ParsedCloud:
    """PointCloud2 fields -> finite float32 xyz [N, 3]; raises ``PointCloudError`` naming the field."""
    height = _as_int(height, "height")
    width = _as_int(width, "width")
    point_step = _as_int(point_step, "point_step")
    row_step = _as_int(row_step, "row_step")
    for name, value in (("height", height), ("width", width)):
        if not 0 <= value <= max_points:
            raise PointCloudError(name, f"expected 0..{max_points}, received {value}")
    if height * width > max_points:
        raise PointCloudError("width", f"height {height} x width {width} exceeds {max_points} points")
    if point_step < 1:
        raise PointCloudError("point_step", f"expected >= 1, received {point_step}")
    offsets = _xyz_offsets(fields, point_step)
    if row_step < width * point_step:
        raise PointCloudError(
            "row_step", f"expected >= {width * point_step} (width {width} x point_step {point_step}), received {row_step}"
        )
    try:
        view = memoryview(data)
    except TypeError:
        raise PointCloudError("data", f"expected a bytes-like object, received {type(data).__name__}") from None
    if view.format != "B" or view.ndim != 1:
        if not view.c_contiguous:
            raise PointCloudError("data", "expected a contiguous buffer")
        view = view.cast("B")
    needed = height * row_step
    if view.nbytes < needed:
        raise PointCloudError("data",
                              f"expected >= {needed} bytes (height {height} x row_step {row_step}), received {view.nbytes}")

    count = height * width
    xyz = np.empty((count, 3), dtype=np.float32)
    if count:
        coordinate = np.dtype(">f4" if is_bigendian else "<f4")
        grid = xyz.reshape(height, width, 3)
        for axis, name in enumerate(XYZ_FIELDS):
            grid[:, :, axis] = np.ndarray(
                (height, width), dtype=coordinate, buffer=view, offset=offsets[name], strides=(row_step, point_step)
            )
    finite = np.isfinite(xyz).all(axis=1)
    kept = int(np.count_nonzero(finite))
    if kept == count:
        return ParsedCloud(xyz, 0, False)
    dropped = count - kept
    return ParsedCloud(xyz[finite], dropped, bool(is_dense))


def parse_xyz_msg(msg: Any, *, max_points: int = MAX_POINTS) -> ParsedCloud:
    """``parse_xyz`` on any object with PointCloud2's attributes (an rclpy message, a SimpleNamespace)."""
    return parse_xyz(
        msg.fields, msg.height, msg.width, msg.point_step, msg.row_step, msg.data,
        msg.is_bigendian, msg.is_dense, max_points=max_points,
    )
