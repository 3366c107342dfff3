"""Several client processes against one server: does every request's response reach its sender?

    python -m vla_test_pipeline.multi_client --clients 3 --total-rate-hz 5 --duration 60 --out out/multi_client
    python -m vla_test_pipeline.multi_client --reader-depth 1 --server-rate-hz 100 --total-rate-hz 30   # the old reader

The server (vla_inference_node, shipped policy, ONNX Runtime) and each client run as processes of
their own. A client keeps one request outstanding (``VlaClient``), sends full requests (3 × 224² rgb8
+ a 64 × 1024 range image) at ``total_rate_hz / clients`` with a random phase, and records per
request the status it got or a timeout (lost). The 5 Hz limit is the server's, shared by all clients:
a client refused for the rate waits the ``retry_after_ms`` it was given and sends again while its send
slot lasts, as ``VlaClient.infer`` does (without that, a client whose phase falls within 1/rate after
another's is refused every time). A second reader of its own, deep enough to miss
nothing, counts how often each of its request_ids came back (duplicated when more than once).
``--reader-depth`` sets the VlaClient's response reader; the contract topic stays Reliable +
KeepLast(1) on the server's writer either way.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

if TYPE_CHECKING:
    from rclpy.executors import Executor

LOG = logging.getLogger("multi_client")
CLIENT_ID_STRIDE = 10_000_000  # client k's request_ids start at (k + 1) * stride: never shared
RESULT_TIMEOUT_S = 3.0


def spin_until_set(executor: "Executor", stop: threading.Event) -> None:
    """Spin in slices, so the owner can stop the thread before it destroys what the executor waits on."""
    while not stop.is_set():
        executor.spin_once(timeout_sec=0.1)


def run_client(index: int, rate_hz: float, duration_s: float, reader_depth: int, out: Path) -> None:
    """One client process: send, wait, record; write ``out`` as JSON."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from vla_inference import qos
    from vla_inference.client.vla_client import VlaClient, range_image_msg, rgb_image_msg
    from vla_inference.nodes.entry_point import transport_environment
    from vla_inference.spec import interface
    from vla_inference.synthetic import generate_scene, make_observation
    from vla_msgs.msg import InferenceResponse

    os.environ.update(transport_environment(os.environ))
    rclpy.init()
    node = Node(f"multi_client_{index}")
    reader = qos.reader_qos(reader_depth)
    client = VlaClient(node, timeout_s=RESULT_TIMEOUT_S, first_request_id=(index + 1) * CLIENT_ID_STRIDE,
                       response_qos=reader)
    seen: Counter = Counter()
    node.create_subscription(InferenceResponse, interface.RESPONSE_TOPIC, lambda msg: seen.update([msg.request_id]),
                             qos.reader_qos(1000))
    executor = SingleThreadedExecutor()  # spin_once of a multi-threaded one returns before its callbacks end
    executor.add_node(node)
    stop = threading.Event()
    spinner = threading.Thread(target=spin_until_set, args=(executor, stop), daemon=True)
    spinner.start()
    observation = make_observation(generate_scene(index), num_cameras=3, with_lidar=True)
    images = [rgb_image_msg(image) for image in observation.images]
    lidar = range_image_msg(observation.lidar_range)
    while not client.server_connected:
        time.sleep(0.05)
    results: Dict[int, str] = {}
    period = 1.0 / rate_hz
    next_send = time.monotonic() + random.Random(index).uniform(0.0, period)
    end = time.monotonic() + duration_s
    while next_send < end:
        time.sleep(max(0.0, next_send - time.monotonic()))
        next_send = max(next_send + period, time.monotonic())  # a slow answer costs send slots, not the schedule
        while True:
            request_id = client.send(images, observation.text, list(observation.state), lidar)
            result = client.wait(RESULT_TIMEOUT_S)
            results[request_id] = result.status_name if result is not None else "LOST"
            retry_in = client.seconds_until_allowed()
            if result is None or result.status_name != "REJECTED_RATE_LIMIT" or \
                    time.monotonic() + retry_in >= min(next_send, end):
                break
            time.sleep(retry_in)  # the server's limit is shared: wait as asked, within this send slot
    time.sleep(1.0)  # late duplicates would arrive now
    own = {request_id: seen[request_id] for request_id in results}
    out.write_text(json.dumps({
        "client": index, "rate_hz": rate_hz, "reader_depth": reader_depth, "sent": len(results),
        "statuses": dict(Counter(results.values())),
        "lost": sum(1 for status in results.values() if status == "LOST"),
        "duplicated": sum(1 for count in own.values() if count > 1),
        "responses_seen_by_id": {str(k): v for k, v in own.items()},
    }))
    stop.set()
    spinner.join(5.0)
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()


def _wait(proc: subprocess.Popen, timeout_s: float) -> Optional[int]:
    """The exit code, or None (and the process killed) when it did not finish in time."""
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


def run(clients: int, total_rate_hz: float, duration_s: float, reader_depth: int, server_rate_hz: float,
        out: Path) -> Dict[str, object]:
    """Start the server, bring it up, run the clients side by side, and gather their records."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from vla_inference.nodes.entry_point import transport_environment
    from vla_test_pipeline.lifecycle import LifecycleClient

    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **transport_environment(os.environ)}
    server_log = (out / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "vla_inference.nodes.inference_node", "--ros-args",
                               "-p", f"max_request_rate_hz:={server_rate_hz}"], stdout=server_log,
                              stderr=subprocess.STDOUT, env=env)
    procs: List[subprocess.Popen] = []
    try:
        rclpy.init()
        node = Node("multi_client_bringup")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        stop = threading.Event()
        spinner = threading.Thread(target=spin_until_set, args=(executor, stop), daemon=True)
        spinner.start()
        LifecycleClient(node, "vla_inference_node", abort=lambda: "server exited" if server.poll() is not None
                        else None).bring_up()
        LOG.info("server active; starting %d clients at %.2f Hz each for %.0f s", clients, total_rate_hz / clients,
                 duration_s)
        for index in range(clients):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "vla_test_pipeline.multi_client", "--role", "client", "--index", str(index),
                 "--rate-hz", str(total_rate_hz / clients), "--duration", str(duration_s),
                 "--reader-depth", str(reader_depth), "--out", str(out / f"client_{index}.json")], env=env))
        failed = [index for index, proc in enumerate(procs) if _wait(proc, duration_s + 60.0) != 0]
        if failed:
            raise RuntimeError(f"client processes {failed} exited with an error")
        stop.set()
        spinner.join(5.0)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        server.send_signal(2)
        try:
            server.wait(20.0)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
    records = [json.loads((out / f"client_{index}.json").read_text()) for index in range(clients)]
    record = {
        "clients": clients, "total_rate_hz": total_rate_hz, "duration_s": duration_s, "reader_depth": reader_depth,
        "server_max_request_rate_hz": server_rate_hz, "per_client": records,
        "sent": sum(r["sent"] for r in records), "lost": sum(r["lost"] for r in records),
        "duplicated": sum(r["duplicated"] for r in records),
        "statuses": dict(sum((Counter(r["statuses"]) for r in records), Counter())),
    }
    (out / "multi_client.json").write_text(json.dumps(record, indent=2))
    return record


def format_table(record: Dict[str, object]) -> str:
    lines = [f"  {'client':<7} {'sent':>6} {'lost':>6} {'dup':>6}  statuses",
             f"  {'-' * 7} {'-' * 6} {'-' * 6} {'-' * 6}  {'-' * 40}"]
    for r in record["per_client"]:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items()))
        lines.append(f"  {r['client']:<7} {r['sent']:>6} {r['lost']:>6} {r['duplicated']:>6}  {statuses}")
    verdict = "PASS" if record["lost"] == 0 and record["duplicated"] == 0 else "FAIL"
    lines.append(f"  {'all':<7} {record['sent']:>6} {record['lost']:>6} {record['duplicated']:>6}  "
                 f"reader depth {record['reader_depth']}, {record['total_rate_hz']:g} Hz in total: {verdict}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("run", "client"), default="run", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rate-hz", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--total-rate-hz", type=float, default=5.0, help="requests per second, all clients together")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds each client sends for")
    parser.add_argument("--reader-depth", type=int, default=0,
                        help="the VlaClient's response reader depth (default: the library's, "
                             "vla_inference.qos.READER_DEPTH)")
    parser.add_argument("--server-rate-hz", type=float, default=5.0, help="the server's max_request_rate_hz")
    parser.add_argument("--out", type=Path, default=Path("out/multi_client"))
    parser.add_argument("--check", action="store_true", help="exit 1 when a response was lost or duplicated")
    args = parser.parse_args(argv)
    from vla_inference.qos import READER_DEPTH

    depth = args.reader_depth or READER_DEPTH
    if args.role == "client":
        run_client(args.index, args.rate_hz, args.duration, depth, args.out)
        return 0
    logging.basicConfig(level=logging.INFO, format="[multi_client] %(message)s")
    record = run(args.clients, args.total_rate_hz, args.duration, depth, args.server_rate_hz, args.out)
    print(format_table(record))
    print(f"  record: {args.out / 'multi_client.json'}")
    return 1 if args.check and (record["lost"] or record["duplicated"]) else 0


if __name__ == "__main__":
    sys.exit(main())
