"""The model directory's JSON manifest: what engines exist, their I/O contract and checksums.

A model directory holds ``manifest.json`` next to its engine files, for example::

    models/tiny/
      manifest.json
      policy.safetensors          (PyTorch weights; training/export only)
      vision.onnx, action_expert.onnx                 (precision "fp32")
      vision.int8.onnx, action_expert.int8.onnx       (precision "int8": static INT8 Q/DQ)

Loading checks every listed file against its size and SHA-256, and the recorded I/O against the
spec derived from the recorded config, so a stale or corrupt file is named before any backend
touches it.

Each engine record carries a version string (``engine_version``: preset, engine, precision and the
file's hash), which plan caches and logs quote, and, for a quantised precision, a ``quantization``
record: ``{"format": "qdq", "type": "int8" | "float8e4m3fn", ...}`` for explicit Q/DQ graphs that
ONNX Runtime and TensorRT both run. TensorRT builds INT8/FP8 only from such a record
(``Manifest.qdq_precision``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional

from vla_inference.spec.config import VlaConfig
from vla_inference.spec.engine_spec import ENGINES, EngineSpec, TensorSpec, engine_specs

MANIFEST_NAME = "manifest.json"
SHIPPED_MODEL = "tiny"
FORMAT_VERSION = 1
QDQ_FORMAT = "qdq"
QDQ_TYPES = {"int8": "int8", "fp8": "float8e4m3fn"}  # precision -> the Q/DQ nodes' quantized type


class ModelDirError(RuntimeError):
    """A model directory that cannot be served: missing file, corrupt file, or manifest mismatch."""


def shipped_model_dir() -> Path:
    """The policy shipped with the package: installed share/ first, then the source tree."""
    source_tree = Path(__file__).resolve().parents[2] / "models" / SHIPPED_MODEL
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:  # no ROS 2 here (a GPU host running only the runtime)
        return source_tree
    try:
        installed = Path(get_package_share_directory("vla_inference")) / "models" / SHIPPED_MODEL
    except PackageNotFoundError:
        return source_tree
    return installed if (installed / MANIFEST_NAME).is_file() else source_tree


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_entry(model_dir: Path, filename: str) -> Dict[str, object]:
    path = model_dir / filename
    if not path.is_file():
        raise ModelDirError(f"{path}: file not found")
    return {"file": filename, "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def engine_version(preset: str, engine: str, precision: str, sha256: str) -> str:
    """The version string an engine file carries: what it is, and which bytes."""
    return f"{preset}/{engine}/{precision}@{sha256[:12]}"


def write_manifest(
    model_dir: Path,
    cfg: VlaConfig,
    engines: Mapping[str, Mapping[str, str]],
    weights_file: Optional[str] = None,
    extra: Optional[Mapping[str, object]] = None,
    quantization: Optional[Mapping[str, Mapping[str, object]]] = None,
) -> Path:
    """Record ``engines`` ({precision: {engine name: file name}}) with checksums, I/O specs and
    version strings; ``quantization`` ({precision: record}) marks how a precision's files were made."""
    model_dir = Path(model_dir)
    specs = engine_specs(cfg)
    data: Dict[str, object] = {
        "format_version": FORMAT_VERSION,
        "preset": cfg.preset,
        "config": cfg.to_dict(),
        "engines": {},
    }
    for precision, files in engines.items():
        if set(files) != set(ENGINES):
            raise ValueError(f"precision {precision!r}: expected engines {list(ENGINES)}, got {sorted(files)}")
        entry = {}
        for name, filename in files.items():
            record = _file_entry(model_dir, filename)
            record["version"] = engine_version(cfg.preset, name, precision, str(record["sha256"]))
            if quantization and precision in quantization:
                record["quantization"] = dict(quantization[precision])
            record["inputs"] = [t.to_dict() for t in specs[name].inputs]
            record["outputs"] = [t.to_dict() for t in specs[name].outputs]
            entry[name] = record
        data["engines"][precision] = entry  # type: ignore[index]
    if weights_file is not None:
        data["weights"] = _file_entry(model_dir, weights_file)
    if extra:
        data.update(extra)
    path = model_dir / MANIFEST_NAME
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


@dataclass(frozen=True)
class EngineFile:
    path: Path
    spec: EngineSpec
    sha256: str
    version: str = ""
    quantization: Optional[Mapping[str, object]] = None

    def is_qdq(self, precision: str) -> bool:
        """An explicit Q/DQ graph of ``precision``'s quantized type (what TensorRT builds INT8/FP8 from)."""
        q = self.quantization or {}
        return q.get("format") == QDQ_FORMAT and q.get("type") == QDQ_TYPES.get(precision)


@dataclass(frozen=True)
class Manifest:
    model_dir: Path
    config: VlaConfig
    engines: Dict[str, Dict[str, EngineFile]]
    raw: Dict[str, object]

    @property
    def precisions(self) -> tuple:
        return tuple(self.engines)

    def engine(self, precision: str, name: str) -> EngineFile:
        if precision not in self.engines:
            raise ModelDirError(
                f"{self.model_dir / MANIFEST_NAME}: no precision {precision!r}; available {list(self.engines)}"
            )
        return self.engines[precision][name]

    def qdq_precision(self, precision: str) -> bool:
        """Whether the manifest lists explicit Q/DQ engines (both of them) for ``precision``."""
        files = self.engines.get(precision, {})
        return bool(files) and all(f.is_qdq(precision) for f in files.values())

    @property
    def weights_path(self) -> Optional[Path]:
        weights = self.raw.get("weights")
        return self.model_dir / weights["file"] if isinstance(weights, dict) else None  # type: ignore[index]


def load_manifest(model_dir: Path, verify_checksums: bool = True) -> Manifest:
    """Read and verify a model directory; raises ``ModelDirError`` naming the file and the mismatch."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_NAME
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: model directory not found")
    if not path.is_file():
        raise ModelDirError(f"{path}: manifest not found")
    try:
        raw = json.loads(path.read_text())
        version = raw["format_version"]
        cfg = VlaConfig.from_dict(raw["config"])
        recorded_engines = raw["engines"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelDirError(f"{path}: unreadable manifest ({exc})") from exc
    if version != FORMAT_VERSION:
        raise ModelDirError(f"{path}: format_version {version}, this runtime reads {FORMAT_VERSION}")
    specs = engine_specs(cfg)
    engines: Dict[str, Dict[str, EngineFile]] = {}
    for precision, entry in recorded_engines.items():
        engines[precision] = {}
        for name in ENGINES:
            if name not in entry:
                raise ModelDirError(f"{path}: precision {precision!r} lacks engine {name!r}")
            record = entry[name]
            file_path = model_dir / record["file"]
            _check_io(path, precision, name, record, specs[name])
            if not file_path.is_file():
                raise ModelDirError(f"{file_path}: engine file listed in the manifest is missing")
            size = file_path.stat().st_size
            if size != record["bytes"]:
                raise ModelDirError(f"{file_path}: size {size} bytes, manifest says {record['bytes']}")
            if verify_checksums and sha256_of(file_path) != record["sha256"]:
                raise ModelDirError(f"{file_path}: SHA-256 differs from the manifest (corrupt or replaced file)")
            recorded_version = record.get("version") or engine_version(cfg.preset, name, precision, record["sha256"])
            engines[precision][name] = EngineFile(file_path, specs[name], record["sha256"], recorded_version,
                                                  record.get("quantization"))
    if not engines:
        raise ModelDirError(f"{path}: lists no engines")
    _check_confidence_keys(path, raw, cfg)
    return Manifest(model_dir, cfg, engines, raw)


def _check_confidence_keys(path: Path, raw: Mapping[str, object], cfg: VlaConfig) -> None:
    """The optional keys ``runtime.confidence`` reads must fit the action dimension."""
    dims = raw.get("path_dims")
    if dims is not None and (
        not isinstance(dims, list) or not dims
        or not all(isinstance(d, int) and 0 <= d < cfg.action_dim for d in dims)
    ):
        raise ModelDirError(f"{path}: path_dims {dims!r}: expected action dimensions in [0, {cfg.action_dim})")
    scale = raw.get("action_scale")
    if scale is not None and (
        not isinstance(scale, list) or len(scale) != cfg.action_dim
        or not all(isinstance(v, (int, float)) and v > 0 for v in scale)
    ):
        raise ModelDirError(f"{path}: action_scale {scale!r}: expected {cfg.action_dim} positive numbers")
    confidence_scale = raw.get("confidence_scale")
    if confidence_scale is not None and not (isinstance(confidence_scale, (int, float)) and confidence_scale > 0):
        raise ModelDirError(f"{path}: confidence_scale {confidence_scale!r}: expected a positive number")


def _check_io(path: Path, precision: str, name: str, record: Mapping[str, object], spec: EngineSpec) -> None:
    for kind, expected in (("inputs", spec.inputs), ("outputs", spec.outputs)):
        recorded = tuple(TensorSpec.from_dict(t) for t in record.get(kind, []))  # type: ignore[union-attr]
        if recorded != expected:
            raise ModelDirError(
                f"{path}: {precision}/{name} {kind} {[t.to_dict() for t in recorded]} do not match "
                f"the config's contract {[t.to_dict() for t in expected]}"
            )
