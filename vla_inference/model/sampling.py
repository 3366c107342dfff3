"""The reference sampler every PyTorch policy shares: both engines and the Euler loop of ``spec.flow``.

A policy is two engines behind the ``engine_spec`` contract; sampling a chunk checks the feeds and
the noise against that contract, runs the vision engine once and integrates the expert's velocity
from t = 1 to 0. ``VlaPolicy.sample`` and ``Pi05Policy.sample`` are this function.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from vla_inference.spec.config import VlaConfig
from vla_inference.spec.engine_spec import ACTION_EXPERT, VISION, check_inputs, check_tensor, engine_specs
from vla_inference.spec.flow import check_steps, euler_integrate


@torch.no_grad()
def sample_chunk(cfg: VlaConfig, vision_engine: nn.Module, action_expert: nn.Module,
                 feeds: Mapping[str, torch.Tensor], steps: int, noise: torch.Tensor) -> torch.Tensor:
    """Euler-integrate the flow from ``noise`` (t=1) to actions (t=0) in ``steps`` steps."""
    check_steps(steps)
    specs = engine_specs(cfg)
    batch = check_inputs(specs[VISION], feeds)
    check_tensor(specs[ACTION_EXPERT].input("noisy_actions"), noise, batch)
    prefix_kv, prefix_mask = vision_engine(*(feeds[t.name] for t in specs[VISION].inputs))

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        time = torch.full((batch,), float(t), dtype=torch.float32, device=noise.device)
        return action_expert(x, time, prefix_kv, prefix_mask)

    return euler_integrate(velocity, noise, steps)
