"""The client's set-up check against the served model's metadata (ROS-free)."""
from vla_inference.client.model_check import ServedModel, setup_mismatches

SERVED = ServedModel(["base", "wrist"], state_dim=8, action_dim=7, uses_lidar=False)


def test_a_fitting_set_up_has_no_mismatch():
    assert setup_mismatches(["base", "wrist"], 8, 7, SERVED) == []


def test_each_differing_parameter_is_named_with_both_values():
    found = setup_mismatches(["wrist", "base"], 32, 8, SERVED)
    assert [line.split(":")[0] for line in found] == ["camera_names", "state_dim", "action_dim"]
    assert "['wrist', 'base']" in found[0] and "['base', 'wrist']" in found[0]
    assert "32" in found[1] and "8" in found[1]
    assert "8" in found[2] and "7" in found[2]


def test_fewer_cameras_than_the_server_expects_is_a_mismatch():
    assert setup_mismatches(["base"], 8, 7, SERVED)[0].startswith("camera_names")
