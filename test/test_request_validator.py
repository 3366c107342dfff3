"""request_validator: a good request becomes model arrays; each malformed field is refused by name."""
import array
from types import SimpleNamespace

import numpy as np
import pytest

from vla_inference.serving.request_validator import (
    InvalidRequestError,
    RequestPayload,
    RequestValidator,
    ValidationLimits,
    validate_request,
)

LIMITS = ValidationLimits(num_cameras=2, state_dim=8, lidar_rows=4, lidar_cols=16, image_size=32)
RED, BLUE = (220, 20, 10), (5, 30, 240)
RANGES = np.linspace(0.0, 20.0, 64, dtype=np.float32).reshape(4, 16)


def camera(color, encoding="rgb8", height=24, width=40):
    pixels = np.broadcast_to(np.array(color, np.uint8), (height, width, 3))
    if encoding == "bgr8":
        pixels = pixels[..., ::-1]
    data = np.ascontiguousarray(pixels).tobytes()
    return SimpleNamespace(encoding=encoding, height=height, width=width, step=width * 3,
                           data=array.array("B", data), is_bigendian=0)


def lidar(ranges=RANGES, big_endian=False):
    data = np.ascontiguousarray(ranges, ">f4" if big_endian else "<f4").tobytes()
    return SimpleNamespace(encoding="32FC1", height=ranges.shape[0], width=ranges.shape[1],
                           step=ranges.shape[1] * 4, data=array.array("B", data), is_bigendian=int(big_endian))


def no_lidar():
    return SimpleNamespace(encoding="", height=0, width=0, step=0, data=array.array("B"), is_bigendian=0)


def payload(**changes):
    fields = dict(images=[camera(RED), camera(BLUE, "bgr8")], lidar_range=lidar(), text="reach the red block",
                  state=array.array("f", range(8)), denoising_steps=0)
    fields.update(changes)
    return RequestPayload(**fields)


def test_good_request_becomes_model_arrays():
    request = validate_request(payload(), LIMITS)
    assert len(request.images) == 2
    for image, color in zip(request.images, (RED, BLUE)):
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert (image == color).all()
    np.testing.assert_array_equal(request.lidar_range, RANGES)
    assert request.lidar_range.dtype == np.float32
    assert request.text == "reach the red block"
    assert request.state.dtype == np.float32
    np.testing.assert_array_equal(request.state, np.arange(8))
    assert request.denoising_steps == 0


def test_empty_lidar_image_means_no_lidar():
    assert validate_request(payload(lidar_range=no_lidar()), LIMITS).lidar_range is None
    assert validate_request(payload(lidar_range=None), LIMITS).lidar_range is None


def test_big_endian_lidar():
    request = validate_request(payload(lidar_range=lidar(big_endian=True)), LIMITS)
    np.testing.assert_array_equal(request.lidar_range, RANGES)


def test_bytes_text_and_list_state_and_explicit_steps():
    request = validate_request(payload(text="déplace".encode(), state=[0.5] * 8, denoising_steps=50), LIMITS)
    assert request.text == "déplace" and request.denoising_steps == 50


def test_text_of_exactly_512_bytes_is_accepted():
    assert validate_request(payload(text="é" * 256), LIMITS).text == "é" * 256


def test_text_decoded_with_replacement_characters_is_refused_as_invalid_utf8():
    received = b"reach the \xffred block".decode("utf-8", errors="replace")  # what rclpy hands the node
    with pytest.raises(InvalidRequestError, match="text_cmd: not valid UTF-8.*character 10"):
        validate_request(payload(text=received), LIMITS)


def test_resize_mode_is_configurable():
    limits = ValidationLimits(num_cameras=2, state_dim=8, lidar_rows=4, lidar_cols=16, image_size=32,
                              resize_mode="letterbox")
    image = validate_request(payload(), limits).images[0]
    assert (image[:5] == 0).all() and (image[-5:] == 0).all()
    assert (image[16] == RED).all()


def test_row_padding_is_refused_by_default_and_accepted_when_allowed():
    padded = camera(RED)
    rows = np.frombuffer(padded.data, np.uint8).reshape(24, 120)
    padded.data = np.hstack([rows, np.zeros((24, 8), np.uint8)]).tobytes()
    padded.step = 128
    with pytest.raises(InvalidRequestError, match=r"^sensor_data\.images\[0\]\.step: expected 120"):
        validate_request(payload(images=[padded, camera(BLUE)]), LIMITS)
    lenient = ValidationLimits(num_cameras=2, state_dim=8, lidar_rows=4, lidar_cols=16, image_size=32,
                               exact_image_layout=False)
    assert (validate_request(payload(images=[padded, camera(BLUE)]), lenient).images[0] == RED).all()


def test_validator_class_and_from_msg():
    inner = payload()
    msg = SimpleNamespace(
        text_cmd=inner.text, denoising_steps=7,
        sensor_data=SimpleNamespace(images=inner.images, lidar_range=inner.lidar_range, state=inner.state),
    )
    request = RequestValidator(LIMITS).validate(RequestPayload.from_msg(msg))
    assert request.denoising_steps == 7 and len(request.images) == 2


def image_with(index, **changes):
    images = [camera(RED), camera(BLUE, "bgr8")]
    for name, value in changes.items():
        setattr(images[index], name, value)
    return images


def lidar_with(**changes):
    image = lidar()
    for name, value in changes.items():
        setattr(image, name, value)
    return image


def lidar_values(row, col, value):
    ranges = RANGES.copy()
    ranges[row, col] = value
    return lidar(ranges)


MALFORMED = {
    "camera count low": (dict(images=[camera(RED)]), "sensor_data.images",
                         "expected 2 images (one per camera_names entry), received 1"),
    "camera count high": (dict(images=[camera(RED)] * 3), "sensor_data.images", "received 3"),
    "images not a list": (dict(images=None), "sensor_data.images", "sequence"),
    "image not an image": (dict(images=[camera(RED), "frame"]), "sensor_data.images[1]", "not an image"),
    "image encoding": (dict(images=image_with(1, encoding="yuv422")), "sensor_data.images[1].encoding", "yuv422"),
    "image height zero": (dict(images=image_with(0, height=0)), "sensor_data.images[0].height", "received 0"),
    "image height huge": (dict(images=image_with(0, height=100_000)), "sensor_data.images[0].height", "1..8192"),
    "image width huge": (dict(images=image_with(1, width=9000)), "sensor_data.images[1].width", "received 9000"),
    "image step short": (dict(images=image_with(0, step=119)), "sensor_data.images[0].step", "received 119"),
    "image data short": (dict(images=image_with(1, data=b"\0" * 100)), "sensor_data.images[1].data",
                         "expected 2880 bytes"),
    "image data long": (dict(images=image_with(0, data=b"\0" * 2881)), "sensor_data.images[0].data", "received 2881"),
    "image data type": (dict(images=image_with(0, data=[0] * 2880)), "sensor_data.images[0].data", "bytes-like"),
    "lidar encoding": (dict(lidar_range=lidar_with(encoding="16UC1")), "sensor_data.lidar_range.encoding", "16UC1"),
    "lidar height": (dict(lidar_range=lidar_with(height=64)), "sensor_data.lidar_range.height", "expected 4"),
    "lidar width": (dict(lidar_range=lidar_with(width=1024)), "sensor_data.lidar_range.width", "expected 16"),
    "lidar step": (dict(lidar_range=lidar_with(step=60)), "sensor_data.lidar_range.step", "expected 64"),
    "lidar data short": (dict(lidar_range=lidar_with(data=b"\0" * 255)), "sensor_data.lidar_range.data",
                         "expected 256 bytes"),
    "lidar data without size": (dict(lidar_range=lidar_with(height=0, width=0)), "sensor_data.lidar_range.height",
                                "received 0"),
    "lidar not an image": (dict(lidar_range=SimpleNamespace(height=4)), "sensor_data.lidar_range", "not an image"),
    "lidar data type": (dict(lidar_range=lidar_with(data=3.0)), "sensor_data.lidar_range.data", "bytes-like"),
    "lidar NaN": (dict(lidar_range=lidar_values(2, 5, np.nan)), "sensor_data.lidar_range.data", "nan at row 2, col 5"),
    "lidar Inf": (dict(lidar_range=lidar_values(0, 1, np.inf)), "sensor_data.lidar_range.data", "inf at row 0, col 1"),
    "lidar negative": (dict(lidar_range=lidar_values(3, 15, -1.0)), "sensor_data.lidar_range.data", "-1.0 at row 3"),
    "text empty": (dict(text=""), "text_cmd", "non-empty"),
    "text whitespace": (dict(text=" \t\n"), "text_cmd", "non-empty"),
    "text too long str": (dict(text="é" * 257), "text_cmd", "at most 512 UTF-8 bytes, received 514"),
    "text too many chars": (dict(text="a" * 513), "text_cmd", "at most 512"),
    "text too long bytes": (dict(text=b"a" * 513), "text_cmd", "received 513"),
    "text invalid UTF-8 bytes": (dict(text=b"go \xff\xfe"), "text_cmd", "not valid UTF-8 (byte 3"),
    "text lone surrogate": (dict(text="go \ud800"), "text_cmd", "not valid UTF-8"),
    "text wrong type": (dict(text=42), "text_cmd", "str or bytes"),
    "state short": (dict(state=array.array("f", range(7))), "sensor_data.state", "expected 8 values, received 7"),
    "state long": (dict(state=[0.0] * 9), "sensor_data.state", "received 9"),
    "state NaN": (dict(state=[0.0] * 3 + [float("nan")] + [0.0] * 4), "sensor_data.state", "nan at index 3"),
    "state Inf": (dict(state=array.array("f", [float("-inf")] + [0.0] * 7)), "sensor_data.state", "-inf at index 0"),
    "state beyond float32": (dict(state=[1e300] + [0.0] * 7), "sensor_data.state", "float32 range"),
    "state not numbers": (dict(state=["x"] * 8), "sensor_data.state", "numbers"),
    "state not a sequence": (dict(state=3.0), "sensor_data.state", "sequence"),
    "steps too many": (dict(denoising_steps=51), "denoising_steps", "1..50, received 51"),
    "steps negative": (dict(denoising_steps=-1), "denoising_steps", "received -1"),
    "steps not an integer": (dict(denoising_steps=2.5), "denoising_steps", "integer"),
}


@pytest.mark.parametrize("changes, field, detail", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_field_is_refused_by_name(changes, field, detail):
    with pytest.raises(InvalidRequestError) as info:
        validate_request(payload(**changes), LIMITS)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert detail in str(info.value)


def test_invalid_request_error_is_a_value_error():
    assert issubclass(InvalidRequestError, ValueError)


def test_a_good_request_after_a_bad_one_still_validates():
    validator = RequestValidator(LIMITS)
    with pytest.raises(InvalidRequestError):
        validator.validate(payload(text=""))
    assert validator.validate(payload()).text == "reach the red block"


@pytest.mark.parametrize("changes", [{"num_cameras": 0}, {"state_dim": -1}, {"resize_mode": "fit"},
                                     {"max_text_bytes": True}, {"image_size": 2.0}])
def test_invalid_limits_are_refused(changes):
    settings = dict(num_cameras=1, state_dim=8)
    settings.update(changes)
    with pytest.raises(ValueError):
        ValidationLimits(**settings)
