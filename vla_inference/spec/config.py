"""Model configuration and the two presets (`tiny`, the shipped CPU policy, and `pi05`).

Plain dataclasses with no torch import, so the runtime and the nodes can read a model's shape
contract without PyTorch installed. ``architecture`` says which network the sizes describe:
``vla``, this project's policy (cameras, LiDAR, text and a state token), or ``pi05``, the
Physical Intelligence pi0.5 as LeRobot and openpi train it (cameras and a prompt that carries the
discretised state; no LiDAR). Both serve the same two-engine contract (``engine_spec``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP-style ViT shared over all cameras."""

    image_size: int = 224
    patch_size: int = 32
    width: int = 96
    depth: int = 2
    num_heads: int = 3
    mlp_dim: int = 384


@dataclass(frozen=True)
class LidarConfig:
    """Patch embedding of the range image plus its validity mask."""

    rows: int = 64
    cols: int = 1024
    patch_rows: int = 64
    patch_cols: int = 16
    max_range_m: float = 20.0
    # Features per azimuth column (over ``patch_rows`` rows), before a patch's columns are combined.
    column_width: int = 48


@dataclass(frozen=True)
class BackboneConfig:
    """Gemma-style prefix decoder (RMSNorm, RoPE, grouped-query attention, GeGLU)."""

    width: int = 192
    depth: int = 3
    num_heads: int = 4
    num_kv_heads: int = 1
    head_dim: int = 48
    mlp_dim: int = 384


@dataclass(frozen=True)
class ExpertConfig:
    """Narrower Gemma-style action expert; one layer per backbone layer, same head layout."""

    width: int = 128
    mlp_dim: int = 256


ARCHITECTURES = ("vla", "pi05")


@dataclass(frozen=True)
class VlaConfig:
    preset: str = "tiny"
    architecture: str = "vla"
    max_cameras: int = 3
    text_max_len: int = 48
    # Rows of the text embedding. The byte tokenizer uses ids < 258; pi05 keeps PaliGemma's
    # 257,152-row table so real pi0.5 checkpoints load with their embedding unchanged.
    text_vocab_size: int = 258
    state_dim: int = 8
    action_horizon: int = 16
    action_dim: int = 8
    vision: VisionConfig = field(default_factory=VisionConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)

    @property
    def tokens_per_camera(self) -> int:
        return (self.vision.image_size // self.vision.patch_size) ** 2

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture: expected one of {ARCHITECTURES}, received {self.architecture!r}")

    @property
    def uses_lidar(self) -> bool:
        """Whether the prefix has LiDAR tokens (pi0.5 has none: its engine ignores ``lidar_range``)."""
        return self.architecture == "vla"

    @property
    def lidar_tokens(self) -> int:
        if not self.uses_lidar:
            return 0
        return (self.lidar.rows // self.lidar.patch_rows) * (self.lidar.cols // self.lidar.patch_cols)

    @property
    def prefix_len(self) -> int:
        """Prefix tokens: vla [cameras..., LiDAR, text, one state token]; pi05 [cameras..., prompt]."""
        state_tokens = 1 if self.architecture == "vla" else 0
        return self.max_cameras * self.tokens_per_camera + self.lidar_tokens + self.text_max_len + state_tokens

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "VlaConfig":
        nested = {
            "vision": VisionConfig,
            "lidar": LidarConfig,
            "backbone": BackboneConfig,
            "expert": ExpertConfig,
        }
        kwargs = {k: (nested[k](**v) if k in nested else v) for k, v in data.items()}
        return cls(**kwargs)


def tiny() -> VlaConfig:
    """The shipped CPU policy: small enough to train here and to serve at 5 Hz on 2 cores.

    32-pixel image patches (49 tokens per camera) and full-height LiDAR column strips (64 tokens of
    5.6 deg azimuth) keep the prefix at 260 tokens, so training fits in minutes on 2 CPU cores and
    the shipped files (fp32 + INT8) stay under 30 MB.
    """
    return VlaConfig()


def pi05() -> VlaConfig:
    """pi0.5 sizes: SigLIP So400m/14, Gemma 2B prefix backbone, Gemma-300M-style action expert."""
    return VlaConfig(
        preset="pi05",
        max_cameras=3,
        text_max_len=48,
        text_vocab_size=257_152,
        state_dim=32,
        action_horizon=50,
        action_dim=32,
        vision=VisionConfig(image_size=224, patch_size=14, width=1152, depth=27, num_heads=16, mlp_dim=4304),
        lidar=LidarConfig(),
        backbone=BackboneConfig(width=2048, depth=18, num_heads=8, num_kv_heads=1, head_dim=256, mlp_dim=16384),
        expert=ExpertConfig(width=1024, mlp_dim=4096),
    )


def pi05_lerobot() -> VlaConfig:
    """The real pi0.5 as LeRobot and openpi ship it (``architecture="pi05"``): the ``pi05`` sizes with a
    200-token prompt and no LiDAR or state token (prefix 3 x 256 + 200 = 968 tokens), 50 x 32 actions.
    What a full-size checkpoint loads as."""
    return dataclasses.replace(pi05(), preset="pi05_lerobot", architecture="pi05", text_max_len=200)


PRESETS = {"tiny": tiny, "pi05": pi05, "pi05_lerobot": pi05_lerobot}


def get_preset(name: str) -> VlaConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}") from None
