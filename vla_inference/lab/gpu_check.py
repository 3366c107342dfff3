"""Numerical checks of the torch CUDA path against the fp32 CPU reference (run on a GPU host).

For the tiny preset (the shipped policy, or random weights with ``--random-weights``) and each
steps value, the same observations and seeds go through

* the CPU fp32 pipeline (the parity reference, itself within 1e-4 of ONNX Runtime), and
* the CUDA pipeline in ``--precision`` (bf16 by default) with CUDA graphs, pipelined,

and the cosine similarity of every mean action chunk (flattened [H * D]) is reported; the check
passes when the smallest one is at least ``--min-cosine`` (0.999). It also checks that on the GPU
pipelined results equal sequential ones and that graph replay equals eager execution, both bit
for bit. Prints a table, writes JSON, exits 1 on failure::

    python -m vla_inference.lab.gpu_check --out gpu_check.json
    python -m vla_inference.lab.gpu_check --torch-option fast_path=false   # the policy as written on the GPU
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from vla_inference.lab.bench import add_torch_option_argument, bench_observations
from vla_inference.runtime.backends.torch_backend import TorchBackend
from vla_inference.runtime.pipeline import InferencePipeline
from vla_inference.spec.config import tiny
from vla_inference.spec.manifest import load_manifest, shipped_model_dir
from vla_inference.spec.observation import Observation


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64) + 1e-30))


def check_observations(count: int) -> List[Observation]:
    """Held-out synthetic scenes when the synthetic task imports, else seeded random observations."""
    try:
        from vla_inference.synthetic import eval_scenes, make_observation
    except ImportError:
        return bench_observations(tiny(), count, 3, True)
    return [make_observation(scene, 3, True) for scene in eval_scenes(count)]


def make_backends(args: argparse.Namespace) -> Dict[str, TorchBackend]:
    """fp32 CPU reference, CUDA with graphs, CUDA eager: the same weights in all three; the CUDA
    ones with the ``--torch-option`` constructor options."""
    options = dict(args.torch_options)
    if args.random_weights:
        import copy

        import torch

        from vla_inference.model.policy import build_policy

        torch.manual_seed(args.seed)
        policy = build_policy(tiny()).eval()
        with torch.no_grad():  # adaLN-Zero starts at the identity; give the time modulation a signal
            for name, parameter in policy.named_parameters():
                if "modulation" in name:
                    parameter.normal_(0.0, 0.02)
        return {
            "cpu": TorchBackend.from_policy(copy.deepcopy(policy), tiny(), "cpu", "fp32"),
            "gpu": TorchBackend.from_policy(copy.deepcopy(policy), tiny(), "cuda", args.precision, **options),
            "gpu_eager": TorchBackend.from_policy(copy.deepcopy(policy), tiny(), "cuda", args.precision,
                                                  cuda_graphs=False, **options),
        }
    manifest = load_manifest(Path(args.model_dir) if args.model_dir else shipped_model_dir())
    return {
        "cpu": TorchBackend(manifest, device="cpu"),
        "gpu": TorchBackend(manifest, device="cuda", precision=args.precision, **options),
        "gpu_eager": TorchBackend(manifest, device="cuda", precision=args.precision, cuda_graphs=False, **options),
    }


def run(args: argparse.Namespace) -> Dict[str, Any]:
    backends = make_backends(args)
    observations = check_observations(args.scenes)
    steps_list = [int(s) for s in args.steps.split(",")]
    chunks: Dict[str, Dict[int, List[np.ndarray]]] = {}
    pipelined_equal = True
    description: Dict[str, Any] = {}
    for key, backend in backends.items():
        with InferencePipeline(backend, num_samples=args.num_samples, pipelining=(key == "gpu"),
                               owns_backend=True) as pipeline:
            chunks[key] = {}
            if key == "gpu":
                description = backend.describe()
            for steps in steps_list:
                sequential = [pipeline.infer(o, steps, seed=i).actions for i, o in enumerate(observations)]
                chunks[key][steps] = sequential
                if key == "gpu":
                    futures = [pipeline.submit(o, steps, seed=i) for i, o in enumerate(observations)]
                    pipelined_equal &= all(np.array_equal(f.result().actions, s) for f, s in zip(futures, sequential))
    rows = []
    for steps in steps_list:
        cosines = [cosine(g, c) for g, c in zip(chunks["gpu"][steps], chunks["cpu"][steps])]
        max_abs = max(float(np.abs(g - c).max()) for g, c in zip(chunks["gpu"][steps], chunks["cpu"][steps]))
        graph_equals_eager = all(np.array_equal(g, e) for g, e in zip(chunks["gpu"][steps], chunks["gpu_eager"][steps]))
        rows.append({"steps": steps, "min_cosine": min(cosines), "mean_cosine": float(np.mean(cosines)),
                     "max_abs_diff": max_abs, "graph_equals_eager": graph_equals_eager})
    passed = all(r["min_cosine"] >= args.min_cosine for r in rows) and pipelined_equal
    return {"precision": args.precision, "scenes": args.scenes, "num_samples": args.num_samples,
            "random_weights": args.random_weights, "rows": rows, "gpu_pipelined_equals_sequential": pipelined_equal,
            "min_cosine_required": args.min_cosine, "passed": passed, "gpu_backend": description,
            "torch_options": dict(args.torch_options)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="bf16 CUDA vs fp32 CPU numerics of the torch backend (tiny preset)")
    parser.add_argument("--model-dir", default=None, help="default: the shipped tiny policy")
    parser.add_argument("--random-weights", action="store_true", help="random tiny policy instead of the shipped one")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--steps", default="1,3,5,10")
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--min-cosine", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    add_torch_option_argument(parser, "Applies to the CUDA backends; the CPU reference runs the policy as written.")
    args = parser.parse_args(argv)
    result = run(args)
    print(f"torch {args.precision} CUDA (graphs, pipelined) vs fp32 CPU, {args.scenes} scenes, K={args.num_samples}")
    print(f"{'steps':>5}{'min cos':>10}{'mean cos':>10}{'max |diff|':>12}  graph==eager")
    for row in result["rows"]:
        print(f"{row['steps']:>5}{row['min_cosine']:>10.5f}{row['mean_cosine']:>10.5f}{row['max_abs_diff']:>12.2e}"
              f"  {row['graph_equals_eager']}")
    backend = result["gpu_backend"]
    print(f"GPU backend: {backend.get('gpu')}, torch {backend.get('torch')}, fast path {backend.get('fast_path')}, "
          f"compile {backend.get('compile')}, attention {backend.get('attention')} ({backend.get('fast_path_note')})")
    print(f"GPU pipelined == sequential: {result['gpu_pipelined_equals_sequential']}; "
          f"{'PASS' if result['passed'] else 'FAIL'} (min cosine >= {args.min_cosine})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
