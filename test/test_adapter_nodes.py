"""Camera and LiDAR adapter nodes over real DDS: every encoding, malformed input, projection geometry."""
import math

import cv2
import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from ros_helpers import spin_until
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField

from vla_inference.nodes.camera_adapter_node import CameraAdapterNode
from vla_inference.nodes.lidar_adapter_node import LidarAdapterNode


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
