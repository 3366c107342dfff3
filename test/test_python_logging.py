"""Records of the package's plain modules reach the node's ROS log.

Run in a process of its own, as a node runs: pytest's process has imported ``launch``, whose logger
class does not propagate, so package loggers created there never reach a handler on their parent.
"""
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import logging
    import rclpy
    from rclpy.logging import get_logger
    from vla_inference.nodes.python_logging import PACKAGE_LOGGER, forward_package_logging

    rclpy.init()
    handler = forward_package_logging(get_logger("python_logging_probe"))
    logging.getLogger("vla_inference.runtime.backends.tensorrt_backend").info("loaded plan %s", "vision.plan")
    logging.getLogger("vla_inference.serving.inference_server").warning("request %d dropped", 7)
    logging.getLogger("vla_inference.spec").debug("below INFO: not forwarded")
    logging.getLogger("some_other_library").warning("not ours: not forwarded")
    logging.getLogger(PACKAGE_LOGGER).removeHandler(handler)
    logging.getLogger("vla_inference.runtime").info("after removal")
    rclpy.shutdown()
""")


def test_package_records_are_written_by_the_ros_logger_at_their_severity_and_stop_when_removed():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ros_lines = [line for line in (done.stderr + done.stdout).splitlines() if "[python_logging_probe]" in line]
    assert len(ros_lines) == 2, done.stderr
    assert "[INFO]" in ros_lines[0]
    assert ros_lines[0].endswith("[vla_inference.runtime.backends.tensorrt_backend] loaded plan vision.plan")
    assert "[WARN]" in ros_lines[1] and ros_lines[1].endswith("request 7 dropped")
    assert "after removal" not in done.stderr + done.stdout
