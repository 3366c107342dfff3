"""A test-only entry point: vla_inference_node whose real backend fails on cue.

    python test/fault_injection.py --ros-args -p fault_plan:="raise@2,hang@4:3000"

``fault_plan`` lists faults by the 1-based number of the action-expert call (one per accepted request
that reaches the backend): ``raise@N`` raises inside the backend, ``hang@N:MS`` blocks the backend for
MS milliseconds, ``configure`` makes ``on_configure`` fail with an unexpected exception. Everything
else (ONNX Runtime, the pipeline, the server, the transport) is the product's own code; this file is
not installed, so a deployed node cannot be told to fail.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from vla_inference.nodes.entry_point import spin_node
from vla_inference.nodes.inference_node import InferenceNode
from vla_inference.nodes.parameters import declare
from vla_inference.runtime.pipeline import InferencePipeline


class InjectedFault(RuntimeError):
    """Raised by the faulty backend on cue."""


@dataclass
class FaultPlan:
    raise_at: set = field(default_factory=set)
    hang_ms_at: Dict[int, float] = field(default_factory=dict)
    configure: bool = False

    @classmethod
    def parse(cls, text: str) -> "FaultPlan":
        plan = cls()
        for item in filter(None, (part.strip() for part in text.split(","))):
            if item == "configure":
                plan.configure = True
            elif item.startswith("raise@"):
                plan.raise_at.add(int(item[len("raise@"):]))
            elif item.startswith("hang@"):
                call, ms = item[len("hang@"):].split(":")
                plan.hang_ms_at[int(call)] = float(ms)
            else:
                raise ValueError(f"fault_plan: unknown item {item!r}")
        return plan


class FaultyBackend:
    """Delegates to the real backend; its ``denoise`` raises or blocks on the planned calls."""

    def __init__(self, backend: Any, plan: FaultPlan) -> None:
        self._backend = backend
        self._plan = plan
        self._calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def denoise(self, prefix: Any, noise: Any, steps: int) -> Any:
        with self._lock:
            self._calls += 1
            call = self._calls
        if call in self._plan.raise_at:
            raise InjectedFault(f"injected fault at action-expert call {call}")
        if call in self._plan.hang_ms_at:
            time.sleep(self._plan.hang_ms_at[call] / 1000.0)
        return self._backend.denoise(prefix, noise, steps)


class FaultInjectingNode(InferenceNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._plan = FaultPlan.parse(declare(self, "fault_plan", "", "Test only: faults to inject (see module).",
                                             read_only=True))

    def _load_pipeline(self) -> InferencePipeline:
        if self._plan.configure:
            raise InjectedFault("injected fault while configuring")
        pipeline = super()._load_pipeline()
        pipeline.backend = FaultyBackend(pipeline.backend, self._plan)
        return pipeline


def main(args: Optional[list] = None) -> None:
    spin_node(FaultInjectingNode, args, num_threads=4, before_destroy=lambda node: node.release())


if __name__ == "__main__":
    main()
