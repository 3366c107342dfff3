"""Camera views of a request's samples (pure Python) and their prefixes through real ONNX Runtime sessions."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vla_inference.lab.confidence_eval import evaluate_confidence
from vla_inference.runtime.backends import create_backend
from vla_inference.runtime.pipeline import InferencePipeline
from vla_inference.runtime.sample_views import SampleViews, plan_views, single_camera_views, view_feeds
from vla_inference.spec.manifest import Manifest, load_manifest, shipped_model_dir
from vla_inference.spec.observation import vision_feeds
from vla_inference.synthetic import eval_scenes, make_observation


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(shipped_model_dir())


@pytest.mark.parametrize(
    "cameras, samples, counts, rows, draws",
    [
        (3, 4, (3, 1), (0, 1, 0, 1), (0, 0, 1, 1)),
        (3, 2, (3, 1), (0, 1), (0, 0)),
        (3, 5, (3, 1), (0, 1, 0, 1, 0), (0, 0, 1, 1, 2)),
        (2, 4, (2, 1), (0, 1, 0, 1), (0, 0, 1, 1)),
        (1, 4, (1,), (0, 0, 0, 0), (0, 1, 2, 3)),
    ],
)
def test_camera_views_pair_the_full_observation_with_the_first_camera_on_one_noise_draw(
    cameras: int, samples: int, counts: tuple, rows: tuple, draws: tuple
) -> None:
    assert plan_views("cameras", cameras, samples) == SampleViews(counts, rows, draws)


def test_noise_views_share_the_full_observation_and_draw_their_own_noise() -> None:
    assert plan_views("noise", 3, 4) == SampleViews((3,), (0, 0, 0, 0), (0, 1, 2, 3))


def test_bad_view_requests_are_named() -> None:
    with pytest.raises(ValueError, match="confidence_views"):
        plan_views("lidar", 3, 4)
    with pytest.raises(ValueError, match="cameras"):
        plan_views("cameras", 0, 4)


def test_view_rows_equal_the_feeds_of_observations_with_fewer_cameras(manifest: Manifest) -> None:
    cfg = manifest.config
    observation = make_observation(next(iter(eval_scenes(1))), 3, True)
    views = plan_views("cameras", 3, 4)
    rows = view_feeds(vision_feeds([observation], cfg), views)
    expected = vision_feeds([replace(observation, images=observation.images[:c]) for c in views.camera_counts], cfg)
    assert rows.keys() == expected.keys()
    for name in rows:
        np.testing.assert_array_equal(rows[name], expected[name], err_msg=name)
    with pytest.raises(ValueError, match="batch 1"):
        view_feeds(rows, views)


def test_single_camera_views_are_recognised_and_anything_else_is_not(manifest: Manifest) -> None:
    cfg = manifest.config
    observation = make_observation(next(iter(eval_scenes(1))), 3, True)
    feeds = vision_feeds([observation], cfg)
    rows = view_feeds(feeds, plan_views("cameras", 3, 4))
    assert single_camera_views(rows)
    assert not single_camera_views(feeds)  # one row: nothing to share
    assert not single_camera_views(view_feeds(feeds, plan_views("noise", 3, 4)))
    other = make_observation(list(eval_scenes(2))[1], 3, True)
    changes = {
        "a second camera on in row 1": ("camera_mask", (1, 1), True),
        "camera 0 off in row 1 only": ("camera_mask", (1, 0), False),
        "another image for camera 0": ("images", (1, 0), vision_feeds([other], cfg)["images"][0, 0]),
        "another state": ("state", (1,), vision_feeds([other], cfg)["state"][0]),
        "another command": ("text_mask", (1, 0), not rows["text_mask"][0, 0]),
        "no LiDAR in row 1": ("lidar_mask", (1,), False),
    }
    for what, (name, index, value) in changes.items():
        changed = {key: array.copy() for key, array in rows.items()}
        changed[name][index] = value
        assert not single_camera_views(changed), what
    masked_slots = {key: array.copy() for key, array in rows.items()}
    masked_slots["images"][1, 1:] = 0.5  # what a masked slot holds does not matter
    assert single_camera_views(masked_slots)


def test_each_sample_denoises_on_the_prefix_of_its_own_view(manifest: Manifest) -> None:
    cfg = manifest.config
    observation = make_observation(next(iter(eval_scenes(1))), 3, True)
    views = plan_views("cameras", 3, 4)
    backend = create_backend("onnxruntime", manifest)
    with backend:
        backend.prepare(4, 1, 2)
        prefix = backend.encode_prefix(view_feeds(vision_feeds([observation], cfg), views), 0, views.sample_rows)
        for k, row in enumerate(views.sample_rows):
            alone = replace(observation, images=observation.images[:views.camera_counts[row]])
            out = backend.infer("vision", vision_feeds([alone], cfg))
            np.testing.assert_allclose(prefix.prefix_kv[k], out["prefix_kv"][0], atol=1e-5)
            np.testing.assert_array_equal(prefix.prefix_mask[k], out["prefix_mask"][0])
        assert not np.allclose(prefix.prefix_kv[0], prefix.prefix_kv[1], atol=1e-3)
        with pytest.raises(ValueError, match="sample_rows"):
            backend.encode_prefix(vision_feeds([observation], cfg), 0, (0, 1, 0, 0))
        backend.prepare(4, 1, 1)
        with pytest.raises(ValueError, match="at most 1"):
            backend.encode_prefix(view_feeds(vision_feeds([observation], cfg), views), 0, views.sample_rows)


def test_camera_view_samples_match_noise_samples_of_the_same_view_and_draw(manifest: Manifest) -> None:
    """Samples 0 and 2 of a camera-view request (all cameras, draws 0 and 1) are the noise-mode samples
    0 and 1; samples 1 and 3 are the first camera alone on the same two draws."""
    observation = make_observation(next(iter(eval_scenes(1))), 3, True)
    served = {}
    for mode in ("cameras", "noise"):
        with InferencePipeline(create_backend("onnxruntime", manifest), num_samples=4, pipelining=False,
                               warmup_runs=0, confidence_views=mode, owns_backend=True) as pipeline:
            served[mode] = pipeline.infer(observation, steps=3, seed=11)
            if mode == "noise":
                first_camera = pipeline.infer(replace(observation, images=observation.images[:1]), steps=3, seed=11)
    cams, noise = served["cameras"], served["noise"]
    assert cams.views == plan_views("cameras", 3, 4)
    for k, draw in ((0, 0), (2, 1)):
        np.testing.assert_allclose(cams.samples[k], noise.samples[draw], atol=1e-5)
        np.testing.assert_allclose(cams.samples[k + 1], first_camera.samples[draw], atol=1e-5)


def test_camera_views_tell_shuffled_cameras_and_unreadable_commands_from_real_scenes(manifest: Manifest) -> None:
    """The served confidence ranks real held-out scenes above scrambled copies; noise alone does not."""
    aurocs = {}
    for mode in ("cameras", "noise"):
        with InferencePipeline(create_backend("onnxruntime", manifest), num_samples=4, warmup_runs=1,
                               confidence_views=mode, owns_backend=True) as pipeline:
            report = evaluate_confidence(pipeline, scenes=16, modes=("patches", "text"), seed=3)
        aurocs[mode] = report.auroc
    assert aurocs["cameras"]["patches"] >= 0.8 and aurocs["cameras"]["text"] >= 0.7, aurocs
    assert aurocs["cameras"]["patches"] > aurocs["noise"]["patches"] + 0.1, aurocs
    assert aurocs["cameras"]["text"] > aurocs["noise"]["text"] + 0.1, aurocs
