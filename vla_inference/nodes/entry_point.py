"""Console-script plumbing shared by every node."""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import rclpy
from rclpy.exceptions import InvalidHandle
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node

SHUTDOWN_RACE_S = 1.0
FASTDDS_PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"  # Fast DDS 3 (Kilted, Rolling)
FASTRTPS_PROFILE_VARIABLE = "FASTRTPS_DEFAULT_PROFILES_FILE"  # Fast DDS 2 (Humble, Jazzy)
PROFILE_VARIABLES = (FASTDDS_PROFILE_VARIABLE, FASTRTPS_PROFILE_VARIABLE)
FAST_DDS_3_RMW_MAJOR = 9  # rmw_fastrtps_cpp 9.x (Kilted) is the first on Fast DDS 3
LARGE_DATA_PROFILE = "fastdds_large_data.xml"


def large_data_profile() -> Optional[Path]:
    """The package's Fast DDS profile for large messages: installed share/ first, then the source tree."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        installed = Path(get_package_share_directory("vla_inference")) / "config" / LARGE_DATA_PROFILE
    except (ImportError, PackageNotFoundError):
        installed = None
    source = Path(__file__).resolve().parents[2] / "config" / LARGE_DATA_PROFILE
    return next((path for path in (installed, source) if path is not None and path.is_file()), None)


def profile_variable() -> str:
    """The variable this ROS 2 line's Fast DDS reads its profile file from, told by rmw_fastrtps_cpp's
    version. Fast DDS 2 ignores the Fast DDS 3 name (Jazzy then ran on the defaults); on Kilted the
    rmw also loads the old name, so setting both loads the profile twice, which Fast DDS refuses."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        manifest = Path(get_package_share_directory("rmw_fastrtps_cpp")) / "package.xml"
        found = re.search(r"<version>\s*(\d+)\.", manifest.read_text())
    except (ImportError, PackageNotFoundError, OSError):
        found = None
    if found is not None and int(found.group(1)) < FAST_DDS_3_RMW_MAJOR:
        return FASTRTPS_PROFILE_VARIABLE
    return FASTDDS_PROFILE_VARIABLE


def transport_environment(environ: Mapping[str, str]) -> Dict[str, str]:
    """What a node process adds to its environment before rclpy starts Fast DDS: the large-data profile
    (a request of three camera images and a range image is ~700 KB, above the default 512 KB
    shared-memory segment: with the default transport such messages were lost at 10 Hz), under the
    name this line's Fast DDS reads (``profile_variable``). A profile the user chose under either
    name, or another RMW, is left alone."""
    rmw = environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    profile = large_data_profile()
    if any(environ.get(name) for name in PROFILE_VARIABLES) or rmw != "rmw_fastrtps_cpp" or profile is None:
        return {}
    return {profile_variable(): str(profile)}


REPEAT_SIGINT_S = 2.0


class SigintGuard:
    """Python's SIGINT handler while a node runs: the first SIGINT only lets rclpy shut down (its own
    handler does that and then calls this one); a SIGINT at least ``REPEAT_SIGINT_S`` later interrupts
    as Python's default does, for a callback that never returns; during clean-up none does.

    rclpy's handler chains to Python's, whose KeyboardInterrupt landed wherever the main thread was:
    at 50 Hz once inside the executor's ``Task.__init__``, and the half-built task printed a traceback
    at exit. ``ros2 launch`` forwards SIGINT to nodes that a terminal's Ctrl-C reached already, so two
    arrive together: the second must not count as a repeat.
    """

    def __init__(self) -> None:
        self.first_at: Optional[float] = None
        self.cleaning_up = False

    def __call__(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        elif not self.cleaning_up and now - self.first_at >= REPEAT_SIGINT_S:
            raise KeyboardInterrupt


def graceful_sigint() -> SigintGuard:
    """Install a ``SigintGuard``; call before ``rclpy.init`` from the main thread."""
    guard = SigintGuard()
    signal.signal(signal.SIGINT, guard)
    return guard


def _shuts_down_within(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while rclpy.ok():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def spin_executor(executor: Executor, node: Node) -> None:
    """``executor.spin()``, resumed when an entity is destroyed while the executor collects it.

    rclpy skips a subscription, service, client or timer destroyed while it builds its wait set, but
    not a waitable: a subscription's QoS event handler raises InvalidHandle there. A lifecycle
    cleanup that destroys a subscription from a callback thread (``InferenceNode.release``) can hit
    that window; the entity is gone either way, so the executor spins on instead of taking the
    process down.
    """
    while True:
        try:
            executor.spin()
            return
        except InvalidHandle as exc:
            if not executor.context.ok():
                raise
            node.get_logger().warning(f"an entity was destroyed while the executor collected it ({exc}); spinning on")


def spin_node(
    node_factory: Callable[[], Node],
    args: Optional[list] = None,
    num_threads: int = 1,
    before_destroy: Optional[Callable[[Node], None]] = None,
) -> None:
    """Run one node until Ctrl-C or an external shutdown, then release it cleanly.

    ``num_threads > 1`` spins a MultiThreadedExecutor so callback groups can run side by side. The
    large-data transport is set up first (``transport_environment``), so ``ros2 run`` gets it too.
    """
    os.environ.update(transport_environment(os.environ))
    guard = graceful_sigint()
    rclpy.init(args=args)
    node = node_factory()
    executor = MultiThreadedExecutor(num_threads=num_threads) if num_threads > 1 else SingleThreadedExecutor()
    executor.add_node(node)
    try:
        spin_executor(executor, node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGINT shuts the context down from rclpy's signal handler; if that lands while the
        # executor builds its wait set or takes a message, rcl reports an invalid context
        # (RCLError) or the take fails (RuntimeError from the bindings) instead of
        # ExternalShutdownException, sometimes just before the context reads as shut down. That is
        # still a requested shutdown; an error the context outlives is not.
        if not _shuts_down_within(SHUTDOWN_RACE_S):
            raise
    finally:
        guard.cleaning_up = True
        if before_destroy is not None:
            before_destroy(node)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
