"""synthetic_robot_node: owns the episode and the simulated end effector.

Publishes the scene seed on ``/sim/scene`` and the command on ``/vla/text_cmd`` (both latched, so
sensors and clients that start late agree on the scene), the state on ``/joint_states`` at
``joint_state_rate_hz``, integrates ``/vla/command`` rows into the end effector, and publishes each
finished episode on ``/sim/episode`` as JSON before moving on to the next scene seed.
"""
from __future__ import annotations

import json
import time
from typing import Any, Optional

from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float32MultiArray, String, UInt32

from vla_inference.nodes.entry_point import spin_node
from vla_inference.nodes.parameters import declare
from vla_inference.spec import interface
from vla_inference.synthetic.dataset import EVAL_SEED_BASE
from vla_inference.synthetic.scene import STATE_DIM, SUCCESS_TOLERANCE_M
from vla_test_pipeline import topics
from vla_test_pipeline.episode import EpisodeSettings, ReachEpisode

JOINT_NAMES = ["ee_x", "ee_y", "ee_z"] + [f"reserved_{i}" for i in range(STATE_DIM - 3)]


class SyntheticRobotNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("synthetic_robot", **kwargs)
        self._next_scene = declare(
            self, "first_scene", EVAL_SEED_BASE,
            "Seed of the first episode's scene; each episode takes the next seed. Seeds from 1000000 on "
            "are held out from training.", int_range=(0, 2**32 - 1), read_only=True)
        self._settings = EpisodeSettings(
            timeout_s=declare(self, "episode_timeout_s", 8.0, "An episode not solved after this long fails.",
                              float_range=(0.5, 600.0), read_only=True),
            settle_s=declare(self, "settle_s", 0.5, "Commands in an episode's first seconds are ignored: they "
                             "were computed for the previous scene.", float_range=(0.0, 10.0), read_only=True),
            dwell_s=declare(self, "success_dwell_s", 0.3, "The end effector must stay within the tolerance this "
                            "long for success (passing through does not count).", float_range=(0.0, 10.0),
                            read_only=True),
            tolerance_m=declare(self, "success_tolerance_m", SUCCESS_TOLERANCE_M, "Distance to the target's top "
                                "centre that counts as reached, metres.", float_range=(0.001, 0.5), read_only=True),
        )
        rate = declare(self, "joint_state_rate_hz", 50.0, "Rate of /joint_states and of the episode checks.",
                       float_range=(1.0, 1000.0), read_only=True)
        self._scene_pub = self.create_publisher(UInt32, topics.SCENE_TOPIC, topics.LATCHED_QOS)
        self._text_pub = self.create_publisher(String, interface.TEXT_CMD_TOPIC, topics.LATCHED_QOS)
        self._joint_pub = self.create_publisher(JointState, topics.JOINT_STATES_TOPIC, 10)
        self._episode_pub = self.create_publisher(String, topics.EPISODE_TOPIC, topics.EPISODE_QOS)
        self.create_subscription(Float32MultiArray, topics.COMMAND_TOPIC, self._on_command, 10)
        self._episode_count = 0
        self._episode: Optional[ReachEpisode] = None
        self._start_episode()
        self.create_timer(1.0 / rate, self._tick)

    def _start_episode(self) -> None:
        self._episode = ReachEpisode(self._episode_count, self._next_scene, time.monotonic(), time.time(),
                                     self._settings)
        self._episode_count += 1
        self._next_scene = (self._next_scene + 1) % 2**32
        self._scene_pub.publish(UInt32(data=self._episode.scene_seed))
        self._text_pub.publish(String(data=self._episode.text))
        self.get_logger().info(f"episode {self._episode.episode}: scene {self._episode.scene_seed}, "
                               f"'{self._episode.text}'")

    def _on_command(self, msg: Float32MultiArray) -> None:
        if len(msg.data) < 3:
            self.get_logger().warning(f"command with {len(msg.data)} values ignored (need >= 3)",
                                      throttle_duration_sec=5.0)
            return
        self._episode.apply(msg.data, time.monotonic())

    def _tick(self) -> None:
        result = self._episode.check(time.monotonic())
        if result is not None:
            self._episode_pub.publish(String(data=json.dumps(result.to_dict())))
            self.get_logger().info(f"episode {result.episode}: {result.reason}, error "
                                   f"{result.final_error_m * 100:.1f} cm after {result.duration_s:.1f} s")
            self._start_episode()
        joints = JointState(name=JOINT_NAMES, position=[float(v) for v in self._episode.state()])
        joints.header.stamp = self.get_clock().now().to_msg()
        joints.header.frame_id = "base_link"
        self._joint_pub.publish(joints)


def main(args: Optional[list] = None) -> None:
    spin_node(SyntheticRobotNode, args)


if __name__ == "__main__":
    main()
