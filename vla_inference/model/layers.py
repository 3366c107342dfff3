"""Building blocks both PyTorch policies use (``policy.VlaPolicy`` and ``pi05.Pi05Policy``).

Parameter names follow Gemma's (``weight``, ``gate_proj``, ``up_proj``, ``down_proj``), so checkpoints
load by prefix and the fused fast path finds the same tensors in either.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeGLU(nn.Module):
    """Gemma's MLP: ``down(gelu_tanh(gate(x)) * up(x))``, no biases."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class RMSNorm(nn.Module):
    """Gemma RMSNorm: x / rms(x) * (1 + weight), statistics in float32."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + self.weight.float())).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (the two halves of each head share the frequencies), as Gemma applies it."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
