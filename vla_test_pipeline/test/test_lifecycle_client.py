"""LifecycleClient over real DDS: a get_state sent before the node's services exist is sent again."""
import threading
import time

import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode
from rclpy.node import Node

from vla_test_pipeline.lifecycle import GET_STATE_RESEND_S, LifecycleClient, LifecycleError


@pytest.fixture
def spun():
    """A context, an executor spinning in a thread, and the nodes added to it (destroyed afterwards)."""
    context = Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    nodes = []

    def add(node: Node) -> Node:
        nodes.append(node)
        executor.add_node(node)
        return node

    yield context, add
    stop.set()
    thread.join(5.0)
    executor.shutdown()
    for node in nodes:
        node.destroy_node()
    context.try_shutdown()


def test_get_state_sent_before_the_node_exists_is_answered_once_it_does(spun):
    context, add = spun
    caller = add(Node("lifecycle_caller", context=context))
    client = LifecycleClient(caller, "late_lifecycle_node")

    def start_node_later() -> None:
        time.sleep(1.0)
        add(LifecycleNode("late_lifecycle_node", context=context))

    threading.Thread(target=start_node_later, daemon=True).start()
    started = time.monotonic()
    assert client.get_state(timeout_s=15.0) == "unconfigured"
    # The first copy went out with no server to hear it; an answer means a later copy was heard.
    assert time.monotonic() - started >= GET_STATE_RESEND_S * 0.9


def test_get_state_of_a_node_that_never_comes_names_the_copies_sent(spun):
    context, add = spun
    client = LifecycleClient(add(Node("lifecycle_caller", context=context)), "absent_lifecycle_node")
    with pytest.raises(LifecycleError, match=r"no answer to 'get_state' within 5 s \(3 sent\)"):
        client.get_state(timeout_s=5.0)
