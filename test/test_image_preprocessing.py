"""image_preprocessing: the three resize modes keep what they promise; inputs are validated."""
import numpy as np
import pytest

from vla_inference.sensors.image_preprocessing import RESIZE_MODES, resize_to_model


def solid(height, width, color=(200, 100, 50)):
    return np.broadcast_to(np.array(color, np.uint8), (height, width, 3)).copy()


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (10, 20), (224, 224), (1, 1)])
def test_output_is_size_square_uint8(mode, shape):
    out = resize_to_model(solid(*shape), 224, mode)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8


def test_stretch_fills_the_whole_frame():
    out = resize_to_model(solid(100, 300), 64, "stretch")
    assert (out == (200, 100, 50)).all()


def test_letterbox_keeps_aspect_and_pads_black_centred():
    out = resize_to_model(solid(100, 200, (255, 255, 255)), 224, "letterbox")
    content_rows = np.flatnonzero(out[:, 112, 0] == 255)
    assert content_rows.size == 112
    assert content_rows[0] == 56 and content_rows[-1] == 167
    assert (out[:56] == 0).all() and (out[168:] == 0).all()
    assert (out[56:168] == 255).all()


def test_letterbox_tall_image_pads_left_and_right():
    out = resize_to_model(solid(300, 100, (255, 255, 255)), 60, "letterbox")
    assert (out[:, :20] == 0).all() and (out[:, 40:] == 0).all()
    assert (out[:, 20:40] == 255).all()


def test_center_crop_keeps_the_central_square():
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, :100] = (255, 0, 0)
    image[:, 100:200] = (0, 255, 0)
    image[:, 200:] = (0, 0, 255)
    out = resize_to_model(image, 50, "center_crop")
    assert (out == (0, 255, 0)).all()


def test_center_crop_odd_margin_is_centred():
    image = np.zeros((5, 8, 3), np.uint8)
    image[:, 1:6] = 255
    out = resize_to_model(image, 5, "center_crop")
    assert (out == 255).all()


def test_shrinking_averages_pixels_instead_of_sampling():
    stripes = np.zeros((448, 448, 3), np.uint8)
    stripes[:, ::4] = 255
    out = resize_to_model(stripes, 112, "stretch")
    assert np.abs(out.astype(int) - 64).max() <= 1


def test_enlarging_interpolates():
    image = np.zeros((2, 2, 3), np.uint8)
    image[:, 1] = 255
    out = resize_to_model(image, 8, "stretch")
    assert out[0, 0, 0] == 0 and out[0, 7, 0] == 255
    assert 0 < out[0, 4, 0] < 255


def test_frame_already_at_size_is_returned_unchanged():
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    for mode in RESIZE_MODES:
        assert resize_to_model(image, 224, mode) is image


def test_non_contiguous_input_is_accepted():
    image = solid(50, 80)[:, ::2]
    assert (resize_to_model(image, 16, "stretch") == (200, 100, 50)).all()


@pytest.mark.parametrize("mode", ["fit", "", None, "Stretch"])
def test_unknown_mode_is_refused(mode):
    with pytest.raises(ValueError, match="mode"):
        resize_to_model(solid(10, 10), 8, mode)


@pytest.mark.parametrize("size", [0, -1, 2.5, True, "224"])
def test_bad_size_is_refused(size):
    with pytest.raises(ValueError, match="size"):
        resize_to_model(solid(10, 10), size)


@pytest.mark.parametrize("rgb", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
                                 np.zeros((10, 10, 3), np.float32), np.zeros((0, 10, 3), np.uint8),
                                 [[0, 0, 0]]])
def test_bad_input_image_is_refused(rgb):
    with pytest.raises(ValueError, match="rgb"):
        resize_to_model(rgb, 8)
