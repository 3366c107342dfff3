"""The closed-loop replay: an expert that replans from any state reaches every target, a policy
that never moves reaches none, and the shipped policy holds up when asked from part-way along."""
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from vla_inference.lab.closed_loop import LoopSettings, closed_loop_success
from vla_inference.lab.sampler import EngineSampler
from vla_inference.spec.config import tiny
from vla_inference.spec.manifest import load_manifest, shipped_model_dir
from vla_inference.synthetic import EVAL_SEED_BASE, expert_actions, generate_scene

SCENES = 12
MODEL_DIR = os.environ.get("VLA_TEST_MODEL_DIR", "")


def replanning_expert(num_scenes):
    """Ground truth from wherever each arm is now (the sampler sees every scene in one batch)."""
    scenes = [generate_scene(EVAL_SEED_BASE + i) for i in range(num_scenes)]

    def sample(feeds, noise, steps):
        assert len(noise) == num_scenes
        return np.stack([
            expert_actions(dataclasses.replace(scene, ee_start=tuple(float(v) for v in state[:3])))
            if np.linalg.norm(scene.target_position - state[:3]) > 1e-6 else np.zeros(noise.shape[1:], np.float32)
            for scene, state in zip(scenes, feeds["state"])
        ])

    return sample


@pytest.mark.parametrize("latency_rows", [0, 4, 8])
def test_an_expert_that_replans_reaches_every_target(latency_rows):
    settings = LoopSettings(latency_rows=latency_rows, batch=SCENES)
    result = closed_loop_success(replanning_expert(SCENES), tiny(), SCENES, 10, settings)
    assert result["success"] == 1.0, result
    assert result["latency_rows"] == latency_rows and result["scenes"] == SCENES


def test_a_policy_that_never_moves_reaches_nothing():
    def still(feeds, noise, steps):
        return np.zeros_like(noise)

    result = closed_loop_success(still, tiny(), SCENES, 10, LoopSettings(max_rows=40))
    assert result["success"] == 0.0 and np.isnan(result["median_seconds_to_success"])


def test_bad_loop_settings_are_refused():
    with pytest.raises(ValueError, match="request_every"):
        closed_loop_success(replanning_expert(1), tiny(), 1, 10, LoopSettings(request_every=0))


def test_the_shipped_policy_reaches_targets_when_asked_from_part_way():
    # Without latency every executed row comes from a chunk planned part-way along the path.
    manifest = load_manifest(Path(MODEL_DIR) if MODEL_DIR else shipped_model_dir())
    with EngineSampler(manifest) as sampler:
        result = closed_loop_success(sampler, manifest.config, 20, 10, LoopSettings(latency_rows=0))
    assert result["success"] >= 0.9, result
