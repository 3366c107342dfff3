"""Profile one pi0.5-size request on a CUDA GPU (random weights): where the milliseconds go.

    python scripts/gpu_profile.py --steps 3 --out out/gpu_profile

Prints the top CUDA kernels for the prefix pass and for one denoising step, and writes a Chrome
trace (open in chrome://tracing or Perfetto).
"""
import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from vla_inference.model.config import get_preset
from vla_inference.runtime.backends.torch_backend import TorchBackend
from vla_inference.runtime.bench import bench_observations
from vla_inference.runtime.pipeline import InferencePipeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="pi05")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=Path("out/gpu_profile"))
    args = parser.parse_args()
    cfg = get_preset(args.preset)
    backend = TorchBackend.with_random_weights(cfg, device="cuda", cuda_graphs=args.graphs)
    pipeline = InferencePipeline(backend, num_samples=args.num_samples, pipelining=False, owns_backend=True)
    observation = bench_observations(cfg, 1, 3, True)[0]
    for _ in range(3):
        pipeline.infer(observation, steps=args.steps, seed=0)
    torch.cuda.synchronize()
    args.out.mkdir(parents=True, exist_ok=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        chunk = pipeline.infer(observation, steps=args.steps, seed=0)
        torch.cuda.synchronize()
    print(chunk.timings)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60))
    prof.export_chrome_trace(str(args.out / f"trace_{args.preset}_steps{args.steps}.json"))
    pipeline.close()


if __name__ == "__main__":
    main()
