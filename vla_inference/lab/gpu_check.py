"""Numerical checks of the torch CUDA path against the fp32 CPU reference (run on a GPU host).

For the tiny preset (the shipped policy, or random weights with ``--random-weights``) and each
steps value, the same observations and seeds go through

* the CPU fp32 pipeline (the parity reference, itself within 1e-4 of ONNX Runtime), and
* the CUDA pipeline in ``--precision`` (bf16 by default) with CUDA graphs, pipelined,

and every served chunk is compared in the robot's units (``chunk_numerics``): end-point error and
max per-step position error in cm, gripper sign agreement. The check passes when the end point
stays within 0.5 cm on at least 99 % of scenes at every steps value, closed-loop task success
(``--closed-loop-scenes`` held-out scenes, 10 steps, both precisions through the torch backend) is
within 1 point of fp32, and pipelined results equal sequential ones on the GPU bit for bit. The
cosine of the flattened chunk is still printed, for comparison with older records only: the ±1
gripper column dominates it. Prints a table, writes JSON, exits 1 on failure::

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
from vla_inference.lab.chunk_numerics import ENDPOINT_LIMIT_CM, SCENE_SHARE, path_errors, success_gate, summarize
from vla_inference.lab.closed_loop import closed_loop_success
from vla_inference.lab.sampler import EngineSampler
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
        path = summarize(path_errors(np.stack(chunks["gpu"][steps]), np.stack(chunks["cpu"][steps])))
        graph_equals_eager = all(np.array_equal(g, e) for g, e in zip(chunks["gpu"][steps], chunks["gpu_eager"][steps]))
        rows.append({"steps": steps, "min_cosine": min(cosines), **path.as_dict(),
                     "graph_equals_eager": graph_equals_eager})
    closed_loop = run_closed_loop(args) if args.closed_loop_scenes else None
    passed = all(r["passed"] for r in rows) and pipelined_equal and (closed_loop is None or closed_loop["passed"])
    return {"precision": args.precision, "scenes": args.scenes, "num_samples": args.num_samples,
            "random_weights": args.random_weights, "rows": rows, "gpu_pipelined_equals_sequential": pipelined_equal,
            "endpoint_limit_cm": ENDPOINT_LIMIT_CM, "scene_share_required": SCENE_SHARE,
            "closed_loop": closed_loop, "passed": passed, "gpu_backend": description,
            "torch_options": dict(args.torch_options)}


def run_closed_loop(args: argparse.Namespace) -> Dict[str, Any]:
    """Closed-loop success at 10 steps, fp32 on the CPU and ``--precision`` on the GPU, same scenes. Eager on
    the GPU: the scene batches vary in size, and graph replay equals eager bit for bit (checked above)."""
    manifest = load_manifest(Path(args.model_dir) if args.model_dir else shipped_model_dir())
    results = {}
    for name, options in (("fp32_cpu", {"device": "cpu", "precision": "fp32"}),
                          (f"{args.precision}_cuda", {"device": "cuda", "precision": args.precision, "cuda_graphs": False,
                                                      **dict(args.torch_options)})):
        with EngineSampler(manifest, backend="torch", **options) as sampler:
            results[name] = closed_loop_success(sampler, manifest.config, args.closed_loop_scenes, 10)["success"]
    reference, candidate = results["fp32_cpu"], results[f"{args.precision}_cuda"]
    return {"scenes": args.closed_loop_scenes, "steps": 10, "success": results,
            "difference_points": (candidate - reference) * 100.0, "passed": success_gate(candidate, reference)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="bf16 CUDA vs fp32 CPU numerics of the torch backend (tiny preset)")
    parser.add_argument("--model-dir", default=None, help="default: the shipped tiny policy")
    parser.add_argument("--random-weights", action="store_true", help="random tiny policy instead of the shipped one")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--steps", default="1,3,5,10")
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--closed-loop-scenes", type=int, default=200,
                        help="held-out scenes of the closed-loop success comparison (0: skip it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    add_torch_option_argument(parser, "Applies to the CUDA backends; the CPU reference runs the policy as written.")
    args = parser.parse_args(argv)
    result = run(args)
    print(f"torch {args.precision} CUDA (graphs, pipelined) vs fp32 CPU, {args.scenes} scenes, K={args.num_samples}; "
          f"path errors in cm (end point within {ENDPOINT_LIMIT_CM} cm on >= {SCENE_SHARE:.0%} of scenes)")
    print(f"{'steps':>5}{'end max':>9}{'end p99':>9}{'within':>8}{'step max':>10}{'gripper':>9}{'min cos':>10}"
          f"  graph==eager  result")
    for row in result["rows"]:
        print(f"{row['steps']:>5}{row['endpoint_cm_max']:>9.3f}{row['endpoint_cm_p99']:>9.3f}{row['within_limit']:>8.1%}"
              f"{row['max_step_cm']:>10.3f}{row['gripper_agreement_min']:>9.1%}{row['min_cosine']:>10.5f}"
              f"  {str(row['graph_equals_eager']):<12}  {'PASS' if row['passed'] else 'FAIL'}")
    loop = result["closed_loop"]
    if loop is not None:
        print(f"closed-loop success over {loop['scenes']} scenes at 10 steps: "
              + ", ".join(f"{k} {v:.1%}" for k, v in loop["success"].items())
              + f" ({loop['difference_points']:+.1f} points, limit 1): {'PASS' if loop['passed'] else 'FAIL'}")
    backend = result["gpu_backend"]
    print(f"GPU backend: {backend.get('gpu')}, torch {backend.get('torch')}, fast path {backend.get('fast_path')}, "
          f"compile {backend.get('compile')}, attention {backend.get('attention')} ({backend.get('fast_path_note')})")
    print(f"GPU pipelined == sequential: {result['gpu_pipelined_equals_sequential']}; "
          f"{'PASS' if result['passed'] else 'FAIL'}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
