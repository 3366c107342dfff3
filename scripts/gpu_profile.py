"""Where the milliseconds go for one pi0.5-size request on a CUDA GPU (random weights).

    python scripts/gpu_profile.py --steps 3 --out out/gpu_profile
    python scripts/gpu_profile.py --variants policy,fast,fast-compile --profile fast-compile --out out/gpu_profile

Three views, all on one randomly initialised policy of ``--preset`` (bf16):

* ``--variants``: the torch backend served several ways on the same weights (``policy``: the
  model's own modules in CUDA graphs; ``fast``: ``FastPolicy`` eager; ``fast-compile``: with
  ``torch.compile``; suffix ``-joint``: SDPA over the concatenated keys instead of the split
  attention; ``-flex``: one FlexAttention kernel over them; ``-sdpa``: SDPA for the prefix
  attention; ``-async``: stage 1 does not wait for its GPU work; ``-rows``: camera views encoded as
  two rows, not in one pass; ``-plainsoftmax``: Inductor's
  softmax without its online form). For each: set-up time
  (capture and compile), pure GPU time of one replay of each prefix graph and of one step graph
  (CUDA events, median of ``--replays``), host-timed p50 of vision / denoise / end to end at
  steps 1 and 10, sequential vs pipelined throughput at ``--steps``, and peak GPU memory.
* ``--profile VARIANT``: the torch profiler over one request of that variant: the top CUDA
  kernels, and GPU time summed by kernel family (GEMM, attention, elementwise/reduction, copies).
* ``--trace``: also write the Chrome trace (open in Perfetto).

Prints a table last and writes ``gpu_profile.json`` (and ``profile_top_kernels.txt``) under ``--out``.
"""
import argparse
import json
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from vla_inference.lab.bench import bench_observations
from vla_inference.model.policy import build_policy
from vla_inference.runtime.backends.torch_backend import TorchBackend
from vla_inference.runtime.pipeline import InferencePipeline
from vla_inference.spec.config import get_preset


def variant_options(name: str) -> dict:
    parts = name.split("-")
    if parts[0] not in ("policy", "fast"):
        raise SystemExit(f"unknown variant {name!r}")
    return {"fast_path": parts[0] == "fast", "compile": "compile" in parts,
            "attention": next((a for a in ("joint", "flex") if a in parts), "split"), "sync_prefix": "async" not in parts,
            "prefix_attention": "sdpa" if "sdpa" in parts else "manual", "shared_views": "rows" not in parts,
            "online_softmax": "plainsoftmax" not in parts}


def kernel_family(name: str) -> str:
    n = name.lower()
    if n.startswith("triton"):
        return "triton (fused elementwise/reduction)"
    if any(s in n for s in ("gemm", "gemv", "cutlass", "sm90_xmma", "nvjet", "cublas", "splitk", "matmul")):
        return "gemm"
    if any(s in n for s in ("flash", "fmha", "attention", "sdpa", "cudnn")):
        return "attention"
    if "cat" in n or "copy" in n or "memcpy" in n or "memset" in n:
        return "copy/cat"
    return "elementwise/reduction (aten)"


def gpu_replay_ms(backend: TorchBackend, replays: int) -> dict:
    """Median GPU time of one replay (CUDA events) of the prefix graph for one row, for two rows, for
    the two camera views in one pass, and of one step graph."""
    static = backend._static
    vision = static.get("vision", {})
    if vision.get(1, {}).get("graph") is None:
        return {}
    stream = torch.cuda.Stream()
    result = {}
    graphs = [("prefix_graph_ms", vision[1]["graph"], None)]
    if 2 in vision:
        graphs.append(("two_rows_graph_ms", vision[2]["graph"], None))
    if "views" in static:
        graphs.append(("views_graph_ms", static["views"]["graph"], None))
    for name, graph, reset in graphs + [("step_graph_ms", static["step_graphs"][0], static["step"])]:
        times = []
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(replays + 3):
                if reset is not None:
                    reset.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
                graph.replay()
                end.record(stream)
                end.synchronize()
                times.append(start.elapsed_time(end))
        result[name] = float(np.median(times[3:]))
    return result


def time_variant(policy, cfg, name: str, args, observations) -> dict:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    backend = TorchBackend.from_policy(policy, cfg, "cuda", **variant_options(name))
    pipeline = InferencePipeline(backend, num_samples=args.num_samples, pipelining=True, owns_backend=True)
    row = {"variant": name, "setup_s": time.perf_counter() - start, "describe": backend.describe()}
    try:
        row.update(gpu_replay_ms(backend, args.replays))
        for steps in (1, 10):
            chunks = [pipeline.infer(observations[i % len(observations)], steps, seed=i) for i in range(args.iterations)]
            for stage in ("vision", "denoise", "total"):
                row[f"s{steps}_{stage}_p50"] = float(np.median([getattr(c.timings, f"{stage}_ms") for c in chunks]))
        steps = args.steps
        t0 = time.perf_counter()
        seq = [pipeline.infer(observations[i % len(observations)], steps, seed=i) for i in range(args.iterations)]
        t1 = time.perf_counter()
        futures = [pipeline.submit(observations[i % len(observations)], steps, seed=i) for i in range(args.iterations)]
        pipe = [f.result() for f in futures]
        t2 = time.perf_counter()
        row["pipelined_over_sequential"] = (t1 - t0) / (t2 - t1)
        row["pipelined_equals_sequential"] = all(np.array_equal(a.actions, b.actions) for a, b in zip(seq, pipe))
        row["actions"] = seq[0].actions
        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    finally:
        pipeline.close()
    return row


def profile_variant(policy, cfg, name: str, args, observation, out: Path) -> dict:
    backend = TorchBackend.from_policy(policy, cfg, "cuda", **variant_options(name))
    pipeline = InferencePipeline(backend, num_samples=args.num_samples, pipelining=False, owns_backend=True)
    try:
        for _ in range(3):
            pipeline.infer(observation, steps=args.steps, seed=0)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            chunk = pipeline.infer(observation, steps=args.steps, seed=0)
            torch.cuda.synchronize()
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as step_prof:
            for _ in range(10):
                backend._static["step"].zero_()
                backend._static["step_graphs"][0].replay()
            torch.cuda.synchronize()
    finally:
        pipeline.close()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.row_limit, max_name_column_width=70)
    ops = prof.key_averages(group_by_input_shape=True).table(sort_by="cuda_time_total", row_limit=args.row_limit,
                                                           max_name_column_width=40, max_shapes_column_width=90)
    (out / "profile_top_kernels.txt").write_text(table + "\n\n" + ops + "\n")
    print(table)
    print(ops)
    families, counts, total = defaultdict(float), defaultdict(int), 0.0
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            us = event.device_time
            families[kernel_family(event.name)] += us
            counts[kernel_family(event.name)] += 1
            total += us
    step_table = step_prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90)
    (out / "profile_step_kernels.txt").write_text("10 replays of one step graph\n" + step_table + "\n")
    print(step_table)
    if args.trace:
        prof.export_chrome_trace(str(out / f"trace_{cfg.preset}_{name}_steps{args.steps}.json"))
    by_time = sorted(families.items(), key=lambda kv: -kv[1])
    summary = {"variant": name, "steps": args.steps, "timings_ms": chunk.timings.__dict__,
               "gpu_kernel_ms_total": total / 1000.0,
               "families": {k: {"ms": v / 1000.0, "kernels": counts[k]} for k, v in by_time}}
    print(f"profile {name}, {args.steps} steps: {total / 1000.0:.2f} ms of kernels; host timings {chunk.timings}")
    for family, info in summary["families"].items():
        print(f"  {family:<40}{info['ms']:>9.2f} ms {info['kernels']:>6} kernels")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="pi05")
    parser.add_argument("--steps", type=int, default=3, help="steps for the profile and the throughput ratio")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--variants", default="", help="comma-separated, e.g. policy,fast,fast-compile")
    parser.add_argument("--profile", default="fast-compile", help="variant to profile ('' for none)")
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--row-limit", type=int, default=25)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("out/gpu_profile"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = get_preset(args.preset)
    torch.manual_seed(0)
    with torch.device("cuda"):
        policy = build_policy(cfg)
    policy = policy.to(dtype=torch.bfloat16).eval()
    observations = bench_observations(cfg, 8, 3, True)
    print(f"torch {torch.__version__} CUDA {torch.version.cuda} on {torch.cuda.get_device_name()}", flush=True)
    record = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(),
              "preset": args.preset, "num_samples": args.num_samples, "variants": [], "profile": None}
    reference = None
    for name in [v for v in args.variants.split(",") if v]:
        try:
            row = time_variant(policy, cfg, name, args, observations)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next variant
            print(f"[{name}] FAILED: {type(exc).__name__}: {exc}", flush=True)
            record["variants"].append({"variant": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        actions = row.pop("actions")
        if reference is None:
            reference = actions
        row["cosine_vs_first"] = float(np.dot(actions.ravel(), reference.ravel())
                                        / (np.linalg.norm(actions) * np.linalg.norm(reference) + 1e-30))
        record["variants"].append(row)
        print(f"[{name}] {json.dumps({k: v for k, v in row.items() if k != 'describe'})}", flush=True)
        print(f"[{name}] {row['describe'].get('fast_path_note', '')}", flush=True)
    if args.profile:
        record["profile"] = profile_variant(policy, cfg, args.profile, args, observations[0], args.out)
    (args.out / "gpu_profile.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    if record["variants"]:
        cols = ("setup_s", "prefix_graph_ms", "two_rows_graph_ms", "views_graph_ms", "step_graph_ms",
                "s1_vision_p50", "s1_total_p50", "s10_denoise_p50",
                "s10_total_p50", "pipelined_over_sequential", "peak_gpu_mib", "cosine_vs_first")
        print(f"{'variant':<22}" + "".join(f"{re.sub('_p50', '', c):>16}" for c in cols))
        for row in record["variants"]:
            print(f"{row['variant']:<22}" + "".join(
                f"{row[c]:>16.3f}" if isinstance(row.get(c), float) else f"{str(row.get(c, '-')):>16}" for c in cols))


if __name__ == "__main__":
    main()
