"""The graph as a launch_ros launch description (what ``ros2 launch vla_test_pipeline launch.py`` runs).

Built from ``graph.build_graph``, like the runner. The inference node is a ``LifecycleNode``:
configure is requested once its process has started, activate once configuring has reached 'inactive'. With
``duration`` > 0 the smoke checker runs too, and its exit ends the launch (its verdict is its exit
code and ``<output_dir>/smoke_report.json``). launch and launch_ros are imported inside the functions:
this module must import on machines without them (the runner shares the package).
"""
from __future__ import annotations

import os
from typing import Any, List, Sequence

from vla_inference.spec.interface import BACKENDS
from vla_test_pipeline.graph import CAMERA_NAMES, CHECKER_NODE, GraphConfig, NodeSpec, build_graph, graph_environment

ARGUMENTS = (
    ("backend", "onnxruntime", "Inference runtime: " + ", ".join(BACKENDS)),
    ("model_dir", "", "Model directory; empty = the shipped policy"),
    ("device", "auto", "auto (tensorrt: cuda; torch: cuda when a GPU is visible; onnxruntime: cpu), cpu or cuda"),
    ("precision", "auto", "auto (the backend's default) or fp32, int8, fp16, bf16, fp8"),
    ("denoising_steps", "10", "Euler steps of the action expert, 1..50"),
    ("num_cameras", "3", f"Cameras, the first N of {', '.join(CAMERA_NAMES)}"),
    ("use_lidar", "true", "Simulate the LiDAR and run its adapter (true/false)"),
    ("duration", "30.0", "Smoke-check window in seconds, after which the launch ends; 0 = no checker, run "
     "until Ctrl-C"),
    ("output_dir", "out/launch", "Where the smoke checker writes smoke_report.json and paths.png"),
)


def generate_launch_description() -> Any:
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable

    from launch import LaunchDescription

    arguments = [DeclareLaunchArgument(name, default_value=default, description=description)
                 for name, default, description in ARGUMENTS]
    environment = [SetEnvironmentVariable(name, value) for name, value in graph_environment(os.environ).items()]
    return LaunchDescription([*arguments, *environment, OpaqueFunction(function=_actions_from_arguments)])


def _actions_from_arguments(context: Any) -> List[Any]:
    from launch.substitutions import LaunchConfiguration

    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    use_lidar = value("use_lidar").strip().lower()
    if use_lidar not in ("true", "false"):
        raise ValueError(f"use_lidar: expected true or false, received {use_lidar!r}")
    config = GraphConfig(
        backend=value("backend"),
        model_dir=value("model_dir"),
        device=value("device"),
        precision=value("precision"),
        denoising_steps=int(value("denoising_steps")),
        num_cameras=int(value("num_cameras")),
        use_lidar=use_lidar == "true",
        duration_s=float(value("duration")),
        output_dir=value("output_dir"),
    )
    return graph_actions(build_graph(config, include_checker=config.duration_s > 0))


def graph_actions(nodes: Sequence[NodeSpec]) -> List[Any]:
    """launch_ros actions for ``nodes``: Node / LifecycleNode, the lifecycle events, the checker's exit."""
    from launch.actions import EmitEvent, RegisterEventHandler
    from launch.event_handlers import OnProcessExit, OnProcessStart
    from launch.events import matches_action
    from launch_ros.actions import LifecycleNode, Node
    from launch_ros.event_handlers import OnStateTransition
    from launch_ros.events.lifecycle import ChangeState
    from lifecycle_msgs.msg import Transition

    actions: List[Any] = []
    for spec in nodes:
        parameters: List[Any] = list(spec.parameter_files)
        if spec.parameters:
            parameters.append(dict(spec.parameters))
        kwargs = dict(package=spec.package, executable=spec.executable, name=spec.name, namespace="",
                      parameters=parameters, remappings=list(spec.remappings), output="screen")
        if not spec.lifecycle:
            node = Node(**kwargs)
            actions.append(node)
        else:
            node = LifecycleNode(**kwargs)

            def transition(target: Any, transition_id: int) -> Any:
                return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(target),
                                                   transition_id=transition_id))

            actions += [
                RegisterEventHandler(OnProcessStart(
                    target_action=node, on_start=[transition(node, Transition.TRANSITION_CONFIGURE)])),
                # configuring -> inactive, once: the launch's own start-up configure. A later deactivate
                # (active -> inactive) or a user's `ros2 lifecycle set ... configure` is left alone.
                RegisterEventHandler(OnStateTransition(
                    target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
                    entities=[transition(node, Transition.TRANSITION_ACTIVATE)], handle_once=True)),
                node,
            ]
        if spec.name == CHECKER_NODE:
            actions.append(RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_end_with_verdict)))
    return actions


class SmokeCheckFailed(RuntimeError):
    """The smoke checker's verdict was FAIL: raised inside launch, so ``ros2 launch`` exits 1."""


def _end_with_verdict(event: Any, context: Any) -> List[Any]:
    """End the launch when the checker exits: a pass shuts down cleanly (exit 0); a failed verdict is
    raised, which launch logs, turns into a shutdown and reports as its exit code 1."""
    from launch.actions import EmitEvent
    from launch.events import Shutdown

    if event.returncode != 0:
        raise SmokeCheckFailed(f"smoke check failed (the checker exited {event.returncode}); see its "
                               "smoke_report.json in output_dir")
    return [EmitEvent(event=Shutdown(reason="smoke check passed"))]
