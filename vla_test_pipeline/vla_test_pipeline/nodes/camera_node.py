"""synthetic_camera_node: the robot's cameras, 640x480 bgr8 on /sim/camera/<cam>/image_raw.

The scene is static while the arm moves (the renderer draws cubes and table, not the arm), so each
camera renders a scene once when ``/sim/scene`` names it and re-publishes that frame with a fresh
stamp at ``rate_hz``: the CPU goes to transport, as with a real camera, not to re-rendering.
15 Hz by default: the client asks at 4.5 Hz, so a frame is at most 67 ms old when it does, and the
camera adapters' share of a 2-core CPU (three 640x480 conversions per frame period) halves against
30 Hz, which leaves it to the inference server.
"""
from __future__ import annotations

from typing import Any, List, Optional

from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import UInt32

from vla_inference.nodes.entry_point import spin_node
from vla_inference.nodes.parameters import declare
from vla_inference.synthetic.scene import generate_scene
from vla_test_pipeline import topics
from vla_test_pipeline.graph import CAMERA_NAMES
from vla_test_pipeline.sim_sensors import camera_indices, render_bgr


class SyntheticCameraNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("synthetic_cameras", **kwargs)
        self._names = list(declare(self, "camera_names", list(CAMERA_NAMES),
                                   f"Cameras to simulate, from {list(CAMERA_NAMES)} (renderer views 0, 1, 2).",
                                   read_only=True))
        self._indices = camera_indices(self._names)
        rate = declare(self, "rate_hz", 15.0, "Frames per second per camera.", float_range=(0.1, 120.0),
                       read_only=True)
        self._width = declare(self, "width", 640, "Image width, pixels.", int_range=(16, 4096), read_only=True)
        self._height = declare(self, "height", 480, "Image height, pixels.", int_range=(16, 4096), read_only=True)
        self._publishers = [self.create_publisher(Image, topics.camera_raw_topic(name), qos_profile_sensor_data)
                            for name in self._names]
        self._frames: List[Image] = []
        self.create_subscription(UInt32, topics.SCENE_TOPIC, self._on_scene, topics.LATCHED_QOS)
        self.create_timer(1.0 / rate, self._publish)

    def _on_scene(self, msg: UInt32) -> None:
        scene = generate_scene(msg.data)
        frames = []
        for name, index in zip(self._names, self._indices):
            bgr = render_bgr(scene, index, self._width, self._height)
            frame = Image(height=self._height, width=self._width, encoding="bgr8", step=self._width * 3)
            frame.header.frame_id = f"{name}_camera_optical_frame"
            frame.data = bgr.tobytes()
            frames.append(frame)
        self._frames = frames
        self.get_logger().info(f"rendered scene {msg.data} for {self._names}")

    def _publish(self) -> None:
        stamp = self.get_clock().now().to_msg()
        for publisher, frame in zip(self._publishers, self._frames):
            frame.header.stamp = stamp
            publisher.publish(frame)


def main(args: Optional[list] = None) -> None:
    spin_node(SyntheticCameraNode, args)


if __name__ == "__main__":
    main()
