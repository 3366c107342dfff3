"""The ROS-free serving core with the real pipeline: every request answered exactly once."""
import os
import threading
from typing import Optional

import numpy as np
import pytest

from vla_inference.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from vla_inference.runtime.pipeline import InferencePipeline
from vla_inference.serving.inference_server import InferenceServer, ServerSettings, Status
from vla_inference.serving.request_validator import RequestPayload, RequestValidator, ValidationLimits
from vla_inference.spec.manifest import load_manifest, shipped_model_dir
from vla_inference.synthetic import generate_scene, make_observation

MODEL_DIR = os.environ.get("VLA_TEST_MODEL_DIR") or str(shipped_model_dir())


class Clock:
    """A settable time source, so rate-limit decisions do not depend on machine speed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Image:
    def __init__(self, rgb: np.ndarray) -> None:
        self.height, self.width = rgb.shape[:2]
        self.encoding, self.step, self.is_bigendian = "rgb8", rgb.shape[1] * 3, 0
        self.data = rgb.tobytes()


def payload(seed: int = 1, steps: int = 0) -> RequestPayload:
    obs = make_observation(generate_scene(seed), num_cameras=3, with_lidar=False)
    return RequestPayload(images=[Image(i) for i in obs.images], lidar_range=None, text=obs.text,
                          state=list(obs.state), denoising_steps=steps)


class Replies:
    """The reply callback: records every reply and wakes whoever waits for one."""

    def __init__(self) -> None:
        self.items = []
        self.arrived = threading.Condition()

    def __call__(self, reply) -> None:
        with self.arrived:
            self.items.append(reply)
            self.arrived.notify_all()

    def by_id(self):
        with self.arrived:
            return {r.request_id: r for r in self.items}

    def wait(self, count: int, timeout_s: float = 30.0) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.items) >= count, timeout_s), f"{len(self.items)} of {count} replies"

    def wait_for_id(self, request_id: int, timeout_s: float = 30.0) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: any(r.request_id == request_id for r in self.items), timeout_s), \
                f"no reply to request {request_id}"


class HeldPipeline:
    """The real pipeline, except that each request waits at the door until the test opens it, and the
    test learns when the worker has taken a request: it orders events instead of sleeping."""

    def __init__(self, pipeline: InferencePipeline) -> None:
        self.pipeline = pipeline
        self.pipelining = pipeline.pipelining
        self.taken = threading.Event()
        self.door = threading.Event()

    def submit(self, observation, steps: int, seed: int):
        self.taken.set()
        assert self.door.wait(10.0), "the test never let the request through"
        return self.pipeline.submit(observation, steps=steps, seed=seed)


@pytest.fixture(scope="module")
def pipeline():
    pipe = InferencePipeline.from_model_dir(MODEL_DIR, num_samples=2, pipelining=False)
    yield pipe
    pipe.close()


@pytest.fixture
def server(pipeline):
    clock = Clock()
    cfg = pipeline.cfg
    validator = RequestValidator(ValidationLimits(num_cameras=3, state_dim=cfg.state_dim))
    srv = InferenceServer(pipeline, validator, ServerSettings(max_request_rate_hz=5.0, deadline_ms=10_000), clock)
    srv.clock = clock
    srv.start()
    yield srv
    srv.stop()


def test_rate_limit_supersede_and_exactly_once(server):
    replies = Replies()
    clock = server.clock
    server.submit(1, payload(), replies)          # accepted, runs
    server.submit(2, payload(), replies)          # 0 s later: rejected
    clock.now += 0.2
    server.submit(3, payload(), replies)          # accepted: waits (or runs if 1 finished)
    clock.now += 0.2
    server.submit(4, payload(), replies)          # accepted: replaces 3 if 3 still waits
    replies.wait(4)
    server.stop()  # returns once the worker is done: any further reply would be in by now
    got = replies.by_id()
    assert sorted(got) == [1, 2, 3, 4] and len(replies.items) == 4
    assert got[2].status == Status.REJECTED_RATE_LIMIT and got[2].retry_after_ms == 200
    assert got[1].status == Status.OK and got[4].status == Status.OK
    assert got[3].status in (Status.SUPERSEDED, Status.OK)
    assert got[1].actions.shape == (16, 8) and 0.0 <= got[1].confidence <= 1.0


def test_a_newer_request_supersedes_the_waiting_one(pipeline):
    held = HeldPipeline(pipeline)
    clock = Clock()
    validator = RequestValidator(ValidationLimits(num_cameras=3, state_dim=pipeline.cfg.state_dim))
    server = InferenceServer(held, validator, ServerSettings(max_request_rate_hz=5.0, deadline_ms=10_000), clock)
    server.start()
    replies = Replies()
    try:
        server.submit(1, payload(), replies)
        assert held.taken.wait(10.0), "the worker never took request 1"
        for request_id in (2, 3):
            clock.now += 0.25
            server.submit(request_id, payload(), replies)
        replies.wait_for_id(2)
        held.door.set()
        replies.wait(3)
    finally:
        held.door.set()
        server.stop()
    got = replies.by_id()
    assert got[2].status == Status.SUPERSEDED and "3" in got[2].message
    assert got[1].status == Status.OK and got[3].status == Status.OK


def test_invalid_requests_and_steps(server):
    replies = Replies()
    bad = payload()
    bad.text = ""
    server.submit(1, bad, replies)
    server.clock.now += 1.0
    server.submit(2, payload(steps=3), replies)
    replies.wait(2)
    got = replies.by_id()
    assert got[1].status == Status.INVALID_REQUEST and "text_cmd" in got[1].message
    assert got[2].status == Status.OK and got[2].denoising_steps == 3
    server.update_settings(denoising_steps=4)
    server.clock.now += 1.0
    server.submit(3, payload(), replies)
    replies.wait(3)
    assert replies.by_id()[3].denoising_steps == 4


class FailingOnceBackend(OnnxRuntimeBackend):
    """The ONNX Runtime backend with one injected fault: once armed, the next denoising loop raises it."""

    def __init__(self, manifest) -> None:
        super().__init__(manifest, intra_op_threads=2)
        self.fault: Optional[Exception] = None

    def denoise(self, prefix, noise, steps):
        fault, self.fault = self.fault, None
        if fault is not None:
            raise fault
        return super().denoise(prefix, noise, steps)


@pytest.mark.parametrize("fault", [RuntimeError("device lost"), ValueError("prefix_kv: device lost")],
                         ids=["RuntimeError", "ValueError"])
def test_backend_failure_is_internal_error_and_serving_continues(fault):
    # A ValueError inside the backend is the server's fault too: only validation blames the client.
    backend = FailingOnceBackend(load_manifest(MODEL_DIR))
    with InferencePipeline(backend, backend.config, num_samples=2, pipelining=False, owns_backend=True) as pipeline:
        backend.fault = fault  # armed after the pipeline's warm-up
        clock = Clock()
        validator = RequestValidator(ValidationLimits(num_cameras=3, state_dim=pipeline.cfg.state_dim))
        server = InferenceServer(pipeline, validator, ServerSettings(max_request_rate_hz=5.0, deadline_ms=10_000), clock)
        server.start()
        replies = Replies()
        try:
            server.submit(1, payload(), replies)
            replies.wait(1)
            clock.now += 1.0
            server.submit(2, payload(), replies)
            replies.wait(2)
        finally:
            server.stop()
    got = replies.by_id()
    assert got[1].status == Status.INTERNAL_ERROR and "device lost" in got[1].message, got[1]
    assert type(fault).__name__ in got[1].message
    assert got[2].status == Status.OK


def test_stop_answers_the_waiting_request_not_ready(pipeline):
    clock = Clock()
    validator = RequestValidator(ValidationLimits(num_cameras=3, state_dim=pipeline.cfg.state_dim))
    held = HeldPipeline(pipeline)
    server = InferenceServer(held, validator, ServerSettings(max_request_rate_hz=100.0, deadline_ms=10_000), clock)
    replies = Replies()
    server.submit(1, payload(), replies)  # not started yet
    assert replies.by_id()[1].status == Status.NOT_READY
    server.start()
    try:
        server.submit(2, payload(), replies)
        assert held.taken.wait(10.0), "the worker never took request 2"
        clock.now += 1.0
        server.submit(3, payload(), replies)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        replies.wait_for_id(3)  # stop() answers the waiting request before it waits for the running one
        held.door.set()
        stopper.join(30.0)
    finally:
        held.door.set()
    got = replies.by_id()
    assert got[3].status == Status.NOT_READY
    assert got[2].status == Status.OK, "the running request still gets its response"
    assert len(replies.items) == 3 and not server.running


def test_status_values_mirror_the_message_constants():
    from vla_msgs.msg import InferenceResponse

    for status in Status:
        assert getattr(InferenceResponse, f"STATUS_{status.name}") == status.value


class CountingHeldPipeline(HeldPipeline):
    def __init__(self, pipeline: InferencePipeline) -> None:
        super().__init__(pipeline)
        self.submitted = []

    def submit(self, observation, steps: int, seed: int):
        self.submitted.append(seed)
        return super().submit(observation, steps, seed)


def _held_server(pipeline, deadline_ms: float):
    clock = Clock()
    held = CountingHeldPipeline(pipeline)
    validator = RequestValidator(ValidationLimits(num_cameras=3, state_dim=pipeline.cfg.state_dim))
    server = InferenceServer(held, validator, ServerSettings(max_request_rate_hz=5.0, deadline_ms=deadline_ms), clock)
    server.start()
    return server, held, clock


def test_a_request_held_past_its_deadline_is_answered_then_and_its_late_result_is_dropped(pipeline):
    server, held, clock = _held_server(pipeline, deadline_ms=500.0)
    replies = Replies()
    try:
        server.submit(1, payload(), replies)
        assert held.taken.wait(10.0)
        clock.now += 0.6  # the backend still holds request 1
        replies.wait_for_id(1, timeout_s=5.0)
        first = replies.by_id()[1]
        assert first.status == Status.DEADLINE_EXCEEDED and first.actions is None
        assert "500 ms" in first.message
        held.door.set()  # the backend returns late: its result must not become a second response
        clock.now += 0.3
        server.submit(2, payload(), replies)
        replies.wait_for_id(2)
    finally:
        held.door.set()
        server.stop()
    assert [r.request_id for r in replies.items] == [1, 2]
    assert replies.by_id()[2].status == Status.OK


def test_a_request_still_waiting_at_its_deadline_is_answered_and_never_run(pipeline):
    server, held, clock = _held_server(pipeline, deadline_ms=500.0)
    replies = Replies()
    try:
        server.submit(1, payload(), replies)
        assert held.taken.wait(10.0)
        clock.now += 0.3
        server.submit(2, payload(), replies)  # waits behind 1
        clock.now += 0.6  # both past their deadlines
        replies.wait(2, timeout_s=5.0)
        assert {r.request_id: r.status for r in replies.items} == {1: Status.DEADLINE_EXCEEDED,
                                                                   2: Status.DEADLINE_EXCEEDED}
        held.door.set()
        clock.now += 0.3
        server.submit(3, payload(), replies)
        replies.wait_for_id(3)
    finally:
        held.door.set()
        server.stop()
    assert replies.by_id()[3].status == Status.OK and len(replies.items) == 3
    assert len(held.submitted) == 2, "request 2 expired while it waited: it must not have reached the pipeline"


def test_stop_answers_a_request_the_backend_never_returns(pipeline):
    server, held, clock = _held_server(pipeline, deadline_ms=10_000.0)
    replies = Replies()
    try:
        server.submit(1, payload(), replies)
        assert held.taken.wait(10.0)
        server.stop(timeout_s=0.5)
        assert [(r.request_id, r.status) for r in replies.items] == [(1, Status.INTERNAL_ERROR)]
        assert "backend" in replies.items[0].message
    finally:
        held.door.set()
