"""image_codec: every encoding round-trips, padding is cropped, every malformed field is named."""
import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from vla_inference.sensors.image_codec import (
    BYTES_PER_PIXEL,
    MAX_IMAGE_DIM,
    ImageDecodeError,
    decode_compressed,
    decode_compressed_msg,
    decode_image,
    decode_image_msg,
)

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, size=(6, 5), dtype=np.uint8)
MONO16 = RNG.integers(0, 65536, size=(6, 5), dtype=np.uint16)


def encode(encoding: str, padding: int = 0, big_endian: bool = False):
    """(pixel bytes with ``padding`` extra bytes per row, step, expected RGB) for a test frame."""
    if encoding == "rgb8":
        pixels, expected = RGB, RGB
    elif encoding == "bgr8":
        pixels, expected = RGB[..., ::-1], RGB
    elif encoding == "rgba8":
        pixels, expected = np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)]), RGB
    elif encoding == "bgra8":
        pixels, expected = np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 9, np.uint8)]), RGB
    elif encoding == "mono8":
        pixels, expected = GRAY, np.dstack([GRAY] * 3)
    else:
        samples = MONO16
        pixels = samples.astype(">u2" if big_endian else "<u2").view(np.uint8)
        expected = np.dstack([(samples >> 8).astype(np.uint8)] * 3)
    height = pixels.shape[0]
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    padded = np.full((height, rows.shape[1] + padding), 0xAB, np.uint8)
    padded[:, : rows.shape[1]] = rows
    return padded.tobytes(), padded.shape[1], expected


def image(encoding="rgb8", height=6, width=5, step=15, data=b"\0" * 90, is_bigendian=0):
    return SimpleNamespace(encoding=encoding, height=height, width=width, step=step, data=data,
                           is_bigendian=is_bigendian)


@pytest.mark.parametrize("encoding", sorted(BYTES_PER_PIXEL))
def test_every_encoding_round_trips(encoding):
    data, step, expected = encode(encoding)
    rgb = decode_image(encoding, 6, 5, step, data, False)
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 5, 3)
    np.testing.assert_array_equal(rgb, expected)


def test_mono16_big_endian_respects_byte_order():
    data, step, expected = encode("mono16", big_endian=True)
    np.testing.assert_array_equal(decode_image("mono16", 6, 5, step, data, 1), expected)
    swapped = decode_image("mono16", 6, 5, step, data, 0)
    assert not np.array_equal(swapped, expected)


def test_mono16_scaling_keeps_the_high_byte():
    samples = np.array([[0, 255, 256, 4095, 32768, 65535]], dtype="<u2")
    rgb = decode_image("mono16", 1, 6, 12, samples.tobytes())
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 0, 1, 15, 128, 255])


@pytest.mark.parametrize("encoding", sorted(BYTES_PER_PIXEL))
def test_row_padding_is_cropped(encoding):
    data, step, expected = encode(encoding, padding=3, big_endian=True)
    assert step == 5 * BYTES_PER_PIXEL[encoding] + 3
    np.testing.assert_array_equal(decode_image(encoding, 6, 5, step, data, True), expected)


def test_trailing_bytes_are_ignored():
    data, step, expected = encode("rgb8")
    np.testing.assert_array_equal(decode_image("rgb8", 6, 5, step, data + b"\xff" * 7), expected)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview, lambda b: array.array("B", b),
                                  lambda b: np.frombuffer(b, np.uint8)])
def test_bytes_like_containers(wrap):
    data, step, expected = encode("bgr8")
    np.testing.assert_array_equal(decode_image("bgr8", 6, 5, step, wrap(data)), expected)


def test_unpadded_rgb8_is_a_view_of_the_buffer():
    buffer = bytearray(RGB.tobytes())
    rgb = decode_image("rgb8", 6, 5, 15, buffer)
    buffer[0] = (int(RGB[0, 0, 0]) + 1) % 256
    assert rgb[0, 0, 0] == buffer[0]


def test_decode_image_msg_reads_attributes():
    data, step, expected = encode("rgba8")
    msg = image("rgba8", step=step, data=array.array("B", data))
    np.testing.assert_array_equal(decode_image_msg(msg), expected)


@pytest.mark.parametrize(
    "changes, field, detail",
    [
        ({"encoding": "yuv422"}, "encoding", "yuv422"),
        ({"encoding": None}, "encoding", "None"),
        ({"height": 0}, "height", "received 0"),
        ({"width": 0}, "width", "received 0"),
        ({"width": -3}, "width", "received -3"),
        ({"height": MAX_IMAGE_DIM + 1}, "height", f"1..{MAX_IMAGE_DIM}"),
        ({"width": 2.5}, "width", "float"),
        ({"height": True}, "height", "True"),
        ({"step": 14}, "step", "expected >= 15"),
        ({"data": b"\0" * 89}, "data", "expected >= 90 bytes"),
        ({"data": [0] * 90}, "data", "bytes-like"),
        ({"step": None}, "step", "NoneType"),
    ],
)
def test_malformed_fields_are_named(changes, field, detail):
    msg = image(**changes)
    with pytest.raises(ImageDecodeError) as info:
        decode_image_msg(msg, field_prefix="cam")
    assert info.value.field == f"cam.{field}"
    assert str(info.value).startswith(f"cam.{field}: ")
    assert detail in str(info.value)


def test_huge_claimed_size_fails_on_length_without_reading():
    with pytest.raises(ImageDecodeError, match=r"^data: expected >= 201326592 bytes"):
        decode_image("rgb8", 8192, 8192, 8192 * 3, b"\0" * 10)


@pytest.mark.parametrize("changes, field", [({"step": 16, "data": b"\0" * 96}, "step"),
                                            ({"data": b"\0" * 91}, "data")])
def test_exact_layout_refuses_padding_and_extra_bytes(changes, field):
    msg = image(**changes)
    decode_image_msg(msg)
    with pytest.raises(ImageDecodeError) as info:
        decode_image_msg(msg, exact_layout=True)
    assert info.value.field == field


def test_image_decode_error_is_a_value_error():
    assert issubclass(ImageDecodeError, ValueError)


def compressed(extension: str, rgb: np.ndarray = RGB) -> bytes:
    ok, buffer = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer.tobytes()


@pytest.mark.parametrize("image_format", ["png", "bgr8; png compressed bgr8", "PNG"])
def test_png_round_trips_exactly(image_format):
    np.testing.assert_array_equal(decode_compressed(image_format, compressed(".png")), RGB)


def test_jpeg_decodes_to_rgb():
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0] = 200
    smooth[..., 2] = 40
    rgb = decode_compressed_msg(SimpleNamespace(format="jpeg", data=array.array("B", compressed(".jpg", smooth))))
    assert rgb.shape == (32, 48, 3)
    assert np.abs(rgb.astype(int) - smooth).max() <= 3


@pytest.mark.parametrize("image_format", ["bmp", "", "16UC1; compressedDepth png", 7])
def test_compressed_unsupported_format_is_named(image_format):
    with pytest.raises(ImageDecodeError) as info:
        decode_compressed(image_format, compressed(".png"), field_prefix="image")
    assert info.value.field == "image.format"


@pytest.mark.parametrize("data, detail", [
    (b"", "0 bytes"),
    (b"not an image at all", "no readable header"),
    (compressed(".png")[:40], "could not decode"),
    (compressed(".jpg")[:2], "no readable header"),
])
def test_compressed_bad_data_is_named(data, detail):
    with pytest.raises(ImageDecodeError, match=detail) as info:
        decode_compressed("png" if data[:1] != b"\xff" else "jpeg", data)
    assert info.value.field == "data"


def test_png_with_huge_header_dimensions_is_refused_before_decoding():
    data = bytearray(compressed(".png"))
    data[16:20] = (100_000).to_bytes(4, "big")
    with pytest.raises(ImageDecodeError, match="width in header"):
        decode_compressed("png", bytes(data))


def test_jpeg_with_huge_header_dimensions_is_refused_before_decoding():
    data = bytearray(compressed(".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 7] = (60_000).to_bytes(2, "big")
    with pytest.raises(ImageDecodeError, match="height in header: expected 1..8192, received 60000"):
        decode_compressed("jpeg", bytes(data))
