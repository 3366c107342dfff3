"""A model directory copied to tmp_path and damaged: every fault is a ModelDirError naming the file."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_runtime_support import runtime_model_dir

from vla_inference.runtime.backends import create_backend
from vla_inference.runtime.pipeline import InferencePipeline
from vla_inference.spec.engine_spec import ACTION_EXPERT, VISION
from vla_inference.spec.manifest import MANIFEST_NAME, ModelDirError, load_manifest, sha256_of


@pytest.fixture
def model_copy(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    source = runtime_model_dir(tmp_path_factory)
    copy = tmp_path / "model"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("trt_cache"))
    return copy


def engine_path(model_dir: Path, engine: str) -> Path:
    manifest = json.loads((model_dir / MANIFEST_NAME).read_text())
    return model_dir / manifest["engines"]["fp32"][engine]["file"]


def rewrite_manifest(model_dir: Path, edit) -> None:
    path = model_dir / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_flipped_byte_names_the_engine_file(model_copy: Path) -> None:
    path = engine_path(model_copy, VISION)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match=rf"{path.name}: SHA-256 differs"):
        load_manifest(model_copy)
    with pytest.raises(ModelDirError, match=rf"{path.name}: SHA-256 differs"):
        InferencePipeline.from_model_dir(model_copy)


def test_missing_and_truncated_files_are_named(model_copy: Path) -> None:
    expert = engine_path(model_copy, ACTION_EXPERT)
    expert.write_bytes(expert.read_bytes()[:1000])
    with pytest.raises(ModelDirError, match=rf"{expert.name}: size 1000 bytes"):
        load_manifest(model_copy)
    expert.unlink()
    with pytest.raises(ModelDirError, match=rf"{expert.name}: engine file listed in the manifest is missing"):
        load_manifest(model_copy)
    (model_copy / MANIFEST_NAME).unlink()
    with pytest.raises(ModelDirError, match=rf"{MANIFEST_NAME}: manifest not found"):
        load_manifest(model_copy)


def test_unreadable_engine_is_named_by_the_backend(model_copy: Path) -> None:
    """Checksums skipped: same-size garbage reaches ONNX Runtime, which refuses it; the error names the file."""
    path = engine_path(model_copy, ACTION_EXPERT)
    path.write_bytes(b"\xff" * path.stat().st_size)
    manifest = load_manifest(model_copy, verify_checksums=False)
    backend = create_backend("onnxruntime", manifest)
    with pytest.raises(ModelDirError, match=rf"{path.name}: ONNX Runtime cannot load it"):
        backend.load()
    assert not backend.is_loaded


def test_engine_swapped_for_another_graph_is_a_manifest_mismatch(model_copy: Path) -> None:
    """The vision graph under the expert's name, checksums updated: the I/O check names the file."""
    vision, expert = engine_path(model_copy, VISION), engine_path(model_copy, ACTION_EXPERT)
    shutil.copyfile(vision, expert)

    def update(data: dict) -> None:
        record = data["engines"]["fp32"][ACTION_EXPERT]
        record["bytes"] = expert.stat().st_size
        record["sha256"] = sha256_of(expert)

    rewrite_manifest(model_copy, update)
    backend = create_backend("onnxruntime", load_manifest(model_copy))
    with pytest.raises(ModelDirError, match=rf"{expert.name}: graph inputs .* do not match the manifest"):
        backend.load()


def test_manifest_contract_mismatch_names_the_manifest(model_copy: Path) -> None:
    def shrink_horizon(data: dict) -> None:
        data["engines"]["fp32"][ACTION_EXPERT]["inputs"][0]["shape"][1] = 3

    rewrite_manifest(model_copy, shrink_horizon)
    with pytest.raises(ModelDirError, match=rf"{MANIFEST_NAME}: fp32/action_expert inputs .* do not match"):
        load_manifest(model_copy)
    (model_copy / MANIFEST_NAME).write_text("{ not json")
    with pytest.raises(ModelDirError, match=rf"{MANIFEST_NAME}: unreadable manifest"):
        load_manifest(model_copy)


def test_shipped_model_dir_is_found_on_a_host_without_ros(tmp_path: Path) -> None:
    """A GPU host running only the runtime has no ament_index_python: the source tree's policy is
    served (this raised UnboundLocalError before)."""
    blocker = tmp_path / "ament_index_python"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('no ROS 2 on this host')\n")
    script = ("from vla_inference.spec.manifest import MANIFEST_NAME, shipped_model_dir\n"
              "path = shipped_model_dir()\n"
              "assert (path / MANIFEST_NAME).is_file(), path\n"
              "print(path)\n")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == repo / "models" / "tiny"


@pytest.mark.parametrize(
    "key, value",
    [("path_dims", [0, 99]), ("path_dims", []), ("action_scale", [1.0, -1.0]), ("confidence_scale", 0.0)],
)
def test_bad_confidence_keys_name_the_manifest_and_the_key(model_copy: Path, key: str, value: object) -> None:
    rewrite_manifest(model_copy, lambda data: data.update({key: value}))
    with pytest.raises(ModelDirError, match=rf"{MANIFEST_NAME}: {key} "):
        load_manifest(model_copy)
