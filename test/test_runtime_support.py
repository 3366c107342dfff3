"""Shared helpers of the runtime tests: the model directory they serve, its fp32 engines copied, and
observations.

The model directory is, in order: ``$VLA_TEST_MODEL_DIR``; the shipped ``models/tiny``; or a
random-weight tiny policy exported once per test process with ``export_model_dir``. Real files and
real ONNX Runtime sessions throughout, no mocks.
"""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from vla_inference.lab.bench import bench_observations
from vla_inference.spec.config import VlaConfig
from vla_inference.spec.engine_spec import ENGINES
from vla_inference.spec.manifest import MANIFEST_NAME, Manifest, shipped_model_dir
from vla_inference.spec.observation import Observation

_LOCK = threading.Lock()
_EXPORTED: Optional[Path] = None


def runtime_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model directory under test (exported at most once per process)."""
    global _EXPORTED
    override = os.environ.get("VLA_TEST_MODEL_DIR")
    if override:
        return Path(override)
    shipped = shipped_model_dir()
    if (shipped / MANIFEST_NAME).is_file():
        return shipped
    with _LOCK:
        if _EXPORTED is None:
            export = pytest.importorskip(
                "vla_inference.model.export", reason="no models/tiny yet and no export_model_dir to build one"
            )
            import torch

            from vla_inference.model.policy import build_policy
            from vla_inference.spec.config import tiny

            torch.manual_seed(0)
            out = tmp_path_factory.mktemp("random_tiny_model")
            export.export_model_dir(build_policy(tiny()).eval(), tiny(), out)
            _EXPORTED = out
        return _EXPORTED


def copy_fp32_engines(manifest: Manifest, out: Path) -> Dict[str, str]:
    """Copy ``manifest``'s fp32 engine files into ``out``; returns {engine: file name} for a new manifest."""
    files = {}
    for name in ENGINES:
        source = manifest.engine("fp32", name).path
        shutil.copyfile(source, out / source.name)
        files[name] = source.name
    return files


def observations(cfg: VlaConfig, count: int, seed: int = 0) -> List[Observation]:
    """Seeded full observations: every camera and the LiDAR present."""
    return bench_observations(cfg, count, cfg.max_cameras, lidar=True, seed=seed)


def pipeline_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("vla-stage")]


def test_model_dir_is_servable(tmp_path_factory: pytest.TempPathFactory) -> None:
    from vla_inference.spec.manifest import load_manifest

    manifest = load_manifest(runtime_model_dir(tmp_path_factory))
    assert "fp32" in manifest.precisions
    assert manifest.weights_path is not None and manifest.weights_path.is_file()
