from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vla_test_pipeline"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="VLA serving maintainers",
    maintainer_email="maintainers@vla-serving.dev",
    description="Synthetic robot, launch harness and end-to-end checks for vla_inference",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "synthetic_robot_node = vla_test_pipeline.nodes.robot_node:main",
            "synthetic_camera_node = vla_test_pipeline.nodes.camera_node:main",
            "synthetic_lidar_node = vla_test_pipeline.nodes.lidar_node:main",
            "smoke_checker = vla_test_pipeline.checker_node:main",
        ],
    },
)
