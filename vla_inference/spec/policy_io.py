"""What a policy reads and answers in robot units, and how observations become engine feeds.

Two kinds of model directory serve through the same engines (``engine_spec``):

* ``vla``, this project's policies: the command is byte-tokenised, the state enters the prefix as
  its own token, and the expert's actions are already in robot units (``observation.vision_feeds``).
* ``pi05``, a pi0.5 policy trained with LeRobot or openpi: the state is normalised with the
  checkpoint's statistics, padded to the model's state width, discretised into 256 bins and written
  into the prompt (``Task: ..., State: ...;\\nAction: ``), which the checkpoint's own tokenizer turns
  into ids; the expert's actions are normalised and padded to the model's action width, so the
  first ``action_dim`` columns are un-normalised into robot units.

``PolicyIO`` says which, with the camera order and the robot's state and action sizes; it is
recorded in the manifest (``policy_io``) or read from a LeRobot checkpoint's files
(``spec.lerobot_checkpoint``). ``FeedEncoder`` applies it on the serving path. NumPy only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from vla_inference.spec.config import VlaConfig
from vla_inference.spec.observation import Observation, vision_feeds
from vla_inference.spec.tokenizer import TextTokenizer, load_tokenizer_file, pad_ids

KINDS = ("vla", "pi05")
NORM_MODES = ("IDENTITY", "MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10")
STATE_BINS = 256
DEFAULT_NORM_EPS = 1e-8  # LeRobot's normaliser default


@dataclass(frozen=True)
class Normalization:
    """One feature's normalisation as LeRobot's normaliser computes it (float32, no clipping; the eps
    replaces a zero denominator and, for MEAN_STD, is added to the standard deviation)."""

    mode: str
    stats: Mapping[str, np.ndarray] = field(default_factory=dict)
    eps: float = DEFAULT_NORM_EPS

    def __post_init__(self) -> None:
        if self.mode not in NORM_MODES:
            raise ValueError(f"normalization mode: expected one of {NORM_MODES}, received {self.mode!r}")
        needed = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"),
                  "QUANTILE10": ("q10", "q90")}.get(self.mode, ())
        missing = [k for k in needed if k not in self.stats]
        if missing:
            raise ValueError(f"{self.mode} normalization needs statistics {missing}")

    def _low_range(self) -> Tuple[np.ndarray, np.ndarray]:
        low, high = {"MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"), "QUANTILE10": ("q10", "q90")}[self.mode]
        lo = np.asarray(self.stats[low], np.float32)
        span = np.asarray(self.stats[high], np.float32) - lo
        return lo, np.where(span == 0, np.float32(self.eps), span).astype(np.float32)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.mode == "IDENTITY":
            return x
        if self.mode == "MEAN_STD":
            return (x - self.stats["mean"]) / (np.asarray(self.stats["std"], np.float32) + np.float32(self.eps))
        lo, span = self._low_range()
        return 2.0 * (x - lo) / span - 1.0

    def inverse(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, np.float32)
        if self.mode == "IDENTITY":
            return y
        if self.mode == "MEAN_STD":
            return y * np.asarray(self.stats["std"], np.float32) + np.asarray(self.stats["mean"], np.float32)
        lo, span = self._low_range()
        if self.mode == "MIN_MAX":  # LeRobot's operation order, so results match to the bit
            return (y + 1.0) / 2.0 * span + lo
        return (y + 1.0) * span / 2.0 + lo

    def to_dict(self) -> Dict[str, object]:
        return {"mode": self.mode, "eps": self.eps,
                "stats": {k: np.asarray(v, np.float32).tolist() for k, v in self.stats.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "Normalization":
        stats = {k: np.asarray(v, np.float32) for k, v in dict(data.get("stats", {})).items()}  # type: ignore[arg-type]
        return cls(str(data["mode"]), stats, float(data.get("eps", DEFAULT_NORM_EPS)))  # type: ignore[arg-type]


@dataclass(frozen=True)
class PolicyIO:
    """The robot side of a model: camera order, state and action sizes, and (pi05) the statistics and
    tokenizer the prompt and the un-normalisation need."""

    kind: str
    camera_keys: Tuple[str, ...]
    state_dim: int
    action_dim: int
    state_norm: Optional[Normalization] = None
    action_norm: Optional[Normalization] = None
    tokenizer_file: Optional[str] = None  # relative to the model directory, or absolute
    # pi05: state values written into the prompt; the normalised state is zero-padded to this width
    # first (LeRobot 0.4), or written as is when None (LeRobot 0.5, openpi).
    prompt_state_width: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"policy_io kind: expected one of {KINDS}, received {self.kind!r}")
        if self.kind == "pi05" and (self.state_norm is None or self.action_norm is None):
            raise ValueError("policy_io: a pi05 policy needs state and action normalisation")

    @property
    def uses_lidar(self) -> bool:
        return self.kind == "vla"

    def to_dict(self) -> Dict[str, object]:
        data: Dict[str, object] = {"kind": self.kind, "camera_keys": list(self.camera_keys),
                                   "state_dim": self.state_dim, "action_dim": self.action_dim}
        if self.state_norm is not None:
            data["state_norm"] = self.state_norm.to_dict()
        if self.action_norm is not None:
            data["action_norm"] = self.action_norm.to_dict()
        if self.tokenizer_file is not None:
            data["tokenizer_file"] = self.tokenizer_file
        if self.prompt_state_width is not None:
            data["prompt_state_width"] = self.prompt_state_width
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "PolicyIO":
        def norm(key: str) -> Optional[Normalization]:
            value = data.get(key)
            return Normalization.from_dict(value) if isinstance(value, Mapping) else None

        return cls(str(data["kind"]), tuple(data.get("camera_keys", ())), int(data["state_dim"]),  # type: ignore[arg-type]
                   int(data["action_dim"]), norm("state_norm"), norm("action_norm"),  # type: ignore[arg-type]
                   data.get("tokenizer_file"), data.get("prompt_state_width"))  # type: ignore[arg-type]


def default_policy_io(cfg: VlaConfig) -> PolicyIO:
    """This project's own policies: unnamed cameras, the engine's state and action sizes."""
    return PolicyIO("vla", (), cfg.state_dim, cfg.action_dim)


def discretize_state(normalized: np.ndarray, bins: int = STATE_BINS) -> np.ndarray:
    """Bin index of each value of a state in [-1, 1] (values below -1 give -1, above 1 give bins - 1),
    as LeRobot's and openpi's pi0.5 prompt builders compute it."""
    edges = np.linspace(-1.0, 1.0, bins + 1)[:-1]
    return np.digitize(np.asarray(normalized, np.float32), bins=edges) - 1


def pi05_prompt(task: str, normalized_state: np.ndarray, state_width: Optional[int] = None) -> str:
    """The pi0.5 prompt: the task cleaned as LeRobot does (strip, ``_`` and newlines to spaces) and the
    normalised state as bin indices, zero-padded to ``state_width`` first when given."""
    width = len(normalized_state) if state_width is None else state_width
    state = np.zeros(width, np.float32)
    state[: len(normalized_state)] = normalized_state
    cleaned = task.strip().replace("_", " ").replace("\n", " ")
    bins = " ".join(str(int(b)) for b in discretize_state(state))
    return f"Task: {cleaned}, State: {bins};\nAction: "


class FeedEncoder:
    """Observations -> the vision engine's feeds, and the expert's samples -> robot actions."""

    def __init__(self, cfg: VlaConfig, io: PolicyIO, model_dir: Optional[Path] = None,
                 tokenizer: Optional[TextTokenizer] = None) -> None:
        self.cfg = cfg
        self.io = io
        self.tokenizer = tokenizer
        if io.kind == "pi05" and tokenizer is None:
            if io.tokenizer_file is None:
                raise FileNotFoundError("the pi0.5 policy names no tokenizer file: give one (tokenizer.json or "
                                        "tokenizer.model) with the tokenizer_path parameter")
            path = Path(io.tokenizer_file)
            self.tokenizer = load_tokenizer_file(path if path.is_absolute() or model_dir is None else model_dir / path)

    @property
    def state_dim(self) -> int:
        return self.io.state_dim

    def feeds(self, observations: Sequence[Observation]) -> Dict[str, np.ndarray]:
        """The vision engine's inputs; ``ValueError`` names a bad observation field."""
        if self.io.kind == "vla":
            return vision_feeds(observations, self.cfg)
        assert self.io.state_norm is not None
        return vision_feeds(observations, self.cfg, self.io.state_dim, self.prompt_tokens, self.io.state_norm.forward,
                            with_lidar=False)

    def prompt_tokens(self, text: str, state: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """pi0.5: (ids int64 [text_max_len], mask bool) of the prompt for ``text`` and the raw ``state``."""
        assert self.io.state_norm is not None and self.tokenizer is not None
        normalized = self.io.state_norm.forward(state)
        prompt = pi05_prompt(text, normalized, self.io.prompt_state_width)
        return pad_ids(self.tokenizer.ids(prompt), self.cfg.text_max_len, self.tokenizer.pad_id)

    def actions(self, samples: np.ndarray) -> np.ndarray:
        """Model-space samples [..., H, D] -> robot actions [..., H, action_dim]."""
        if self.io.kind == "vla":
            return samples
        assert self.io.action_norm is not None
        return self.io.action_norm.inverse(samples[..., : self.io.action_dim])
