"""lidar_adapter_node: sensor_msgs/PointCloud2 -> the 64x1024 32FC1 range image the policy consumes.

Subscribes ``points`` (sensor-data QoS; float32 x, y, z required, other fields and any field order /
point_step allowed, NaNs allowed when ``is_dense`` is false) and publishes ``range_image``
(32FC1, metres, 0 = no return) by vectorised spherical projection. Defaults match the projection the shipped policy was
trained with (``vla_inference.sensors.lidar_projection``). Malformed clouds are dropped with
a throttled warning naming the field and counted on ``/diagnostics``; the node never dies on them.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, PointCloud2

from vla_inference.nodes.camera_adapter_node import WARN_PERIOD_S
from vla_inference.nodes.diagnostics import drop_counter_array
from vla_inference.nodes.entry_point import spin_node
from vla_inference.nodes.parameters import declare
from vla_inference.sensors import lidar_projection as projection
from vla_inference.sensors.pointcloud import parse_xyz_msg


class LidarAdapterNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("lidar_adapter", **kwargs)
        self._rows = declare(self, "rows", projection.DEFAULT_ROWS, "Range image rows (elevation bins).", int_range=(1, 512),
                             read_only=True)
        self._cols = declare(self, "cols", projection.DEFAULT_COLS, "Range image columns (azimuth bins).", int_range=(1, 8192),
                             read_only=True)
        self._fov_up = declare(self, "fov_up_deg", projection.DEFAULT_FOV_UP_DEG,
                               "Upper edge of the vertical field of view, degrees.", float_range=(-90.0, 90.0), read_only=True)
        self._fov_down = declare(self, "fov_down_deg", projection.DEFAULT_FOV_DOWN_DEG,
                                 "Lower edge of the vertical field of view, degrees.", float_range=(-90.0, 90.0), read_only=True)
        self._min_range = declare(self, "min_range", projection.DEFAULT_MIN_RANGE_M,
                                  "Returns nearer than this (metres) are ignored.", float_range=(0.0, 1000.0), read_only=True)
        self._max_range = declare(self, "max_range", projection.DEFAULT_MAX_RANGE_M,
                                  "Returns farther than this (metres) are ignored.", float_range=(0.01, 1000.0), read_only=True)
        if self._fov_up <= self._fov_down or self._max_range <= self._min_range:
            raise ValueError("lidar_adapter: need fov_up_deg > fov_down_deg and max_range > min_range")
        self._received = 0
        self._published = 0
        self._dropped = 0
        self._dense_violations = 0
        self._last_error = ""
        self._publisher = self.create_publisher(Image, "range_image", qos_profile_sensor_data)
        self.create_subscription(PointCloud2, "points", self._on_points, qos_profile_sensor_data)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)

    def _on_points(self, msg: PointCloud2) -> None:
        self._received += 1
        try:
            cloud = parse_xyz_msg(msg)
        except ValueError as exc:
            self._dropped += 1
            self._last_error = str(exc)
            self.get_logger().warning(f"dropped cloud: {exc}", throttle_duration_sec=WARN_PERIOD_S)
            return
        if cloud.dense_violation:
            self._dense_violations += 1
            self.get_logger().warning("cloud claims is_dense but holds NaN/Inf points (dropped them)",
                                      throttle_duration_sec=WARN_PERIOD_S)
        ranges = projection.project_to_range_image(
            cloud.xyz, rows=self._rows, cols=self._cols, fov_up_deg=self._fov_up, fov_down_deg=self._fov_down,
            min_range=self._min_range, max_range=self._max_range)
        out = Image(header=msg.header, height=self._rows, width=self._cols, encoding="32FC1", step=self._cols * 4)
        out.data = np.ascontiguousarray(ranges, dtype=np.float32).tobytes()
        self._publisher.publish(out)
        self._published += 1

    def _publish_diagnostics(self) -> None:
        self._diagnostics.publish(drop_counter_array(self, "lidar adapter", self.counts, self._last_error))

    @property
    def counts(self) -> dict:
        return {"received": self._received, "published": self._published, "dropped": self._dropped,
                "dense_violations": self._dense_violations}


def main(args: Optional[list] = None) -> None:
    spin_node(LidarAdapterNode, args)


if __name__ == "__main__":
    main()
