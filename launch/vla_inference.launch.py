"""Start vla_inference_node with config/vla_inference.yaml and bring it to active.

    ros2 launch vla_inference vla_inference.launch.py backend:=onnxruntime denoising_steps:=10
    ros2 launch vla_inference vla_inference.launch.py model_dir:=<pi0.5 checkpoint> backend:=torch device:=cuda precision:=bf16

The node is a lifecycle node: configure then activate are emitted by event handlers, so a failed
configure (missing model, backend not installed) leaves it unconfigured with one clear log line.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    config = os.path.join(get_package_share_directory("vla_inference"), "config", "vla_inference.yaml")
    arguments = [
        DeclareLaunchArgument("backend", default_value="onnxruntime", description="onnxruntime | tensorrt | torch"),
        DeclareLaunchArgument("model_dir", default_value="", description="model directory; empty = shipped policy"),
        DeclareLaunchArgument("denoising_steps", default_value="10", description="1..50"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="auto (tensorrt: cuda; torch: cuda when visible; onnxruntime: cpu) | cpu | cuda"),
        DeclareLaunchArgument("precision", default_value="auto",
                              description="auto (the backend's default) | fp32 | int8 | fp16 | bf16 | fp8"),
        DeclareLaunchArgument("tokenizer_path", default_value="",
                              description="pi0.5 checkpoint without a tokenizer file: PaliGemma's tokenizer"),
        DeclareLaunchArgument("vision_num_heads", default_value="0",
                              description="pi0.5 SigLIP heads; 0 = width / 72 (So400m)"),
    ]
    server = LifecycleNode(
        package="vla_inference",
        executable="vla_inference_node",
        name="vla_inference_node",
        namespace="",
        output="screen",
        parameters=[
            config,
            {
                "backend": LaunchConfiguration("backend"),
                "model_dir": LaunchConfiguration("model_dir"),
                "denoising_steps": ParameterValue(LaunchConfiguration("denoising_steps"), value_type=int),
                "device": LaunchConfiguration("device"),
                "precision": LaunchConfiguration("precision"),
                "tokenizer_path": LaunchConfiguration("tokenizer_path"),
                "vision_num_heads": ParameterValue(LaunchConfiguration("vision_num_heads"), value_type=int),
            },
        ],
    )
    configure = EmitEvent(event=ChangeState(
        lifecycle_node_matcher=matches_action(server), transition_id=Transition.TRANSITION_CONFIGURE))
    # Once: the launch's own start-up configure; a user's later `ros2 lifecycle set ... configure` stays inactive.
    activate_when_inactive = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=server, start_state="configuring", goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(server), transition_id=Transition.TRANSITION_ACTIVATE))],
        handle_once=True))
    # The node sets up the large-data Fast DDS profile itself at start-up (nodes/entry_point.py).
    return LaunchDescription([*arguments, activate_when_inactive, server, configure])
