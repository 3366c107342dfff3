"""`ros2 launch vla_test_pipeline launch.py`, as a user types it: the whole graph, the smoke check's
verdict in the exit code."""
import json
import os
import signal
import subprocess
from pathlib import Path


def ros2_launch(output_dir: Path, duration_s: float) -> subprocess.CompletedProcess:
    command = ["ros2", "launch", "vla_test_pipeline", "launch.py", f"duration:={duration_s}",
               f"output_dir:={output_dir}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=os.environ.copy(), start_new_session=True)
    try:
        out, _ = process.communicate(timeout=duration_s + 150)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGINT)
        out, _ = process.communicate(timeout=30)
        raise AssertionError(f"ros2 launch did not end within {duration_s + 150} s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, "")


def test_the_launched_graph_passes_its_smoke_check_and_exits_0(tmp_path):
    done = ros2_launch(tmp_path, 25.0)
    report = json.loads((tmp_path / "smoke_report.json").read_text())
    assert report["passed"], done.stdout[-3000:]
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Traceback" not in done.stdout, done.stdout[-3000:]


def test_a_failed_smoke_check_makes_ros2_launch_exit_non_zero(tmp_path):
    done = ros2_launch(tmp_path, 2.0)  # too short a window for the checker's minimum of OK responses
    report = json.loads((tmp_path / "smoke_report.json").read_text())
    assert not report["passed"]
    assert done.returncode != 0, done.stdout[-3000:]
    assert "smoke check failed" in done.stdout, done.stdout[-3000:]


def test_ctrl_c_with_requests_in_flight_ends_without_tracebacks(tmp_path):
    command = ["ros2", "launch", "vla_test_pipeline", "launch.py", "duration:=0", f"output_dir:={tmp_path}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=os.environ.copy(), start_new_session=True)
    try:
        process.communicate(timeout=20.0)  # the graph runs until stopped: this always times out
    except subprocess.TimeoutExpired:
        pass
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to the foreground group
    out, _ = process.communicate(timeout=60)
    assert "configured:" in out, out[-3000:]  # the server came up and served before the stop
    # The first SIGINT shuts rclpy down without interrupting a running callback (entry_point.SigintGuard);
    # a line that callback logs then reaches the console but not /rosout, and rcl says so. Seen once in
    # a dozen stops on a loaded 2-core host. Any other word of an invalid context still fails.
    lines = [line for line in out.splitlines() if "Failed to publish log message to rosout" not in line]
    for bad in ("Traceback", "RCLError", "context is invalid"):
        found = [i for i, line in enumerate(lines) if bad in line]
        assert not found, "\n".join(lines[max(0, found[0] - 20):found[0] + 40])
