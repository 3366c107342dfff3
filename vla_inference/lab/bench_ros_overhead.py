"""What ROS adds to an inference: request publish -> response receipt, minus the pipeline's own time.

    python -m vla_inference.lab.bench_ros_overhead --requests 200 --out out/bench_ros

Runs vla_inference_node (shipped policy, ONNX Runtime) and a VlaClient in one process over real
DDS, sends back-to-back requests with 3 x 224x224 rgb8 images + LiDAR, and reports per request
``round trip - model time`` (serialisation, DDS transport both ways, callbacks, validation, image
decoding, response building). One process shares one GIL between client and server, so the numbers
are an upper bound on what two processes would see.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter

from vla_inference.client.vla_client import VlaClient
from vla_inference.nodes.inference_node import InferenceNode
from vla_inference.synthetic import generate_scene, make_observation


def percentiles(values: List[float]) -> Dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{p}": float(np.percentile(arr, p)) for p in (50, 95, 99)} | {"mean": float(arr.mean())}


def run(requests: int, steps: int, cameras: int, out: Path, model_dir: str = "") -> Dict[str, object]:
    rclpy.init()
    server = InferenceNode(parameter_overrides=[
        Parameter("model_dir", value=model_dir), Parameter("max_request_rate_hz", value=100.0),
        Parameter("denoising_steps", value=steps),
        Parameter("camera_names", value=["front", "left", "right"][:cameras])])
    client_node = rclpy.create_node("bench_ros_overhead_client")
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(server)
    executor.add_node(client_node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        ok = TransitionCallbackReturn.SUCCESS
        if server.trigger_configure() != ok or server.trigger_activate() != ok:
            raise RuntimeError("vla_inference_node did not come up; see its log")
        client = VlaClient(client_node, timeout_s=30.0)
        deadline = time.monotonic() + 10.0
        while not client.server_connected and time.monotonic() < deadline:
            time.sleep(0.01)
        observations = [make_observation(generate_scene(seed), num_cameras=cameras, with_lidar=True)
                        for seed in range(8)]
        round_trip, model, overhead = [], [], []
        for i in range(requests + 10):
            obs = observations[i % len(observations)]
            result = client.infer(obs.images, obs.text, obs.state, obs.lidar_range)
            if not result.ok:
                raise RuntimeError(f"request {result.request_id}: {result.status_name} {result.message}")
            model_ms = server._server.model_time_ms(result.request_id)
            if i < 10 or model_ms is None:
                continue  # warm-up
            round_trip.append(result.round_trip_ms)
            model.append(model_ms)
            overhead.append(result.round_trip_ms - model_ms)
            if (i - 9) % 50 == 0:
                print(f"  {i - 9}/{requests} requests", flush=True)
    finally:
        server.release()
        executor.shutdown()
        rclpy.try_shutdown()
    record = {
        "requests": len(overhead),
        "cameras": cameras,
        "denoising_steps": steps,
        "round_trip_ms": percentiles(round_trip),
        "model_ms": percentiles(model),
        "ros_overhead_ms": percentiles(overhead),
        "cpu_count": os.cpu_count(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "ros_overhead.json").write_text(json.dumps(record, indent=2) + "\n")
    _plot(overhead, out / "ros_overhead.png")
    return record


def _plot(overhead: List[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(overhead, bins=40)
    ax.set_xlabel("ROS overhead per request (ms)")
    ax.set_ylabel("requests")
    ax.set_title("round trip minus model time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cameras", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--out", type=Path, default=Path("out/bench_ros"))
    parser.add_argument("--model-dir", default="", help="model directory; default the shipped policy")
    args = parser.parse_args()
    record = run(args.requests, args.steps, args.cameras, args.out, args.model_dir)
    print(f"\n{'ms':<16}{'p50':>8}{'p95':>8}{'p99':>8}")
    for key in ("round_trip_ms", "model_ms", "ros_overhead_ms"):
        row = record[key]
        print(f"{key:<16}{row['p50']:>8.2f}{row['p95']:>8.2f}{row['p99']:>8.2f}")
    print(f"({record['requests']} requests; JSON and PNG in {args.out})")


if __name__ == "__main__":
    main()
