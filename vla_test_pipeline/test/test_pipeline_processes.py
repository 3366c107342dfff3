"""Process management and lifecycle bring-up of the runner, with trivial stand-in executables."""
import signal
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from vla_test_pipeline.graph import INFERENCE_NODE, GraphConfig, NodeSpec
from vla_test_pipeline.lifecycle import Aborted, LifecycleError
from vla_test_pipeline.processes import ProcessSet
from vla_test_pipeline.runner import BringUpTimeouts, GraphSession

SCRIPTS = {
    # The stand-ins that should die on SIGINT install its handler, as a ROS node does: started from a
    # shell that ignores SIGINT (a background job), Python would otherwise install none.
    "polite": textwrap.dedent("""
        import signal, time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("ready", flush=True)
        while True: time.sleep(1)
        """),
    "stubborn": textwrap.dedent("""
        import signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        while True: time.sleep(1)
        """),
    # Leaves a grandchild in its process group that ignores SIGINT: it must not outlive the stop.
    "spawner": textwrap.dedent("""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(1000)"])
        print("grandchild", child.pid, flush=True)
        while True: time.sleep(1)
        """),
    "argv": "import sys, time\nprint(' '.join(sys.argv[1:]), flush=True)\nwhile True: time.sleep(1)\n",
    "lifecycle": textwrap.dedent("""
        import sys
        from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
        from vla_inference.nodes.entry_point import spin_node
        class Fake(LifecycleNode):
            def on_configure(self, state):
                return TransitionCallbackReturn.{result}
        spin_node(lambda: Fake("stand_in"), sys.argv)
        """),
    "dies": "import sys, time\ntime.sleep(0.5)\nprint('stand-in crashed', flush=True)\nsys.exit(3)\n",
}


def resolver(tmp_path: Path, by_name: dict, default: str = "polite"):
    def resolve(spec: NodeSpec) -> list:
        kind = by_name.get(spec.name, default)
        script = tmp_path / f"{kind.replace(':', '_')}.py"
        if not script.exists():  # never rewrite a script another stand-in may be reading
            script.write_text(SCRIPTS[kind.split(":")[0]].format(result=kind.split(":")[-1]))
        return [sys.executable, str(script)]
    return resolve


def wait_for_line(log: Path, text: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"{log.name} never printed {text!r}"
        time.sleep(0.05)


def descendants_alive(pids, grace_s: float = 3.0) -> list:
    """The pids still running (not zombies) after ``grace_s``: a SIGKILLed process takes a moment to go."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_stop_escalates_and_leaves_no_process(tmp_path):
    specs = [NodeSpec("pkg", "exe", name) for name in ("polite", "stubborn", "spawner")]
    processes = ProcessSet(tmp_path / "logs", tmp_path / "params", resolver(tmp_path, {s.name: s.name for s in specs}))
    processes.start_all(specs)
    # Signal only started interpreters: a loaded machine can take over a second to start one.
    wait_for_line(tmp_path / "logs" / "polite.log", "ready")
    wait_for_line(tmp_path / "logs" / "stubborn.log", "ready")
    wait_for_line(tmp_path / "logs" / "spawner.log", "grandchild")
    grandchild = int((tmp_path / "logs" / "spawner.log").read_text().split()[1])
    everything = [*processes.pids().values(), grandchild]
    started = time.monotonic()
    codes = processes.stop(timeouts_s=(1.0, 1.0, 2.0))
    assert time.monotonic() - started < 4.5
    assert codes["polite"] == -signal.SIGINT  # KeyboardInterrupt on SIGINT
    assert codes["stubborn"] == -signal.SIGKILL
    assert codes["spawner"] in (1, -signal.SIGINT)
    assert descendants_alive(everything) == []


def test_parameters_and_remappings_reach_the_command_line_and_restart_works(tmp_path):
    spec = NodeSpec("pkg", "exe", "talker", parameters={"rate": 2.0, "names": ["a", "b"]},
                    remappings=(("chatter", "/x/chatter"),))
    processes = ProcessSet(tmp_path / "logs", tmp_path / "params", resolver(tmp_path, {}, "argv"))
    first = processes.start(spec)
    with pytest.raises(RuntimeError):
        processes.start(spec)
    time.sleep(0.5)
    processes.signal("talker", signal.SIGKILL)
    first.popen.wait(5)
    assert [p.name for p in processes.exited()] == ["talker"]
    second = processes.restart("talker")
    assert second.pid != first.pid and second.running()
    processes.stop(timeouts_s=(2.0, 1.0, 1.0))
    argv = (tmp_path / "logs" / "talker.log").read_text().splitlines()[0]
    params = tmp_path / "params" / "talker.yaml"
    assert argv == f"--ros-args -r __node:=talker --params-file {params} -r chatter:=/x/chatter"
    assert "names:\n    - a\n    - b" in params.read_text()


def session(tmp_path, lifecycle_kind: str, **kwargs) -> GraphSession:
    config = GraphConfig(num_cameras=1, use_lidar=False)
    return GraphSession(config, tmp_path, resolve=resolver(tmp_path, {INFERENCE_NODE: lifecycle_kind}),
                        timeouts=BringUpTimeouts(services_s=30.0, configure_s=10.0, activate_s=10.0), **kwargs)


def test_session_brings_the_lifecycle_node_to_active_and_tears_down(tmp_path):
    messages = []
    graph = session(tmp_path, "lifecycle:SUCCESS", progress=messages.append)
    with graph:
        pids = list(graph.processes.pids().values())
        assert len(pids) == len(graph.nodes) == 5
        assert graph.failed_process() is None
    assert any("active after" in m for m in messages)
    assert set(graph.exit_codes) == {n.name for n in graph.nodes}
    assert graph.exit_codes[INFERENCE_NODE] == 0  # rclpy shut down cleanly on SIGINT
    assert descendants_alive(pids) == []


def test_failed_configure_raises_and_cleans_up(tmp_path):
    graph = session(tmp_path, "lifecycle:FAILURE")
    with pytest.raises(LifecycleError, match="configure"):
        graph.start()
    assert set(graph.exit_codes) == {n.name for n in graph.nodes}
    assert descendants_alive([p.pid for p in graph.processes]) == []


def test_a_process_dying_during_bring_up_aborts_at_once(tmp_path):
    graph = session(tmp_path, "dies")
    started = time.monotonic()
    with pytest.raises(Aborted, match="exited with code 3"):
        graph.start()
    # At once: long before the 30 s lifecycle-service timeout, the other nodes' SIGINT grace included.
    assert time.monotonic() - started < 20.0
