"""pi0.5-style Vision-Language-Action policy in PyTorch (training and export only; serving runs the
exported engines).

Two submodules, one per engine of ``engine_spec``:

* ``VisionEngine``: a SigLIP-style ViT shared by every camera, a LiDAR patch embedding, byte-token
  embeddings and a state token feed a Gemma-style prefix backbone (RMSNorm, RoPE, grouped-query
  attention, GeGLU) with full attention inside the prefix; it returns every layer's rotated keys and
  values, stacked as ``prefix_kv`` [B, layers, 2, kv_heads, prefix_len, head_dim], and the prefix mask.
* ``ActionExpert``: one narrower Gemma-style layer per backbone layer with the same head layout;
  action tokens attend to that layer's prefix keys/values (masked) and to each other; adaptive
  RMSNorm (scale, shift, gate) conditioned on the flow time, as in pi0.5.

Flow parameterisation: the expert's output head predicts the clean chunk x0 and the engine returns
the flow-matching velocity ``v = (x_t - x0) / t`` (for the straight path x_t = t * noise +
(1 - t) * x0 that is exactly ``noise - x0``). Actions are metric and small (centimetres per step)
next to the unit Gaussian noise of the contract, so a direct velocity head would have to resolve
millimetres out of an O(1) output; predicting x0, with per-dimension action scales, keeps the
precision in the head. The Euler loop (``VlaPolicy.sample``) runs outside the expert.

Export/backend constraints kept throughout: masks become additive ``MASK_BIAS`` terms (no boolean
indexing or data-dependent control flow), attention goes through
``torch.nn.functional.scaled_dot_product_attention``, and normalisation statistics are computed in
float32 so a bf16 backend stays stable.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from vla_inference.model.layers import GeGLU, RMSNorm, apply_rope
from vla_inference.model.sampling import sample_chunk
from vla_inference.sensors.lidar_projection import DEFAULT_FOV_DOWN_DEG, DEFAULT_FOV_UP_DEG
from vla_inference.spec.config import VlaConfig
from vla_inference.spec.engine_spec import EngineSpec, engine_specs

# Additive attention bias for masked keys: exp(-30000) is 0 in fp32/bf16 and it stays finite in fp16.
MASK_BIAS = -30000.0
# Smallest flow time the expert divides by; the Euler loop never evaluates below 1 / steps.
MIN_FLOW_TIME = 1e-3
ROPE_BASE = 10000.0
# Scale of each action dimension (metres for position deltas, unit gripper command): the x0 head
# predicts actions / scale, and noisy actions are preconditioned with it.
POSITION_SCALE_M = 0.03
LIDAR_CHANNELS = 4
LIDAR_NEAR_FIELD_M = 2.0
TEXT_NGRAM = 7


def _check_shape(name: str, tensor: torch.Tensor, expected: Sequence[Union[int, None]]) -> None:
    """Cheap trace-safe shape check (``None`` = any size, used for the batch axis)."""
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or any(e is not None and s != e for s, e in zip(shape, expected)):
        shown = "(" + ", ".join("batch" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name}: expected shape {shown}, received {shape}")


class AdaRMSNorm(nn.Module):
    """pi0.5 adaptive RMSNorm: scale/shift (and a residual gate) regressed from the time condition.

    The modulation starts at zero, so each block starts as the identity (adaLN-Zero).
    """

    def __init__(self, width: int, cond_width: int, with_gate: bool, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.with_gate = with_gate
        self.modulation = nn.Linear(cond_width, (3 if with_gate else 2) * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        xf = x.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        chunks = self.modulation(cond)[:, None, :].chunk(3 if self.with_gate else 2, dim=-1)
        out = normed * (1.0 + chunks[0]) + chunks[1]
        gate = chunks[2] if self.with_gate else torch.ones_like(chunks[0])
        return out, gate


def rope_tables(positions: torch.Tensor, head_dim: int, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [L, head_dim] for rotate-half RoPE (computed in float32)."""
    inv_freq = ROPE_BASE ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def key_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [B, L] (True = attend) -> additive bias [B, 1, 1, L]."""
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    masked = torch.full((), MASK_BIAS, dtype=dtype, device=mask.device)
    return torch.where(mask, zero, masked)[:, None, None, :]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``scaled_dot_product_attention``, run in float32 under CPU autocast: PyTorch's CPU flash
    attention is slower in bf16 than in float32 (measured: 8 % of a bf16 training step)."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                  attn_mask=None if bias is None else bias.float())
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention: q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D], bias [B, 1, 1, Lk].

    Query heads of a group are folded into the query axis, so keys/values are never repeated.
    """
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads = k.shape[1]
    folded = q.reshape(batch, kv_heads, (q_heads // kv_heads) * q_len, head_dim)
    out = F.scaled_dot_product_attention(folded, k, v, attn_mask=bias)
    return out.reshape(batch, q_heads, q_len, head_dim)


class GemmaAttention(nn.Module):
    def __init__(self, width: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} must be a multiple of num_kv_heads {num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(width, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, width, bias=False)

    def _heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, heads, self.head_dim).transpose(1, 2)

    def keys_values(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Rotated keys and values [B, kv_heads, L, head_dim]."""
        k = apply_rope(self._heads(self.k_proj(h), self.num_kv_heads), cos, sin)
        return k, self._heads(self.v_proj(h), self.num_kv_heads)

    def query(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rope(self._heads(self.q_proj(h), self.num_heads), cos, sin)

    def output(self, attended: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = attended.shape
        return self.o_proj(attended.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))


class GemmaBlock(nn.Module):
    def __init__(self, width: int, mlp_dim: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.input_norm = RMSNorm(width)
        self.attn = GemmaAttention(width, num_heads, num_kv_heads, head_dim)
        self.mlp_norm = RMSNorm(width)
        self.mlp = GeGLU(width, mlp_dim)


class ExpertBlock(nn.Module):
    def __init__(self, width: int, mlp_dim: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.input_norm = AdaRMSNorm(width, width, with_gate=True)
        self.attn = GemmaAttention(width, num_heads, num_kv_heads, head_dim)
        self.mlp_norm = AdaRMSNorm(width, width, with_gate=True)
        self.mlp = GeGLU(width, mlp_dim)


def sincos_positions_2d(rows: int, cols: int, width: int) -> torch.Tensor:
    """Fixed 2-D sine/cosine table [rows * cols, width], row-major; the initial value of learned
    position embeddings, so token positions are linearly readable from the first step."""
    quarter = width // 4
    frequencies = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float32) / max(1, quarter)))
    row, col = torch.meshgrid(torch.arange(rows, dtype=torch.float32), torch.arange(cols, dtype=torch.float32),
                              indexing="ij")
    parts = []
    for coordinate in (row.reshape(-1), col.reshape(-1)):
        angles = coordinate[:, None] * frequencies[None, :]
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, dim=1)
    return F.pad(table, (0, width - table.shape[1])) * 0.5


class ViTBlock(nn.Module):
    """SigLIP encoder block: pre-LayerNorm, multi-head attention, GELU-tanh MLP."""

    def __init__(self, width: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, length, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = attention(q, k, v)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


class VisionTransformer(nn.Module):
    """SigLIP-style ViT: patch convolution, learned positions, pre-LN blocks, final LayerNorm."""

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        if width % num_heads:
            raise ValueError(f"vision width {width} must be a multiple of num_heads {num_heads}")
        grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.position = nn.Parameter(sincos_positions_2d(grid, grid, width))
        self.blocks = nn.ModuleList(ViTBlock(width, num_heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, images: torch.Tensor, vit_block: Optional["VitBlockFn"] = None,
                patch_conv: Optional["PatchConvFn"] = None) -> torch.Tensor:
        """[N, 3, S, S] -> tokens [N, T, width]; ``vit_block`` / ``patch_conv``: the kernels
        ``VisionEngine.use_patch_kernels`` installed (None: the modules' own forward)."""
        patches = self.patch_embed(images) if patch_conv is None else patch_conv(self.patch_embed, images)
        x = patches.flatten(2).transpose(1, 2) + self.position
        for block in self.blocks:
            x = block(x) if vit_block is None else vit_block(block, x)
        return self.norm(x)


# Kernel hooks of ``VisionEngine`` (``use_backbone``, ``use_patch_kernels``): a serving backend runs
# parts of stage 1 through its own implementation of the same math on the same parameters.
BackboneFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
VitBlockFn = Callable[[ViTBlock, torch.Tensor], torch.Tensor]
PatchConvFn = Callable[[nn.Conv2d, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PrefixTrim:
    """A training shortcut: prefix tokens that are masked for the whole batch (trailing camera
    slots, LiDAR, text padding) are left out instead of computed and masked.

    Kept tokens keep their positions in the full prefix. A masked key adds exactly zero to
    attention, so the kept tokens' keys/values, and the expert's output, equal the full prefix's
    up to float rounding; the batch costs what its real tokens cost."""

    cameras: int
    lidar: bool
    text_len: int

    def check(self, cfg: VlaConfig, camera_mask: torch.Tensor, lidar_mask: torch.Tensor, text_mask: torch.Tensor) -> None:
        """Refuse a trim that would drop a token some sample of the batch attends to."""
        if not 1 <= self.cameras <= cfg.max_cameras or not 1 <= self.text_len <= cfg.text_max_len:
            raise ValueError(f"PrefixTrim: cameras must lie in [1, {cfg.max_cameras}] and text_len in "
                             f"[1, {cfg.text_max_len}], received {self}")
        if bool(camera_mask[:, self.cameras:].any()):
            raise ValueError(f"PrefixTrim: a camera after slot {self.cameras} is on")
        if not self.lidar and bool(lidar_mask.any()):
            raise ValueError("PrefixTrim: LiDAR left out but some sample has a scan")
        if bool(text_mask[:, self.text_len:].any()):
            raise ValueError(f"PrefixTrim: a command is longer than text_len {self.text_len}")

    def positions(self, cfg: VlaConfig) -> torch.Tensor:
        """Positions in the full prefix of the kept tokens, in prefix order."""
        images = cfg.max_cameras * cfg.tokens_per_camera
        text_start = images + cfg.lidar_tokens
        parts = [torch.arange(self.cameras * cfg.tokens_per_camera)]
        if self.lidar:
            parts.append(torch.arange(images, text_start))
        parts += [torch.arange(text_start, text_start + self.text_len), torch.tensor([cfg.prefix_len - 1])]
        return torch.cat(parts)

    def segments(self, cfg: VlaConfig) -> Dict[str, slice]:
        """Where each modality's tokens lie in the trimmed prefix."""
        images = self.cameras * cfg.tokens_per_camera
        lidar_end = images + (cfg.lidar_tokens if self.lidar else 0)
        return {"images": slice(0, images), "lidar": slice(images, lidar_end),
                "text": slice(lidar_end, lidar_end + self.text_len)}


class VisionEngine(nn.Module):
    """Stage 1: observation -> per-layer prefix keys/values + prefix mask (the ``vision`` engine)."""

    def __init__(self, cfg: VlaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        v, lidar, b = cfg.vision, cfg.lidar, cfg.backbone
        if lidar.rows % lidar.patch_rows or lidar.cols % lidar.patch_cols:
            raise ValueError("LiDAR patch size must divide the range image")
        self.vit = VisionTransformer(v.image_size, v.patch_size, v.width, v.depth, v.num_heads, v.mlp_dim)
        self.image_projection = nn.Linear(v.width, b.width)
        self.camera_embedding = nn.Parameter(torch.randn(cfg.max_cameras, b.width) * 0.02)
        # Channels: range / max_range, validity, and the return's horizontal position (x, y) in the
        # sensor frame, in units of LIDAR_NEAR_FIELD_M and clipped, so nearby geometry is linear in
        # the features. Directions follow ``project_to_range_image``'s pixel convention.
        # Two stages: each azimuth column's beams -> ``column_width`` features through a GELU, then a
        # patch's columns -> one token. The nonlinearity lets a column report where its nearest
        # return lies (a pole in front of the table) rather than a linear mix of every return.
        self.lidar_column = nn.Conv2d(LIDAR_CHANNELS, lidar.column_width, kernel_size=(lidar.patch_rows, 1),
                                      stride=(lidar.patch_rows, 1))
        self.lidar_embed = nn.Conv2d(lidar.column_width, b.width, kernel_size=(1, lidar.patch_cols),
                                     stride=(1, lidar.patch_cols))
        elevation = torch.deg2rad(DEFAULT_FOV_UP_DEG - torch.arange(lidar.rows, dtype=torch.float32)
                                  * (DEFAULT_FOV_UP_DEG - DEFAULT_FOV_DOWN_DEG) / max(1, lidar.rows - 1))
        azimuth = math.pi * (1.0 - 2.0 * (torch.arange(lidar.cols, dtype=torch.float32) + 0.5) / lidar.cols)
        self.register_buffer("beam_cos_elevation", elevation.cos()[:, None], persistent=False)
        self.register_buffer("beam_cos_azimuth", azimuth.cos()[None, :], persistent=False)
        self.register_buffer("beam_sin_azimuth", azimuth.sin()[None, :], persistent=False)
        self.lidar_position = nn.Parameter(
            sincos_positions_2d(lidar.rows // lidar.patch_rows, lidar.cols // lidar.patch_cols, b.width))
        self.text_embedding = nn.Embedding(cfg.text_vocab_size, b.width)
        nn.init.normal_(self.text_embedding.weight, std=b.width**-0.5)  # unit scale after the sqrt(width) factor
        # Bytes carry no word identity; a depthwise convolution over neighbouring bytes gives every
        # text token n-gram features ("red", "blue") that the first attention layer can match.
        self.text_ngram = nn.Conv1d(b.width, b.width, kernel_size=TEXT_NGRAM, padding=TEXT_NGRAM // 2, groups=b.width)
        self.state_projection = nn.Linear(cfg.state_dim, b.width)
        self.layers = nn.ModuleList(
            GemmaBlock(b.width, b.mlp_dim, b.num_heads, b.num_kv_heads, b.head_dim) for _ in range(b.depth)
        )
        self._backbone_fn: Optional[BackboneFn] = None
        self._vit_block_fn: Optional[VitBlockFn] = None
        self._patch_conv_fn: Optional[PatchConvFn] = None

    def use_backbone(self, fn: Optional[BackboneFn]) -> None:
        """Run the prefix backbone of this instance through ``fn`` (None restores its own layers), so a
        serving backend can substitute fused kernels without patching the module.

        ``fn(x, prefix_mask) -> prefix_kv``: ``x`` [B, prefix_len, width] the embedded prefix tokens in
        the module's dtype, ``prefix_mask`` bool [B, prefix_len] (True = attend); it returns every
        layer's rotated keys and values [B, layers, 2, kv_heads, prefix_len, head_dim] in ``x``'s dtype,
        the same quantity as this module's own layers compute from its parameters (the shape is
        checked). It serves the full prefix (``forward``, ``encode`` without ``trim``), whose
        ``layer_inputs`` is then empty; a trimmed training prefix always runs the module's layers.
        The hook is per instance and is neither saved in the state dict nor exported unless it is
        installed while exporting."""
        self._backbone_fn = fn

    def use_patch_kernels(self, vit_block: Optional[VitBlockFn], patch_conv: Optional[PatchConvFn]) -> None:
        """Run the ViT blocks as ``vit_block(block, x) -> x`` ([N, T, vision width] in and out, what
        ``block(x)`` returns) and the convolutions of ``patch_convolutions()`` as
        ``patch_conv(conv, x) -> conv(x)``'s value; None restores the modules' own forward. They apply
        to every pass, trimmed or not; like ``use_backbone``, per instance, not saved, not exported."""
        self._vit_block_fn = vit_block
        self._patch_conv_fn = patch_conv

    def patch_convolutions(self) -> Tuple[nn.Conv2d, ...]:
        """The convolutions ``use_patch_kernels``' ``patch_conv`` runs: the ViT patch embedding, the
        LiDAR column features and the LiDAR patch embedding (each with stride == kernel)."""
        return self.vit.patch_embed, self.lidar_column, self.lidar_embed

    def _patch(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return conv(x) if self._patch_conv_fn is None else self._patch_conv_fn(conv, x)

    def _lidar_features(self, lidar_range: torch.Tensor) -> torch.Tensor:
        valid = (lidar_range > 0).to(lidar_range.dtype)
        normalized = (lidar_range / self.cfg.lidar.max_range_m).clamp(0.0, 1.0)
        horizontal = lidar_range * self.beam_cos_elevation.to(lidar_range.dtype) / LIDAR_NEAR_FIELD_M
        x = (horizontal * self.beam_cos_azimuth.to(lidar_range.dtype)).clamp(-1.0, 1.0)
        y = (horizontal * self.beam_sin_azimuth.to(lidar_range.dtype)).clamp(-1.0, 1.0)
        return torch.cat([normalized, valid, x, y], dim=1)

    def forward(self, images: torch.Tensor, camera_mask: torch.Tensor, lidar_range: torch.Tensor,
                lidar_mask: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        prefix_kv, prefix_mask, _ = self.encode(images, camera_mask, lidar_range, lidar_mask, text_tokens, text_mask,
                                                state)
        return prefix_kv, prefix_mask

    def encode(self, images: torch.Tensor, camera_mask: torch.Tensor, lidar_range: torch.Tensor,
               lidar_mask: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
               state: torch.Tensor, trim: Optional[PrefixTrim] = None
               ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, object]]:
        """``forward`` plus intermediates for auxiliary training losses: ``vit_tokens`` [B, cameras,
        tokens, vision width] and ``layer_inputs``, the residual stream entering each backbone layer
        (a list of [B, prefix_len, width]). With ``trim`` (training only) the prefix leaves out the
        tokens ``trim`` names, and every returned tensor covers the kept tokens only."""
        cfg = self.cfg
        x, prefix_mask, vit_tokens = self.embed(images, camera_mask, lidar_range, lidar_mask, text_tokens, text_mask,
                                                state, trim)
        batch = x.shape[0]
        if trim is not None:
            prefix_kv, layer_inputs = self._backbone(x, prefix_mask, trim.positions(cfg).to(x.device))
        elif self._backbone_fn is not None:  # ``use_backbone``: e.g. the torch backend's fast path
            b = cfg.backbone
            prefix_kv, layer_inputs = self._backbone_fn(x, prefix_mask), []
            _check_shape("prefix_kv (use_backbone)", prefix_kv, (batch, b.depth, 2, b.num_kv_heads, x.shape[1], b.head_dim))
        else:
            prefix_kv, layer_inputs = self._backbone(x, prefix_mask)
        return prefix_kv, prefix_mask, {"vit_tokens": vit_tokens, "layer_inputs": layer_inputs}

    def embed(self, images: torch.Tensor, camera_mask: torch.Tensor, lidar_range: torch.Tensor,
              lidar_mask: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
              state: torch.Tensor, trim: Optional[PrefixTrim] = None
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prefix tokens before the backbone: (x [B, P, width], prefix_mask bool [B, P], ViT tokens
        [B, cameras, tokens, vision width]); ``encode`` runs the backbone on them, and a serving path
        that attends differently (both camera views in one pass) starts from them too."""
        cfg = self.cfg
        size, cameras = cfg.vision.image_size, cfg.max_cameras
        _check_shape("images", images, (None, cameras, 3, size, size))
        _check_shape("camera_mask", camera_mask, (None, cameras))
        _check_shape("lidar_range", lidar_range, (None, 1, cfg.lidar.rows, cfg.lidar.cols))
        _check_shape("lidar_mask", lidar_mask, (None,))
        _check_shape("text_tokens", text_tokens, (None, cfg.text_max_len))
        _check_shape("text_mask", text_mask, (None, cfg.text_max_len))
        _check_shape("state", state, (None, cfg.state_dim))
        if trim is not None:
            trim.check(cfg, camera_mask, lidar_mask, text_mask)
            cameras = trim.cameras
            images, camera_mask = images[:, :cameras], camera_mask[:, :cameras]
            text_tokens, text_mask = text_tokens[:, : trim.text_len], text_mask[:, : trim.text_len]
        with_lidar = trim is None or trim.lidar
        batch = images.shape[0]
        dtype = self.image_projection.weight.dtype

        vit_tokens = self.vit(images.reshape(batch * cameras, 3, size, size).to(dtype), self._vit_block_fn,
                              self._patch_conv_fn)
        image_tokens = self.image_projection(vit_tokens).reshape(batch, cameras, -1, cfg.backbone.width)
        per_camera = image_tokens.shape[2]
        image_tokens = (image_tokens + self.camera_embedding[None, :cameras, None, :]).reshape(
            batch, cameras * per_camera, -1)
        text = self.text_embedding(text_tokens) * (text_mask[:, :, None].to(dtype) * math.sqrt(cfg.backbone.width))
        text = text + self.text_ngram(text.transpose(1, 2)).transpose(1, 2)
        state_token = self.state_projection(state.to(dtype))[:, None, :]
        tokens = [image_tokens]
        masks = [camera_mask[:, :, None].expand(batch, cameras, per_camera).reshape(batch, cameras * per_camera)]
        if with_lidar:
            columns = F.gelu(self._patch(self.lidar_column, self._lidar_features(lidar_range.to(dtype))),
                             approximate="tanh")
            lidar_tokens = self._patch(self.lidar_embed, columns).flatten(2).transpose(1, 2)
            tokens.append(lidar_tokens + self.lidar_position)
            masks.append(lidar_mask[:, None].expand(batch, cfg.lidar_tokens))
        x = torch.cat(tokens + [text, state_token], dim=1)
        prefix_mask = torch.cat(masks + [text_mask, torch.ones_like(camera_mask[:, :1])], dim=1)
        return x, prefix_mask, vit_tokens.reshape(batch, cameras, per_camera, -1)

    def _backbone(self, x: torch.Tensor, prefix_mask: torch.Tensor, positions: Optional[torch.Tensor] = None
                  ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Full attention within the prefix; returns the stacked keys/values of every layer and the
        residual stream entering each layer.

        The last layer's attention output and MLP only feed text decoding, which this policy does
        not do, so they are skipped (their weights stay in the module so Gemma checkpoints load).
        """
        if positions is None:
            positions = torch.arange(x.shape[1], device=x.device)
        cos, sin = rope_tables(positions, self.cfg.backbone.head_dim, x.dtype)
        bias = key_bias(prefix_mask, x.dtype)
        layer_kv: List[torch.Tensor] = []
        layer_inputs: List[torch.Tensor] = []
        for index, layer in enumerate(self.layers):
            layer_inputs.append(x)
            h = layer.input_norm(x)
            k, v = layer.attn.keys_values(h, cos, sin)
            layer_kv.append(torch.stack([k, v], dim=1))
            if index + 1 < len(self.layers):
                q = layer.attn.query(h, cos, sin)
                x = x + layer.attn.output(grouped_attention(q, k, v, bias))
                x = x + layer.mlp(layer.mlp_norm(x))
        return torch.stack(layer_kv, dim=1), layer_inputs


def time_embedding(time: torch.Tensor, width: int, min_period: float = 4e-3, max_period: float = 4.0) -> torch.Tensor:
    """Sinusoidal embedding of the flow time [B] -> [B, width] (pi0's period range)."""
    fraction = torch.linspace(0.0, 1.0, width // 2, dtype=torch.float32, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    angles = time.float()[:, None] * (2.0 * math.pi / period)[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ActionExpert(nn.Module):
    """Stage 2: (x_t, t, prefix keys/values, prefix mask) -> velocity (the ``action_expert`` engine)."""

    def __init__(self, cfg: VlaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        b, e = cfg.backbone, cfg.expert
        self.action_in = nn.Linear(cfg.action_dim, e.width)
        # Which step of the chunk a token is: at t ~ 1 the noisy input carries no such information.
        self.step_embedding = nn.Parameter(torch.randn(cfg.action_horizon, e.width) * 0.02)
        self.time_mlp_in = nn.Linear(e.width, e.width)
        self.time_mlp_out = nn.Linear(e.width, e.width)
        self.layers = nn.ModuleList(
            ExpertBlock(e.width, e.mlp_dim, b.num_heads, b.num_kv_heads, b.head_dim) for _ in range(b.depth)
        )
        self.final_norm = AdaRMSNorm(e.width, e.width, with_gate=False)
        self.action_out = nn.Linear(e.width, cfg.action_dim)
        scale = torch.ones(cfg.action_dim)
        scale[: min(3, cfg.action_dim)] = POSITION_SCALE_M
        self.register_buffer("action_scale", scale, persistent=False)

    def forward(self, noisy_actions: torch.Tensor, time: torch.Tensor, prefix_kv: torch.Tensor,
                prefix_mask: torch.Tensor) -> torch.Tensor:
        """Flow velocity [B, H, D] at ``(noisy_actions, time)``: ``(x_t - x0_hat) / t``."""
        clean = self.denoise(noisy_actions, time, prefix_kv, prefix_mask)
        t = time.float().clamp(min=MIN_FLOW_TIME)[:, None, None]
        return ((noisy_actions.float() - clean) / t).to(noisy_actions.dtype)

    def denoise(self, noisy_actions: torch.Tensor, time: torch.Tensor, prefix_kv: torch.Tensor,
                prefix_mask: torch.Tensor, trimmed: bool = False) -> torch.Tensor:
        """The clean-chunk estimate x0_hat [B, H, D] (float32), the quantity training regresses.
        ``trimmed``: the prefix came from ``VisionEngine.encode`` with a ``PrefixTrim``, so it is
        shorter than the contract's; action tokens keep the positions that follow the full prefix."""
        cfg, b = self.cfg, self.cfg.backbone
        horizon, prefix_len = cfg.action_horizon, cfg.prefix_len
        kept = prefix_kv.shape[4] if trimmed and prefix_kv.ndim == 6 else prefix_len
        _check_shape("noisy_actions", noisy_actions, (None, horizon, cfg.action_dim))
        _check_shape("time", time, (None,))
        _check_shape("prefix_kv", prefix_kv, (None, b.depth, 2, b.num_kv_heads, kept, b.head_dim))
        _check_shape("prefix_mask", prefix_mask, (None, kept))
        dtype = self.action_in.weight.dtype
        batch = noisy_actions.shape[0]

        t = time.float().clamp(min=MIN_FLOW_TIME)[:, None, None]
        scale = self.action_scale.float()
        preconditioned = noisy_actions.float() * torch.rsqrt(t * t + ((1.0 - t) * scale) ** 2)
        h = self.action_in(preconditioned.to(dtype)) + self.step_embedding
        cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(time_embedding(time, h.shape[-1]).to(dtype)))))

        cos, sin = rope_tables(torch.arange(prefix_len, prefix_len + horizon, device=h.device), b.head_dim, dtype)
        bias = torch.cat([key_bias(prefix_mask, dtype), torch.zeros(batch, 1, 1, horizon, dtype=dtype, device=h.device)],
                         dim=-1)
        prefix_kv = prefix_kv.to(dtype)
        for index, layer in enumerate(self.layers):
            normed, gate = layer.input_norm(h, cond)
            k, v = layer.attn.keys_values(normed, cos, sin)
            keys = torch.cat([prefix_kv[:, index, 0], k], dim=2)
            values = torch.cat([prefix_kv[:, index, 1], v], dim=2)
            q = layer.attn.query(normed, cos, sin)
            h = h + gate * layer.attn.output(grouped_attention(q, keys, values, bias))
            normed, gate = layer.mlp_norm(h, cond)
            h = h + gate * layer.mlp(normed)
        normed, _ = self.final_norm(h, cond)
        return self.action_out(normed).float() * scale


class VlaPolicy(nn.Module):
    def __init__(self, cfg: VlaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision_engine = VisionEngine(cfg)
        self.action_expert = ActionExpert(cfg)

    @property
    def specs(self) -> Dict[str, EngineSpec]:
        return engine_specs(self.cfg)

    def sample(self, feeds: Mapping[str, torch.Tensor], steps: int, noise: torch.Tensor) -> torch.Tensor:
        """Euler-integrate the flow from ``noise`` (t=1) to actions (t=0) in ``steps`` steps."""
        return sample_chunk(self.cfg, self.vision_engine, self.action_expert, feeds, steps, noise)


def build_policy(cfg: VlaConfig) -> nn.Module:
    """A freshly initialised policy of ``cfg.architecture`` (``VlaPolicy``, or ``Pi05Policy`` for pi05);
    build under ``torch.device('meta')`` to count parameters only."""
    if cfg.architecture == "pi05":
        from vla_inference.model.pi05 import Pi05Policy

        return Pi05Policy(cfg)
    return VlaPolicy(cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def engine_unused_parameters(policy: VlaPolicy) -> List[str]:
    """State-dict names no engine reads: the last backbone layer's query, attention output and MLP
    (the expert needs only that layer's keys/values). They exist so Gemma checkpoints load."""
    last = f"vision_engine.layers.{len(policy.vision_engine.layers) - 1}"
    prefixes = (f"{last}.attn.q_proj.", f"{last}.attn.o_proj.", f"{last}.mlp_norm.", f"{last}.mlp.")
    return [name for name in policy.state_dict() if name.startswith(prefixes)]


def save_policy(policy: VlaPolicy, path: Union[str, Path]) -> Path:
    """Weights as safetensors, with the config in the metadata for provenance. Parameters that no
    engine reads are left out (they would only ever hold their initial values)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    unused = set(engine_unused_parameters(policy))
    tensors = {name: t.detach().contiguous().cpu() for name, t in policy.state_dict().items() if name not in unused}
    save_file(tensors, str(path), metadata={"config": json.dumps(policy.cfg.to_dict(), sort_keys=True)})
    return path


def load_policy(path: Union[str, Path], cfg: VlaConfig) -> VlaPolicy:
    """Build ``cfg``'s policy and load weights. Only ``engine_unused_parameters`` may be absent; any
    other missing, unexpected or misshaped tensor is an error."""
    policy = VlaPolicy(cfg)
    result = policy.load_state_dict(load_file(str(path)), strict=False)
    missing = set(result.missing_keys) - set(engine_unused_parameters(policy))
    if missing or result.unexpected_keys:
        raise RuntimeError(f"{path}: missing tensors {sorted(missing)}, unexpected tensors {result.unexpected_keys}")
    return policy.eval()
