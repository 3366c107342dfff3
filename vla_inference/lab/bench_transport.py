"""``vla-bench-transport``: are large inference requests delivered, and how fast, over real DDS?

    vla-bench-transport --transport both --duration 60 --out out/bench_transport

Measures the transport alone, no model: a receiver process subscribes to /vla/inference/request as
vla_inference_node does (Reliable, Volatile, ``READER_QOS``'s KeepLast(16); ``--reader-depth 1`` is the
server before it read deeper: a sample the receiver has not taken yet is replaced by the next one),
and 1 or N client processes publish InferenceRequest messages of a given size at a given rate. Per
cell (transport x size x rate x clients) it reports delivered % (distinct request ids received /
published), p50/p99 transport latency (receive time in the callback minus header.stamp, set just
before publish: serialisation, DDS, take and deserialisation; one host, one wall clock) and the
receiver's CPU (user + system time of its whole process, DDS threads included, over the window).

``--transport default`` unsets FASTDDS_DEFAULT_PROFILES_FILE (Fast DDS defaults: a 512 KB shared-memory
segment, larger samples go over UDP loopback in fragments: the "before"); ``package`` applies the
package's large-data profile as every node of vla_inference does (``entry_point.transport_environment``:
the "after"). Targets (the issue): >= 99.9 % delivered at <= 5 Hz, >= 99 % above, every size, every
client count. Every role runs as its own OS process (``--role receiver|client``, started by the
orchestrator with the transport's environment) so no GIL or DDS participant is shared.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import queue
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from vla_inference.qos import READER_DEPTH

LOG = logging.getLogger("vla_inference.lab.bench_transport")
MODULE = "vla_inference.lab.bench_transport"
TRANSPORTS = ("package", "default")
ID_STRIDE = 10_000_000          # client i publishes request ids (i + 1) * ID_STRIDE + k
START_TIMEOUT_S = 90.0          # process start (imports on a busy 2-core host) + discovery
MATCH_TIMEOUT_S = 30.0
GO_LEAD_S = 0.3                 # clients start on a common wall-clock instant this far ahead
ACK_TIMEOUT_S = 5.0             # a client waits this long for its last samples to be acknowledged
DRAIN_S = 0.5                   # the receiver keeps counting this long after the last client is done
TEXT = "reach the red block"
STATE = [0.1, -0.2, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]
KIB = 1024
MISSING_LISTED = 100            # per client, the sequence numbers of lost requests kept in the record


def target_pct(rate_hz: float) -> float:
    """The issue's delivery target: 99.9 % up to 5 Hz, 99 % above."""
    return 99.9 if rate_hz <= 5.0 else 99.0


# -- payloads ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Payload:
    """What one request carries: ``cameras`` square rgb8 images and a 32FC1 range image."""

    size_kb: int
    cameras: int
    image_side: int
    lidar_rows: int
    lidar_cols: int

    @property
    def pixel_bytes(self) -> int:
        return self.cameras * self.image_side ** 2 * 3 + self.lidar_rows * self.lidar_cols * 4


PAYLOADS = {
    # 2 cameras at the model's 224x224 and a partial range image: 409,600 bytes of pixels.
    400: Payload(400, 2, 224, 64, 424),
    # The contract's full request: 3 x 224x224 rgb8 + the 64x1024 LiDAR range image (~700 KB, README).
    700: Payload(700, 3, 224, 64, 1024),
    # Cameras sent at above-model resolution (the server resizes): 3 x 310x310 rgb8 + 64x1024 LiDAR.
    1100: Payload(1100, 3, 310, 64, 1024),
}


def payload_for(size_kb: int) -> Payload:
    """The layout of a ``size_kb`` KiB request: a preset, else 3 cameras + full LiDAR, images sized to fit."""
    if size_kb in PAYLOADS:
        return PAYLOADS[size_kb]
    lidar = 64 * 1024 * 4
    if size_kb * KIB > lidar + 3 * 16 * 16 * 3:
        return Payload(size_kb, 3, int(math.sqrt((size_kb * KIB - lidar) / 9)), 64, 1024)
    return Payload(size_kb, 1, max(1, int(math.sqrt(size_kb * KIB / 3))), 0, 0)


def payload_messages(payload: Payload, seed: int = 0) -> Tuple[List[Any], Any]:
    """(images, lidar_range) as sensor_msgs/Image, random content (DDS does not compress)."""
    from vla_inference.client.vla_client import range_image_msg, rgb_image_msg

    rng = np.random.default_rng(seed)
    side = payload.image_side
    images = [rgb_image_msg(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), f"camera_{i}")
              for i in range(payload.cameras)]
    ranges = None
    if payload.lidar_rows:
        ranges = rng.uniform(0.5, 80.0, (payload.lidar_rows, payload.lidar_cols)).astype(np.float32)
    return images, range_image_msg(ranges, "lidar")


def serialized_bytes(payload: Payload) -> int:
    """CDR size of one request of this layout, as DDS carries it."""
    from rclpy.serialization import serialize_message
    from rclpy.time import Time

    from vla_inference.client.vla_client import build_request

    images, lidar = payload_messages(payload)
    return len(serialize_message(build_request(ID_STRIDE, images, TEXT, STATE, lidar, Time())))


# -- environment -------------------------------------------------------------------------------------
def transport_env(transport: str, base: Mapping[str, str]) -> Dict[str, str]:
    """The child processes' environment: ``default`` has no profile file, ``package`` the package's."""
    from vla_inference.nodes.entry_point import PROFILE_VARIABLES, transport_environment

    if transport not in TRANSPORTS:
        raise ValueError(f"transport: expected one of {TRANSPORTS}, received {transport!r}")
    env = {key: value for key, value in base.items() if key not in PROFILE_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    if transport == "package":
        added = transport_environment(env)
        if not added:
            raise RuntimeError("the package's Fast DDS profile was not applied (RMW_IMPLEMENTATION="
                               f"{env.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')}, or the profile file is missing)")
        env.update(added)
    return env


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reply(word: str, text: str = "") -> None:
    """One protocol line to the orchestrator (the roles' stdout is a pipe it reads)."""
    sys.stdout.write(f"{word} {text}\n" if text else f"{word}\n")
    sys.stdout.flush()


# -- receiver role -----------------------------------------------------------------------------------
class _ReceiverStats:
    """What the request callback saw inside the measurement window."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counting = False
        self._ids: Dict[int, List[int]] = {}
        self._latency_ms: List[float] = []
        self._cpu0 = self._wall0 = 0.0

    def start(self) -> None:
        with self._lock:
            self._ids, self._latency_ms = {}, []
            self._cpu0, self._wall0 = _cpu_seconds(), time.monotonic()
            self._counting = True

    def on_request(self, msg: Any) -> None:
        now_ns = time.time_ns()
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self._lock:
            if not self._counting:
                return
            self._ids.setdefault(int(msg.request_id) // ID_STRIDE - 1, []).append(int(msg.request_id))
            self._latency_ms.append((now_ns - stamp_ns) / 1e6)

    def stop(self) -> Dict[str, Any]:
        with self._lock:
            self._counting = False
            return {"ids": {str(k): v for k, v in self._ids.items()}, "latency_ms": self._latency_ms,
                    "cpu_s": _cpu_seconds() - self._cpu0, "wall_s": time.monotonic() - self._wall0}


def run_receiver(clients: int, reader_depth: int) -> None:
    """Subscribe as the server does; answer ``match``/``start``/``stop`` lines on stdin."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from vla_inference import qos
    from vla_inference.spec import interface
    from vla_msgs.msg import InferenceRequest

    rclpy.init()
    node = rclpy.create_node("bench_transport_receiver")
    stats = _ReceiverStats()
    reader = qos.reader_qos(reader_depth)
    subscription = node.create_subscription(InferenceRequest, interface.REQUEST_TOPIC, stats.on_request, reader)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    _reply("READY")
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "match":
                deadline = time.monotonic() + MATCH_TIMEOUT_S
                while subscription.get_publisher_count() < clients and time.monotonic() < deadline:
                    time.sleep(0.02)
                _reply("MATCHED", str(subscription.get_publisher_count()))
            elif command == "start":
                stats.start()
                _reply("STARTED")
            elif command == "stop":
                _reply("RESULT", json.dumps(stats.stop()))
                break
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()


# -- client role -------------------------------------------------------------------------------------
def run_client(index: int, size_kb: int, rate_hz: float, duration_s: float, phase_s: float) -> None:
    """Publish round(duration * rate) requests on a fixed schedule from ``go <wall time>`` + phase."""
    import rclpy
    from rclpy.duration import Duration
    from rclpy.serialization import serialize_message

    from vla_inference import qos
    from vla_inference.client.vla_client import build_request
    from vla_inference.spec import interface
    from vla_msgs.msg import InferenceRequest

    images, lidar = payload_messages(payload_for(size_kb), seed=index)
    rclpy.init()
    node = rclpy.create_node(f"bench_transport_client_{index}")
    try:
        publisher = node.create_publisher(InferenceRequest, interface.REQUEST_TOPIC, qos.INFERENCE_QOS)
        deadline = time.monotonic() + MATCH_TIMEOUT_S
        while publisher.get_subscription_count() < 1:
            if time.monotonic() > deadline:
                _reply("ERROR", f"no subscriber matched within {MATCH_TIMEOUT_S:g} s")
                return
            time.sleep(0.02)
        base = (index + 1) * ID_STRIDE
        clock = node.get_clock()
        size = len(serialize_message(build_request(base, images, TEXT, STATE, lidar, clock.now())))
        _reply("MATCHED", str(size))
        start_wall = float(sys.stdin.readline().split()[1])
        t0 = time.monotonic() + (start_wall - time.time()) + phase_s
        cpu0 = _cpu_seconds()
        count = max(1, round(duration_s * rate_hz))
        max_lag_s = 0.0
        for k in range(count):
            delay = t0 + k / rate_hz - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                max_lag_s = max(max_lag_s, -delay)
            publisher.publish(build_request(base + k, images, TEXT, STATE, lidar, clock.now()))
        wall_s = time.monotonic() - t0
        acked = publisher.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT_S))
        _reply("RESULT", json.dumps({"index": index, "id_base": base, "sent": count, "bytes": size, "all_acked": acked,
                                     "max_lag_ms": max_lag_s * 1e3, "cpu_s": _cpu_seconds() - cpu0, "wall_s": wall_s}))
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


# -- orchestrator ------------------------------------------------------------------------------------
class CellError(RuntimeError):
    """A role process failed or timed out; the cell is recorded as an error, the run goes on."""


class _Child:
    """One role process: commands on stdin, protocol lines from stdout read by a thread (waits time out)."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", MODULE, *args], env=dict(env), text=True, bufsize=1,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise CellError(f"{self.name} is gone ({exc}){self.stderr_tail()}") from exc

    def expect(self, word: str, timeout_s: float) -> str:
        """The rest of the next line starting with ``word``; ERROR lines, exits and timeouts raise."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise CellError(f"{self.name}: no {word} within {timeout_s:g} s{self.stderr_tail()}") from None
            if line is None:
                self.proc.wait(timeout=5)
                raise CellError(f"{self.name} exited (rc {self.proc.returncode}) before {word}{self.stderr_tail()}")
            if line.startswith("ERROR"):
                raise CellError(f"{self.name}: {line[5:].strip()}")
            if line.split(" ", 1)[0] == word:
                return line[len(word):].strip()

    def stderr_tail(self, chars: int = 1500) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace")[-chars:].strip()
        return f"; stderr: ...{text}" if text else ""

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


def _phase_s(index: int, clients: int, rate_hz: float, aligned: bool) -> float:
    """Clients spread evenly over one period (independent robots), or all on the same tick (worst case)."""
    return 0.0 if aligned else index / (clients * rate_hz)


def run_cell(transport: str, env: Mapping[str, str], size_kb: int, rate_hz: float, clients: int,
             duration_s: float, aligned: bool = False, reader_depth: int = READER_DEPTH) -> Dict[str, Any]:
    """One receiver and ``clients`` client processes, fresh for this cell; the cell's summary."""
    cell = {"transport": transport, "size_kb": size_kb, "rate_hz": rate_hz, "clients": clients,
            "duration_s": duration_s, "target_pct": target_pct(rate_hz)}
    children: List[_Child] = []
    try:
        receiver = _Child("receiver", ["--role", "receiver", "--clients", str(clients), "--reader-depth",
                                       str(reader_depth)], env)
        children.append(receiver)
        receiver.expect("READY", START_TIMEOUT_S)
        senders = [_Child(f"client {i}", ["--role", "client", "--index", str(i), "--sizes", str(size_kb),
                                          "--rates", repr(rate_hz), "--duration", repr(duration_s),
                                          "--phase-s", repr(_phase_s(i, clients, rate_hz, aligned))], env)
                   for i in range(clients)]
        children.extend(senders)
        for sender in senders:
            sender.expect("MATCHED", START_TIMEOUT_S)
        receiver.send("match")
        matched = int(receiver.expect("MATCHED", MATCH_TIMEOUT_S + 10))
        if matched < clients:
            raise CellError(f"the receiver matched {matched} of {clients} publishers")
        receiver.send("start")
        receiver.expect("STARTED", 10)
        go = time.time() + GO_LEAD_S
        for sender in senders:
            sender.send(f"go {go!r}")
        reports = [json.loads(sender.expect("RESULT", duration_s + GO_LEAD_S + ACK_TIMEOUT_S + 60)) for sender in senders]
        time.sleep(DRAIN_S)
        receiver.send("stop")
        received = json.loads(receiver.expect("RESULT", 30))
    except CellError as exc:
        LOG.warning("%s %d KB %g Hz x%d: %s", transport, size_kb, rate_hz, clients, exc)
        return cell | {"error": str(exc), "pass": False}
    finally:
        for child in children:
            child.close()
    # Other processes' share of the cores at the end of the cell (the receiver's stalls come from there).
    return cell | summarise(reports, received, target_pct(rate_hz)) | {"load_average_1min": os.getloadavg()[0]}


def _percentiles(values: Sequence[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "mean": None, "count": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "max": float(arr.max()),
            "mean": float(arr.mean()), "count": int(arr.size)}


def summarise(reports: Sequence[Mapping[str, Any]], received: Mapping[str, Any], target: float) -> Dict[str, Any]:
    """Delivered = distinct ids a client published that the receiver saw; duplicates and strays are counted apart."""
    per_client = []
    claimed = set()
    for report in sorted(reports, key=lambda r: r["index"]):
        ids = received["ids"].get(str(report["index"]), [])
        claimed.add(str(report["index"]))
        valid = {i for i in ids if report["id_base"] <= i < report["id_base"] + report["sent"]}
        per_client.append({
            "index": report["index"], "id_base": report["id_base"], "sent": report["sent"], "delivered": len(valid),
            "missing": [k for k in range(report["sent"]) if report["id_base"] + k not in valid][:MISSING_LISTED],
            "duplicates": len(ids) - len(set(ids)), "all_acked": report["all_acked"],
            "max_lag_ms": report["max_lag_ms"], "cpu_pct": 100.0 * report["cpu_s"] / max(report["wall_s"], 1e-9),
        })
    sent = sum(c["sent"] for c in per_client)
    delivered = sum(c["delivered"] for c in per_client)
    delivered_pct = 100.0 * delivered / sent if sent else 0.0
    return {
        "payload_bytes": reports[0]["bytes"] if reports else None,
        "sent": sent,
        "delivered": delivered,
        "delivered_pct": delivered_pct,
        "pass": delivered_pct >= target,
        "duplicates": sum(c["duplicates"] for c in per_client),
        "unexpected": sum(len(v) for k, v in received["ids"].items() if k not in claimed),
        "latency_ms": _percentiles(received["latency_ms"]),
        "receiver_cpu_pct": 100.0 * received["cpu_s"] / max(received["wall_s"], 1e-9),
        "receiver_window_s": received["wall_s"],
        "per_client": per_client,
        "error": None,
    }


def run(transports: Sequence[str], sizes: Sequence[int], rates: Sequence[float], client_counts: Sequence[int],
        duration_s: float, aligned: bool = False, domain_id: Optional[int] = None,
        reader_depth: int = READER_DEPTH) -> Dict[str, Any]:
    """Every cell of the matrix, transport by transport; the JSON record."""
    from vla_inference.nodes.entry_point import PROFILE_VARIABLES

    base = dict(os.environ)
    if domain_id is not None:
        base["ROS_DOMAIN_ID"] = str(domain_id)
    elif not base.get("ROS_DOMAIN_ID"):
        base["ROS_DOMAIN_ID"] = str(random.Random(os.getpid()).randint(1, 100))  # no cross-talk on a shared host
    envs = {transport: transport_env(transport, base) for transport in transports}
    payloads = {size: asdict(payload_for(size)) | {"serialized_bytes": serialized_bytes(payload_for(size))}
                for size in sizes}
    for size, info in payloads.items():
        LOG.info("%d KB request: %d x %dx%d rgb8 + %dx%d 32FC1 range image = %d bytes serialized", size,
                 info["cameras"], info["image_side"], info["image_side"], info["lidar_rows"], info["lidar_cols"],
                 info["serialized_bytes"])
    load_before = os.getloadavg()[0]
    cells = []
    total = len(transports) * len(sizes) * len(rates) * len(client_counts)
    for transport in transports:
        for size in sizes:
            for rate in rates:
                for clients in client_counts:
                    LOG.info("[%d/%d] %s: %d KB at %g Hz from %d client%s for %g s", len(cells) + 1, total, transport,
                             size, rate, clients, "" if clients == 1 else "s", duration_s)
                    cell = run_cell(transport, envs[transport], size, rate, clients, duration_s, aligned,
                                    reader_depth)
                    cells.append(cell)
                    if cell["error"] is None:
                        LOG.info("    delivered %d/%d (%.2f %%), p50 %.2f ms, p99 %.2f ms, receiver CPU %.1f %%",
                                 cell["delivered"], cell["sent"], cell["delivered_pct"], cell["latency_ms"]["p50"] or 0,
                                 cell["latency_ms"]["p99"] or 0, cell["receiver_cpu_pct"])
    keys = ("RMW_IMPLEMENTATION", "ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", *PROFILE_VARIABLES)
    return {
        "config": {"transports": list(transports), "sizes_kb": list(sizes), "rates_hz": list(rates),
                   "clients": list(client_counts), "duration_s": duration_s, "aligned": aligned,
                   "qos": f"reliable, volatile; writer keep_last(1), reader keep_last({reader_depth})",
                   "targets_pct": {"<=5 Hz": 99.9, ">5 Hz": 99.0}},
        "environment": {t: {k: envs[t].get(k) for k in keys} for t in transports},
        "payloads": {str(size): info for size, info in payloads.items()},
        "host": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                 "load_average_1min": [load_before, os.getloadavg()[0]]},
        "cells": cells,
        "all_pass": all(cell["pass"] for cell in cells),
    }


# -- output ------------------------------------------------------------------------------------------
def _fmt(value: Optional[float], spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def format_table(record: Mapping[str, Any]) -> str:
    lines = [f"{'transport':<10}{'size KB':>8}{'Hz':>5}{'clients':>8}{'sent':>7}{'deliv':>7}{'deliv %':>9}"
             f"{'p50 ms':>9}{'p99 ms':>9}{'rx CPU %':>10}{'load':>6}{'target':>8}  result"]
    for cell in record["cells"]:
        lat = cell.get("latency_ms", {})
        result = "ERROR" if cell["error"] else ("PASS" if cell["pass"] else "FAIL")
        lines.append(
            f"{cell['transport']:<10}{cell['size_kb']:>8}{cell['rate_hz']:>5g}{cell['clients']:>8}"
            f"{_fmt(cell.get('sent'), 'd', 7)}{_fmt(cell.get('delivered'), 'd', 7)}{_fmt(cell.get('delivered_pct'), '.2f', 9)}"
            f"{_fmt(lat.get('p50'), '.2f', 9)}{_fmt(lat.get('p99'), '.2f', 9)}{_fmt(cell.get('receiver_cpu_pct'), '.1f', 10)}"
            f"{_fmt(cell.get('load_average_1min'), '.1f', 6)}{cell['target_pct']:>8g}  {result}")
    transports = record["config"]["transports"]
    if "default" in transports and "package" in transports:
        lines += ["", "delivered % before (default transport) -> after (package profile)"]
        by_key = {(c["transport"], c["size_kb"], c["rate_hz"], c["clients"]): c for c in record["cells"]}
        for (transport, size, rate, clients), after in by_key.items():
            if transport != "package":
                continue
            before = by_key.get(("default", size, rate, clients), {})
            lines.append(f"  {size:>5} KB {rate:>4g} Hz x{clients}: {_fmt(before.get('delivered_pct'), '.2f', 7)} % -> "
                         f"{_fmt(after.get('delivered_pct'), '.2f', 7)} %")
    load = record["host"]["load_average_1min"]
    lines.append(f"host: {record['host']['cpu_count']} CPUs, 1-min load average {load[0]:.2f} before, {load[1]:.2f} after; "
                 f"rx CPU % = receiver process CPU time / window, 100 = one core; load = 1-min load average after the cell")
    for cell in record["cells"]:
        if cell["error"]:
            lines.append(f"error {cell['transport']} {cell['size_kb']} KB {cell['rate_hz']:g} Hz x{cell['clients']}: "
                         f"{cell['error']}")
    return "\n".join(lines)


def write_png(record: Mapping[str, Any], path: Path) -> None:
    """Delivered % and p50/p99 latency per cell, one colour per transport."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = record["config"]
    keys = [(s, r, c) for s in config["sizes_kb"] for r in config["rates_hz"] for c in config["clients"]]
    labels = [f"{s}K\n{r:g}Hz x{c}" for s, r, c in keys]
    by_key = {(c["transport"], c["size_kb"], c["rate_hz"], c["clients"]): c for c in record["cells"]}
    x = np.arange(len(keys))
    width = 0.8 / len(config["transports"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.8 * len(keys) + 2), 6.5), sharex=True)
    lowest = 100.0
    for n, transport in enumerate(config["transports"]):
        cells = [by_key.get((transport, *key), {}) for key in keys]
        offset = x + (n - (len(config["transports"]) - 1) / 2) * width
        delivered = [c.get("delivered_pct") or 0.0 for c in cells]
        lowest = min(lowest, *delivered)
        top.bar(offset, delivered, width, label=transport)
        for xpos, value in zip(offset, delivered):
            top.annotate(f"{value:.2f}", (xpos, value), ha="center", va="bottom", fontsize=6)
        p50 = [(c.get("latency_ms") or {}).get("p50") or np.nan for c in cells]
        p99 = [(c.get("latency_ms") or {}).get("p99") or np.nan for c in cells]
        bottom.scatter(offset, p50, marker="o", color=f"C{n}", label=f"{transport} p50")
        bottom.scatter(offset, p99, marker="^", color=f"C{n}", label=f"{transport} p99")
    for target, style in ((99.9, ":"), (99.0, "--")):
        top.axhline(target, color="grey", linestyle=style, linewidth=0.8)
    top.set_ylabel("delivered %")
    top.set_ylim(min(98.0, math.floor(lowest) - 0.5), 100.3)  # zoomed: 99 and 99.9 % must be told apart
    top.legend(fontsize=8)
    bottom.set_ylabel("transport latency (ms)")
    bottom.set_yscale("log")
    bottom.legend(fontsize=7, ncol=2)
    bottom.set_xticks(x, labels, fontsize=7)
    fig.suptitle(f"InferenceRequest transport, {config['duration_s']:g} s per cell")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _csv(text: str, kind: type) -> List[Any]:
    return [kind(part) for part in text.split(",") if part.strip()]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vla-bench-transport", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds each cell publishes")
    parser.add_argument("--sizes", default="400,700,1100", help="request sizes, KB (KiB), comma-separated")
    parser.add_argument("--rates", default="5,10", help="publish rates per client, Hz, comma-separated")
    parser.add_argument("--clients", default="1,3", help="client process counts, comma-separated")
    parser.add_argument("--transport", default="package", choices=(*TRANSPORTS, "both"),
                        help="package: the large-data profile (after); default: Fast DDS defaults (before)")
    parser.add_argument("--aligned", action="store_true",
                        help="all clients publish on the same tick (default: spread evenly over one period)")
    parser.add_argument("--domain-id", type=int, default=None, help="default: ROS_DOMAIN_ID, else a random one")
    parser.add_argument("--out", type=Path, default=Path("out/bench_transport"))
    parser.add_argument("--check", action="store_true", help="exit 1 when a cell misses its target")
    parser.add_argument("--reader-depth", type=int, default=READER_DEPTH,
                        help="history depth of the receiver (the server reads with vla_inference.qos.READER_DEPTH; "
                             "1 is the server before it read deeper)")
    parser.add_argument("--role", default="orchestrate", choices=("orchestrate", "receiver", "client"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--phase-s", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    sizes, rates, client_counts = _csv(args.sizes, int), _csv(args.rates, float), _csv(args.clients, int)
    if args.role == "receiver":
        run_receiver(client_counts[0], args.reader_depth)
        return 0
    if args.role == "client":
        run_client(args.index, sizes[0], rates[0], args.duration, args.phase_s)
        return 0
    logging.basicConfig(level=logging.WARNING, format="[vla-bench-transport] %(message)s")
    LOG.setLevel(logging.INFO)
    transports = TRANSPORTS[::-1] if args.transport == "both" else (args.transport,)  # before, then after
    record = run(transports, sizes, rates, client_counts, args.duration, args.aligned, args.domain_id,
                 args.reader_depth)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "bench_transport.json", args.out / "bench_transport.png"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    write_png(record, png_path)
    print()
    print(format_table(record))
    print(f"[vla-bench-transport] wrote {json_path} and {png_path}")
    return 1 if args.check and not record["all_pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
