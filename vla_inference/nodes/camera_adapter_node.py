"""camera_adapter_node: any camera stream -> the rgb8 224x224 image the policy consumes.

Subscribes ``image_raw`` (``sensor_msgs/Image``) or, with ``compressed: true``,
``image_raw/compressed`` (``sensor_msgs/CompressedImage``), both with sensor-data QoS, and publishes
``image`` (rgb8, ``output_size`` square) with sensor-data QoS. Raw frames may use any encoding in
``image_codec.SUPPORTED_ENCODINGS`` (what usb_cam, v4l2_camera and Bayer-sensor drivers publish, row
padding included), wider than the server's request contract: converting here is the adapter's job.
Malformed frames and unsupported encodings are dropped with a throttled warning naming the field (an
encoding by name, with the supported ones) and counted on ``/diagnostics``; the node never dies on them.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from vla_inference.nodes.diagnostics import drop_counter_array
from vla_inference.nodes.entry_point import spin_node
from vla_inference.nodes.parameters import declare
from vla_inference.sensors.image_codec import SUPPORTED_ENCODINGS, decode_compressed_msg, decode_image_msg
from vla_inference.sensors.image_preprocessing import resize_to_model
from vla_inference.spec.interface import RESIZE_MODES

WARN_PERIOD_S = 5.0


class CameraAdapterNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("camera_adapter", **kwargs)
        self._compressed = declare(self, "compressed", False,
                                   "Subscribe image_raw/compressed (CompressedImage) instead of image_raw.",
                                   read_only=True)
        self._size = declare(self, "output_size", 224, "Side of the square rgb8 output image in pixels.",
                             int_range=(16, 1024), read_only=True)
        self._mode = declare(self, "resize_mode", "stretch",
                             "stretch (distorts aspect), letterbox (pads black) or center_crop.",
                             read_only=True, choices=RESIZE_MODES)
        self._mono16_bits = declare(self, "mono16_bits", 16,
                                    "Significant bits of mono16 samples: 16, or 10 / 12 for cameras that put 10- or 12-bit "
                                    "data in the low bits. The 8-bit output keeps the top 8 of them.",
                                    int_range=(8, 16), read_only=True)
        if self._mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode: expected one of {RESIZE_MODES}, received {self._mode!r}")
        self._received = 0
        self._published = 0
        self._dropped = 0
        self._last_error = ""
        self._publisher = self.create_publisher(Image, "image", qos_profile_sensor_data)
        if self._compressed:
            self.create_subscription(CompressedImage, "image_raw/compressed", self._on_compressed,
                                     qos_profile_sensor_data)
        else:
            self.create_subscription(Image, "image_raw", self._on_image, qos_profile_sensor_data)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)

    def _on_image(self, msg: Image) -> None:
        self._convert(msg, lambda: decode_image_msg(msg, encodings=SUPPORTED_ENCODINGS, mono16_bits=self._mono16_bits))

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._convert(msg, lambda: decode_compressed_msg(msg))

    def _convert(self, msg: Any, decode: Any) -> None:
        self._received += 1
        try:
            rgb = resize_to_model(decode(), self._size, self._mode)
        except ValueError as exc:
            self._drop(str(exc))
            return
        out = Image(header=msg.header, height=self._size, width=self._size, encoding="rgb8", step=self._size * 3)
        out.data = np.ascontiguousarray(rgb).tobytes()
        self._publisher.publish(out)
        self._published += 1

    def _drop(self, reason: str) -> None:
        self._dropped += 1
        self._last_error = reason
        self.get_logger().warning(f"dropped frame: {reason}", throttle_duration_sec=WARN_PERIOD_S)

    def _publish_diagnostics(self) -> None:
        self._diagnostics.publish(drop_counter_array(self, "camera adapter", self.counts, self._last_error))

    @property
    def counts(self) -> dict:
        return {"received": self._received, "published": self._published, "dropped": self._dropped}


def main(args: Optional[list] = None) -> None:
    spin_node(CameraAdapterNode, args)


if __name__ == "__main__":
    main()
