"""The graph description: node list, parameters and remappings, and what launch_ros makes of it."""
import ast
from pathlib import Path

import pytest
import yaml

from vla_test_pipeline.graph import CHECKER_NODE, INFERENCE_NODE, GraphConfig, build_graph, node_by_name
from vla_test_pipeline.processes import installed_executable

ROOT = Path(__file__).resolve().parents[2]


def console_scripts(setup_py: Path) -> set:
    """Console-script names declared in a setup.py, read without running it."""
    names = set()
    for node in ast.walk(ast.parse(setup_py.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and " = " in node.value:
            names.add(node.value.split(" = ")[0].strip())
    return names


def test_default_graph_has_every_node_with_its_remappings():
    nodes = build_graph(GraphConfig())
    names = [n.name for n in nodes]
    assert names == [INFERENCE_NODE, "synthetic_robot", "synthetic_cameras", "camera_adapter_front",
                     "camera_adapter_left", "camera_adapter_right", "synthetic_lidar", "lidar_adapter",
                     "vla_client_node"]
    assert [n.name for n in nodes if n.lifecycle] == [INFERENCE_NODE]
    left = node_by_name(nodes, "camera_adapter_left")
    assert dict(left.remappings) == {"image_raw": "/sim/camera/left/image_raw", "image": "/vla/camera/left/image"}
    assert dict(node_by_name(nodes, "lidar_adapter").remappings) == {
        "points": "/sim/lidar/points", "range_image": "/vla/lidar/range_image"}


def test_config_knobs_reach_the_parameters():
    config = GraphConfig(backend="torch", denoising_steps=4, num_cameras=2, use_lidar=False, duration_s=12.0)
    nodes = build_graph(config, include_checker=True)
    names = [n.name for n in nodes]
    assert "synthetic_lidar" not in names and "lidar_adapter" not in names and "camera_adapter_right" not in names
    server = node_by_name(nodes, INFERENCE_NODE)
    assert server.parameters["backend"] == "torch" and server.parameters["denoising_steps"] == 4
    assert server.parameters["camera_names"] == ["front", "left"]
    client = node_by_name(nodes, "vla_client_node")
    assert client.parameters["camera_names"] == ["front", "left"] and client.parameters["use_lidar"] is False
    assert node_by_name(nodes, "synthetic_cameras").parameters["camera_names"] == ["front", "left"]
    assert node_by_name(nodes, CHECKER_NODE).parameters["duration_s"] == 12.0


@pytest.mark.parametrize("bad", [dict(backend="tflite"), dict(denoising_steps=0), dict(num_cameras=4),
                                 dict(duration_s=-1.0)])
def test_invalid_config_is_refused(bad):
    with pytest.raises(ValueError):
        GraphConfig(**bad)


def test_parameter_file_and_ros_arguments(tmp_path):
    spec = node_by_name(build_graph(GraphConfig(num_cameras=1)), "vla_client_node")
    loaded = yaml.safe_load(spec.parameters_yaml())
    assert loaded["vla_client_node"]["ros__parameters"]["camera_names"] == ["front"]
    params = tmp_path / "p.yaml"
    args = spec.ros_arguments(params)
    assert args[:3] == ["--ros-args", "-r", "__node:=vla_client_node"]
    assert args[-2:] == ["--params-file", str(params)]
    adapter = node_by_name(build_graph(GraphConfig()), "camera_adapter_front")
    assert adapter.ros_arguments()[-4:] == ["-r", "image_raw:=/sim/camera/front/image_raw",
                                            "-r", "image:=/vla/camera/front/image"]


def test_server_defaults_come_first_then_the_overrides():
    server = node_by_name(build_graph(GraphConfig()), INFERENCE_NODE)
    assert server.parameter_files and server.parameter_files[0].endswith("config/vla_inference.yaml")
    args = server.ros_arguments(Path("/tmp/override.yaml"))
    files = [args[i + 1] for i, a in enumerate(args) if a == "--params-file"]
    assert files == [server.parameter_files[0], "/tmp/override.yaml"]


def test_every_executable_is_a_console_script_and_installed():
    scripts = {"vla_inference": console_scripts(ROOT / "setup.py"),
               "vla_test_pipeline": console_scripts(ROOT / "vla_test_pipeline" / "setup.py")}
    for spec in build_graph(GraphConfig(), include_checker=True):
        assert spec.executable in scripts[spec.package], f"{spec.package} does not declare {spec.executable}"
        assert Path(installed_executable(spec)[0]).is_file()


def test_launch_description_builds_from_the_graph():
    from launch_ros.actions import LifecycleNode, Node

    from launch import LaunchDescription
    from vla_test_pipeline.launch_description import generate_launch_description, graph_actions

    description = generate_launch_description()
    assert isinstance(description, LaunchDescription)
    assert {a.name for a in description.get_launch_arguments()} == {
        "backend", "model_dir", "device", "precision", "denoising_steps", "num_cameras", "use_lidar", "duration",
        "output_dir"}
    actions = graph_actions(build_graph(GraphConfig(), include_checker=True))
    nodes = [a for a in actions if isinstance(a, Node)]
    assert len(nodes) == len(build_graph(GraphConfig(), include_checker=True))
    assert [type(a) for a in nodes].count(LifecycleNode) == 1


def test_installed_launch_file_exposes_the_description_without_importing_launch():
    import runpy

    from ament_index_python.packages import get_package_share_directory

    launch_file = Path(get_package_share_directory("vla_test_pipeline")) / "launch" / "launch.py"
    namespace = runpy.run_path(str(launch_file))
    assert callable(namespace["generate_launch_description"])
