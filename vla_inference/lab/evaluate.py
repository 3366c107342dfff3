"""Held-out evaluation of a model directory: action MSE and task success per backend and precision.

``python -m vla_inference.lab.evaluate --model-dir models/tiny`` (the ``vla-eval`` entry point)
samples one chunk per held-out scene (seeds from ``EVAL_SEED_BASE``, disjoint from training) with
10 Euler steps from seeded noise shared by every backend, executes it with ``simulate`` and counts a
success when the end point is within ``SUCCESS_TOLERANCE_M`` of the ground-truth chunk's end point.
Backends: PyTorch fp32 (from ``policy.safetensors``) and ONNX Runtime for every precision in the
manifest. The ONNX Runtime fp32 engines are also run with sensors removed (one camera; no LiDAR),
to show what each modality is worth, replayed in the closed loop the synthetic robot runs
(``closed_loop``), and timed at batch 1 and 4. Finally the shipped pipeline's
confidence (spread of ``DISPERSION_SAMPLES`` chunks with camera views) is scored against scrambled
copies of held-out scenes (``lab.confidence_eval``): the AUROC per scramble, and the success of
the mean chunk the pipeline answers with.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from vla_inference.lab.closed_loop import LoopSettings, closed_loop_success
from vla_inference.lab.sampler import EngineSampler, Sampler, sample_in_batches, torch_sampler
from vla_inference.spec.config import VlaConfig
from vla_inference.spec.manifest import Manifest, load_manifest
from vla_inference.spec.observation import vision_feeds
from vla_inference.synthetic.dataset import EVAL_SEED_BASE, make_observation
from vla_inference.synthetic.scene import (
    SLOW_STEP_M,
    SUCCESS_TOLERANCE_M,
    chunk_goal,
    expert_actions,
    generate_scene,
    simulate,
    step_length,
)

DEFAULT_SCENES = 200
DEFAULT_STEPS = 10
DISPERSION_SAMPLES = 4
CONFIDENCE_SCENES = 100
CLOSED_LOOP_SCENES = 100
# 0: every executed row comes from a chunk planned part-way along (the hard case); 4: the synthetic graph's ~200 ms.
CLOSED_LOOP_LATENCY_ROWS = (0, 4)

@dataclass
class EvalSet:
    """Everything a backend needs for held-out scenes, built once and shared."""

    seeds: np.ndarray
    feeds: Dict[str, np.ndarray]
    actions: np.ndarray  # ground truth [N, H, D]
    ee_start: np.ndarray  # [N, 3]
    goals: np.ndarray  # [N, 3], end points of the ground-truth chunks
    slow: np.ndarray  # bool [N]: a pole next to the path
    noise: np.ndarray  # [N, H, D], seeded per scene

    def __len__(self) -> int:
        return int(self.seeds.shape[0])


def build_eval_set(cfg: VlaConfig, num_scenes: int = DEFAULT_SCENES, seed_base: int = EVAL_SEED_BASE,
                   num_cameras: int = 3, with_lidar: bool = True) -> EvalSet:
    seeds = np.arange(seed_base, seed_base + num_scenes)
    scenes = [generate_scene(int(s)) for s in seeds]
    observations = [make_observation(s, num_cameras, with_lidar, cfg.vision.image_size) for s in scenes]
    noise = np.stack([
        np.random.default_rng([int(s), 7]).standard_normal((cfg.action_horizon, cfg.action_dim)).astype(np.float32)
        for s in seeds
    ])
    return EvalSet(
        seeds=seeds,
        feeds=vision_feeds(observations, cfg),
        actions=np.stack([expert_actions(s) for s in scenes]),
        ee_start=np.array([s.ee_start for s in scenes]),
        goals=np.stack([chunk_goal(s) for s in scenes]),
        slow=np.array([step_length(s) == SLOW_STEP_M for s in scenes]),
        noise=noise,
    )


def with_sensors(eval_set: EvalSet, num_cameras: int, with_lidar: bool) -> EvalSet:
    """The same scenes with cameras >= ``num_cameras`` and/or the LiDAR masked out and zeroed."""
    feeds = {k: v.copy() for k, v in eval_set.feeds.items()}
    feeds["camera_mask"][:, num_cameras:] = False
    feeds["images"][:, num_cameras:] = 0.0
    if not with_lidar:
        feeds["lidar_mask"][:] = False
        feeds["lidar_range"][:] = 0.0
    return EvalSet(eval_set.seeds, feeds, eval_set.actions, eval_set.ee_start, eval_set.goals, eval_set.slow,
                   eval_set.noise)


def _batched(sampler: Sampler, eval_set: EvalSet, steps: int) -> np.ndarray:
    return sample_in_batches(sampler, eval_set.feeds, eval_set.noise, steps)


def score(predicted: np.ndarray, eval_set: EvalSet) -> Dict[str, float]:
    """Action MSE (all dims, action units), position MSE (cm^2), end-point error and success rates."""
    ends = np.stack([simulate(e, a)[-1] for e, a in zip(eval_set.ee_start, predicted)])
    error = np.linalg.norm(ends - eval_set.goals, axis=1)
    success = error <= SUCCESS_TOLERANCE_M
    slow = eval_set.slow
    return {
        "action_mse": float(np.mean((predicted - eval_set.actions) ** 2)),
        "position_mse_cm2": float(np.mean(((predicted[..., :3] - eval_set.actions[..., :3]) * 100.0) ** 2)),
        "endpoint_error_cm_median": float(np.median(error) * 100.0),
        "success": float(success.mean()),
        "success_pole_near_path": float(success[slow].mean()) if slow.any() else float("nan"),
        "success_clear_path": float(success[~slow].mean()) if (~slow).any() else float("nan"),
        "scenes": int(len(eval_set)),
    }


def measure_latency(sampler: EngineSampler, cfg: VlaConfig, batch: int, repeats: int = 20) -> Dict[str, float]:
    """Median wall time (ms) of one vision call and one expert call at ``batch``."""
    eval_set = build_eval_set(cfg, num_scenes=batch, seed_base=EVAL_SEED_BASE + 900_000)
    prefix = sampler.encode(eval_set.feeds)
    t = np.full(batch, 0.5, np.float32)
    vision_ms, expert_ms = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        sampler.encode(eval_set.feeds)
        vision_ms.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        sampler.velocity(eval_set.noise, t, prefix)
        expert_ms.append((time.perf_counter() - start) * 1e3)
    return {"vision_ms": float(np.median(vision_ms)), "expert_ms": float(np.median(expert_ms))}


def evaluate_model_dir(model_dir: Path, num_scenes: int = DEFAULT_SCENES, steps: int = DEFAULT_STEPS,
                       with_torch: bool = True, with_ablations: bool = True, with_latency: bool = True,
                       progress: Optional[Callable[[str], None]] = None) -> Dict[str, object]:
    """Evaluate every backend/precision of ``model_dir``; returns a JSON-ready dict."""
    manifest = load_manifest(model_dir)
    log = progress or (lambda message: None)
    log(f"building {num_scenes} held-out scenes")
    eval_set = build_eval_set(manifest.config, num_scenes)
    with contextlib.ExitStack() as stack:
        samplers = {precision: stack.enter_context(EngineSampler(manifest, precision))
                    for precision in manifest.precisions}
        return _evaluate(manifest, samplers, eval_set, steps, with_torch, with_ablations, with_latency, log)


def _evaluate(manifest: Manifest, samplers: Dict[str, EngineSampler], eval_set: EvalSet, steps: int,
              with_torch: bool, with_ablations: bool, with_latency: bool, log: Callable[[str], None]) -> Dict[str, object]:
    cfg = manifest.config
    results: Dict[str, Dict[str, float]] = {}
    if with_torch and manifest.weights_path is not None:
        log("PyTorch fp32")
        results["pytorch/fp32"] = score(_batched(torch_sampler(manifest.weights_path, cfg), eval_set, steps), eval_set)
    for precision, sampler in samplers.items():
        log(f"ONNX Runtime {precision}")
        results[f"onnxruntime/{precision}"] = score(_batched(sampler, eval_set, steps), eval_set)
    report: Dict[str, object] = {
        "model_dir": str(manifest.model_dir),
        "scenes": len(eval_set),
        "seed_base": EVAL_SEED_BASE,
        "steps": steps,
        "success_tolerance_m": SUCCESS_TOLERANCE_M,
        "pole_near_path_fraction": float(eval_set.slow.mean()),
        "results": results,
    }
    reference = samplers.get("fp32")
    if reference is not None and with_ablations:
        ablations = {}
        for name, cameras, lidar in (("1 camera", 1, True), ("2 cameras", 2, True), ("no LiDAR", 3, False)):
            log(f"ablation: {name}")
            ablated = with_sensors(eval_set, cameras, lidar)
            ablations[name] = score(_batched(reference, ablated, steps), ablated)
        report["ablations_onnxruntime_fp32"] = ablations
        report["closed_loop_onnxruntime_fp32"] = {}
        for latency in CLOSED_LOOP_LATENCY_ROWS:
            log(f"closed loop ({CLOSED_LOOP_SCENES} scenes, answers {latency} rows after the request)")
            report["closed_loop_onnxruntime_fp32"][f"latency {latency} rows"] = closed_loop_success(
                reference, cfg, CLOSED_LOOP_SCENES, steps, LoopSettings(latency_rows=latency))
        log(f"confidence AUROC, real vs scrambled ({CONFIDENCE_SCENES} scenes)")
        report["confidence"] = confidence_auroc(manifest.model_dir, CONFIDENCE_SCENES, steps)
    if reference is not None and with_latency:
        log("latency")
        report["latency_onnxruntime_cpu"] = {
            f"{precision}/batch{batch}": measure_latency(sampler, cfg, batch)
            for precision, sampler in samplers.items() for batch in (1, 4)
        }
    return report


def confidence_auroc(model_dir: Path, num_scenes: int, steps: int) -> Dict[str, object]:
    """The served pipeline (ONNX Runtime fp32, K samples with camera views) on real and scrambled
    scenes: AUROC of its confidence, its dispersions (``confidence_scale`` is the real p95) and the
    success of the mean chunk it answers with."""
    from vla_inference.lab.confidence_eval import evaluate_confidence
    from vla_inference.runtime.pipeline import InferencePipeline

    with InferencePipeline.from_model_dir(model_dir, backend="onnxruntime", num_samples=DISPERSION_SAMPLES,
                                          warmup_runs=1) as pipeline:
        result = evaluate_confidence(pipeline, num_scenes, steps)
    return {
        "scenes": num_scenes,
        "num_samples": DISPERSION_SAMPLES,
        "confidence_views": result.confidence_views,
        "served_success": result.real_success,
        "real_median": float(np.median(result.real_confidence)),
        "scrambled_median": {mode: float(np.median(v)) for mode, v in result.scrambled_confidence.items()},
        "real_dispersion_median": float(np.median(result.real_dispersion)),
        "real_dispersion_p95": float(np.percentile(result.real_dispersion, 95)),
        "scrambled_dispersion_median": {mode: float(np.median(v)) for mode, v in result.scrambled_dispersion.items()},
        "auroc": dict(result.auroc),
    }


def format_report(report: Dict[str, object]) -> str:
    """Human-readable tables of a report from ``evaluate_model_dir``."""
    lines = [
        f"held-out scenes: {report['scenes']} (seeds {report['seed_base']}..), {report['steps']} Euler steps, "
        f"success = end point within {100 * float(report['success_tolerance_m']):.0f} cm of the chunk goal; "
        f"pole near path in {100 * float(report['pole_near_path_fraction']):.0f}% of scenes",
        "",
        _table("backend/precision", report["results"]),  # type: ignore[arg-type]
    ]
    if "ablations_onnxruntime_fp32" in report:
        lines += ["", _table("sensors (ORT fp32)", report["ablations_onnxruntime_fp32"])]  # type: ignore[arg-type]
    if "closed_loop_onnxruntime_fp32" in report:
        lines += ["", f"{'closed loop (ORT fp32)':<22}{'asked every':>12}{'answer after':>14}{'success':>9}"
                      f"{'near pole':>11}{'clear':>8}{'median s':>10}"]
        for loop in report["closed_loop_onnxruntime_fp32"].values():  # type: ignore[union-attr]
            lines.append(f"{str(loop['scenes']) + ' scenes':<22}{str(loop['request_every_rows']) + ' rows':>12}"
                         f"{str(loop['latency_rows']) + ' rows':>14}{100 * loop['success']:>8.1f}%"
                         f"{100 * loop['success_pole_near_path']:>10.1f}%{100 * loop['success_clear_path']:>7.1f}%"
                         f"{loop['median_seconds_to_success']:>10.2f}")
    if "confidence" in report:
        confidence: Dict[str, object] = report["confidence"]  # type: ignore[assignment]
        lines += ["", f"confidence AUROC, real vs scrambled (served pipeline, ORT fp32, K={confidence['num_samples']}, "
                      f"views {confidence['confidence_views']}, {confidence['scenes']} scenes; 0.5 = chance)",
                  f"{'real':<22}median confidence {float(confidence['real_median']):.3f}"  # type: ignore[arg-type]
                  f"   served mean-chunk success {100 * float(confidence['served_success']):.1f}%"]  # type: ignore[arg-type]
        for mode, value in confidence["auroc"].items():  # type: ignore[union-attr]
            median = float(confidence["scrambled_median"][mode])  # type: ignore[index]
            lines.append(f"{mode:<22}median confidence {median:.3f}   AUROC {value:.3f}")
    if "latency_onnxruntime_cpu" in report:
        lines += ["", f"{'ORT CPU latency':<22}{'vision ms':>11}{'expert ms':>11}"]
        for key, value in report["latency_onnxruntime_cpu"].items():  # type: ignore[union-attr]
            lines.append(f"{key:<22}{value['vision_ms']:>11.2f}{value['expert_ms']:>11.2f}")
    return "\n".join(lines)


def _table(title: str, rows: Dict[str, Dict[str, float]]) -> str:
    header = f"{title:<22}{'action MSE':>12}{'pos MSE cm2':>13}{'end err cm':>12}{'success':>9}{'near pole':>11}{'clear':>8}"
    lines = [header, "-" * len(header)]
    for name, m in rows.items():
        lines.append(
            f"{name:<22}{m['action_mse']:>12.5f}{m['position_mse_cm2']:>13.3f}{m['endpoint_error_cm_median']:>12.2f}"
            f"{100 * m['success']:>8.1f}%{100 * m['success_pole_near_path']:>10.1f}%{100 * m['success_clear_path']:>7.1f}%"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("models/tiny"))
    parser.add_argument("--scenes", type=int, default=DEFAULT_SCENES)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--json", type=Path, default=Path("vla_eval.json"), help="where to write the report")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch backend")
    parser.add_argument("--quick", action="store_true", help="skip ablations, dispersion, confidence AUROC and latency")
    args = parser.parse_args(argv)
    report = evaluate_model_dir(args.model_dir, args.scenes, args.steps, with_torch=not args.no_torch,
                                with_ablations=not args.quick, with_latency=not args.quick,
                                progress=lambda message: print(f"[eval] {message}", file=sys.stderr, flush=True))
    print(format_report(report))
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
