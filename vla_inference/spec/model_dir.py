"""One entry point for every model directory a node can be pointed at.

``open_model_dir`` reads either this project's format (``manifest.json`` next to ONNX engines and
weights, ``spec.manifest``) or a LeRobot pi0.5 checkpoint (``config.json`` + ``model.safetensors`` +
processor files, ``spec.lerobot_checkpoint``), and returns the ``Manifest`` every backend and the
pipeline read; ``policy_io`` then says what a request must carry for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from vla_inference.spec.lerobot_checkpoint import CONFIG_FILE, is_lerobot_pi05, read_checkpoint
from vla_inference.spec.manifest import MANIFEST_NAME, Manifest, ModelDirError, load_manifest
from vla_inference.spec.policy_io import PolicyIO, default_policy_io


def open_model_dir(model_dir: Union[str, Path], verify_checksums: bool = True, vision_num_heads: Optional[int] = None,
                   tokenizer_path: Optional[Union[str, Path]] = None) -> Manifest:
    """The manifest of ``model_dir``; ``ModelDirError`` names the directory and what it lacks.
    ``vision_num_heads`` and ``tokenizer_path`` only matter for a LeRobot checkpoint."""
    model_dir = Path(model_dir)
    if (model_dir / MANIFEST_NAME).is_file():
        return load_manifest(model_dir, verify_checksums)
    if is_lerobot_pi05(model_dir):
        return read_checkpoint(model_dir, vision_num_heads, Path(tokenizer_path) if tokenizer_path else None).manifest()
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: model directory not found")
    raise ModelDirError(f"{model_dir}: neither {MANIFEST_NAME} (this project's format) nor a LeRobot pi0.5 "
                        f"checkpoint ({CONFIG_FILE} with \"type\": \"pi05\" and model.safetensors)")


def policy_io(manifest: Manifest) -> PolicyIO:
    """What the model reads and answers in robot units (``policy_io`` key, else this project's own)."""
    recorded = manifest.raw.get("policy_io")
    if isinstance(recorded, dict):
        try:
            return PolicyIO.from_dict(recorded)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelDirError(f"{manifest.model_dir}: unreadable policy_io ({exc})") from exc
    return default_policy_io(manifest.config)
