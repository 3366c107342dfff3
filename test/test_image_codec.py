"""image_codec: every encoding round-trips or decodes to known colours, padding is cropped, every malformed field is named."""
import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from vla_inference.sensors.image_codec import (
    BYTES_PER_PIXEL,
    MAX_IMAGE_DIM,
    REQUEST_ENCODINGS,
    SUPPORTED_ENCODINGS,
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
    elif encoding in ("bgr8", "8UC3"):
        pixels, expected = RGB[..., ::-1], RGB
    elif encoding == "rgba8":
        pixels, expected = np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)]), RGB
    elif encoding == "bgra8":
        pixels, expected = np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 9, np.uint8)]), RGB
    elif encoding in ("mono8", "8UC1"):
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


EXACT_ENCODINGS = (*REQUEST_ENCODINGS, "8UC3", "8UC1")  # lossless: the 8-bit RGB, BGR and mono layouts


@pytest.mark.parametrize("encoding", EXACT_ENCODINGS)
def test_every_encoding_round_trips(encoding):
    data, step, expected = encode(encoding)
    rgb = decode_image(encoding, 6, 5, step, data, False, encodings=SUPPORTED_ENCODINGS)
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


@pytest.mark.parametrize("encoding", EXACT_ENCODINGS)
def test_row_padding_is_cropped(encoding):
    data, step, expected = encode(encoding, padding=3, big_endian=True)
    assert step == 5 * BYTES_PER_PIXEL[encoding] + 3
    np.testing.assert_array_equal(decode_image(encoding, 6, 5, step, data, True, encodings=SUPPORTED_ENCODINGS), expected)


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
        ({"encoding": "nv21"}, "encoding", "'nv21'"),
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


# ---- Encodings as camera drivers publish them -------------------------------------------------------------

YUV422_ORDERS = {"uyvy": "uyvy", "yuv422": "uyvy", "yuyv": "yuyv", "yuv422_yuy2": "yuyv"}
BAYER_PATTERNS = {"bayer_rggb8": "rggb", "bayer_bggr8": "bggr", "bayer_gbrg8": "gbrg", "bayer_grbg8": "grbg"}
PALETTE = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255),
           "black": (0, 0, 0), "orange": (230, 120, 20), "slate": (60, 90, 200)}
DRIVER = dict(encodings=SUPPORTED_ENCODINGS)


def colour_bars(height: int, bar_width: int) -> np.ndarray:
    """Vertical bars of every PALETTE colour, left to right, each ``bar_width`` pixels wide."""
    return np.repeat(np.array(list(PALETTE.values()), np.uint8)[None], height, axis=0).repeat(bar_width, axis=1)


def driver_layout(rows: np.ndarray, align: int = 64, trailing: int = 0):
    """(data, step) of packed rows as a V4L2 driver lays them out: ``bytesperline`` rounded up to ``align``
    bytes with garbage in the padding, and ``trailing`` bytes after the last row (``sizeimage`` > height x step)."""
    height, row_bytes = rows.shape
    step = -(-row_bytes // align) * align
    frame = np.full((height, step), 0xAB, np.uint8)
    frame[:, :row_bytes] = rows
    return frame.tobytes() + b"\xcd" * trailing, step


def pack_yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """Rows of packed 4:2:2 bytes, by hand: BT.601 limited range (Y 16..235, U and V 16..240 around 128),
    U and V averaged over each pixel pair; ``uyvy`` = U0 Y0 V0 Y1, ``yuyv`` = Y0 U0 Y1 V0 per pair."""
    r, g, b = (rgb[..., i].astype(np.float64) / 255.0 for i in range(3))
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    u = (u[:, 0::2] + u[:, 1::2]) / 2
    v = (v[:, 0::2] + v[:, 1::2]) / 2
    y0, y1 = y[:, 0::2], y[:, 1::2]
    quads = (u, y0, v, y1) if order == "uyvy" else (y0, u, y1, v)
    packed = np.stack([np.clip(np.rint(c), 0, 255).astype(np.uint8) for c in quads], axis=-1)
    return packed.reshape(rgb.shape[0], rgb.shape[1] * 2)


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """One 8-bit sample per pixel, by hand: ``pattern`` names the colours of the top-left 2 x 2 block in ROS
    order (row 0 left, row 0 right, row 1 left, row 1 right), repeated over the frame."""
    channel = {"r": 0, "g": 1, "b": 2}
    out = np.empty(rgb.shape[:2], np.uint8)
    for index, colour in enumerate(pattern):
        dy, dx = divmod(index, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, channel[colour]]
    return out


def assert_colours(rgb: np.ndarray, expected: np.ndarray, tolerance: int) -> None:
    assert rgb.dtype == np.uint8 and rgb.shape == expected.shape
    worst = int(np.abs(rgb.astype(int) - expected.astype(int)).max())
    assert worst <= tolerance, f"colour off by {worst}"


@pytest.mark.parametrize("encoding", sorted(YUV422_ORDERS))
def test_yuv422_driver_frame_decodes_to_known_colours(encoding):
    scene = colour_bars(5, 6)  # odd height; bars 6 wide so no U, V pair straddles two colours
    data, step = driver_layout(pack_yuv422(scene, YUV422_ORDERS[encoding]), trailing=32)
    assert step == 128 and step > scene.shape[1] * 2
    rgb = decode_image(encoding, 5, scene.shape[1], step, data, **DRIVER)
    assert_colours(rgb, scene, tolerance=2)


def test_yuv422_byte_orders_are_not_interchangeable():
    scene = colour_bars(4, 6)
    data, step = driver_layout(pack_yuv422(scene, "uyvy"))
    assert_colours(decode_image("uyvy", 4, scene.shape[1], step, data, **DRIVER), scene, tolerance=2)
    swapped = decode_image("yuyv", 4, scene.shape[1], step, data, **DRIVER)
    assert np.abs(swapped.astype(int) - scene).mean() > 40


@pytest.mark.parametrize("encoding", sorted(YUV422_ORDERS))
def test_yuv422_odd_width_is_refused_by_name(encoding):
    with pytest.raises(ImageDecodeError, match="even width") as info:
        decode_image(encoding, 4, 5, 10, b"\0" * 40, field_prefix="cam", **DRIVER)
    assert info.value.field == "cam.width" and encoding in str(info.value)


@pytest.mark.parametrize("colour", sorted(PALETTE))
@pytest.mark.parametrize("encoding", sorted(BAYER_PATTERNS))
def test_bayer_uniform_scene_comes_back_in_its_colour(encoding, colour):
    scene = np.full((7, 9, 3), PALETTE[colour], np.uint8)  # odd height and width: the pattern is cut mid-block
    data, step = driver_layout(mosaic(scene, BAYER_PATTERNS[encoding]))
    assert step == 64
    assert_colours(decode_image(encoding, 7, 9, step, data, **DRIVER), scene, tolerance=2)


@pytest.mark.parametrize("encoding", sorted(BAYER_PATTERNS))
def test_bayer_scene_keeps_its_geometry(encoding):
    bar = 5
    scene = colour_bars(9, bar)  # odd width 35, odd height
    data, step = driver_layout(mosaic(scene, BAYER_PATTERNS[encoding]), trailing=7)
    rgb = decode_image(encoding, 9, scene.shape[1], step, data, **DRIVER)
    inside = np.ones(scene.shape[1], bool)  # bilinear demosaicing blends the pixels next to a colour edge
    for edge in range(bar, scene.shape[1], bar):
        inside[edge - 1 : edge + 1] = False
    assert_colours(rgb[:, inside], scene[:, inside], tolerance=2)


@pytest.mark.parametrize("encoding", sorted(BAYER_PATTERNS))
def test_bayer_wrong_pattern_gives_wrong_colours(encoding):
    scene = np.full((6, 8, 3), PALETTE["red"], np.uint8)
    data = mosaic(scene, BAYER_PATTERNS[encoding]).tobytes()
    for other in set(BAYER_PATTERNS) - {encoding}:
        assert np.abs(decode_image(other, 6, 8, 8, data, **DRIVER).astype(int) - scene).max() > 100


@pytest.mark.parametrize("height, width, field", [(2, 8, "height"), (8, 2, "width"), (8, 1, "width")])
def test_bayer_smaller_than_3_by_3_is_refused_by_name(height, width, field):
    with pytest.raises(ImageDecodeError, match="demosaicing needs 3 x 3") as info:
        decode_image("bayer_rggb8", height, width, width, b"\0" * (height * width), **DRIVER)
    assert info.value.field == field


@pytest.mark.parametrize("encoding, pixels", [
    ("8UC3", cv2.cvtColor(colour_bars(3, 2), cv2.COLOR_RGB2BGR)),
    ("8UC1", colour_bars(3, 2)[..., 1]),
])
def test_opencv_generic_types_read_as_cv_bridge_guesses(encoding, pixels):
    rows = np.ascontiguousarray(pixels).reshape(3, -1)
    data, step = driver_layout(rows)
    rgb = decode_image(encoding, 3, 14, step, data, **DRIVER)
    expected = colour_bars(3, 2) if encoding == "8UC3" else np.dstack([pixels] * 3)
    np.testing.assert_array_equal(rgb, expected)


@pytest.mark.parametrize("bits, samples, expected", [
    (16, [0, 255, 256, 4095, 32768, 65535], [0, 0, 1, 15, 128, 255]),
    (12, [0, 15, 16, 2048, 4095, 4096, 65535], [0, 0, 1, 128, 255, 255, 255]),
    (10, [0, 3, 4, 512, 1023, 1024], [0, 0, 1, 128, 255, 255]),
    (8, [0, 1, 200, 255, 256], [0, 1, 200, 255, 255]),
])
def test_mono16_scales_by_its_declared_bit_depth(bits, samples, expected):
    data = np.array([samples], dtype="<u2").tobytes()
    rgb = decode_image("mono16", 1, len(samples), 2 * len(samples), data, mono16_bits=bits)
    np.testing.assert_array_equal(rgb[0], np.array(expected, np.uint8)[:, None].repeat(3, axis=1))


def test_mono16_12_bit_driver_frame_with_padding_and_big_endian():
    gray = RNG.integers(0, 256, size=(5, 7), dtype=np.uint8)
    samples = (gray.astype(np.uint16) << 4) | RNG.integers(0, 16, size=gray.shape, dtype=np.uint16)
    data, step = driver_layout(samples.astype(">u2").view(np.uint8).reshape(5, 14))
    rgb = decode_image("mono16", 5, 7, step, data, True, mono16_bits=12)
    np.testing.assert_array_equal(rgb, np.dstack([gray] * 3))
    assert decode_image("mono16", 5, 7, step, data, True).max() <= 15  # read as 16-bit: nearly black


@pytest.mark.parametrize("bits", [7, 17, 0, True, 12.0, "12"])
def test_mono16_bits_outside_8_to_16_is_refused(bits):
    with pytest.raises(ValueError, match="mono16_bits"):
        decode_image("mono16", 1, 1, 2, b"\0\0", mono16_bits=bits)


def test_unknown_encoding_is_refused_by_name_listing_the_supported_ones():
    with pytest.raises(ImageDecodeError) as info:
        decode_image("nv12", 4, 4, 4, b"\0" * 24, field_prefix="cam", **DRIVER)
    assert info.value.field == "cam.encoding"
    assert "received 'nv12'" in str(info.value)
    assert all(name in str(info.value) for name in SUPPORTED_ENCODINGS)


@pytest.mark.parametrize("encoding", ["yuv422", "yuyv", "bayer_rggb8", "8UC3", "8UC1"])
def test_request_contract_default_refuses_driver_encodings(encoding):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(encoding, 4, 4, 16, b"\0" * 64)
    assert info.value.field == "encoding"
    assert f"expected one of {', '.join(REQUEST_ENCODINGS)}, received {encoding!r}" == info.value.reason


def test_exact_layout_refuses_driver_padding_for_driver_encodings():
    scene = colour_bars(2, 2)
    data, step = driver_layout(pack_yuv422(scene, "yuyv"))
    decode_image("yuyv", 2, 14, step, data, **DRIVER)
    with pytest.raises(ImageDecodeError) as info:
        decode_image("yuyv", 2, 14, step, data, exact_layout=True, **DRIVER)
    assert info.value.field == "step" and "expected 28" in str(info.value)


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


def test_a_small_jpeg_claiming_8192_squared_is_refused_from_its_header_at_once():
    # Fuzzing found it: 3 KB announcing 67 MP held the camera adapter's thread for seconds.
    import time

    data = bytearray(compressed(".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (8192).to_bytes(2, "big") + (8192).to_bytes(2, "big")
    started = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="8192 x 8192 = 67108864 pixels, at most 16777216"):
        decode_compressed("jpeg", bytes(data))
    assert time.perf_counter() - started < 0.1
