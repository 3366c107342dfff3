"""vla_client_node: the robot-side loop, from adapted sensor topics to commands.

Every ``1 / request_rate_hz`` it sends one request (never a second while one is outstanding) built
from the freshest data it holds: the camera adapters' images in ``camera_names`` order, the LiDAR
range image, ``/joint_states`` positions as the state and the last ``/vla/text_cmd``. While any of
them is older than ``sensor_timeout_s`` (the LiDAR only when the served model reads it), nothing is
sent and the diagnostics name the stale sensor: a request without it would only come back
INVALID_REQUEST, and faking the frame would be worse. Until every camera (and the LiDAR, when used)
has delivered once, the same hold says what is missing: at start-up the drivers come up in any
order. Received chunks are played out one row per control tick on ``/vla/command`` by the
``ChunkExecutor``, which holds (zeros) when no fresh chunk is usable, and from the next tick on
when the server leaves the graph (killed or stopped: its response writer is gone), until it serves
again.

The server's latched ``/vla/inference/metadata`` says what its model reads: when this node's
``camera_names``, ``state_dim`` or ``action_dim`` differ from it, the node sends nothing, logs each
difference and reports it in its diagnostics (``client.model_check``).

The request is stamped with the state's time (the ``/joint_states`` header stamp, or its arrival
time when unstamped): a chunk starts from that state, and the executor skips the rows it emitted
after the stamp. An older stamp, such as an image's, would count rows the state already contains
and skip them, so near the goal the arm stopped short of it and drifted.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, MultiArrayDimension, String

from vla_inference.client.chunk_executor import ChunkExecutor, ExecutorState, HoldPolicy
from vla_inference.client.model_check import ServedModel, setup_mismatches
from vla_inference.client.vla_client import ClientBusyError, ClientResult, VlaClient
from vla_inference.nodes.diagnostics import diagnostic_array
from vla_inference.nodes.entry_point import spin_node
from vla_inference.nodes.parameters import declare
from vla_inference.qos import METADATA_QOS, TEXT_CMD_QOS
from vla_inference.spec.interface import (
    COMMAND_TOPIC,
    LIDAR_TOPIC,
    MAX_DENOISING_STEPS,
    METADATA_TOPIC,
    STATE_TOPIC,
    TEXT_CMD_TOPIC,
    camera_topic,
)
from vla_msgs.msg import InferenceResponse, ModelMetadata

REQUEST_TICK_S = 0.02  # pacing resolution of the request loop


class VlaClientNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("vla_client_node", **kwargs)
        self._cameras = list(declare(self, "camera_names", ["front", "left", "right"],
                                     "Cameras in the server's camera_names order.", read_only=True))
        self._use_lidar = declare(self, "use_lidar", True, "Send the LiDAR range image when fresh.", read_only=True)
        request_rate = declare(self, "request_rate_hz", 4.5, "Requests per second at most (one outstanding); keep "
                               "it below the server's max_request_rate_hz so jitter is not rate-limited.",
                               float_range=(0.1, 100.0), read_only=True)
        control_rate = declare(self, "control_rate_hz", 20.0, "Rows of the action chunk played per second.",
                               float_range=(1.0, 1000.0), read_only=True)
        self._sensor_timeout_s = declare(self, "sensor_timeout_s", 0.5,
                                         "No request is sent while a sensor's newest data is older than this.",
                                         float_range=(0.01, 60.0))
        timeout = declare(self, "request_timeout_s", 2.0, "A request without response after this is given up.",
                          float_range=(0.05, 60.0), read_only=True)
        max_age = declare(self, "max_chunk_age_s", 1.0, "Chunks whose observation is older than this are refused.",
                          float_range=(0.01, 60.0), read_only=True)
        hold = declare(self, "hold_policy", "zero", "zero: hold = no motion (deltas/velocities); last: repeat the "
                       "last row (absolute positions).", read_only=True, choices=("zero", "last"))
        action_dim = declare(self, "action_dim", 8, "Values per action row.", int_range=(1, 256), read_only=True)
        self._state_dim = declare(self, "state_dim", 8, "Joint positions sent as the state.", int_range=(1, 256),
                                  read_only=True)
        self._steps = declare(self, "denoising_steps", 0, "Steps asked per request; 0 = the server's parameter.",
                              int_range=(0, MAX_DENOISING_STEPS))
        delta_dims = declare(self, "delta_dims", [0, 1, 2], "Action columns that are position deltas: a new chunk "
                             "starts where the executed deltas put the robot on its plan; [] = count executed rows.",
                             read_only=True)
        self._executor = ChunkExecutor(1.0 / control_rate, max_age, HoldPolicy(hold), action_dim,
                                       delta_dims=list(delta_dims))
        self._action_dim = action_dim
        self._mismatches: List[str] = []
        self._images: Dict[str, Tuple[float, Image]] = {}
        self._lidar: Optional[Tuple[float, Image]] = None
        self._state: Optional[Tuple[float, Tuple[Time, list]]] = None
        self._text = ""
        self._counts: Dict[str, int] = {}
        self._last_state = ExecutorState.IDLE
        self._waiting_for: List[str] = []
        self._stale: List[str] = []
        self._held_stale = 0
        self._served_uses_lidar = True  # until the metadata says otherwise
        self._control_period_s = 1.0 / control_rate
        self._last_tick: Optional[float] = None
        self._missed_ticks = 0
        self._server_seen = False
        self._server_missing = False
        responses = MutuallyExclusiveCallbackGroup()
        self._client = VlaClient(self, timeout_s=timeout, callback_group=responses, on_result=self._on_result)
        for name in self._cameras:
            self.create_subscription(Image, camera_topic(name), lambda msg, n=name: self._store_image(n, msg),
                                     qos_profile_sensor_data)
        if self._use_lidar:
            self.create_subscription(Image, LIDAR_TOPIC, self._store_lidar, qos_profile_sensor_data)
        self.create_subscription(JointState, STATE_TOPIC, self._store_state, qos_profile_sensor_data)
        self.create_subscription(String, TEXT_CMD_TOPIC, self._store_text, TEXT_CMD_QOS)
        self.create_subscription(ModelMetadata, METADATA_TOPIC, self._check_model, METADATA_QOS)
        self._command_pub = self.create_publisher(Float32MultiArray, COMMAND_TOPIC, 10)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._request_period_s = 1.0 / request_rate
        self._last_sent = -float("inf")
        self.create_timer(REQUEST_TICK_S, self._maybe_request, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(1.0 / control_rate, self._control_tick, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(1.0, self._publish_diagnostics)

    # -- inputs --------------------------------------------------------------------------------
    @property
    def response_counts(self) -> Dict[str, int]:
        """Responses per status name (plus ``chunk_refused``) since start: what the diagnostics report."""
        return dict(self._counts)

    @property
    def waiting_for(self) -> List[str]:
        """Sensors that have not delivered once yet; nothing is sent while this is not empty."""
        return list(self._waiting_for)

    @property
    def stale_sensors(self) -> List[str]:
        """Sensors whose data was older than ``sensor_timeout_s`` at the last request slot (requests held)."""
        return list(self._stale)

    @property
    def requests_held_stale(self) -> int:
        """Request slots skipped since start because a sensor was stale."""
        return self._held_stale

    @property
    def server_missing(self) -> bool:
        """The server was seen and is gone from the graph now: the executor holds."""
        return self._server_missing

    @property
    def setup_mismatches(self) -> List[str]:
        """How this client's parameters differ from the served model's metadata; while any, nothing is sent."""
        return list(self._mismatches)

    def _check_model(self, msg: ModelMetadata) -> None:
        served = ServedModel(list(msg.camera_names), msg.state_dim, msg.action_dim, msg.uses_lidar)
        self._mismatches = setup_mismatches(self._cameras, self._state_dim, self._action_dim, served)
        self._served_uses_lidar = bool(msg.uses_lidar)
        for line in self._mismatches:
            self.get_logger().error(f"refusing to run against {msg.model_dir} ({msg.architecture}): {line}")
        if not self._mismatches:
            self.get_logger().info(f"server model {msg.model_dir} ({msg.architecture}) fits this client")
        if self._use_lidar and not msg.uses_lidar:
            self.get_logger().info("the served model reads no LiDAR: range images are sent but ignored")

    def _store_image(self, name: str, msg: Image) -> None:
        self._images[name] = (time.monotonic(), msg)

    def _store_lidar(self, msg: Image) -> None:
        self._lidar = (time.monotonic(), msg)

    def _store_state(self, msg: JointState) -> None:
        stamp = Time.from_msg(msg.header.stamp)
        if stamp.nanoseconds == 0:
            stamp = self.get_clock().now()  # an unstamped state was measured no later than its arrival
        self._state = (time.monotonic(), (stamp, list(msg.position[: self._state_dim])))

    def _store_text(self, msg: String) -> None:
        self._text = msg.data

    def _fresh(self, entry: Optional[Tuple[float, Any]], now: float) -> Optional[Any]:
        if entry is None or now - entry[0] > self._sensor_timeout_s:
            return None
        return entry[1]

    # -- requests ------------------------------------------------------------------------------
    def _maybe_request(self) -> None:
        now = time.monotonic()
        if now - self._last_sent < self._request_period_s or not self._text or self._mismatches:
            return
        if self._client.busy(now) or self._client.seconds_until_allowed(now) > 0:
            return
        stamped_state = self._fresh(self._state, now)
        if stamped_state is None:
            return  # without the robot state there is no observation worth asking about
        stamp, state = stamped_state
        self._waiting_for = [n for n in self._cameras if n not in self._images]
        if self._use_lidar and self._lidar is None:
            self._waiting_for.append("lidar")
        if self._waiting_for:
            self.get_logger().warning(f"waiting for the first data from {', '.join(self._waiting_for)}",
                                      throttle_duration_sec=5.0)
            return
        images = [self._fresh(self._images.get(n), now) for n in self._cameras]
        lidar = self._fresh(self._lidar, now) if self._use_lidar else None
        self._stale = [n for n, image in zip(self._cameras, images) if image is None]
        if self._use_lidar and self._served_uses_lidar and lidar is None:
            self._stale.append("lidar")
        if self._stale:
            self._held_stale += 1
            self.get_logger().warning(f"holding requests: no data within sensor_timeout_s "
                                      f"({self._sensor_timeout_s:g} s) from {', '.join(self._stale)}",
                                      throttle_duration_sec=5.0)
            return
        try:
            self._client.send(images, self._text, state, lidar, self._steps, stamp=stamp)
        except ClientBusyError:
            return
        self._last_sent = now

    def _on_result(self, result: ClientResult) -> None:
        name = result.status_name
        self._counts[name] = self._counts.get(name, 0) + 1
        if result.actions is None or result.status != InferenceResponse.STATUS_OK:
            self.get_logger().warning(f"request {result.request_id}: {name} {result.message}",
                                      throttle_duration_sec=5.0)
            return
        now_s = self.get_clock().now().nanoseconds * 1e-9
        stamp_s = result.observation_stamp.nanoseconds * 1e-9 if result.observation_stamp else now_s
        decision = self._executor.accept_chunk(result.actions, stamp_s, now_s)
        if not decision.accepted:
            self._counts["chunk_refused"] = self._counts.get("chunk_refused", 0) + 1
            self.get_logger().warning(f"chunk {result.request_id} refused: {decision.reason}",
                                      throttle_duration_sec=5.0)

    # -- control -------------------------------------------------------------------------------
    def _control_tick(self) -> None:
        now = time.monotonic()
        if self._last_tick is not None:
            self._missed_ticks += max(0, round((now - self._last_tick) / self._control_period_s) - 1)
        self._last_tick = now
        connected = self._client.server_connected
        self._server_seen = self._server_seen or connected
        self._server_missing = self._server_seen and not connected
        if self._server_missing:
            self._executor.hold("server missing")
        command, state = self._executor.command(self.get_clock().now().nanoseconds * 1e-9)
        self._last_state = state
        if command is None:
            return
        msg = Float32MultiArray()
        msg.layout.dim = [MultiArrayDimension(label="action", size=len(command), stride=len(command))]
        msg.data = [float(v) for v in command]
        self._command_pub.publish(msg)

    def _publish_diagnostics(self) -> None:
        executing = self._last_state == ExecutorState.EXECUTING
        level = DiagnosticStatus.OK if executing else DiagnosticStatus.WARN
        message = self._last_state.value + (f" ({self._executor.hold_reason})" if not executing else "")
        if self._server_missing:
            message += "; server missing"
        if self._waiting_for:
            message += f"; waiting for the first data from {', '.join(self._waiting_for)}"
        elif self._stale:
            message += f"; holding requests: stale data from {', '.join(self._stale)}"
        if self._mismatches:
            level = DiagnosticStatus.ERROR
            message = "refusing to run: " + "; ".join(self._mismatches)
        values = {"server_connected": self._client.server_connected, "server_missing": self._server_missing,
                  "stale_sensors": ",".join(self._stale), "requests_held_stale": self._held_stale,
                  "missed_control_ticks": self._missed_ticks, **self._counts}
        self._diagnostics.publish(diagnostic_array(self, "vla_client_node: chunk executor", level, message, values))


def main(args: Optional[list] = None) -> None:
    spin_node(VlaClientNode, args)  # no callback blocks: one thread is enough and costs least CPU


if __name__ == "__main__":
    main()
