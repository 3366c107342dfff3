"""pi0.5 (Physical Intelligence) in PyTorch, served through this project's two engines.

Stage 1, ``Pi05VisionEngine`` (the ``vision`` engine): each camera through SigLIP So400m/14 (learned
positions, pre-LayerNorm blocks, tanh-GELU MLPs, a final LayerNorm) and a linear projector to the
Gemma width; the prompt's token embeddings (the vocabulary table, scaled by sqrt(width)); Gemma-2B
over [image tokens of every camera, prompt tokens] with bidirectional attention among the valid
tokens (pi0.5's prefix-LM: the prefix never sees the actions) and RoPE positions that count valid
tokens only. It returns every layer's rotated keys and values and the prefix mask; ``lidar_range``,
``lidar_mask`` and ``state`` are part of the engine contract but pi0.5 reads none of them (its state
is in the prompt).

Stage 2, ``Pi05ActionExpert`` (the ``action_expert`` engine): the noisy chunk through
``action_in_proj``; Gemma-300M whose RMSNorms are adaptive: a dense layer of the flow-time
conditioning gives (scale, shift, gate), the norm returns ``y * (1 + scale) + shift`` and the
residual adds ``gate * f(y)``; the conditioning is ``silu(time_mlp_out(silu(time_mlp_in(e(t)))))``
with ``e`` the sine-cosine embedding of t (periods 4e-3 to 4, computed in float64). The action tokens
attend to the valid prefix keys and to each other; their positions continue after the valid prefix.
``action_out_proj`` gives the velocity of the flow from noise (t = 1) to actions (t = 0).

The module names inside each block follow the checkpoints' (``self_attn.q_proj``, ``mlp.fc1``, ...)
so the LeRobot key tables (``spec.lerobot_checkpoint.KEY_LAYOUTS``) map prefixes only.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from vla_inference.model.layers import GeGLU, RMSNorm, apply_rope
from vla_inference.model.sampling import sample_chunk
from vla_inference.spec.config import VlaConfig
from vla_inference.spec.engine_spec import EngineSpec, engine_specs
from vla_inference.spec.lerobot_checkpoint import LeRobotCheckpoint, map_key

RMS_EPS = 1e-6
LAYER_NORM_EPS = 1e-6
ROPE_BASE = 10_000.0
MIN_PERIOD, MAX_PERIOD = 4e-3, 4.0


class SiglipAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = (p(x).view(batch, tokens, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width))


class SiglipMLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipLayer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.self_attn = SiglipAttention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.mlp = SiglipMLP(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEmbeddings(nn.Module):
    def __init__(self, width: int, patch: int, tokens: int) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        self.position_embedding = nn.Embedding(tokens, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(images).flatten(2).transpose(1, 2)
        return patches + self.position_embedding.weight[None]


class SiglipEncoder(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SiglipLayer(width, heads, hidden) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class Siglip(nn.Module):
    """SigLIP vision tower: [N, 3, S, S] in [-1, 1] -> [N, (S / patch)^2, width]."""

    def __init__(self, cfg: VlaConfig) -> None:
        super().__init__()
        v = cfg.vision
        self.embeddings = SiglipEmbeddings(v.width, v.patch_size, cfg.tokens_per_camera)
        self.encoder = SiglipEncoder(v.width, v.depth, v.num_heads, v.mlp_dim)
        self.post_layernorm = nn.LayerNorm(v.width, eps=LAYER_NORM_EPS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.post_layernorm(self.encoder(self.embeddings(images)))


class AdaptiveRMSNorm(nn.Module):
    """pi0.5's adaptive RMSNorm: ``dense(cond)`` gives (scale, shift, gate); returns
    ``(x / rms(x) * (1 + scale) + shift, gate)`` for a gated residual."""

    def __init__(self, width: int, cond_width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(cond_width, 3 * width)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + RMS_EPS)
        scale, shift, gate = self.dense(cond)[:, None, :].chunk(3, dim=-1)
        return (normed * (1.0 + scale.float()) + shift.float()).to(x.dtype), gate.to(x.dtype)


class GemmaSelfAttention(nn.Module):
    """The projections of one Gemma attention layer (the attention itself is computed by the caller,
    over the prefix alone or over prefix and actions)."""

    def __init__(self, width: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(width, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, width, bias=False)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries [B, heads, T, d], rotated keys and values [B, kv_heads, T, d]."""
        batch, tokens, _ = x.shape
        q = self.q_proj(x).view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """Attention of ``q`` over keys where ``key_mask`` [B, S] is True, then ``o_proj``."""
        groups = self.heads // self.kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        batch, _, tokens, _ = q.shape
        return self.o_proj(out.transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim))


class GemmaLayer(nn.Module):
    def __init__(self, width: int, hidden: int, heads: int, kv_heads: int, head_dim: int,
                 cond_width: Optional[int] = None) -> None:
        super().__init__()
        if cond_width is None:
            self.input_layernorm: nn.Module = RMSNorm(width, RMS_EPS)
            self.post_attention_layernorm: nn.Module = RMSNorm(width, RMS_EPS)
        else:
            self.input_layernorm = AdaptiveRMSNorm(width, cond_width)
            self.post_attention_layernorm = AdaptiveRMSNorm(width, cond_width)
        self.self_attn = GemmaSelfAttention(width, heads, kv_heads, head_dim)
        self.mlp = GeGLU(width, hidden)


class GemmaStack(nn.Module):
    """The layers (and, for the expert, the final adaptive norm) of one Gemma model."""

    def __init__(self, width: int, hidden: int, depth: int, heads: int, kv_heads: int, head_dim: int,
                 cond_width: Optional[int] = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(GemmaLayer(width, hidden, heads, kv_heads, head_dim, cond_width)
                                    for _ in range(depth))
        if cond_width is not None:
            self.norm = AdaptiveRMSNorm(width, cond_width)


def rope_tables(positions: torch.Tensor, head_dim: int, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, 1, T, head_dim] of Gemma's rotary embedding (both halves share the frequencies)."""
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float()
                                    / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    angles = torch.cat([freqs, freqs], dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def flow_time_embedding(time: torch.Tensor, width: int) -> torch.Tensor:
    """Sine-cosine embedding of the flow time [B] -> [B, width] (sines first), in float64 as LeRobot
    computes it, then cast to float32."""
    fraction = torch.linspace(0.0, 1.0, width // 2, dtype=torch.float64, device=time.device)
    period = MIN_PERIOD * (MAX_PERIOD / MIN_PERIOD) ** fraction
    angles = (1.0 / period * 2 * math.pi)[None, :] * time.to(torch.float64)[:, None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).to(torch.float32)


class Pi05VisionEngine(nn.Module):
    """Stage 1: cameras and prompt -> per-layer prefix keys/values + prefix mask (the ``vision`` engine)."""

    def __init__(self, cfg: VlaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        b = cfg.backbone
        self.siglip = Siglip(cfg)
        self.projector = nn.Linear(cfg.vision.width, b.width)
        self.embed_tokens = nn.Embedding(cfg.text_vocab_size, b.width)
        self.language_model = GemmaStack(b.width, b.mlp_dim, b.depth, b.num_heads, b.num_kv_heads, b.head_dim)

    def forward(self, images: torch.Tensor, camera_mask: torch.Tensor, lidar_range: torch.Tensor,
                lidar_mask: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        batch, cameras = images.shape[:2]
        size = cfg.vision.image_size
        dtype = self.projector.weight.dtype
        vision = self.siglip(images.reshape(batch * cameras, 3, size, size).to(dtype))
        image_tokens = self.projector(vision).reshape(batch, cameras * cfg.tokens_per_camera, -1)
        text = self.embed_tokens(text_tokens) * math.sqrt(cfg.backbone.width)
        x = torch.cat([image_tokens, text.to(dtype)], dim=1)
        mask = torch.cat([camera_mask.repeat_interleave(cfg.tokens_per_camera, dim=1), text_mask], dim=1)
        cos, sin = rope_tables(torch.cumsum(mask.long(), dim=1) - 1, cfg.backbone.head_dim, dtype)
        keys_values = []
        layers = self.language_model.layers
        for index, layer in enumerate(layers):
            q, k, v = layer.self_attn.qkv(layer.input_layernorm(x), cos, sin)
            keys_values.append(torch.stack([k, v], dim=1))
            if index == len(layers) - 1:
                break  # the expert reads only the last layer's keys and values
            x = x + layer.self_attn.attend(q, k, v, mask)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return torch.stack(keys_values, dim=1).float(), mask


class Pi05ActionExpert(nn.Module):
    """Stage 2: velocity of the noisy chunk at flow time t, attending to the prefix (the ``action_expert`` engine)."""

    def __init__(self, cfg: VlaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        b, e = cfg.backbone, cfg.expert
        self.action_in_proj = nn.Linear(cfg.action_dim, e.width)
        self.action_out_proj = nn.Linear(e.width, cfg.action_dim)
        self.time_mlp_in = nn.Linear(e.width, e.width)
        self.time_mlp_out = nn.Linear(e.width, e.width)
        self.gemma = GemmaStack(e.width, e.mlp_dim, b.depth, b.num_heads, b.num_kv_heads, b.head_dim, cond_width=e.width)

    def forward(self, noisy_actions: torch.Tensor, time: torch.Tensor, prefix_kv: torch.Tensor,
                prefix_mask: torch.Tensor) -> torch.Tensor:
        dtype = self.action_in_proj.weight.dtype
        cond = flow_time_embedding(time, self.cfg.expert.width).to(dtype)
        cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(cond))))
        x = self.action_in_proj(noisy_actions.to(dtype))
        batch, horizon = x.shape[:2]
        valid = prefix_mask.sum(dim=1, keepdim=True)
        positions = valid + torch.arange(horizon, device=x.device)[None, :]
        cos, sin = rope_tables(positions, self.cfg.backbone.head_dim, dtype)
        key_mask = torch.cat([prefix_mask, torch.ones(batch, horizon, dtype=torch.bool, device=x.device)], dim=1)
        prefix_kv = prefix_kv.to(dtype)
        for index, layer in enumerate(self.gemma.layers):
            normed, gate = layer.input_layernorm(x, cond)
            q, k, v = layer.self_attn.qkv(normed, cos, sin)
            keys = torch.cat([prefix_kv[:, index, 0], k], dim=2)
            values = torch.cat([prefix_kv[:, index, 1], v], dim=2)
            x = x + layer.self_attn.attend(q, keys, values, key_mask) * gate
            normed, gate = layer.post_attention_layernorm(x, cond)
            x = x + layer.mlp(normed) * gate
        normed, _ = self.gemma.norm(x, cond)
        return self.action_out_proj(normed).float()


class Pi05Policy(nn.Module):
    """Both engines of a pi0.5 policy, in model space (normalised, padded actions)."""

    def __init__(self, cfg: VlaConfig) -> None:
        super().__init__()
        if cfg.architecture != "pi05":
            raise ValueError(f"Pi05Policy needs a pi05-architecture config, received {cfg.architecture!r}")
        self.cfg = cfg
        self.vision_engine = Pi05VisionEngine(cfg)
        self.action_expert = Pi05ActionExpert(cfg)

    @property
    def specs(self) -> Dict[str, EngineSpec]:
        return engine_specs(self.cfg)

    def sample(self, feeds: Mapping[str, torch.Tensor], steps: int, noise: torch.Tensor) -> torch.Tensor:
        """Euler-integrate the flow from ``noise`` (t=1) to actions (t=0) in ``steps`` steps."""
        return sample_chunk(self.cfg, self.vision_engine, self.action_expert, feeds, steps, noise)


def load_pi05_policy(checkpoint: LeRobotCheckpoint) -> Pi05Policy:
    """Build the checkpoint's pi0.5 and load its weights (``load_pi05_weights``)."""
    return load_pi05_weights(checkpoint.weights_path, checkpoint.config, checkpoint.layout)


def load_pi05_weights(path: Path, cfg: VlaConfig, layout: str) -> Pi05Policy:
    """Build ``cfg``'s pi0.5 and load a LeRobot ``model.safetensors`` of ``layout``. Every module tensor
    must come from the file with its exact shape, and every file tensor must be used or known unused."""
    policy = Pi05Policy(cfg)
    expected = policy.state_dict()
    loaded: Dict[str, torch.Tensor] = {}
    unknown = []
    with safe_open(str(path), framework="pt") as f:
        for name in sorted(f.keys()):
            matched, target = map_key(name, layout)
            if not matched:
                unknown.append(name)
            elif target is not None and target in expected:
                tensor = f.get_tensor(name)
                if tuple(tensor.shape) != tuple(expected[target].shape):
                    raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, "
                                     f"the model expects {tuple(expected[target].shape)}")
                loaded[target] = tensor.float()
            elif target is not None:
                unknown.append(name)
    missing = sorted(set(expected) - set(loaded))
    if unknown or missing:
        raise ValueError(f"{path}: unmapped tensors {sorted(unknown)[:5]} ({len(unknown)}), "
                         f"missing tensors {missing[:5]} ({len(missing)})")
    policy.load_state_dict(loaded, strict=True)
    return policy.eval()
