"""VlaClient: what a robot stack calls to get action chunks from vla_inference_node.

Plain Python over an rclpy node the caller owns and spins (any executor, any thread). It keeps at
most one request outstanding (the topics are KeepLast(1): a second request in flight could silently
replace the first inside DDS), honours the server's ``retry_after_ms``, and times out instead of
waiting forever for a response that DDS may have dropped.

    client = VlaClient(node)
    result = client.infer([rgb_front, rgb_left, rgb_right], "reach the red block", state)   # blocking
    if result.ok:
        actions = result.actions                      # [horizon, action_dim]
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.time import Time
from sensor_msgs.msg import Image

from vla_inference import qos
from vla_inference.spec import interface
from vla_msgs.msg import InferenceRequest, InferenceResponse, SensorData

STATUS_NAMES = {
    value: name[len("STATUS_"):]
    for name, value in vars(InferenceResponse).items()
    if name.startswith("STATUS_") and isinstance(value, int)
}


class ClientBusyError(RuntimeError):
    """A request is still outstanding; the contract allows one at a time."""


@dataclass
class ClientResult:
    request_id: int
    status: int
    message: str
    actions: Optional[np.ndarray]  # [horizon, action_dim] float32, None unless OK
    confidence: float
    denoising_steps: int
    server_latency_ms: float
    round_trip_ms: float
    retry_after_ms: int
    observation_stamp: Optional[Time] = None

    @property
    def ok(self) -> bool:
        return self.status == InferenceResponse.STATUS_OK

    @property
    def status_name(self) -> str:
        return STATUS_NAMES.get(self.status, f"UNKNOWN({self.status})")


def rgb_image_msg(rgb: np.ndarray, frame_id: str = "") -> Image:
    """uint8 [H, W, 3] RGB -> sensor_msgs/Image rgb8."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image: expected uint8 [H, W, 3], received {rgb.dtype} {rgb.shape}")
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
    msg.header.frame_id = frame_id
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


def range_image_msg(ranges: Optional[np.ndarray], frame_id: str = "") -> Image:
    """float32 [rows, cols] metres -> sensor_msgs/Image 32FC1; None -> the empty 'no LiDAR' image."""
    if ranges is None:
        return Image()
    if ranges.ndim != 2:
        raise ValueError(f"lidar_range: expected [rows, cols], received {ranges.shape}")
    data = np.ascontiguousarray(ranges, dtype=np.float32)
    msg = Image(height=data.shape[0], width=data.shape[1], encoding="32FC1", step=data.shape[1] * 4)
    msg.header.frame_id = frame_id
    msg.data = data.tobytes()
    return msg


def build_request(
    request_id: int,
    images: Sequence[Image],
    text: str,
    state: Sequence[float],
    lidar_range: Optional[Image],
    stamp: Time,
    denoising_steps: int = 0,
    frame_id: str = "base_link",
) -> InferenceRequest:
    """One request; ``lidar_range`` None sends the contract's empty image (no LiDAR)."""
    if lidar_range is None:
        lidar_range = Image()
    request = InferenceRequest(request_id=request_id, text_cmd=text, denoising_steps=denoising_steps)
    request.header.stamp = stamp.to_msg()
    request.header.frame_id = frame_id
    request.sensor_data = SensorData(
        images=list(images),
        lidar_range=lidar_range,
        state=np.asarray(state, dtype=np.float32).tolist(),
    )
    return request


class VlaClient:
    """One outstanding request over /vla/inference/request -> /vla/inference/response."""

    def __init__(
        self,
        node: Node,
        timeout_s: float = 2.0,
        callback_group: Optional[CallbackGroup] = None,
        first_request_id: Optional[int] = None,
        on_result: Optional[Callable[[ClientResult], None]] = None,
        response_qos: QoSProfile = qos.READER_QOS,
    ) -> None:
        """``on_result`` (optional) is called from the executor thread with every matched response.
        ``response_qos`` exists for measurements (``vla_test_pipeline.multi_client``); keep the default."""
        self._node = node
        self._on_result = on_result
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._ids = itertools.count(first_request_id if first_request_id is not None else time.time_ns() // 1000)
        self._outstanding: Optional[InferenceRequest] = None
        self._sent_at = 0.0
        self._done = threading.Event()
        self._result: Optional[ClientResult] = None
        self._retry_at = 0.0
        self._publisher = node.create_publisher(InferenceRequest, interface.REQUEST_TOPIC, qos.INFERENCE_QOS)
        self._subscription = node.create_subscription(
            InferenceResponse, interface.RESPONSE_TOPIC, self._on_response, response_qos,
            callback_group=callback_group)

    @property
    def server_connected(self) -> bool:
        return self._publisher.get_subscription_count() > 0 and self._subscription.get_publisher_count() > 0

    def busy(self, now: Optional[float] = None) -> bool:
        """True while a request is outstanding and has not timed out."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._outstanding is not None and now - self._sent_at > self._timeout_s:
                self._outstanding = None  # the response was lost or is too late: free the slot
            return self._outstanding is not None

    def seconds_until_allowed(self, now: Optional[float] = None) -> float:
        """How long the server asked us to wait after a rate-limit rejection (0 = send now)."""
        now = time.monotonic() if now is None else now
        return max(0.0, self._retry_at - now)

    def send(
        self,
        images: Sequence[Image],
        text: str,
        state: Sequence[float],
        lidar_range: Optional[Image] = None,
        denoising_steps: int = 0,
        stamp: Optional[Time] = None,
    ) -> int:
        """Publish one request without waiting; returns its request_id. Raises ClientBusyError."""
        if self.busy():
            raise ClientBusyError("a request is still outstanding")
        request = build_request(
            next(self._ids), images, text, state, lidar_range if lidar_range is not None else Image(),
            stamp if stamp is not None else self._node.get_clock().now(), denoising_steps)
        with self._lock:
            self._outstanding = request
            self._sent_at = time.monotonic()
            self._result = None
            self._done.clear()
        self._publisher.publish(request)
        return request.request_id

    def wait(self, timeout_s: Optional[float] = None) -> Optional[ClientResult]:
        """Wait for the outstanding request's response (the node must be spun by another thread)."""
        if not self._done.wait(self._timeout_s if timeout_s is None else timeout_s):
            return None
        return self._result

    def take_result(self) -> Optional[ClientResult]:
        """Non-blocking: the last response, once (for timer-driven callers)."""
        with self._lock:
            result, self._result = self._result, None
            return result

    def infer(
        self,
        images_rgb: Sequence[np.ndarray],
        text: str,
        state: Sequence[float],
        lidar_range: Optional[np.ndarray] = None,
        denoising_steps: int = 0,
    ) -> ClientResult:
        """Blocking convenience: send, wait, and retry once after a rate-limit rejection when time allows.

        Raises ``TimeoutError`` when no response arrives within the client's timeout.
        """
        deadline = time.monotonic() + self._timeout_s
        images = [rgb_image_msg(image) for image in images_rgb]
        lidar = range_image_msg(lidar_range)
        while True:
            time.sleep(self.seconds_until_allowed())
            request_id = self.send(images, text, state, lidar, denoising_steps)
            result = self.wait(max(0.0, deadline - time.monotonic()))
            if result is None:
                with self._lock:
                    self._outstanding = None
                raise TimeoutError(f"request {request_id}: no response within {self._timeout_s:g} s")
            retry = result.status == InferenceResponse.STATUS_REJECTED_RATE_LIMIT
            if not retry or time.monotonic() + result.retry_after_ms / 1000.0 > deadline:
                return result

    def _on_response(self, msg: InferenceResponse) -> None:
        now = time.monotonic()
        with self._lock:
            request = self._outstanding
            if request is None or msg.request_id != request.request_id:
                return  # another client's response, or one that arrived after our timeout
            actions = None
            if msg.action_horizon and msg.action_dim:
                actions = np.asarray(msg.action_seq, dtype=np.float32).reshape(msg.action_horizon, msg.action_dim)
            if msg.status == InferenceResponse.STATUS_REJECTED_RATE_LIMIT:
                self._retry_at = now + msg.retry_after_ms / 1000.0
            self._result = ClientResult(
                request_id=msg.request_id,
                status=msg.status,
                message=msg.message,
                actions=actions,
                confidence=msg.confidence,
                denoising_steps=msg.denoising_steps,
                server_latency_ms=msg.latency_ms,
                round_trip_ms=(now - self._sent_at) * 1000.0,
                retry_after_ms=msg.retry_after_ms,
                observation_stamp=Time.from_msg(request.header.stamp),
            )
            self._outstanding = None
            result = self._result
        self._done.set()
        if self._on_result is not None:
            self._on_result(result)
