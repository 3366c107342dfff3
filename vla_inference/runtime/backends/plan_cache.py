"""Plan cache bookkeeping, in plain Python so it is tested on machines without TensorRT.

A serialized engine (a TensorRT ``.plan``) is only valid for the runtime version, GPU model and
compute capability that built it, for the exact ONNX bytes it came from, and for the precision,
optimization-profile shapes and workspace it was built with. Every plan is stored under a name
derived from all of that (``PlanKey.digest``), so plans for other K or view rows sit side by side
instead of replacing each other; ``plans.json`` records each plan's key, its own SHA-256 and what
the build reported (time, layers per precision, memory). ``PlanCache.lookup`` returns a plan only
when its record matches and its bytes are intact, and otherwise says why (which field differs from
the nearest recorded plan), so start-up never rebuilds a valid plan and never loads a stale one.

The cache directory must be writable: ``default_cache_dir`` is ``$ROS_HOME/vla_inference/engines``
when ROS_HOME is set, else ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/vla_inference/engines``; never the
install tree, which may be read-only. ``PlanCache.locked`` serialises builders across processes.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Tuple

from vla_inference.spec.manifest import sha256_of

LOG = logging.getLogger(__name__)

PLAN_MANIFEST = "plans.json"
TIMING_CACHE = "timing.cache"
LOCK_FILE = ".lock"
FORMAT_VERSION = 2

Shape = Tuple[int, ...]
# One optimization profile: (input name, shape) pairs; min = opt = max (the serving shapes are fixed).
Profile = Tuple[Tuple[str, Shape], ...]


def default_cache_dir() -> Path:
    """A writable per-user cache: under ``$ROS_HOME`` for a ROS user, else the XDG cache."""
    ros_home = os.environ.get("ROS_HOME")
    if ros_home:
        return Path(ros_home) / "vla_inference" / "engines"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vla_inference" / "engines"


@dataclass(frozen=True)
class PlanKey:
    """Everything a plan's validity depends on."""

    engine: str
    precision: str
    source_sha256: str  # SHA-256 of the ONNX file (or a tag for networks built in code)
    engine_version: str  # the manifest's version string of that engine
    runtime: str  # "tensorrt", or "onnxruntime" for the CPU builder
    runtime_version: str
    device_name: str
    compute_capability: str  # "major.minor" for a GPU
    profiles: Tuple[Profile, ...]
    workspace_bytes: int
    recipe: str  # the builder's own version: a change in how plans are built invalidates them

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def entry_name(self) -> str:
        """File stem: readable engine and precision, then the key digest (one file per key)."""
        return f"{self.engine}.{self.precision}.{self.digest[:16]}"

    def to_dict(self) -> Dict[str, object]:
        data = asdict(self)
        data["profiles"] = [[[name, list(shape)] for name, shape in profile] for profile in self.profiles]
        return data


@dataclass(frozen=True)
class CachedPlan:
    """A plan file that matches its key, and what its build reported (``plans.json``)."""

    key: PlanKey
    path: Path
    record: Mapping[str, object]
    built_now: bool


class PlanCache:
    """The plan files, ``plans.json`` and the builder timing cache of one cache directory."""

    def __init__(self, cache_dir: Optional[Path] = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

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
        entries = self._read_entries()
        record = entries.get(key.entry_name)
        if record is None:
            return None, self._why_missing(key, entries)
        if record.get("key") != key.to_dict():
            return None, f"{key.entry_name}: recorded key differs (digest collision or edited {PLAN_MANIFEST})"
        path = self.plan_path(key)
        if not path.is_file():
            return None, f"{path} is missing"
        if sha256_of(path) != record.get("plan_sha256"):
            return None, f"{path} does not match its recorded SHA-256 (corrupt or replaced)"
        return path, "valid"

    @staticmethod
    def _why_missing(key: PlanKey, entries: Mapping[str, Mapping[str, object]]) -> str:
        """Name the fields in which the closest recorded plan of this engine and precision differs."""
        wanted = key.to_dict()
        best: Optional[Dict[str, Tuple[object, object]]] = None
        for record in entries.values():
            recorded = record.get("key")
            if not isinstance(recorded, dict) or (recorded.get("engine"), recorded.get("precision")) != (
                    key.engine, key.precision):
                continue
            changed = {name: (recorded.get(name), value) for name, value in wanted.items() if recorded.get(name) != value}
            if best is None or len(changed) < len(best):
                best = changed
        if best is None:
            return f"no plan recorded for {key.engine}.{key.precision}"
        return "; ".join(f"{name} changed: plan has {old!r}, now {new!r}" for name, (old, new) in best.items())

    def record(self, key: PlanKey) -> Mapping[str, object]:
        return self._read_entries().get(key.entry_name, {})

    def store(self, key: PlanKey, plan: bytes, report: Optional[Mapping[str, object]] = None) -> Path:
        """Write the plan and its record atomically (a crash never leaves a half-written plan valid)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.plan_path(key)
        _atomic_write(path, plan)
        entries = self._read_entries()
        entries[key.entry_name] = {"key": key.to_dict(), "plan": path.name, "plan_sha256": sha256_of(path),
                                   "plan_bytes": len(plan), **(report or {})}
        manifest = {"format_version": FORMAT_VERSION, "plans": entries}
        _atomic_write(self.manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
        return path

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cache's lock file: a second process waits, then finds the plan the first built.
        A read-only cache (plans built into an image) is read without the lock: nothing can be built there."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.cache_dir / LOCK_FILE, "a+b")
        except OSError as exc:
            LOG.debug("%s: no lock (%s); reading it as a read-only cache", self.cache_dir, exc)
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

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
