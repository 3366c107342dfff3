"""The ROS-free serving core with the real pipeline: every request answered exactly once."""
import os
import threading
import time

import numpy as np
import pytest

from vla_inference.runtime.pipeline import InferencePipeline
from vla_inference.serving.inference_server import InferenceServer, ServerSettings, Status
from vla_inference.serving.request_validator import RequestPayload, RequestValidator, ValidationLimits
from vla_inference.spec.manifest import shipped_model_dir
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
    def __init__(self) -> None:
        self.items = []
        self.lock = threading.Lock()

    def __call__(self, reply) -> None:
        with self.lock:
            self.items.append(reply)

    def by_id(self):
        with self.lock:
            return {r.request_id: r for r in self.items}

    def wait(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.items) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.items) >= count, f"{len(self.items)} of {count} replies"


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
    time.sleep(0.3)
    got = replies.by_id()
    assert sorted(got) == [1, 2, 3, 4] and len(replies.items) == 4
    assert got[2].status == Status.REJECTED_RATE_LIMIT and got[2].retry_after_ms == 200
    assert got[1].status == Status.OK and got[4].status == Status.OK
    assert got[3].status in (Status.SUPERSEDED, Status.OK)
    assert got[1].actions.shape == (16, 8) and 0.0 <= got[1].confidence <= 1.0


def test_a_newer_request_supersedes_the_waiting_one(server, pipeline):
    replies = Replies()
    gate = threading.Event()
    original = pipeline.submit

    def slow_submit(*args, **kwargs):  # hold request 1 in flight until requests 2 and 3 are in
        gate.wait(10.0)
        return original(*args, **kwargs)

    pipeline.submit = slow_submit
    try:
        server.submit(1, payload(), replies)
        time.sleep(0.2)
        for request_id in (2, 3):
            server.clock.now += 0.25
            server.submit(request_id, payload(), replies)
        replies.wait(1)
        gate.set()
        replies.wait(3)
    finally:
        pipeline.submit = original
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


def test_backend_failure_is_internal_error_and_serving_continues(server, pipeline):
    replies = Replies()
    backend = pipeline.backend
    original = backend.denoise

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    backend.denoise = broken
    try:
        server.submit(1, payload(), replies)
        replies.wait(1)
    finally:
        backend.denoise = original
    server.clock.now += 1.0
    server.submit(2, payload(), replies)
    replies.wait(2)
    got = replies.by_id()
    assert got[1].status == Status.INTERNAL_ERROR and "device lost" in got[1].message
    assert got[2].status == Status.OK


def test_stop_answers_the_waiting_request_not_ready(pipeline):
    clock = Clock()
    validator = RequestValidator(ValidationLimits(num_cameras=3, state_dim=pipeline.cfg.state_dim))
    server = InferenceServer(pipeline, validator, ServerSettings(max_request_rate_hz=100.0), clock)
    replies = Replies()
    server.submit(1, payload(), replies)  # not started yet
    assert replies.by_id()[1].status == Status.NOT_READY
    server.start()
    gate = threading.Event()
    original = pipeline.submit
    pipeline.submit = lambda *a, **k: (gate.wait(10.0), original(*a, **k))[1]
    try:
        server.submit(2, payload(), replies)
        time.sleep(0.2)
        clock.now += 1.0
        server.submit(3, payload(), replies)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        time.sleep(0.2)
        gate.set()
        stopper.join(30.0)
    finally:
        pipeline.submit = original
    got = replies.by_id()
    assert got[3].status == Status.NOT_READY
    assert got[2].status == Status.OK, "the running request still gets its response"
    assert len(replies.items) == 3 and not server.running


def test_status_values_mirror_the_message_constants():
    from vla_msgs.msg import InferenceResponse

    for status in Status:
        assert getattr(InferenceResponse, f"STATUS_{status.name}") == status.value
