"""``vla-bench``: latency and throughput of the two-stage pipeline, per denoising-step count.

For each steps value: ``--iterations`` sequential requests (one at a time, ``infer``) give the
per-stage and end-to-end latency percentiles and the sequential throughput; the same number of
requests submitted back to back (``submit``) give the pipelined throughput, where request n+1's
vision pass overlaps request n's denoising. Prints a table, writes a JSON record and a PNG of the
end-to-end latency CDFs.

Examples::

    python -m vla_inference.lab.bench                       # ONNX Runtime, shipped tiny policy
    python -m vla_inference.lab.bench --backend torch --preset pi05 --random-weights \\
        --device cuda --precision bf16
    python -m vla_inference.lab.bench --backend torch --preset pi05 --random-weights \\
        --device cuda --torch-option fast_path=false                # A/B: the policy as written
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from vla_inference.runtime.backends import BACKENDS, Backend, create_backend
from vla_inference.runtime.pipeline import ActionChunk, InferencePipeline
from vla_inference.runtime.sample_views import CONFIDENCE_VIEWS, max_view_rows
from vla_inference.spec.config import VlaConfig, get_preset
from vla_inference.spec.manifest import load_manifest, shipped_model_dir
from vla_inference.spec.observation import Observation

STAGES = ("preprocess", "vision", "denoise", "postprocess", "total")
PERCENTILES = (50, 95, 99)
COMMANDS = ("pick up the red block", "push the green cube to the left", "stack the blue block on the red one",
            "move to the yellow marker", "open the gripper")
BOOLEAN_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True, "0": False}
TORCH_OPTION_HELP = ("a TorchBackend constructor option, NAME=VALUE, repeatable: fast_path, compile, sync_prefix, "
                     "shared_views (camera views in one pass), online_softmax (true/false, default true), attention "
                     "(split/joint/flex, default split), prefix_attention (manual/sdpa, default manual); e.g. "
                     "fast_path=false serves the policy as written, for A/B runs.")


def bench_observations(cfg: VlaConfig, count: int, cameras: int, lidar: bool, seed: int = 0) -> List[Observation]:
    """Seeded random observations at the model's sizes (dense models: content does not change timing)."""
    if not 1 <= cameras <= cfg.max_cameras:
        raise ValueError(f"cameras: expected 1..{cfg.max_cameras}, received {cameras}")
    rng = np.random.default_rng(seed)
    size = cfg.vision.image_size
    observations = []
    for i in range(count):
        images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(cameras)]
        lidar_range = None
        if lidar:
            lidar_range = rng.uniform(0.0, cfg.lidar.max_range_m, (cfg.lidar.rows, cfg.lidar.cols)).astype(np.float32)
        state = rng.standard_normal(cfg.state_dim).astype(np.float32)
        observations.append(Observation(images, COMMANDS[i % len(COMMANDS)], state, lidar_range))
    return observations


class PeakRssSampler:
    """Samples this process's RSS with psutil every ``interval_s`` in a background thread."""

    def __init__(self, interval_s: float = 0.01) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.peak_bytes = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def __enter__(self) -> "PeakRssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)


def percentiles(values: Sequence[float]) -> Dict[str, float]:
    data = np.asarray(values, dtype=np.float64)
    result = {f"p{p}": float(np.percentile(data, p)) for p in PERCENTILES}
    result["mean"] = float(data.mean())
    result["max"] = float(data.max())
    return result


def _stage_ms(chunk: ActionChunk, stage: str) -> float:
    return float(getattr(chunk.timings, f"{stage}_ms"))


def run_steps(
    pipeline: InferencePipeline, observations: Sequence[Observation], steps: int, iterations: int, seed: int
) -> Dict[str, Any]:
    """Sequential latencies and throughput, then pipelined throughput, for one steps value."""
    chunks: List[ActionChunk] = []
    start = time.perf_counter()
    for i in range(iterations):
        chunks.append(pipeline.infer(observations[i % len(observations)], steps, seed + i))
    sequential_s = time.perf_counter() - start
    start = time.perf_counter()
    futures = [pipeline.submit(observations[i % len(observations)], steps, seed + i) for i in range(iterations)]
    pipelined = [f.result() for f in futures]
    pipelined_s = time.perf_counter() - start
    identical = all(np.array_equal(a.actions, b.actions) for a, b in zip(chunks, pipelined))
    latencies = {stage: [_stage_ms(c, stage) for c in chunks] for stage in STAGES}
    return {
        "steps": steps,
        "iterations": iterations,
        "latency_ms": {stage: percentiles(values) for stage, values in latencies.items()},
        "total_ms_samples": latencies["total"],
        "throughput_rps": {"sequential": iterations / sequential_s, "pipelined": iterations / pipelined_s},
        "pipelined_equals_sequential": identical,
        "mean_confidence": _mean_finite([c.confidence for c in chunks]),
    }


def _mean_finite(values: Sequence[float]) -> Optional[float]:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _cuda_peak_bytes() -> Optional[int]:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_allocated())


def _reset_cuda_peak() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def torch_option(text: str) -> Tuple[str, Any]:
    """One ``--torch-option NAME=VALUE``: true/false (yes/no, on/off, 1/0) become booleans, other
    values stay strings; the backend's constructor checks the names and values."""
    name, separator, value = text.partition("=")
    if not separator or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, received {text!r}")
    return name.strip(), BOOLEAN_WORDS.get(value.strip().lower(), value.strip())


def add_torch_option_argument(parser: argparse.ArgumentParser, scope: str) -> None:
    """``--torch-option``, collected into ``args.torch_options`` (a list of (name, value)); ``scope``
    says which backends of the tool take the options."""
    parser.add_argument("--torch-option", dest="torch_options", type=torch_option, action="append", default=[],
                        metavar="NAME=VALUE", help=f"{TORCH_OPTION_HELP} {scope}")


def make_backend(args: argparse.Namespace) -> Backend:
    """The backend the command line asks for (random-weight torch policies need no model dir)."""
    options: Dict[str, Any] = {"device": args.device}
    if args.precision:
        options["precision"] = args.precision
    if args.intra_op_threads is not None:
        options["intra_op_threads"] = args.intra_op_threads
    if args.expert_workers is not None:
        if args.backend != "onnxruntime":
            raise SystemExit("--expert-workers is an onnxruntime option")
        options["expert_workers"] = args.expert_workers
    if args.torch_options:
        if args.backend != "torch":
            raise SystemExit("--torch-option needs --backend torch")
        options.update(args.torch_options)
    if args.random_weights:
        if args.backend != "torch":
            raise SystemExit("--random-weights needs --backend torch (ONNX/TensorRT serve exported files)")
        from vla_inference.runtime.backends.torch_backend import TorchBackend

        options.pop("intra_op_threads", None)
        return TorchBackend.with_random_weights(get_preset(args.preset), seed=args.seed, **options)
    model_dir = Path(args.model_dir) if args.model_dir else shipped_model_dir()
    if args.engine_cache_dir:
        options["engine_cache_dir"] = args.engine_cache_dir
    manifest = load_manifest(model_dir)
    view_rows = max_view_rows(args.confidence_views, manifest.config.max_cameras)  # TensorRT's profiles: no reload
    return create_backend(args.backend, manifest, num_samples=args.num_samples, view_rows=view_rows, **options)


def format_table(record: Dict[str, Any]) -> str:
    lines = []
    for result in record["results"]:
        lat = result["latency_ms"]
        tp = result["throughput_rps"]
        lines.append(f"steps={result['steps']}  ({result['iterations']} requests)")
        lines.append(f"  {'stage':<12}{'p50':>9}{'p95':>9}{'p99':>9}{'mean':>9}   ms")
        for stage in STAGES:
            row = lat[stage]
            lines.append(f"  {stage:<12}{row['p50']:>9.2f}{row['p95']:>9.2f}{row['p99']:>9.2f}{row['mean']:>9.2f}")
        lines.append(
            f"  throughput  sequential {tp['sequential']:.2f} req/s, pipelined {tp['pipelined']:.2f} req/s "
            f"(x{tp['pipelined'] / tp['sequential']:.2f}); pipelined == sequential: {result['pipelined_equals_sequential']}"
        )
    lines.append("")
    header = f"{'steps':>5}{'e2e p50':>10}{'e2e p95':>10}{'e2e p99':>10}{'vision p50':>12}{'denoise p50':>13}" \
             f"{'seq req/s':>11}{'pipe req/s':>12}"
    lines.append(header)
    for result in record["results"]:
        lat, tp = result["latency_ms"], result["throughput_rps"]
        lines.append(
            f"{result['steps']:>5}{lat['total']['p50']:>10.2f}{lat['total']['p95']:>10.2f}{lat['total']['p99']:>10.2f}"
            f"{lat['vision']['p50']:>12.2f}{lat['denoise']['p50']:>13.2f}{tp['sequential']:>11.2f}{tp['pipelined']:>12.2f}"
        )
    memory = record["memory"]
    load = record["host"]["load_average_1min"]
    lines.append(f"host: {record['host']['cpu_count']} CPUs, 1-min load average {load[0]:.2f} before, "
                 f"{load[1]:.2f} after (the load before the run is other processes' share of the cores)")
    lines.append(f"peak host RSS {memory['peak_rss_mib']:.1f} MiB (psutil, sampled every 10 ms; "
                 f"kernel maxrss {memory['maxrss_mib']:.1f} MiB)")
    if memory["peak_gpu_mib"] is not None:
        lines.append(f"peak GPU memory {memory['peak_gpu_mib']:.1f} MiB (torch.cuda.max_memory_allocated)")
    return "\n".join(lines)


def write_cdf_png(record: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for result in record["results"]:
        data = np.sort(np.asarray(result["total_ms_samples"]))
        label = f"{result['steps']} step{'' if result['steps'] == 1 else 's'}"
        ax.step(data, np.arange(1, data.size + 1) / data.size, where="post", label=label)
    info = record["config"]
    ax.set_title(f"{info['backend']} {info['preset']} {info['precision']} on {info['device']}: "
                 f"{info['cameras']} cameras{' + LiDAR' if info['lidar'] else ''}, K={info['num_samples']}")
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vla-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="onnxruntime", choices=BACKENDS)
    parser.add_argument("--model-dir", default=None, help="model directory (default: the shipped tiny policy)")
    parser.add_argument("--preset", default="pi05", help="preset for --random-weights (tiny or pi05)")
    parser.add_argument("--random-weights", action="store_true", help="torch only: random policy of --preset")
    parser.add_argument("--steps", default="1,3,5,10", help="comma-separated denoising step counts")
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--no-lidar", dest="lidar", action="store_false")
    parser.add_argument("--iterations", type=int, default=50, help="requests per steps value (each mode)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="requests per steps value served before the measured ones, not recorded (default 0)")
    parser.add_argument("--num-samples", type=int, default=4, help="K action chunks per request")
    parser.add_argument("--confidence-views", choices=CONFIDENCE_VIEWS, default="cameras",
                        help="what the K samples differ in besides noise (runtime.sample_views): cameras "
                             "(the served default; two vision rows) or noise (one row)")
    parser.add_argument("--precision", default=None, help="fp32/int8 (onnxruntime), fp16/bf16/fp8/int8 (tensorrt), "
                                                          "fp32/bf16/fp16 (torch); default: the backend's")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--intra-op-threads", type=int, default=None, help="CPU threads per engine")
    parser.add_argument("--expert-workers", type=int, default=None,
                        help="onnxruntime: slices of the K samples denoised at once (default: the backend's, 2)")
    parser.add_argument("--engine-cache-dir", default=None, help="tensorrt: where .plan files live")
    add_torch_option_argument(parser, "Needs --backend torch.")
    parser.add_argument("--no-pipelining", dest="pipelining", action="store_false",
                        help="serve with one thread (the pipelined column then measures back-to-back submits)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="vla_bench", help="output prefix: writes <out>.json and <out>.png")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    steps_list = [int(s) for s in args.steps.split(",") if s.strip()]
    load_before = os.getloadavg()[0]
    with PeakRssSampler() as rss:
        print(f"[vla-bench] loading {args.backend} ...", flush=True)
        load_start = time.perf_counter()
        backend = make_backend(args)
        _reset_cuda_peak()
        pipeline = InferencePipeline(backend, num_samples=args.num_samples, pipelining=args.pipelining,
                                     confidence_views=args.confidence_views, owns_backend=True)
        cfg = pipeline.cfg
        print(f"[vla-bench] {cfg.preset} loaded and warmed up in {time.perf_counter() - load_start:.1f} s; "
              f"{args.cameras} cameras{' + LiDAR' if args.lidar else ''}, K={args.num_samples}, "
              f"views {args.confidence_views}", flush=True)
        if backend.device == "cuda":
            info = backend.describe()
            print("[vla-bench] " + ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("backend", "device")),
                  flush=True)
        observations = bench_observations(cfg, 8, args.cameras, args.lidar, seed=args.seed)
        results = []
        try:
            for steps in steps_list:
                print(f"[vla-bench] steps={steps}: {args.warmup} warm-up, {args.iterations} sequential + "
                      f"{args.iterations} pipelined requests", flush=True)
                for i in range(args.warmup):
                    pipeline.infer(observations[i % len(observations)], steps, args.seed + i)
                results.append(run_steps(pipeline, observations, steps, args.iterations, args.seed))
                result = results[-1]
                print(f"[vla-bench]   e2e p50 {result['latency_ms']['total']['p50']:.2f} ms, "
                      f"p99 {result['latency_ms']['total']['p99']:.2f} ms", flush=True)
            description = backend.describe()
        finally:
            pipeline.close()
    record = {
        "config": {
            "backend": args.backend,
            "preset": cfg.preset,
            "model_dir": None if args.random_weights else str(backend.manifest.model_dir),
            "random_weights": args.random_weights,
            "precision": backend.precision,
            "device": backend.device,
            "cameras": args.cameras,
            "lidar": args.lidar,
            "num_samples": args.num_samples,
            "confidence_views": args.confidence_views,
            "pipelining": args.pipelining,
            "iterations": args.iterations,
            "warmup": args.warmup,
            "steps": steps_list,
            "torch_options": dict(args.torch_options),
        },
        "backend": description,
        "host": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                 "processor": platform.processor(), "load_average_1min": [load_before, os.getloadavg()[0]]},
        "results": results,
        "memory": {
            "peak_rss_mib": rss.peak_bytes / 2**20,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mib": None if _cuda_peak_bytes() is None else _cuda_peak_bytes() / 2**20,
        },
    }
    print(format_table(record))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out.with_suffix(".json"), out.with_suffix(".png")
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    write_cdf_png(record, png_path)
    print(f"[vla-bench] wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
