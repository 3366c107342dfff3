"""Camera and LiDAR adapter nodes over real DDS: every encoding, malformed input, projection geometry."""
import math

import cv2
import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.exceptions import InvalidParameterValueException
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from ros_helpers import spin_until
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField

from vla_inference.nodes.camera_adapter_node import CameraAdapterNode
from vla_inference.nodes.lidar_adapter_node import LidarAdapterNode
from vla_inference.sensors.image_codec import SUPPORTED_ENCODINGS


def _scene_rgb(height: int = 120, width: int = 160) -> np.ndarray:
    rng = np.random.default_rng(3)
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (200, 30, 40)
    image[height // 2 :, width // 2 :] = (20, 180, 60)
    image[10:30, 10:40] = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    return image


def _encode(rgb: np.ndarray, encoding: str) -> Image:
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == "rgba8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    elif encoding == "bgra8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    elif encoding == "mono8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif encoding == "mono16":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) << 8
    else:
        raise AssertionError(encoding)
    pixels = np.ascontiguousarray(pixels)
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, step=pixels.strides[0])
    msg.data = pixels.tobytes()
    return msg


def _expected(rgb: np.ndarray, encoding: str) -> np.ndarray:
    if encoding.startswith("mono"):
        rgb = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_LINEAR if rgb.shape[0] < 224 else cv2.INTER_AREA)


class _Harness:
    """An adapter node plus a test node feeding it and collecting its output."""

    def __init__(self, context, node, in_type, in_topic, out_topic):
        self.node = node
        self.peer = rclpy.create_node("adapter_test_peer", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(node)
        self.executor.add_node(self.peer)
        self.outputs = []
        self.peer.create_subscription(Image, out_topic, self.outputs.append, qos_profile_sensor_data)
        self.pub = self.peer.create_publisher(in_type, in_topic, qos_profile_sensor_data)
        assert spin_until(self.executor, lambda: self.pub.get_subscription_count() > 0, 10.0)

    def feed(self, msg, expect_output: bool) -> None:
        """Publish until the adapter has received it (sensor QoS is best effort)."""
        before_received = self.node.counts["received"]
        before_out = len(self.outputs)
        for _ in range(20):
            self.pub.publish(msg)
            if spin_until(self.executor, lambda: self.node.counts["received"] > before_received, 0.5):
                break
        assert self.node.counts["received"] > before_received, "adapter never received the message"
        if expect_output:
            assert spin_until(self.executor, lambda: len(self.outputs) > before_out, 5.0), "no output"

    def close(self) -> None:
        self.executor.shutdown()


@pytest.fixture
def camera(ros_context):
    node = CameraAdapterNode(context=ros_context)
    harness = _Harness(ros_context, node, Image, "/image_raw", "/image")
    yield harness
    harness.close()


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16"])
def test_camera_adapter_converts_every_supported_encoding(camera, encoding):
    rgb = _scene_rgb(480, 640)
    camera.feed(_encode(rgb, encoding), expect_output=True)
    out = camera.outputs[-1]
    assert (out.encoding, out.height, out.width, out.step) == ("rgb8", 224, 224, 224 * 3)
    got = np.frombuffer(bytes(out.data), np.uint8).reshape(224, 224, 3)
    diff = np.abs(got.astype(int) - _expected(rgb, encoding).astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 3


@pytest.mark.parametrize(
    "corrupt, field",
    [
        (lambda m: setattr(m, "encoding", "yuv422_weird"), "encoding"),
        (lambda m: setattr(m, "step", m.width * 3 - 1), "step"),
        (lambda m: setattr(m, "data", bytes(m.data)[:-100]), "data"),
        (lambda m: setattr(m, "width", 100000), "width"),
        (lambda m: setattr(m, "height", 0), "height"),
    ],
)
def test_camera_adapter_drops_malformed_frames_and_keeps_serving(camera, corrupt, field):
    bad = _encode(_scene_rgb(), "rgb8")
    corrupt(bad)
    camera.feed(bad, expect_output=False)
    assert camera.node.counts["dropped"] == 1
    assert field in camera.node._last_error
    assert camera.node.counts["published"] == 0
    camera.feed(_encode(_scene_rgb(), "bgr8"), expect_output=True)
    assert camera.node.counts["published"] == 1


def _yuyv_driver_frame(rgb: np.ndarray) -> Image:
    """``yuv422_yuy2`` as usb_cam / v4l2_camera publish it: Y0 U0 Y1 V0 per pixel pair (BT.601 limited range,
    U and V averaged over the pair), ``step`` = bytesperline rounded up to 64 bytes, padding bytes left as garbage."""
    r, g, b = (rgb[..., i].astype(np.float64) / 255.0 for i in range(3))
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    quads = (y[:, 0::2], (u[:, 0::2] + u[:, 1::2]) / 2, y[:, 1::2], (v[:, 0::2] + v[:, 1::2]) / 2)
    packed = np.stack([np.clip(np.rint(c), 0, 255).astype(np.uint8) for c in quads], axis=-1)
    height, width = rgb.shape[:2]
    step = -(-width * 2 // 64) * 64
    frame = np.full((height, step), 0xAB, np.uint8)
    frame[:, : width * 2] = packed.reshape(height, width * 2)
    msg = Image(height=height, width=width, encoding="yuv422_yuy2", step=step)
    msg.data = frame.tobytes()
    return msg


def test_camera_adapter_converts_a_yuyv_driver_frame(camera):
    rgb = np.zeros((120, 150, 3), np.uint8)  # colour blocks on even columns: no U, V pair straddles two colours
    rgb[:, :50] = (220, 30, 40)
    rgb[:, 50:100] = (20, 180, 60)
    rgb[:60, 100:] = (30, 60, 210)
    rgb[60:, 100:] = (240, 240, 240)
    msg = _yuyv_driver_frame(rgb)
    assert msg.step == 320 > 150 * 2
    camera.feed(msg, expect_output=True)
    out = camera.outputs[-1]
    assert (out.encoding, out.height, out.width, out.step) == ("rgb8", 224, 224, 224 * 3)
    got = np.frombuffer(bytes(out.data), np.uint8).reshape(224, 224, 3)
    diff = np.abs(got.astype(int) - _expected(rgb, "rgb8").astype(int))
    assert diff.max() <= 3 and camera.node.counts["dropped"] == 0


def test_camera_adapter_names_an_unsupported_encoding_on_diagnostics(camera):
    statuses = []
    camera.peer.create_subscription(DiagnosticArray, "/diagnostics", lambda m: statuses.extend(m.status), 10)
    bad = _encode(_scene_rgb(), "rgb8")
    bad.encoding = "nv12"
    camera.feed(bad, expect_output=False)
    assert camera.node.counts["dropped"] == 1 and camera.node.counts["published"] == 0

    def adapter_status():
        mine = [s for s in statuses if s.hardware_id == camera.node.get_name()]
        return mine[-1] if mine else None

    assert spin_until(camera.executor, lambda: adapter_status() is not None, 5.0), "no diagnostics"
    status = adapter_status()
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.WARN and values["dropped"] == "1"
    assert values["last_error"].startswith("encoding: ") and "received 'nv12'" in values["last_error"]
    assert all(name in values["last_error"] for name in SUPPORTED_ENCODINGS)


def test_camera_adapter_scales_mono16_by_mono16_bits(ros_context):
    with pytest.raises(InvalidParameterValueException):
        CameraAdapterNode(context=ros_context, parameter_overrides=[Parameter("mono16_bits", value=17)])
    node = CameraAdapterNode(context=ros_context, parameter_overrides=[Parameter("mono16_bits", value=12)])
    harness = _Harness(ros_context, node, Image, "/image_raw", "/image")
    try:
        rgb = _scene_rgb()
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        msg = Image(height=gray.shape[0], width=gray.shape[1], encoding="mono16", step=gray.shape[1] * 2)
        msg.data = (gray.astype("<u2") << 4).tobytes()  # 12-bit samples in the low bits
        harness.feed(msg, expect_output=True)
        got = np.frombuffer(bytes(harness.outputs[-1].data), np.uint8).reshape(224, 224, 3)
        assert np.abs(got.astype(int) - _expected(rgb, "mono8").astype(int)).max() <= 1
    finally:
        harness.close()


def test_camera_adapter_compressed_letterbox(ros_context):
    node = CameraAdapterNode(context=ros_context, parameter_overrides=[
        Parameter("compressed", value=True), Parameter("resize_mode", value="letterbox")])
    harness = _Harness(ros_context, node, CompressedImage, "/image_raw/compressed", "/image")
    try:
        rgb = np.full((100, 200, 3), (250, 250, 250), np.uint8)
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        harness.feed(CompressedImage(format="png", data=png.tobytes()), expect_output=True)
        got = np.frombuffer(bytes(harness.outputs[-1].data), np.uint8).reshape(224, 224, 3)
        assert got[112, 112].tolist() == [250, 250, 250]  # the image, centred
        assert got[5, 112].tolist() == [0, 0, 0] and got[-5, 112].tolist() == [0, 0, 0]  # black bars
        harness.feed(CompressedImage(format="png", data=b"\x89PNG\r\n\x1a\nnot really"), expect_output=False)
        assert node.counts["dropped"] == 1
    finally:
        harness.close()


def _cloud(points: np.ndarray, extra_intensity: bool = True) -> PointCloud2:
    """x, y, z, intensity float32 in a 20-byte point (intensity first, 4 bytes padding at the end)."""
    n = len(points)
    dtype = np.dtype({"names": ["intensity", "x", "y", "z"], "formats": ["<f4"] * 4,
                      "offsets": [0, 4, 8, 12], "itemsize": 20})
    arr = np.zeros(n, dtype)
    arr["x"], arr["y"], arr["z"] = points[:, 0], points[:, 1], points[:, 2]
    arr["intensity"] = 7.0
    fields = [PointField(name=name, offset=off, datatype=PointField.FLOAT32, count=1)
              for name, off in (("intensity", 0), ("x", 4), ("y", 8), ("z", 12))]
    msg = PointCloud2(height=1, width=n, fields=fields, is_bigendian=False, point_step=20, row_step=20 * n,
                      is_dense=False)
    msg.data = arr.tobytes()
    return msg


def _point(range_m: float, azimuth_deg: float, elevation_deg: float) -> list:
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return [range_m * math.cos(el) * math.cos(az), range_m * math.cos(el) * math.sin(az), range_m * math.sin(el)]


@pytest.fixture
def lidar(ros_context):
    node = LidarAdapterNode(context=ros_context, parameter_overrides=[
        Parameter("fov_up_deg", value=15.0), Parameter("fov_down_deg", value=-15.0),
        Parameter("min_range", value=0.1), Parameter("max_range", value=20.0)])
    harness = _Harness(ros_context, node, PointCloud2, "/points", "/range_image")
    yield harness
    harness.close()


def test_lidar_adapter_projects_points_at_known_angles(lidar):
    points = np.array([
        _point(5.0, 0.0, 0.0),      # straight ahead, horizon
        _point(2.5, 90.0, 15.0),    # left, top beam
        _point(7.0, -90.0, -15.0),  # right, bottom beam
        _point(3.0, 0.0, 0.0),      # nearer return in the same pixel as the first: wins
        _point(30.0, 45.0, 0.0),    # beyond max_range: dropped
        [np.nan, 1.0, 0.0],         # no return: dropped
    ], dtype=np.float32)
    lidar.feed(_cloud(points), expect_output=True)
    out = lidar.outputs[-1]
    assert (out.encoding, out.height, out.width, out.step) == ("32FC1", 64, 1024, 4096)
    ranges = np.frombuffer(bytes(out.data), np.float32).reshape(64, 1024)
    hits = {tuple(ix): float(ranges[tuple(ix)]) for ix in np.argwhere(ranges > 0)}
    assert len(hits) == 3
    horizon_row = round((15.0 - 0.0) / 30.0 * 63)
    assert hits[(horizon_row, 512)] == pytest.approx(3.0, abs=1e-4)
    assert hits[(0, 256)] == pytest.approx(2.5, abs=1e-4)
    assert hits[(63, 768)] == pytest.approx(7.0, abs=1e-4)


@pytest.mark.parametrize("corrupt, field", [
    (lambda m: setattr(m, "fields", [f for f in m.fields if f.name != "z"]), "z"),
    (lambda m: setattr(m, "point_step", 8), "point_step"),
    (lambda m: setattr(m, "row_step", 0), "row_step"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-7]), "data"),
])
def test_lidar_adapter_drops_malformed_clouds_and_keeps_serving(lidar, corrupt, field):
    good = _cloud(np.array([_point(4.0, 10.0, 0.0)] * 4, np.float32))
    bad = _cloud(np.array([_point(4.0, 10.0, 0.0)] * 4, np.float32))
    corrupt(bad)
    lidar.feed(bad, expect_output=False)
    assert lidar.node.counts["dropped"] == 1 and field in lidar.node._last_error
    lidar.feed(good, expect_output=True)
    assert lidar.node.counts["published"] == 1
