"""The accuracy gate of Q/DQ engines: quantise, then judge them on ONNX Runtime (CPU) like fp32.

``python -m vla_inference.lab.quant_gate --model-dir models/tiny --precision int8 --write \\
    --json docs/benchmarks/quant_gate_tiny_int8.json``

quantises the model directory's fp32 engines into a scratch directory (``model.quantize``, calibrated
on synthetic scenes of their own seed range), then runs fp32 and the candidate through the same
evaluation as ``vla-eval``: one chunk per held-out scene (``evaluate.score``: success within 3 cm of
the chunk's goal, end-point error) and the closed loop the synthetic robot runs
(``closed_loop.closed_loop_success``, answers 0 and 4 rows after the request), both through the
serving backend (``EngineSampler``). It also measures how far each candidate chunk ends from the
fp32 chunk of the same scene and noise (``chunk_numerics``, cm).

The gate: closed-loop and one-chunk success within ``GATE_POINTS`` (3) percentage points of fp32.
With ``--write`` and a passed gate, the files go into the model directory as
``<engine>.<precision>.onnx`` and the manifest records them with their ``quantization`` record
(other precisions and keys kept). ``--ablation`` also evaluates the recipe without its float
layers (state embedding quantised; everything quantised), to show what they are kept for.

FP8: ONNX Runtime's CPU kernels have no FP8 arithmetic; they dequantize the FP8 weights and
activations to float and multiply in fp32 (with basic graph optimizations only, see
``onnxruntime_backend``). That reproduces FP8's rounding (the values a Hopper or Thor FP8 GEMM reads)
but not its accumulation or speed: for ``--precision fp8`` the gate is a simulation of the numerics,
and the record says so.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from vla_inference.lab.chunk_numerics import path_errors, summarize
from vla_inference.lab.closed_loop import LoopSettings, closed_loop_success
from vla_inference.lab.evaluate import (
    CLOSED_LOOP_LATENCY_ROWS,
    CLOSED_LOOP_SCENES,
    DEFAULT_SCENES,
    DEFAULT_STEPS,
    build_eval_set,
    score,
)
from vla_inference.lab.sampler import EngineSampler, sample_in_batches
from vla_inference.model.quantize import (
    CALIBRATION_SCENES,
    CALIBRATION_SEED_BASE,
    QDQ_PRECISIONS,
    calibration_feeds,
    prefix_backbone_nodes,
    qdq_record,
    quantize_qdq,
)
from vla_inference.spec.engine_spec import ENGINES, VISION
from vla_inference.spec.manifest import MANIFEST_NAME, Manifest, load_manifest, write_manifest

GATE_POINTS = 3.0
FP32 = "fp32"


def _variants(manifest: Manifest, ablation: bool) -> Dict[str, Optional[Mapping[str, Sequence[str]]]]:
    """Candidate name -> float nodes per engine (None: the recipe's ``float_nodes``)."""
    variants: Dict[str, Optional[Mapping[str, Sequence[str]]]] = {"recipe": None}
    if ablation:
        import onnx

        vision = onnx.load(str(manifest.engine(FP32, VISION).path))
        variants["state embedding quantised"] = {VISION: prefix_backbone_nodes(vision)}
        variants["everything quantised"] = {}
    return variants


def _evaluate(manifest: Manifest, precisions: Sequence[str], scenes: int, loop_scenes: int, steps: int,
              log: Callable[[str], None]) -> Dict[str, Dict[str, object]]:
    eval_set = build_eval_set(manifest.config, scenes)
    results: Dict[str, Dict[str, object]] = {}
    chunks: Dict[str, np.ndarray] = {}
    for precision in precisions:
        started = time.perf_counter()
        with EngineSampler(manifest, precision) as sampler:
            log(f"{precision}: {scenes} held-out scenes, one chunk each")
            chunks[precision] = sample_in_batches(sampler, eval_set.feeds, eval_set.noise, steps)
            result: Dict[str, object] = {"one_chunk": score(chunks[precision], eval_set), "closed_loop": {}}
            for latency in CLOSED_LOOP_LATENCY_ROWS:
                log(f"{precision}: closed loop, {loop_scenes} scenes, answers {latency} rows after the request")
                result["closed_loop"][f"latency {latency} rows"] = closed_loop_success(  # type: ignore[index]
                    sampler, manifest.config, loop_scenes, steps, LoopSettings(latency_rows=latency))
        if precision != FP32:
            result["vs_fp32_chunk_cm"] = summarize(path_errors(chunks[precision], chunks[FP32])).as_dict()
        result["seconds"] = round(time.perf_counter() - started, 1)
        results[precision] = result
    return results


def gate(results: Mapping[str, Mapping[str, object]], candidate: str, points: float = GATE_POINTS) -> Dict[str, object]:
    """Success drops (fp32 - candidate, percentage points) and whether all are within ``points``."""
    reference, tested = results[FP32], results[candidate]
    drops = {"one_chunk": 100 * (reference["one_chunk"]["success"] - tested["one_chunk"]["success"])}  # type: ignore[index]
    for name, loop in reference["closed_loop"].items():  # type: ignore[union-attr]
        drops[f"closed_loop {name}"] = 100 * (loop["success"] - tested["closed_loop"][name]["success"])  # type: ignore[index]
    return {"success_drop_points": {k: round(v, 2) for k, v in drops.items()}, "limit_points": points,
            "passed": all(v <= points + 1e-9 for v in drops.values())}


def run_gate(model_dir: Path, precision: str, scenes: int = DEFAULT_SCENES, loop_scenes: int = CLOSED_LOOP_SCENES,
             steps: int = DEFAULT_STEPS, calibration_scenes: int = CALIBRATION_SCENES, ablation: bool = False,
             write: bool = False, log: Callable[[str], None] = lambda message: None) -> Dict[str, object]:
    """Quantise ``model_dir``'s fp32 engines to ``precision`` Q/DQ, evaluate, gate, and (``write``) ship."""
    import onnxruntime

    if precision not in QDQ_PRECISIONS:
        raise ValueError(f"precision: expected one of {QDQ_PRECISIONS}, received {precision!r}")
    manifest = load_manifest(model_dir)
    fp32 = {name: manifest.engine(FP32, name).path.name for name in ENGINES}
    with tempfile.TemporaryDirectory(prefix="vla-quant-gate-") as tmp:
        scratch = Path(tmp)
        for filename in fp32.values():
            (scratch / filename).symlink_to(Path(model_dir).resolve() / filename)
        log(f"calibration: {calibration_scenes} synthetic scenes from seed {CALIBRATION_SEED_BASE}")
        calibration = calibration_feeds(manifest.config, scratch, fp32, calibration_scenes)
        engines: Dict[str, Dict[str, str]] = {FP32: fp32}
        records = {}
        for variant, keep in _variants(manifest, ablation).items():
            log(f"quantising ({variant})")
            variant_dir = scratch / variant.replace(" ", "_")
            variant_dir.mkdir()
            for filename in fp32.values():
                (variant_dir / filename).symlink_to(scratch / filename)
            result = quantize_qdq(variant_dir, fp32, manifest.config, precision, calibration, keep)
            name = precision if variant == "recipe" else f"{precision} ({variant})"
            engines[name] = {engine: f"{variant_dir.name}/{filename}" for engine, filename in result.files.items()}
            records[name] = qdq_record(precision, result, calibration_scenes)
        write_manifest(scratch, manifest.config, engines, quantization=records)
        results = _evaluate(load_manifest(scratch), list(engines), scenes, loop_scenes, steps, log)
        report: Dict[str, object] = {
            "command": " ".join(["python -m vla_inference.lab.quant_gate", *sys.argv[1:]]),
            "model_dir": str(model_dir),
            "precision": precision,
            "simulated": precision == "fp8",
            "runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
            "machine": platform.processor() or platform.machine(),
            "scenes": scenes,
            "closed_loop_scenes": loop_scenes,
            "steps": steps,
            "quantization": records,
            "results": results,
            "gate": {name: gate(results, name) for name in engines if name != FP32},
        }
        passed = bool(report["gate"][precision]["passed"])  # type: ignore[index]
        if write and passed:
            ship_qdq(Path(model_dir), manifest, precision, scratch / engines[precision][VISION].split("/")[0],
                  records[precision])
            log(f"wrote the {precision} Q/DQ engines into {model_dir} and its {MANIFEST_NAME}")
        report["written"] = write and passed
    return report


def ship_qdq(model_dir: Path, manifest: Manifest, precision: str, source: Path, record: Mapping[str, object]) -> None:
    """Copy the gated files into the model directory and rewrite its manifest around them."""
    engines = {p: {name: f.path.name for name, f in files.items()} for p, files in manifest.engines.items()}
    quantization = {p: dict(files[VISION].quantization) for p, files in manifest.engines.items()
                    if files[VISION].quantization}
    for name in ENGINES:
        target = f"{manifest.engine(FP32, name).path.stem}.{precision}.onnx"
        shutil.copyfile(source / target, model_dir / target)
        engines.setdefault(precision, {})[name] = target
    quantization[precision] = dict(record)
    extra = {k: v for k, v in manifest.raw.items() if k not in ("format_version", "preset", "config", "engines", "weights")}
    weights = manifest.weights_path.name if manifest.weights_path is not None else None
    write_manifest(model_dir, manifest.config, engines, weights_file=weights, extra=extra, quantization=quantization)


def format_report(report: Mapping[str, object]) -> str:
    lines = [f"{'engines':<40}{'1-chunk':>9}{'end err':>9}" + "".join(f"{'loop ' + k.split()[1] + ' rows':>14}"
                                                                       for k in report["results"][FP32]["closed_loop"])  # type: ignore[index]
             + f"{'vs fp32 end cm (median/p99)':>30}"]
    for name, result in report["results"].items():  # type: ignore[union-attr]
        one = result["one_chunk"]
        row = f"{name:<40}{100 * one['success']:>8.1f}%{one['endpoint_error_cm_median']:>7.2f}cm"
        row += "".join(f"{100 * loop['success']:>13.1f}%" for loop in result["closed_loop"].values())
        if "vs_fp32_chunk_cm" in result:
            chunk = result["vs_fp32_chunk_cm"]
            row += f"{chunk['endpoint_cm_median']:>22.2f} / {chunk['endpoint_cm_p99']:.2f}"
        lines.append(row)
    lines.append("")
    for name, verdict in report["gate"].items():  # type: ignore[union-attr]
        drops = ", ".join(f"{k} {v:+.1f}" for k, v in verdict["success_drop_points"].items())
        lines.append(f"gate {name}: {'PASSED' if verdict['passed'] else 'FAILED'} (success drop in points: {drops}; "
                     f"limit {verdict['limit_points']})")
    if report["simulated"]:
        lines.append("FP8 on ONNX Runtime CPU is simulated: FP8 rounding, fp32 arithmetic")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("models/tiny"))
    parser.add_argument("--precision", choices=QDQ_PRECISIONS, default="int8")
    parser.add_argument("--scenes", type=int, default=DEFAULT_SCENES, help="held-out scenes, one chunk each")
    parser.add_argument("--closed-loop-scenes", type=int, default=CLOSED_LOOP_SCENES)
    parser.add_argument("--calibration-scenes", type=int, default=CALIBRATION_SCENES)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--ablation", action="store_true", help="also evaluate the recipe without its float layers")
    parser.add_argument("--write", action="store_true", help="on a passed gate, ship the engines into --model-dir")
    parser.add_argument("--json", type=Path, help="where to write the report")
    args = parser.parse_args(argv)
    report = run_gate(args.model_dir, args.precision, args.scenes, args.closed_loop_scenes, args.steps,
                      args.calibration_scenes, args.ablation, args.write,
                      log=lambda message: print(f"[quant-gate] {message}", file=sys.stderr, flush=True))
    print(format_report(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if report["gate"][args.precision]["passed"] else 1  # type: ignore[index]


if __name__ == "__main__":
    sys.exit(main())
