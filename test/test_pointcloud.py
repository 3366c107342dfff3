"""pointcloud: xyz from any field layout, non-finite points dropped, every malformed field named."""
import array
from types import SimpleNamespace

import numpy as np
import pytest

from vla_inference.sensors.pointcloud import (
    FLOAT32,
    FLOAT64,
    INT8,
    MAX_POINTS,
    UINT8,
    UINT16,
    PointCloudError,
    parse_xyz,
    parse_xyz_msg,
)

NUMPY_TYPES = {FLOAT32: "f4", FLOAT64: "f8", UINT16: "u2", UINT8: "u1", INT8: "i1"}


def field(name, offset, datatype=FLOAT32, count=1):
    return SimpleNamespace(name=name, offset=offset, datatype=datatype, count=count)


def make_cloud(xyz, layout, point_step, height=1, row_padding=0, big_endian=False, is_dense=False):
    """A PointCloud2-like namespace holding ``xyz`` [height * width, 3] in the given field layout."""
    xyz = np.asarray(xyz, np.float32)
    width = xyz.shape[0] // height
    order = ">" if big_endian else "<"
    dtype = np.dtype({
        "names": [f.name for f in layout],
        "formats": [order + NUMPY_TYPES[f.datatype] for f in layout],
        "offsets": [f.offset for f in layout],
        "itemsize": point_step,
    })
    points = np.zeros(xyz.shape[0], dtype=dtype)
    for axis, name in enumerate("xyz"):
        points[name] = xyz[:, axis]
    for f in layout:
        if f.name not in "xyz":
            points[f.name] = 7
    rows = points.view(np.uint8).reshape(height, width * point_step)
    row_step = width * point_step + row_padding
    data = np.full((height, row_step), 0xEE, np.uint8)
    data[:, : width * point_step] = rows
    return SimpleNamespace(fields=layout, height=height, width=width, point_step=point_step, row_step=row_step,
                           data=data.tobytes(), is_bigendian=big_endian, is_dense=is_dense)


XYZ = np.random.default_rng(3).uniform(-50, 50, (12, 3)).astype(np.float32)
PLAIN = [field("x", 0), field("y", 4), field("z", 8)]
OUSTER_LIKE = [field("intensity", 16), field("z", 8), field("ring", 20, UINT16), field("x", 0), field("y", 4)]
SHUFFLED = [field("t", 0, FLOAT64), field("z", 8), field("tag", 12, UINT8), field("y", 20), field("x", 28)]


@pytest.mark.parametrize("layout, point_step", [(PLAIN, 12), (PLAIN, 16), (OUSTER_LIKE, 32), (SHUFFLED, 48)])
def test_xyz_from_any_field_order_and_point_step(layout, point_step):
    parsed = parse_xyz_msg(make_cloud(XYZ, layout, point_step))
    assert parsed.xyz.dtype == np.float32 and parsed.xyz.shape == (12, 3)
    np.testing.assert_array_equal(parsed.xyz, XYZ)
    assert parsed.dropped_non_finite == 0 and not parsed.dense_violation


def test_organised_cloud_with_row_padding():
    parsed = parse_xyz_msg(make_cloud(XYZ, OUSTER_LIKE, 32, height=3, row_padding=5))
    np.testing.assert_array_equal(parsed.xyz, XYZ)


def test_big_endian():
    parsed = parse_xyz_msg(make_cloud(XYZ, SHUFFLED, 48, height=2, big_endian=True))
    np.testing.assert_array_equal(parsed.xyz, XYZ)


def test_unaligned_point_step():
    layout = [field("x", 1), field("y", 5), field("z", 9)]
    np.testing.assert_array_equal(parse_xyz_msg(make_cloud(XYZ, layout, 13)).xyz, XYZ)


@pytest.mark.parametrize("wrap", [bytes, bytearray, lambda b: array.array("B", b), memoryview])
def test_bytes_like_containers(wrap):
    cloud = make_cloud(XYZ, PLAIN, 12)
    cloud.data = wrap(cloud.data)
    np.testing.assert_array_equal(parse_xyz_msg(cloud).xyz, XYZ)


def test_trailing_bytes_are_ignored():
    cloud = make_cloud(XYZ, PLAIN, 12)
    cloud.data += b"\0" * 5
    np.testing.assert_array_equal(parse_xyz_msg(cloud).xyz, XYZ)


def with_non_finite():
    xyz = XYZ.copy()
    xyz[1, 0] = np.nan
    xyz[4, 2] = np.inf
    xyz[7, 1] = -np.inf
    return xyz


def test_non_finite_points_are_dropped_when_not_dense():
    parsed = parse_xyz_msg(make_cloud(with_non_finite(), OUSTER_LIKE, 32, is_dense=False))
    np.testing.assert_array_equal(parsed.xyz, np.delete(XYZ, [1, 4, 7], axis=0))
    assert parsed.dropped_non_finite == 3
    assert not parsed.dense_violation


def test_dense_cloud_with_nan_is_parsed_and_flagged():
    parsed = parse_xyz_msg(make_cloud(with_non_finite(), OUSTER_LIKE, 32, is_dense=True))
    assert parsed.xyz.shape == (9, 3) and np.isfinite(parsed.xyz).all()
    assert parsed.dropped_non_finite == 3
    assert parsed.dense_violation


def test_empty_cloud():
    cloud = SimpleNamespace(fields=PLAIN, height=1, width=0, point_step=12, row_step=0, data=b"",
                            is_bigendian=False, is_dense=True)
    parsed = parse_xyz_msg(cloud)
    assert parsed.xyz.shape == (0, 3) and parsed.dropped_non_finite == 0


def test_result_does_not_alias_the_message_buffer():
    cloud = make_cloud(XYZ, PLAIN, 12)
    cloud.data = bytearray(cloud.data)
    parsed = parse_xyz_msg(cloud)
    cloud.data[:12] = b"\0" * 12
    np.testing.assert_array_equal(parsed.xyz, XYZ)


def good(**changes):
    cloud = make_cloud(XYZ, OUSTER_LIKE, 32)
    for name, value in changes.items():
        setattr(cloud, name, value)
    return cloud


@pytest.mark.parametrize(
    "cloud, field_name, detail",
    [
        (good(fields=[field("x", 0), field("y", 4)]), "fields", "missing required FLOAT32 field(s) z"),
        (good(fields=[field("intensity", 0)]), "fields", "x, y, z"),
        (good(fields=[field("x", 0, FLOAT64), field("y", 8), field("z", 12)]), "fields[0] ('x')", "FLOAT64"),
        (good(fields=[field("x", 0, count=2), field("y", 8), field("z", 12)]), "fields[0] ('x')", "count 2"),
        (good(fields=[field("x", 0), field("y", 4), field("z", 30)]), "fields[2] ('z').offset", "beyond point_step 32"),
        (good(fields=PLAIN + [field("rgb", 28, FLOAT64)]), "fields[3] ('rgb').offset", "byte 36"),
        (good(fields=PLAIN + [field("label", 12, datatype=9)]), "fields[3] ('label').datatype", "received 9"),
        (good(fields=PLAIN + [field("x", 12)]), "fields[3] ('x')", "duplicate"),
        (good(fields=[field("x", 0), field("y", 2), field("z", 8)]), "fields", "overlap"),
        (good(fields=PLAIN + [field("a", -4)]), "fields[3] ('a')", "offset and count >= 0"),
        (good(fields=[field("x", "0"), field("y", 4), field("z", 8)]), "fields[0] ('x').offset", "integer"),
        (good(fields=None), "fields", "sequence"),
        (good(fields=[field(f"f{i}", 0, UINT8) for i in range(65)]), "fields", "at most 64"),
        (good(point_step=0), "point_step", "expected >= 1, received 0"),
        (good(point_step=16), "fields[0] ('intensity').offset", "beyond point_step 16"),
        (good(row_step=0), "row_step", "expected >= 384"),
        (good(row_step=383), "row_step", "received 383"),
        (good(data=b"\0" * 383), "data", "expected >= 384 bytes"),
        (good(data=None), "data", "bytes-like"),
        (good(width=MAX_POINTS + 1, row_step=(MAX_POINTS + 1) * 32), "width", f"0..{MAX_POINTS}"),
        (good(height=4096, width=4096, row_step=4096 * 32), "width", "exceeds"),
        (good(height=-1), "height", "received -1"),
        (good(width=1.5), "width", "integer"),
    ],
)
def test_malformed_clouds_are_refused_naming_the_field(cloud, field_name, detail):
    with pytest.raises(PointCloudError) as info:
        parse_xyz_msg(cloud)
    assert info.value.field == field_name
    assert detail in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_xyz_takes_plain_fields():
    cloud = make_cloud(XYZ, PLAIN, 12)
    parsed = parse_xyz(PLAIN, 1, 12, 12, 144, cloud.data)
    np.testing.assert_array_equal(parsed.xyz, XYZ)
