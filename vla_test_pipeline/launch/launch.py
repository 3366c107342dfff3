"""ros2 launch vla_test_pipeline launch.py [backend:=onnxruntime] [model_dir:=]
[denoising_steps:=10] [num_cameras:=3]
[use_lidar:=true] [duration:=30.0] [output_dir:=out/launch]

The synthetic robot, the adapters, the lifecycle inference node (configured and activated here) and the
client; with duration > 0 the smoke checker judges the run and its exit ends the launch. The node list
comes from vla_test_pipeline.graph, which the launch_ros-free runner (python -m vla_test_pipeline.demo)
uses too.
"""
from vla_test_pipeline.launch_description import generate_launch_description

__all__ = ["generate_launch_description"]
