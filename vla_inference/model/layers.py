"""Building blocks both PyTorch policies use (``policy.VlaPolicy`` and ``pi05.Pi05Policy``).

Parameter names follow Gemma's (``gate_proj``, ``up_proj``, ``down_proj``), so checkpoints load by
prefix and the fused fast path finds the same tensors in either.
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
