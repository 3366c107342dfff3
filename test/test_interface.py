"""The /vla/inference interface over real DDS: messages arrive intact, constants are the contract."""
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy
from ros_helpers import spin_until
from sensor_msgs.msg import Image

from vla_inference import qos
from vla_inference.spec import interface
from vla_msgs.msg import InferenceRequest, InferenceResponse, SensorData
from vla_msgs.srv import Infer


def _image(rng: np.random.Generator) -> Image:
    msg = Image(height=224, width=224, encoding="rgb8", step=224 * 3)
    msg.data = rng.integers(0, 256, size=224 * 224 * 3, dtype=np.uint8).tobytes()
    return msg


def _request(seed: int = 7) -> InferenceRequest:
    rng = np.random.default_rng(seed)
    lidar = Image(height=64, width=1024, encoding="32FC1", step=1024 * 4)
    lidar.data = rng.uniform(0.0, 30.0, size=64 * 1024).astype(np.float32).tobytes()
    request = InferenceRequest(request_id=2**63 + 5, text_cmd="reach the red block", denoising_steps=7)
    request.header.frame_id = "base_link"
    request.header.stamp.sec = 1234
    request.sensor_data = SensorData(
        images=[_image(rng) for _ in range(3)],
        lidar_range=lidar,
        state=rng.standard_normal(8).astype(np.float32).tolist(),
    )
    return request


def _assert_same_request(sent: InferenceRequest, got: InferenceRequest) -> None:
    assert got.request_id == sent.request_id
    assert got.text_cmd == sent.text_cmd
    assert got.denoising_steps == sent.denoising_steps
    assert got.header.frame_id == sent.header.frame_id and got.header.stamp.sec == 1234
    assert len(got.sensor_data.images) == 3
    for a, b in zip(sent.sensor_data.images, got.sensor_data.images):
        assert (b.height, b.width, b.encoding, b.step) == (a.height, a.width, a.encoding, a.step)
        assert bytes(b.data) == bytes(a.data)
    assert bytes(got.sensor_data.lidar_range.data) == bytes(sent.sensor_data.lidar_range.data)
    assert got.sensor_data.lidar_range.encoding == "32FC1"
    np.testing.assert_array_equal(np.asarray(got.sensor_data.state), np.asarray(sent.sensor_data.state))


def test_status_constants_and_field_types_match_the_contract():
    assert (
        InferenceResponse.STATUS_OK,
        InferenceResponse.STATUS_REJECTED_RATE_LIMIT,
        InferenceResponse.STATUS_SUPERSEDED,
        InferenceResponse.STATUS_INVALID_REQUEST,
        InferenceResponse.STATUS_NOT_READY,
        InferenceResponse.STATUS_DEADLINE_EXCEEDED,
        InferenceResponse.STATUS_INTERNAL_ERROR,
    ) == (0, 1, 2, 3, 4, 5, 6)
    assert InferenceRequest.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "request_id": "uint64",
        "text_cmd": "string",
        "sensor_data": "vla_msgs/SensorData",
        "denoising_steps": "uint16",
    }
    assert SensorData.get_fields_and_field_types() == {
        "images": "sequence<sensor_msgs/Image>",
        "lidar_range": "sensor_msgs/Image",
        "state": "sequence<float>",
    }
    assert InferenceResponse.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "request_id": "uint64",
        "status": "uint8",
        "message": "string",
        "action_horizon": "uint32",
        "action_dim": "uint32",
        "action_seq": "sequence<float>",
        "confidence": "float",
        "denoising_steps": "uint16",
        "latency_ms": "float",
        "retry_after_ms": "uint32",
    }
    assert Infer.Request.get_fields_and_field_types() == {"request": "vla_msgs/InferenceRequest"}
    assert Infer.Response.get_fields_and_field_types() == {"response": "vla_msgs/InferenceResponse"}


def test_contract_names_and_qos():
    assert interface.REQUEST_TOPIC == "/vla/inference/request"
    assert interface.RESPONSE_TOPIC == "/vla/inference/response"
    assert interface.INFER_SERVICE == "/vla/inference/infer"
    profile = qos.INFERENCE_QOS
    assert profile.reliability == ReliabilityPolicy.RELIABLE
    assert profile.history == HistoryPolicy.KEEP_LAST and profile.depth == 1
    assert profile.durability == DurabilityPolicy.VOLATILE


@pytest.mark.parametrize("depth,kept", [(1, [2]), (qos.READER_DEPTH, [1, 2])])
def test_a_reader_keeps_its_own_response_when_another_clients_arrives_first_only_with_depth(ros_context, depth, kept):
    # Two responses on the shared topic before this client's reader is taken: response 1 is this
    # client's, 2 another's. With depth 1 the reader holds only the newer one; READER_QOS keeps both.
    server = rclpy.create_node("interface_responder", context=ros_context)
    client = rclpy.create_node("interface_client", context=ros_context)
    writer = server.create_publisher(InferenceResponse, interface.RESPONSE_TOPIC, qos.INFERENCE_QOS)
    reader_qos = qos.reader_qos(depth)
    received = []
    client.create_subscription(InferenceResponse, interface.RESPONSE_TOPIC, lambda m: received.append(m.request_id),
                               reader_qos)
    deadline = time.monotonic() + 10.0
    while writer.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    for request_id in (1, 2):
        writer.publish(InferenceResponse(request_id=request_id))
    time.sleep(0.5)  # both delivered into the reader's history, which nobody has taken from yet
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(client)
    spin_until(executor, lambda: len(received) >= len(kept), 2.0)
    executor.spin_once(timeout_sec=0.2)
    assert received == kept
    executor.shutdown()


def test_request_with_three_images_and_lidar_arrives_intact_over_dds(ros_context):
    sender = rclpy.create_node("interface_sender", context=ros_context)
    receiver = rclpy.create_node("interface_receiver", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(sender)
    executor.add_node(receiver)
    received = []
    receiver.create_subscription(InferenceRequest, interface.REQUEST_TOPIC, received.append, qos.INFERENCE_QOS)
    publisher = sender.create_publisher(InferenceRequest, interface.REQUEST_TOPIC, qos.INFERENCE_QOS)
    assert spin_until(executor, lambda: publisher.get_subscription_count() > 0, 10.0), "no DDS match"
    request = _request()
    publisher.publish(request)
    assert spin_until(executor, lambda: len(received) == 1, 10.0), "request never arrived"
    _assert_same_request(request, received[0])
    executor.shutdown()


def test_infer_service_round_trip_over_dds(ros_context):
    server = rclpy.create_node("interface_server", context=ros_context)
    caller = rclpy.create_node("interface_caller", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(server)
    executor.add_node(caller)
    seen = []

    def handle(req: Infer.Request, res: Infer.Response) -> Infer.Response:
        seen.append(req.request)
        res.response.request_id = req.request.request_id
        res.response.status = InferenceResponse.STATUS_OK
        res.response.action_horizon, res.response.action_dim = 2, 3
        res.response.action_seq = [0.5, -1.0, 2.0, 3.25, 4.0, -5.5]
        return res

    server.create_service(Infer, interface.INFER_SERVICE, handle)
    client = caller.create_client(Infer, interface.INFER_SERVICE)
    assert spin_until(executor, client.service_is_ready, 10.0), "service never became ready"
    request = _request(seed=11)
    future = client.call_async(Infer.Request(request=request))
    assert spin_until(executor, future.done, 10.0), "no service response"
    _assert_same_request(request, seen[0])
    response = future.result().response
    assert response.request_id == request.request_id
    assert list(response.action_seq) == pytest.approx([0.5, -1.0, 2.0, 3.25, 4.0, -5.5])
    executor.shutdown()
