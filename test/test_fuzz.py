"""The fuzz campaign (vla_inference.lab.fuzz): its CDR layout and mutations in process, then each target fuzzed as a
real process over real DDS.

A campaign runs FUZZ_DURATION_S per target: ``fuzz.CI_DURATION_S`` (60 s) unless VLA_FUZZ_DURATION_S says otherwise
(10 while developing; the documented longer run is the CLI's ``--target all --duration 600``). The targets are the
server, the camera and the LiDAR adapter, and the camera adapter in compressed mode (about 70 s each with start-up;
``-k "not camera_compressed"`` leaves that one out). Each must end with zero crashes, no contract violation, no
traceback in the target's log, and a good message served afterwards.
"""
import itertools
import json
import os
import random
import signal

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image, PointCloud2

from vla_inference.lab import fuzz
from vla_inference.sensors.image_codec import SUPPORTED_ENCODINGS, decode_compressed_msg, decode_image_msg
from vla_inference.sensors.image_preprocessing import resize_to_model
from vla_inference.sensors.pointcloud import PointCloudError, parse_xyz_msg
from vla_inference.serving.request_validator import InvalidRequestError, RequestPayload, RequestValidator, ValidationLimits
from vla_msgs.msg import InferenceRequest

FUZZ_DURATION_S = float(os.environ.get("VLA_FUZZ_DURATION_S", fuzz.CI_DURATION_S))
TRIES_PER_KIND = 40  # field mutations pick among several variants at random: enough draws to meet each one


@pytest.fixture(scope="module")
def server_target():
    return fuzz.ServerTarget(seed=1)


def _read_u32(raw: bytes, offset: int) -> int:
    return int.from_bytes(raw[offset:offset + 4], "little")


# -- CDR layout -------------------------------------------------------------------------------------------
def test_the_layout_finds_every_length_prefix_of_a_request(server_target):
    request = server_target.good_request(full=True)
    raw = serialize_message(request)
    layout = fuzz.cdr_layout(request, raw)
    paths = {p.path: p for p in layout.prefixes}
    expected = {
        "header.frame_id": len(request.header.frame_id) + 1,
        "text_cmd": len(request.text_cmd.encode()) + 1,
        "sensor_data.images": 3,
        "sensor_data.images[2].encoding": len("rgb8") + 1,
        "sensor_data.images[0].data": 224 * 224 * 3,
        "sensor_data.lidar_range.data": 64 * 1024 * 4,
        "sensor_data.state": len(request.sensor_data.state),
    }
    for path, value in expected.items():
        assert paths[path].value == value == _read_u32(raw, paths[path].offset), path
    # The bulk ranges are the pixel and range payloads: everything else (about 200 bytes) is structure.
    assert sum(end - begin for begin, end in layout.structure) < 400
    assert layout.size == len(raw)


@pytest.mark.parametrize("make", [
    lambda rng: fuzz.random_image(rng, SUPPORTED_ENCODINGS, frame_id="f", padding=True),
    lambda rng: fuzz.cloud_msg(fuzz.random_points(rng, 48), frame_id="lidar", height=4, row_padding=12),
    lambda rng: InferenceRequest(),
])
def test_the_layout_walk_agrees_with_the_serialized_bytes(make):
    rng = random.Random(3)
    for _ in range(20):
        msg = make(rng)
        raw = serialize_message(msg)
        layout = fuzz.cdr_layout(msg, raw)
        assert layout.prefixes and all(_read_u32(raw, p.offset) == p.value for p in layout.prefixes)


def test_a_layout_that_does_not_match_the_bytes_is_refused_and_the_scan_fallback_finds_lengths():
    rng = random.Random(0)
    image = fuzz.random_image(rng, ["rgb8"], frame_id="abc")
    other = fuzz.random_image(rng, ["mono16"], frame_id="a much longer frame id")
    with pytest.raises(fuzz.LayoutError):
        fuzz.cdr_layout(image, serialize_message(other))
    raw = serialize_message(image)
    scanned = fuzz.scan_layout(raw, [len(image.data)])
    assert [p.offset for p in scanned.prefixes] == [p.offset for p in fuzz.cdr_layout(image).prefixes if p.path == "data"]


# -- raw mutations ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", fuzz.RAW_KINDS)
def test_each_raw_mutation_does_what_its_name_says(kind):
    rng = random.Random(7)
    mutator = fuzz.Mutator(rng)
    for _ in range(50):
        msg = fuzz.random_image(rng, ["rgb8", "mono8"], frame_id="camera")
        raw = serialize_message(msg)
        layout = fuzz.cdr_layout(msg, raw)
        mutated = mutator.mutate(kind, raw, layout)
        assert isinstance(mutated, bytes)
        if kind == "truncate":
            assert len(mutated) < len(raw) and raw.startswith(mutated)
            continue
        if kind == "extend":
            assert len(mutated) > len(raw) and mutated.startswith(raw)
            continue
        assert len(mutated) == len(raw)
        changed = [i for i in range(len(raw)) if raw[i] != mutated[i]]
        if kind == "bit_flip":
            bits = sum(bin(raw[i] ^ mutated[i]).count("1") for i in changed)
            assert 1 <= bits <= 8 or not changed  # the same bit flipped twice cancels out
        elif kind == "encapsulation":
            assert all(i < 4 for i in changed)
        elif kind in ("huge_length", "length_skew"):
            touched = [p for p in layout.prefixes if _read_u32(mutated, p.offset) != p.value]
            assert len(touched) <= 1 and all(any(p.offset <= i < p.offset + 4 for p in touched) for i in changed)
            if touched and kind == "huge_length":
                new = _read_u32(mutated, touched[0].offset)
                assert new in fuzz.HUGE_LENGTHS or new >= touched[0].value * 2 or new >= len(raw) - touched[0].offset


def test_flips_aim_mostly_at_the_structure_not_the_pixels():
    rng = random.Random(11)
    msg = fuzz.image_msg("rgb8", 100, 100, bytes(30000), frame_id="camera")
    raw = serialize_message(msg)
    layout = fuzz.cdr_layout(msg, raw)
    positions = [fuzz.Mutator(rng)._position(layout, len(raw)) for _ in range(2000)]
    in_structure = sum(any(b <= p < e for b, e in layout.structure) for p in positions) / len(positions)
    # ~68 structural bytes of 30072: aimed flips land there about STRUCTURE_BIAS of the time, not 0.2 %.
    assert in_structure > fuzz.STRUCTURE_BIAS - 0.05


def test_a_seed_gives_the_same_messages():
    for name in fuzz.TARGETS + fuzz.EXTRA_TARGETS:
        first, second = fuzz.TARGET_CLASSES[name](seed=5), fuzz.TARGET_CLASSES[name](seed=5)
        for _ in range(30):
            a, b = first.next_sample(), second.next_sample()
            assert (a.kind, a.payload, a.expect) == (b.kind, b.payload, b.expect)


# -- field mutations: each one breaks exactly the contract it is named after ------------------------------
def test_every_server_field_mutation_is_refused_by_the_validator(server_target):
    good = server_target.good_request()
    validator = RequestValidator(ValidationLimits(num_cameras=3, state_dim=len(good.sensor_data.state)))
    validator.validate(RequestPayload.from_msg(good))
    for kind in fuzz.ServerTarget.FIELD_KINDS:
        for _ in range(TRIES_PER_KIND):
            request = deserialize_message(server_target._field_mutation(kind, server_target.good_request()),
                                          InferenceRequest)
            with pytest.raises(InvalidRequestError):
                validator.validate(RequestPayload.from_msg(request))


def test_server_good_requests_are_valid(server_target):
    validator = RequestValidator(ValidationLimits(num_cameras=3, state_dim=8))
    for _ in range(TRIES_PER_KIND):
        validator.validate(RequestPayload.from_msg(server_target.good_request(full=random.random() < 0.2)))


def _camera_accepts(image: Image) -> bool:
    try:
        resize_to_model(decode_image_msg(image, encodings=SUPPORTED_ENCODINGS), 224)
    except ValueError:
        return False
    return True


def test_every_camera_field_mutation_has_the_outcome_the_campaign_expects():
    target = fuzz.CameraTarget(seed=2)
    for _ in range(TRIES_PER_KIND):
        assert _camera_accepts(target.good_message("m"))
    for kind in fuzz.CameraTarget.FIELD_KINDS:
        for _ in range(TRIES_PER_KIND if kind != "image_big" else 4):
            image = deserialize_message(serialize_message(target.field_mutation(kind, "m")), Image)
            assert _camera_accepts(image) == (kind in fuzz.CameraTarget.VALID_FIELD_KINDS), kind


def _lidar_accepts(cloud: PointCloud2) -> bool:
    try:
        parse_xyz_msg(cloud)
    except PointCloudError:
        return False
    return True


def test_every_lidar_field_mutation_has_the_outcome_the_campaign_expects():
    target = fuzz.LidarTarget(seed=2)
    for _ in range(TRIES_PER_KIND):
        assert _lidar_accepts(target.good_message("m"))
    for kind in fuzz.LidarTarget.FIELD_KINDS:
        for _ in range(TRIES_PER_KIND):
            cloud = deserialize_message(serialize_message(target.field_mutation(kind, "m")), PointCloud2)
            assert _lidar_accepts(cloud) == (kind in fuzz.LidarTarget.VALID_FIELD_KINDS), kind


def test_every_compressed_frame_the_campaign_expects_dropped_is_refused_before_the_decoder_is_trusted():
    target = fuzz.CompressedCameraTarget(seed=2)
    for _ in range(TRIES_PER_KIND):
        resize_to_model(decode_compressed_msg(target.good_message("m")), 224)
    for kind in set(fuzz.CompressedCameraTarget.FIELD_KINDS) - set(fuzz.CompressedCameraTarget.VALID_FIELD_KINDS):
        for _ in range(TRIES_PER_KIND):
            with pytest.raises(ValueError):
                decode_compressed_msg(target.field_mutation(kind, "m"))


def test_the_summary_table_names_every_kind_and_the_verdict():
    report = fuzz.FuzzReport("server", 0, 1.0, 40.0, None, sent={"good": 3, "truncate": 2}, final_ok=True,
                             extra={"responses_by_kind": {"good": {"OK": 2}}, "responses": {"OK": 2}})
    table = fuzz.summary_table(report)
    assert "good" in table and "truncate" in table and "verdict: PASS" in table
    report.crashes = 1
    assert "verdict: FAIL" in fuzz.summary_table(report)


# -- the campaigns ----------------------------------------------------------------------------------------
@pytest.mark.timeout(int(FUZZ_DURATION_S) + 300)
@pytest.mark.parametrize("target", fuzz.TARGETS + fuzz.EXTRA_TARGETS)
def test_fuzzing_a_target_crashes_nothing_and_a_good_message_is_served_afterwards(target, tmp_path):
    report = fuzz.run_target(target, FUZZ_DURATION_S, seed=0, out=tmp_path)
    print(fuzz.summary_table(report))
    assert report.error == "", report.error
    assert report.crashes == 0, report.crash_details
    assert report.final_ok, report.final_detail
    assert report.violations == 0, report.violation_examples
    assert report.log_findings["tracebacks"] == 0, (tmp_path / f"{target}.log").read_text()[-3000:]
    assert report.publish_errors == 0
    # camera_compressed too: a few-KB JPEG announcing 8192 x 8192 once held its thread for 8.4 s; the codec's
    # pixel cap (MAX_COMPRESSED_PIXELS) now refuses it from the header.
    assert report.stalls == 0, report.max_heartbeat_gap_s
    assert report.liveness_checks >= FUZZ_DURATION_S * 0.9
    assert report.passed
    kinds = fuzz.TARGET_CLASSES[target].FIELD_KINDS + fuzz.RAW_KINDS + (fuzz.GOOD_KIND,)
    assert all(report.sent.get(kind, 0) > 0 for kind in kinds), report.sent
    if target == "server":
        statuses = report.extra["responses"]
        assert statuses.get("INVALID_REQUEST", 0) > 0 and statuses.get("OK", 0) > 0, statuses
        assert statuses.get("INTERNAL_ERROR", 0) == 0 and statuses.get("NOT_READY", 0) == 0, statuses
    else:
        counts = {k: int(v) for k, v in report.target_counts.items() if k in ("received", "published", "dropped")}
        assert counts.get("dropped", 0) > 0 and counts.get("published", 0) > 0, report.target_counts
    record = json.loads((tmp_path / f"{target}.json").read_text())
    assert record["sent"] == report.sent and record["crashes"] == 0


def test_a_crash_reproducer_replays_through_the_cli_path(tmp_path):
    target = fuzz.CameraTarget(seed=4)
    samples = [target.next_sample() for _ in range(6)]
    crash_dir = tmp_path / "crashes" / "camera-1"
    files = fuzz.save_reproducer(samples, crash_dir)
    assert len(files) == 6 and json.loads((crash_dir / "index.json").read_text())[0]["kind"] == samples[0].kind
    report = fuzz.run_target("camera", 0.0, seed=0, out=tmp_path / "replay", replay=sorted(crash_dir.glob("*.cdr")))
    assert report.error == "" and report.crashes == 0 and report.final_ok, (report.error, report.final_detail)
    assert sum(report.sent.values()) == 6 * fuzz.REPLAY_REPEATS
    assert np.all([kind.startswith("replay:") for kind in report.sent])


def test_a_crash_is_caught_its_messages_saved_and_the_target_restarted(tmp_path, monkeypatch):
    # The zero-crash check must be able to fail: the target is killed (as a segfault would end it) mid-campaign.
    popens = []
    start, send = fuzz.TargetProcess.start, fuzz.AdapterTarget.send
    monkeypatch.setattr(fuzz.TargetProcess, "start", lambda self: (start(self), popens.append(self.popen)))
    sends = itertools.count()

    def send_then_kill(self, sample):
        send(self, sample)
        if next(sends) == 60:
            os.killpg(popens[0].pid, signal.SIGKILL)

    monkeypatch.setattr(fuzz.AdapterTarget, "send", send_then_kill)
    report = fuzz.run_target("lidar", 6.0, seed=0, out=tmp_path)
    assert report.error == "" and report.crashes == 1 and len(popens) == 2, (report.error, report.crash_details)
    assert report.crash_details[0]["exit_code"] == -signal.SIGKILL
    index = json.loads((tmp_path / "crashes" / "lidar-1" / "index.json").read_text())
    assert 0 < len(index) <= fuzz.RING_SIZE and (tmp_path / "crashes" / "lidar-1" / index[-1]["file"]).stat().st_size > 0
    assert report.final_ok and not report.passed  # the restarted target serves; the campaign still fails
    assert "verdict: FAIL" in fuzz.summary_table(report)
