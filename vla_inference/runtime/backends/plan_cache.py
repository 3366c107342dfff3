"""TensorRT plan cache bookkeeping, in plain Python so it is tested on machines without TensorRT.

A serialized TensorRT engine (``.plan``) is only valid for the TensorRT version, GPU model and
compute capability that built it, for the exact ONNX bytes it came from, and for the precision
and batch profiles it was built with. ``plans.json`` in the cache directory records all of that
per plan together with the plan's own SHA-256; ``PlanCache.lookup`` returns a plan only when every
field matches, and otherwise says which field went stale, so start-up never rebuilds a valid plan
and never loads a stale one.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from vla_inference.spec.manifest import sha256_of

LOG = logging.getLogger(__name__)

PLAN_MANIFEST = "plans.json"
TIMING_CACHE = "timing.cache"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PlanKey:
    """Everything a plan's validity depends on."""

    engine: str
    precision: str
    source_sha256: str  # SHA-256 of the ONNX file (or a tag for networks built in code)
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor"
    batch_sizes: Tuple[int, ...]  # one optimization profile per batch size

    @property
    def entry_name(self) -> str:
        return f"{self.engine}.{self.precision}"

    def to_dict(self) -> Dict[str, object]:
        data = asdict(self)
        data["batch_sizes"] = list(self.batch_sizes)
        return data


class PlanCache:
    """The ``.plan`` files, ``plans.json`` and the builder timing cache of one cache directory."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)

    @property
    def manifest_path(self) -> Path:
        return self.cache_dir / PLAN_MANIFEST

    @property
    def timing_cache_path(self) -> Path:
        return self.cache_dir / TIMING_CACHE

    def plan_path(self, key: PlanKey) -> Path:
        return self.cache_dir / f"{key.entry_name}.plan"

    def _read_entries(self) -> Dict[str, Dict[str, object]]:
        if not self.manifest_path.is_file():
            return {}
        try:
            data = json.loads(self.manifest_path.read_text())
        except ValueError:
            LOG.warning("%s: unreadable, every plan will be rebuilt", self.manifest_path)
            return {}
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            return {}
        plans = data.get("plans", {})
        return plans if isinstance(plans, dict) else {}

    def lookup(self, key: PlanKey) -> Tuple[Optional[Path], str]:
        """Return (plan path, "valid") when the recorded plan matches ``key``, else (None, why not)."""
        record = self._read_entries().get(key.entry_name)
        if record is None:
            return None, f"no plan recorded for {key.entry_name}"
        for name, expected in key.to_dict().items():
            if record.get(name) != expected:
                return None, f"{name} changed: plan has {record.get(name)!r}, now {expected!r}"
        path = self.plan_path(key)
        if not path.is_file():
            return None, f"{path} is missing"
        if sha256_of(path) != record.get("plan_sha256"):
            return None, f"{path} does not match its recorded SHA-256 (corrupt or replaced)"
        return path, "valid"

    def store(self, key: PlanKey, plan: bytes) -> Path:
        """Write the plan and its record atomically (a crash never leaves a half-written plan valid)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.plan_path(key)
        _atomic_write(path, plan)
        entries = self._read_entries()
        record = key.to_dict()
        record["plan"] = path.name
        record["plan_sha256"] = sha256_of(path)
        entries[key.entry_name] = record
        manifest = {"format_version": FORMAT_VERSION, "plans": entries}
        _atomic_write(self.manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
        return path

    def read_timing_cache(self) -> bytes:
        """Serialized timing cache, or b"" for a fresh one."""
        path = self.timing_cache_path
        return path.read_bytes() if path.is_file() else b""

    def write_timing_cache(self, data: bytes) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.timing_cache_path, data)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
