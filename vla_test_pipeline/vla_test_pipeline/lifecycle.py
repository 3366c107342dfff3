"""Driving a lifecycle node through the standard lifecycle_msgs services, asynchronously.

What launch_ros's ``LifecycleNode`` + ``ChangeState`` events do, for machines without launch_ros:
``/<node>/change_state`` and ``/<node>/get_state`` are called with ``call_async`` and awaited with a
timeout (a service response can be lost, and configure may load a model for a while), while an
executor owned by the caller spins the node in another thread. ``get_state`` changes nothing, so it is
sent again every ``GET_STATE_RESEND_S`` until answered: a request written before the server's readers
matched ours (a node just started, or a killed one's participant still listed) is never delivered.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.client import Client
from rclpy.node import Node

GET_STATE_RESEND_S = 2.0
TRANSITION_LABELS = {Transition.TRANSITION_CONFIGURE: "configure", Transition.TRANSITION_ACTIVATE: "activate",
                     Transition.TRANSITION_DEACTIVATE: "deactivate", Transition.TRANSITION_CLEANUP: "cleanup"}


class LifecycleError(RuntimeError):
    """A transition failed, timed out, or the node never offered its lifecycle services."""


class Aborted(RuntimeError):
    """The caller's abort check gave a reason to stop waiting (Ctrl-C, a process that died)."""


class LifecycleClient:
    """``abort`` is polled while waiting: it returns a reason to give up, or None to keep waiting."""

    def __init__(self, node: Node, target: str, abort: Callable[[], Optional[str]] = lambda: None) -> None:
        self.target = target.lstrip("/")
        self._abort = abort
        self._change = node.create_client(ChangeState, f"/{self.target}/change_state")
        self._get = node.create_client(GetState, f"/{self.target}/get_state")

    def wait_for_services(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not (self._change.service_is_ready() and self._get.service_is_ready()):
            self._check_abort()
            if time.monotonic() > deadline:
                raise LifecycleError(f"{self.target}: lifecycle services not offered within {timeout_s:g} s")
            time.sleep(0.1)

    def get_state(self, timeout_s: float = 5.0) -> str:
        """The node's current state label (unconfigured, inactive, active, finalized)."""
        response = self._call(self._get, GetState.Request(), timeout_s, "get_state", resend_s=GET_STATE_RESEND_S)
        return response.current_state.label

    def change_state(self, transition_id: int, timeout_s: float) -> None:
        label = TRANSITION_LABELS.get(transition_id, str(transition_id))
        request = ChangeState.Request()
        request.transition.id = transition_id
        response = self._call(self._change, request, timeout_s, label)
        if not response.success:
            raise LifecycleError(f"{self.target}: transition '{label}' failed (see the node's log)")

    def bring_up(self, service_timeout_s: float = 30.0, configure_timeout_s: float = 90.0,
                 activate_timeout_s: float = 15.0) -> str:
        """unconfigured -> inactive -> active; returns the final state label (always 'active')."""
        self.wait_for_services(service_timeout_s)
        # The services exist from the node's constructor on, before its process spins: on a loaded host the
        # first answer can take longer than later ones, so it gets the services' timeout.
        if self.get_state(timeout_s=service_timeout_s) == "unconfigured":
            self.change_state(Transition.TRANSITION_CONFIGURE, configure_timeout_s)
        if self.get_state() == "inactive":
            self.change_state(Transition.TRANSITION_ACTIVATE, activate_timeout_s)
        state = self.get_state()
        if state != "active":
            raise LifecycleError(f"{self.target}: ended in state '{state}', expected 'active'")
        return state

    def _call(self, client: Client, request: Any, timeout_s: float, what: str,
              resend_s: Optional[float] = None) -> Any:
        """``resend_s``: send the request again after so long without an answer (only for requests that
        change nothing); the first answer to any copy is taken."""
        done = threading.Event()
        deadline = time.monotonic() + timeout_s
        futures = []
        while True:
            future = client.call_async(request)
            future.add_done_callback(lambda _: done.set())
            futures.append(future)
            resend_at = time.monotonic() + resend_s if resend_s else float("inf")
            while not done.wait(0.1) and time.monotonic() < resend_at:
                reason = self._abort()
                if reason is not None or time.monotonic() > deadline:
                    self._forget(client, futures)
                    if reason is not None:
                        raise Aborted(f"{self.target}: '{what}' abandoned: {reason}")
                    raise LifecycleError(f"{self.target}: no answer to '{what}' within {timeout_s:g} s"
                                         f" ({len(futures)} sent)")
            if done.is_set():
                break
        future = next(f for f in futures if f.done())
        self._forget(client, [f for f in futures if f is not future])
        if future.exception() is not None:
            raise LifecycleError(f"{self.target}: '{what}' raised {future.exception()!r}")
        return future.result()

    @staticmethod
    def _forget(client: Client, futures: list) -> None:
        for future in futures:
            future.cancel()
            client.remove_pending_request(future)

    def _check_abort(self) -> None:
        reason = self._abort()
        if reason is not None:
            raise Aborted(f"{self.target}: {reason}")
