"""The full-size pi0.5 on a GPU against the same weights on the CPU in float32 (run on a GPU host).

Random weights of the ``pi05_lerobot`` preset (SigLIP So400m/14, Gemma-2B with its 257,152-token
table, Gemma-300M expert: 3.35 B parameters, LeRobot's 3.62 B less the expert's unused vocabulary
head), one observation of three cameras and a 60-token prompt, fixed noise. Reported:

* fp32 CUDA vs fp32 CPU: max abs difference of the prefix keys/values (valid tokens) and of one
  velocity (t = 0.7), each also relative to the CPU values' largest magnitude;
* bf16 CUDA vs fp32 CPU, 10 Euler steps: max abs difference of the chunk, and the end-point error
  in centimetres, reading the first three action columns as position deltas in metres (the
  convention of the shipped policy; a real checkpoint's columns mean what its robot makes them).

Needs about 40 GB of host memory and 25 GB of GPU memory::

    python -m vla_inference.lab.pi05_full_check --out pi05_full_check.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from vla_inference.model.pi05 import Pi05Policy
from vla_inference.spec.config import VlaConfig, pi05_lerobot
from vla_inference.spec.engine_spec import VISION, engine_specs

PROMPT_TOKENS = 60
FLOW_TIME = 0.7
STEPS = 10
POSITION_COLUMNS = 3


def observation_feeds(cfg: VlaConfig, seed: int) -> Dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    size = cfg.vision.image_size
    text_mask = np.zeros((1, cfg.text_max_len), bool)
    text_mask[0, :PROMPT_TOKENS] = True
    feeds = {
        "images": rng.uniform(-1, 1, (1, cfg.max_cameras, 3, size, size)).astype(np.float32),
        "camera_mask": np.ones((1, cfg.max_cameras), bool),
        "lidar_range": np.zeros((1, 1, cfg.lidar.rows, cfg.lidar.cols), np.float32),
        "lidar_mask": np.zeros((1,), bool),
        "text_tokens": np.where(text_mask, rng.integers(0, cfg.text_vocab_size, text_mask.shape), 0).astype(np.int64),
        "text_mask": text_mask,
        "state": np.zeros((1, cfg.state_dim), np.float32),
    }
    return {k: torch.from_numpy(v) for k, v in feeds.items()}


def _stage(message: str) -> None:
    print(f"[pi05-full-check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(seed: int = 0, cfg: Optional[VlaConfig] = None, device: str = "cuda") -> Dict[str, object]:
    """The comparisons above; ``cfg`` and ``device`` exist so the tool itself can be tested small on a CPU."""
    cfg = cfg or pi05_lerobot()
    torch.manual_seed(seed)
    _stage("building the random full-size policy (fp32, CPU)")
    policy = Pi05Policy(cfg).eval()
    parameters = sum(p.numel() for p in policy.parameters())
    feeds = observation_feeds(cfg, seed)
    names = [t.name for t in engine_specs(cfg)[VISION].inputs]
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((1, cfg.action_horizon, cfg.action_dim), generator=generator)
    noise = torch.randn((1, cfg.action_horizon, cfg.action_dim), generator=generator)
    t = torch.full((1,), FLOW_TIME)
    results: Dict[str, object] = {"preset": cfg.preset, "parameters": parameters, "seed": seed,
                                  "prompt_tokens": PROMPT_TOKENS, "steps": STEPS}
    with torch.inference_mode():
        _stage("CPU fp32: prefix, velocity, 10-step chunk")
        started = time.perf_counter()
        kv_cpu, mask_cpu = policy.vision_engine(*(feeds[n] for n in names))
        velocity_cpu = policy.action_expert(x, t, kv_cpu, mask_cpu)
        chunk_cpu = policy.sample(feeds, STEPS, noise)
        results["cpu_seconds"] = time.perf_counter() - started
        valid = mask_cpu[0]
        _stage(f"{device} fp32")
        policy = policy.to(device)
        cuda_feeds = {k: v.to(device) for k, v in feeds.items()}
        kv_gpu, mask_gpu = policy.vision_engine(*(cuda_feeds[n] for n in names))
        velocity_gpu = policy.action_expert(x.to(device), t.to(device), kv_gpu, mask_gpu)
        kv_diff = (kv_gpu.cpu() - kv_cpu)[..., valid, :].abs().max().item()
        kv_scale = kv_cpu[..., valid, :].abs().max().item()
        velocity_diff = (velocity_gpu.cpu() - velocity_cpu).abs().max().item()
        results["fp32_cuda_vs_cpu"] = {
            "prefix_kv_max_abs": kv_diff, "prefix_kv_max_rel": kv_diff / kv_scale,
            "velocity_max_abs": velocity_diff, "velocity_max_rel": velocity_diff / velocity_cpu.abs().max().item(),
            "masks_equal": bool(torch.equal(mask_gpu.cpu(), mask_cpu)),
        }
        _stage(f"{device} bf16: 10-step chunk")
        policy = policy.to(torch.bfloat16)
        chunk_bf16 = policy.sample(cuda_feeds, STEPS, noise.to(device)).float().cpu()
        end_cpu = chunk_cpu[0, :, :POSITION_COLUMNS].sum(0)
        end_bf16 = chunk_bf16[0, :, :POSITION_COLUMNS].sum(0)
        step_error = (chunk_bf16 - chunk_cpu)[0, :, :POSITION_COLUMNS].norm(dim=-1).max().item()
        results["bf16_cuda_vs_fp32_cpu"] = {
            "chunk_max_abs": (chunk_bf16 - chunk_cpu).abs().max().item(),
            "chunk_scale": chunk_cpu.abs().max().item(),
            "endpoint_error_cm": float((end_bf16 - end_cpu).norm().item() * 100.0),
            "max_step_position_error_cm": float(step_error * 100.0),
            "endpoint_path_length_cm": float(chunk_cpu[0, :, :POSITION_COLUMNS].norm(dim=-1).sum().item() * 100.0),
        }
        if device == "cuda":
            results["gpu"] = torch.cuda.get_device_name()
            results["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("pi05_full_check needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = run(args.seed)
    fp32, bf16 = results["fp32_cuda_vs_cpu"], results["bf16_cuda_vs_fp32_cpu"]
    print(f"{'comparison':<34}{'max abs':>12}{'relative':>12}")
    print(f"{'fp32 CUDA vs CPU: prefix K/V':<34}{fp32['prefix_kv_max_abs']:>12.2e}{fp32['prefix_kv_max_rel']:>12.2e}")
    print(f"{'fp32 CUDA vs CPU: velocity':<34}{fp32['velocity_max_abs']:>12.2e}{fp32['velocity_max_rel']:>12.2e}")
    print(f"{'bf16 CUDA vs fp32 CPU: chunk':<34}{bf16['chunk_max_abs']:>12.2e}"
          f"{bf16['chunk_max_abs'] / bf16['chunk_scale']:>12.2e}")
    print(f"bf16 end-point error {bf16['endpoint_error_cm']:.3f} cm (path {bf16['endpoint_path_length_cm']:.1f} cm), "
          f"max per-step position error {bf16['max_step_position_error_cm']:.3f} cm; "
          f"{results['parameters'] / 1e9:.3f} B parameters on {results['gpu']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
