"""``vla-plan-memory``: will a model fit a Jetson? GPU memory of serving, estimated from the config.

For a model directory or a preset, a precision, K samples and the confidence views, the plan adds:

* weights: the parameters both engines read (the prefix model's last-layer query, output and MLP
  are not exported: the expert needs only that layer's keys/values), at the precision's width;
* prefix buffers: the vision outputs of each captured view-row count, and the prefix slots the expert
  reads (two with pipelining; one row per sample with camera views, else one shared row);
* activations: the largest intermediates of each captured graph (each CUDA graph keeps its own pool):
  one vision graph per view-row count, one denoising-step graph per slot;
* workspace: the TensorRT builder/runtime scratch (``--workspace-gib``, 0.5 by default).

It prints the total against Orin Nano 8 GB, Orin NX 16 GB, AGX Orin 64 GB and Thor 128 GB (Jetson
memory is shared with the CPU: the host side, measured at about 1.3-1.7 GB RSS for the node, and
the CUDA context are counted too), and checks the seed budget of 6 GB of GPU memory. The estimate is
checked against PyTorch's measured peak on an H200 (``test/test_memory_plan.py``, within 15 %)::

    vla-plan-memory --preset pi05_lerobot --precision bf16
    vla-plan-memory --model-dir /path/to/pi05_checkpoint --precision int8 --views noise
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence

import torch

from vla_inference.model.policy import build_policy
from vla_inference.runtime.sample_views import CONFIDENCE_VIEWS, max_view_rows
from vla_inference.spec.config import VlaConfig, get_preset
from vla_inference.spec.model_dir import open_model_dir

GIB = 1024**3
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "fp8": 1}
ACTIVATION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 2, "fp8": 2}  # quantized engines keep fp16 activations
TARGETS_GIB = {"Orin Nano 8GB": 8, "Orin NX 16GB": 16, "AGX Orin 64GB": 64, "Thor 128GB": 128}
SEED_BUDGET_GIB = 6.0
HOST_GIB = 1.7  # the node's resident host memory at its measured peak (vla-bench peak RSS, pi05 sizes)
CUDA_CONTEXT_GIB = 0.6  # CUDA context and kernel images, outside the allocator's accounting
SLOTS = 2


@dataclass(frozen=True)
class MemoryPlan:
    preset: str
    precision: str
    num_samples: int
    view_rows: int
    weights_gib: float
    prefix_buffers_gib: float
    activations_gib: float
    workspace_gib: float

    @property
    def gpu_gib(self) -> float:
        """What the GPU allocator holds at peak (what ``torch.cuda.max_memory_allocated`` measures)."""
        return self.weights_gib + self.prefix_buffers_gib + self.activations_gib + self.workspace_gib

    @property
    def device_gib(self) -> float:
        """On a Jetson, where CPU and GPU share the memory: the GPU side, the CUDA context and the host side."""
        return self.gpu_gib + CUDA_CONTEXT_GIB + HOST_GIB

    def fits(self) -> Dict[str, bool]:
        return {name: self.device_gib <= size for name, size in TARGETS_GIB.items()}


def served_parameters(cfg: VlaConfig) -> int:
    """Parameters the two exported engines read (counted on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        policy = build_policy(cfg)
    engines = [policy.vision_engine, policy.action_expert]
    total = sum(p.numel() for engine in engines for p in engine.parameters())
    layers = getattr(policy.vision_engine, "layers", None) or policy.vision_engine.language_model.layers
    last = layers[-1]
    attention = getattr(last, "attn", None) or last.self_attn
    norm = getattr(last, "mlp_norm", None) or last.post_attention_layernorm
    unused = [attention.q_proj, attention.o_proj, norm, last.mlp]
    return total - sum(p.numel() for module in unused for p in module.parameters())


def _vision_activation_bytes(cfg: VlaConfig, rows: int, width_bytes: int) -> int:
    v, b = cfg.vision, cfg.backbone
    images = rows * cfg.max_cameras
    tokens = cfg.tokens_per_camera
    vit = images * tokens * (2 * v.mlp_dim + 4 * v.width) + images * v.num_heads * tokens * tokens
    prefix = cfg.prefix_len
    backbone = rows * prefix * (2 * b.mlp_dim + 4 * b.width) + rows * b.num_heads * prefix * prefix
    return max(vit, backbone) * width_bytes


def _expert_activation_bytes(cfg: VlaConfig, samples: int, width_bytes: int) -> int:
    e, b = cfg.expert, cfg.backbone
    horizon = cfg.action_horizon
    keys = cfg.prefix_len + horizon
    return (samples * horizon * (2 * e.mlp_dim + 4 * e.width) + samples * b.num_heads * horizon * keys) * width_bytes


def plan(cfg: VlaConfig, precision: str = "bf16", num_samples: int = 4, views: str = "cameras",
         workspace_gib: float = 0.5, pipelining: bool = True) -> MemoryPlan:
    """The memory plan of serving ``cfg`` at ``precision`` with K = ``num_samples`` and ``views``."""
    if precision not in WEIGHT_BYTES:
        raise ValueError(f"precision: expected one of {sorted(WEIGHT_BYTES)}, received {precision!r}")
    width = ACTIVATION_BYTES[precision]
    rows = max_view_rows(views, cfg.max_cameras)
    b = cfg.backbone
    kv_row = b.depth * 2 * b.num_kv_heads * cfg.prefix_len * b.head_dim * width
    slots = SLOTS if pipelining else 1
    per_slot = num_samples if rows > 1 else 1
    prefix = kv_row * (sum(range(1, rows + 1)) + slots * per_slot)
    activations = (sum(_vision_activation_bytes(cfg, r, width) for r in range(1, rows + 1))
                   + slots * _expert_activation_bytes(cfg, num_samples, width))
    return MemoryPlan(cfg.preset, precision, num_samples, rows,
                      served_parameters(cfg) * WEIGHT_BYTES[precision] / GIB, prefix / GIB, activations / GIB,
                      workspace_gib)


def format_plans(plans: Sequence[MemoryPlan]) -> str:
    header = (f"{'preset':<14}{'precision':<10}{'weights':>9}{'prefix':>8}{'activ.':>8}{'wkspace':>8}{'GPU GiB':>9}"
              f"{'device':>8}  seed <= {SEED_BUDGET_GIB:g} GiB  " + "  ".join(TARGETS_GIB))
    lines = [header, "-" * len(header)]
    for p in plans:
        fits = p.fits()
        lines.append(f"{p.preset:<14}{p.precision:<10}{p.weights_gib:>9.2f}{p.prefix_buffers_gib:>8.2f}"
                     f"{p.activations_gib:>8.2f}{p.workspace_gib:>8.2f}{p.gpu_gib:>9.2f}{p.device_gib:>8.2f}  "
                     f"{'yes' if p.gpu_gib <= SEED_BUDGET_GIB else 'NO':<17}  "
                     + "  ".join(f"{'fits' if fits[name] else 'NO':<{len(name)}}" for name in TARGETS_GIB))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vla-plan-memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default=None, help="tiny, pi05 or pi05_lerobot (default: pi05_lerobot)")
    source.add_argument("--model-dir", default=None, help="a model directory or LeRobot pi0.5 checkpoint")
    parser.add_argument("--vision-num-heads", type=int, default=None, help="LeRobot checkpoints: SigLIP heads")
    parser.add_argument("--precision", default="all", help=f"one of {sorted(WEIGHT_BYTES)} or all")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--views", choices=CONFIDENCE_VIEWS, default="cameras")
    parser.add_argument("--workspace-gib", type=float, default=0.5)
    parser.add_argument("--json", action="store_true", help="print the plans as JSON")
    args = parser.parse_args(argv)
    if args.model_dir:
        cfg = open_model_dir(args.model_dir, verify_checksums=False, vision_num_heads=args.vision_num_heads).config
    else:
        cfg = get_preset(args.preset or "pi05_lerobot")
    precisions = sorted(WEIGHT_BYTES) if args.precision == "all" else [args.precision]
    plans = [plan(cfg, p, args.num_samples, args.views, args.workspace_gib) for p in precisions]
    if args.json:
        import json

        print(json.dumps([{**asdict(p), "gpu_gib": p.gpu_gib, "device_gib": p.device_gib, "fits": p.fits()}
                          for p in plans], indent=2))
    else:
        print(format_plans(plans))
    return 0


if __name__ == "__main__":
    sys.exit(main())
