"""The one declarative description of the synthetic-robot graph.

Both ``launch/launch.py`` (launch_ros) and ``runner.py`` (plain processes, for machines without
launch_ros) are built from :func:`build_graph`, so the node list, executables, parameters and
remappings cannot drift between the two ways of starting the stack.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from vla_inference.nodes.entry_point import transport_environment
from vla_inference.spec.interface import BACKENDS, LIDAR_TOPIC, MAX_DENOISING_STEPS, camera_topic
from vla_inference.synthetic.dataset import EVAL_SEED_BASE
from vla_test_pipeline.topics import LIDAR_POINTS_TOPIC, camera_raw_topic

ParameterValue = Union[bool, int, float, str, List[str]]

INFERENCE_PACKAGE = "vla_inference"
PIPELINE_PACKAGE = "vla_test_pipeline"
INFERENCE_NODE = "vla_inference_node"
CHECKER_NODE = "smoke_checker"
CAMERA_NAMES: Tuple[str, ...] = ("front", "left", "right")


@dataclass(frozen=True)
class GraphConfig:
    """The knobs a user turns: the launch arguments and the runner's command-line options."""

    backend: str = "onnxruntime"
    model_dir: str = ""  # "" = the shipped policy
    device: str = "auto"  # the inference node's device (auto: tensorrt -> cuda, torch -> cuda when visible)
    precision: str = "auto"  # the backend's default
    denoising_steps: int = 10
    num_cameras: int = 3
    use_lidar: bool = True
    duration_s: float = 30.0  # 0 = until stopped (runner only; the checker needs a window)
    first_scene: int = EVAL_SEED_BASE  # held-out scenes: training uses seeds below this
    request_rate_hz: float = 4.5  # below the server limit, so arrival jitter is not rate-limited
    control_rate_hz: float = 20.0
    episode_timeout_s: float = 8.0
    output_dir: str = "out/demo"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if not 1 <= self.denoising_steps <= MAX_DENOISING_STEPS:
            raise ValueError(f"denoising_steps: {self.denoising_steps} is outside 1..{MAX_DENOISING_STEPS}")
        if not 1 <= self.num_cameras <= len(CAMERA_NAMES):
            raise ValueError(f"num_cameras: {self.num_cameras} is outside 1..{len(CAMERA_NAMES)}")
        if self.duration_s < 0:
            raise ValueError(f"duration_s: {self.duration_s} must be >= 0 (0 = until stopped)")

    @property
    def camera_names(self) -> List[str]:
        return list(CAMERA_NAMES[: self.num_cameras])


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph, in the terms both launch_ros and a plain process need."""

    package: str
    executable: str
    name: str
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    parameter_files: Tuple[str, ...] = ()
    remappings: Tuple[Tuple[str, str], ...] = ()
    lifecycle: bool = False

    def ros_arguments(self, params_file: Optional[Path] = None) -> List[str]:
        """``--ros-args`` for a plain process: name, parameter files (defaults first), remappings."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        for path in (*self.parameter_files, *([str(params_file)] if params_file else [])):
            args += ["--params-file", path]
        for source, target in self.remappings:
            args += ["-r", f"{source}:={target}"]
        return args

    def parameters_yaml(self) -> str:
        """This node's parameters as a ROS 2 parameter file keyed by its node name."""
        return yaml.safe_dump({self.name: {"ros__parameters": dict(self.parameters)}}, sort_keys=True)


def _share_file(package: str, *parts: str) -> Optional[str]:
    """A file under an installed package's share directory, or None when the package or file is missing."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        path = Path(get_package_share_directory(package)).joinpath(*parts)
    except PackageNotFoundError:
        return None
    return str(path) if path.is_file() else None


def graph_environment(environ: Mapping[str, str]) -> Dict[str, str]:
    """Variables every process of the graph needs on top of ``environ``: the same large-data Fast DDS
    profile every node of vla_inference sets for itself (``entry_point.transport_environment``: with the
    default transports most best-effort 900 KB camera frames are lost), here also for the runner's and
    the demo's own in-process nodes."""
    return transport_environment(environ)


def inference_config_file() -> Optional[str]:
    """The inference node's installed defaults (config/vla_inference.yaml), when the package is found."""
    return _share_file(INFERENCE_PACKAGE, "config", "vla_inference.yaml")


def build_graph(config: GraphConfig, include_checker: bool = False) -> List[NodeSpec]:
    """The nodes of the synthetic-robot graph, in start order (producers before consumers).

    ``include_checker`` adds the smoke checker as a process (launch_ros uses it, and its exit ends
    the launch); the demo runs the checker inside its own process instead, to show progress.
    """
    cameras = config.camera_names
    defaults = inference_config_file()
    nodes: List[NodeSpec] = [
        NodeSpec(
            INFERENCE_PACKAGE, "vla_inference_node", INFERENCE_NODE,
            parameters={
                "backend": config.backend,
                "model_dir": config.model_dir,
                "device": config.device,
                "precision": config.precision,
                "denoising_steps": config.denoising_steps,
                "camera_names": cameras,
            },
            parameter_files=(defaults,) if defaults else (),
            lifecycle=True,
        ),
        NodeSpec(
            PIPELINE_PACKAGE, "synthetic_robot_node", "synthetic_robot",
            parameters={"first_scene": config.first_scene, "episode_timeout_s": config.episode_timeout_s},
        ),
        NodeSpec(
            PIPELINE_PACKAGE, "synthetic_camera_node", "synthetic_cameras",
            parameters={"camera_names": cameras},
        ),
    ]
    nodes += [
        NodeSpec(
            INFERENCE_PACKAGE, "camera_adapter_node", f"camera_adapter_{cam}",
            remappings=(("image_raw", camera_raw_topic(cam)), ("image", camera_topic(cam))),
        )
        for cam in cameras
    ]
    if config.use_lidar:
        nodes += [
            NodeSpec(PIPELINE_PACKAGE, "synthetic_lidar_node", "synthetic_lidar"),
            NodeSpec(
                INFERENCE_PACKAGE, "lidar_adapter_node", "lidar_adapter",
                remappings=(("points", LIDAR_POINTS_TOPIC), ("range_image", LIDAR_TOPIC)),
            ),
        ]
    nodes.append(
        NodeSpec(
            INFERENCE_PACKAGE, "vla_client_node", "vla_client_node",
            parameters={
                "camera_names": cameras,
                "use_lidar": config.use_lidar,
                "request_rate_hz": config.request_rate_hz,
                "control_rate_hz": config.control_rate_hz,
            },
        )
    )
    if include_checker:
        if config.duration_s <= 0:
            raise ValueError("the smoke checker needs a positive duration_s")
        nodes.append(NodeSpec(PIPELINE_PACKAGE, CHECKER_NODE, CHECKER_NODE, parameters=checker_parameters(config)))
    return nodes


def checker_parameters(config: GraphConfig) -> Dict[str, ParameterValue]:
    """The smoke checker's parameters that follow from the graph (the thresholds keep their defaults)."""
    return {
        "duration_s": config.duration_s,
        "output_dir": config.output_dir,
    }


def node_by_name(nodes: Sequence[NodeSpec], name: str) -> NodeSpec:
    for node in nodes:
        if node.name == name:
            return node
    raise KeyError(f"no node named {name!r} in the graph")
