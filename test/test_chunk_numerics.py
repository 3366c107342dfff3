"""Precision comparisons in the robot's units: end point and path in cm, gripper sign agreement."""
import numpy as np
import pytest

from vla_inference.lab.chunk_numerics import path_errors, success_gate, summarize
from vla_inference.synthetic import expert_actions, generate_scene


def _reference(count: int = 10) -> np.ndarray:
    return np.stack([expert_actions(generate_scene(1000 + i)) for i in range(count)]).astype(np.float32)


def test_a_one_millimetre_bias_per_row_is_a_1_6_cm_end_point_error_that_fails_the_gate():
    reference = _reference()
    biased = reference.copy()
    biased[..., 0] += 0.001  # 1 mm per row in x; a flattened-chunk cosine still says 0.9998
    errors = path_errors(biased, reference)
    np.testing.assert_allclose(errors.endpoint_cm, 1.6, rtol=1e-5)
    np.testing.assert_allclose(errors.max_step_cm, 1.6, rtol=1e-5)
    summary = summarize(errors)
    assert summary.within_limit == 0.0 and not summary.passed


def test_noise_that_cancels_along_the_path_passes_and_a_flipped_gripper_row_is_counted():
    reference = _reference()
    rng = np.random.default_rng(0)
    noisy = reference + rng.normal(0.0, 2e-5, reference.shape).astype(np.float32)  # 0.02 mm per value
    noisy[3, 5, 3] = -reference[3, 5, 3]
    errors = path_errors(noisy, reference)
    summary = summarize(errors)
    assert summary.passed and summary.endpoint_cm_max < 0.05
    assert errors.gripper_agreement[3] == pytest.approx(15 / 16) and summary.gripper_agreement_min == pytest.approx(15 / 16)
    assert np.all(np.delete(errors.gripper_agreement, 3) == 1.0)


def test_one_scene_in_a_hundred_may_exceed_the_limit_two_may_not():
    reference = np.repeat(_reference(1), 100, axis=0)
    off = reference.copy()
    off[:1, :, 1] += 0.01
    assert summarize(path_errors(off, reference)).passed
    off[:2, :, 1] += 0.01
    assert not summarize(path_errors(off, reference)).passed


def test_shapes_must_match_and_success_is_judged_in_points():
    with pytest.raises(ValueError, match="chunks"):
        path_errors(np.zeros((2, 16, 8)), np.zeros((2, 16, 7)))
    assert success_gate(0.93, 0.94) and not success_gate(0.92, 0.94)
