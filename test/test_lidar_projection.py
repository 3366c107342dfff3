"""project_to_range_image: rows/columns of points at known angles, nearest-return rule, drops."""
import numpy as np
import pytest

from vla_inference.sensors.lidar_projection import beam_rows, project_to_range_image

ROWS, COLS = 64, 1024
FOV_UP, FOV_DOWN = 15.0, -15.0


def point_at(row: int, col: int, distance: float) -> np.ndarray:
    """A point whose direction is the centre of pixel (row, col) under the documented convention."""
    elevation = np.radians(FOV_UP - row * (FOV_UP - FOV_DOWN) / (ROWS - 1))
    azimuth = np.pi * (1.0 - 2.0 * (col + 0.5) / COLS)
    return distance * np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                                np.sin(elevation)])


def test_points_at_known_angles_land_on_their_pixels_with_their_range():
    pixels = [(0, 0), (63, 1023), (31, 512), (10, 100), (50, 900), (32, 256)]
    ranges = [1.5, 19.0, 0.5, 7.25, 3.0, 12.0]
    image = project_to_range_image(np.stack([point_at(r, c, d) for (r, c), d in zip(pixels, ranges)]))
    assert image.shape == (ROWS, COLS) and image.dtype == np.float32
    for (row, col), distance in zip(pixels, ranges):
        assert image[row, col] == pytest.approx(distance, abs=1e-5)
    assert np.count_nonzero(image) == len(pixels)


def test_axis_directions():
    image = project_to_range_image(np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, -4.0, 0.0], [-5.0, 1e-9, 0.0]]))
    horizon_row = int(np.rint(FOV_UP / (FOV_UP - FOV_DOWN) * (ROWS - 1)))
    assert image[horizon_row, COLS // 2] == pytest.approx(2.0)  # straight ahead: centre column
    assert image[horizon_row, COLS // 4] == pytest.approx(3.0)  # left (+y): left of centre
    assert image[horizon_row, 3 * COLS // 4] == pytest.approx(4.0)  # right (-y)
    assert image[horizon_row, 0] == pytest.approx(5.0)  # behind: the seam


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_nearest_return_wins(order):
    candidates = [point_at(20, 300, d) for d in (7.0, 3.0, 11.0)]
    image = project_to_range_image(np.stack([candidates[i] for i in order]))
    assert image[20, 300] == pytest.approx(3.0)
    assert np.count_nonzero(image) == 1


def test_invalid_and_out_of_range_points_are_dropped():
    points = np.array([
        [np.nan, 1.0, 0.0],
        [1.0, np.inf, 0.0],
        [0.05, 0.0, 0.0],  # below min_range
        [25.0, 0.0, 0.0],  # beyond max_range
        [1.0, 0.0, 1.0],  # 45 deg up: above the field of view
        [1.0, 0.0, -1.0],  # 45 deg down
        [0.0, 0.0, 0.0],
    ])
    assert not project_to_range_image(points).any()
    kept = project_to_range_image(np.vstack([points, [[6.0, 0.0, 0.0]]]))
    assert np.count_nonzero(kept) == 1 and kept.max() == pytest.approx(6.0)


def test_custom_geometry_and_empty_input():
    image = project_to_range_image(np.array([[1.0, 0.0, 0.0]]), rows=16, cols=360, fov_up_deg=10.0,
                                   fov_down_deg=-30.0, min_range=0.5, max_range=2.0)
    assert image.shape == (16, 360)
    assert image[int(np.rint(10.0 / 40.0 * 15)), 180] == pytest.approx(1.0)
    assert not project_to_range_image(np.zeros((0, 3), dtype=np.float32)).any()


@pytest.mark.parametrize("bad", [np.zeros((5, 2)), np.zeros(3), np.zeros((2, 3, 1))])
def test_bad_point_array_shapes_raise(bad):
    with pytest.raises(ValueError, match=r"points: expected shape \(N, 3\)"):
        project_to_range_image(bad)


def test_beam_rows_match_projection():
    elevations = np.linspace(-15.0, 15.0, 16)
    rows = beam_rows(elevations)
    assert len(set(rows.tolist())) == 16 and rows.min() == 0 and rows.max() == ROWS - 1
    points = np.stack([[np.cos(np.radians(e)), 0.0, np.sin(np.radians(e))] for e in elevations]) * 4.0
    image = project_to_range_image(points)
    assert sorted(np.nonzero(image[:, COLS // 2])[0].tolist()) == sorted(rows.tolist())
