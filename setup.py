from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vla_inference"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/models/tiny", [f for f in glob("models/tiny/*") if not f.endswith(".png")]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="VLA serving maintainers",
    maintainer_email="maintainers@vla-serving.dev",
    description="ROS 2 serving layer for Vision-Language-Action policies",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "vla_inference_node = vla_inference.nodes.inference_node:main",
            "camera_adapter_node = vla_inference.nodes.camera_adapter_node:main",
            "lidar_adapter_node = vla_inference.nodes.lidar_adapter_node:main",
            "vla_client_node = vla_inference.nodes.client_node:main",
            "vla-bench = vla_inference.lab.bench:main",
            "vla-eval = vla_inference.lab.evaluate:main",
            "vla-train = vla_inference.lab.train:main",
            "vla-export = vla_inference.model.export:main",
            "vla-plan-memory = vla_inference.lab.memory_plan:main",
            "vla-build-engines = vla_inference.lab.build_engines:main",
            "vla-quant-gate = vla_inference.lab.quant_gate:main",
            "vla-bench-transport = vla_inference.lab.bench_transport:main",
            "vla-fuzz = vla_inference.lab.fuzz:main",
        ],
    },
)
