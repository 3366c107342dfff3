"""synthetic_lidar_node: a 16-ring spinning LiDAR on /sim/lidar/points (PointCloud2, 10 Hz).

Organised like a spinning-LiDAR driver's output: 16 rows (rings) x 1024 columns (azimuth steps),
float32 x, y, z, intensity, NaN where a beam had no return (``is_dense`` false). Like the cameras,
it ray-casts a scene once when ``/sim/scene`` names it and re-publishes that sweep.
"""
from __future__ import annotations

from typing import Any, Optional

from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import UInt32

from vla_inference.nodes.entry_point import spin_node
from vla_inference.nodes.parameters import declare
from vla_inference.synthetic.scene import generate_scene
from vla_test_pipeline import topics
from vla_test_pipeline.sim_sensors import scene_sweep

FIELDS = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
          for i, name in enumerate(("x", "y", "z", "intensity"))]


class SyntheticLidarNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("synthetic_lidar", **kwargs)
        rate = declare(self, "rate_hz", 10.0, "Sweeps per second.", float_range=(0.1, 100.0), read_only=True)
        self._frame_id = declare(self, "frame_id", "lidar", "frame_id of the clouds (the LiDAR's mast frame).",
                                 read_only=True)
        self._publisher = self.create_publisher(PointCloud2, topics.LIDAR_POINTS_TOPIC, qos_profile_sensor_data)
        self._cloud: Optional[PointCloud2] = None
        self.create_subscription(UInt32, topics.SCENE_TOPIC, self._on_scene, topics.LATCHED_QOS)
        self.create_timer(1.0 / rate, self._publish)

    def _on_scene(self, msg: UInt32) -> None:
        sweep = scene_sweep(generate_scene(msg.data))
        rings, columns = sweep.shape[:2]
        cloud = PointCloud2(height=rings, width=columns, fields=FIELDS, is_bigendian=False, point_step=16,
                            row_step=16 * columns, is_dense=False)
        cloud.header.frame_id = self._frame_id
        cloud.data = sweep.tobytes()
        self._cloud = cloud

    def _publish(self) -> None:
        if self._cloud is None:
            return
        self._cloud.header.stamp = self.get_clock().now().to_msg()
        self._publisher.publish(self._cloud)


def main(args: Optional[list] = None) -> None:
    spin_node(SyntheticLidarNode, args)


if __name__ == "__main__":
    main()
