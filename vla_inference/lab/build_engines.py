"""``vla-build-engines``: build (or find) every plan a serving configuration needs, ahead of time.

    vla-build-engines --model-dir models/tiny --precision int8 --num-samples 4 --confidence-views cameras
    vla-build-engines --precision fp16 --confidence-views noise --cache-dir /data/vla_engines
    vla-build-engines --builder onnxruntime --precision int8      # no GPU: ONNX Runtime's CPU plans

The plans are exactly the ones the TensorRT backend's configure asks for (``engine_builder``'s
requests for the two engines plus its Euler step, ``TensorRTBackend.build_plans``), in the same
cache under the same keys (default ``plan_cache.default_cache_dir()``; pass the node's
``engine_cache_dir`` if it sets one), so a node started afterwards with the same model, precision,
``num_samples`` and ``confidence_views`` loads them without building. A plan already there is not
built again. Progress goes to stderr; the summary table gives per plan whether it was built now,
the build time, plan size, workspace limit, activation memory and layers per precision.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from vla_inference.runtime.backends import BackendUnavailableError, create_backend
from vla_inference.runtime.backends.engine_builder import (
    PRECISIONS,
    OnnxRuntimePlanBuilder,
    PrecisionUnavailableError,
    build_recipe,
    plan_for,
    plan_requests,
)
from vla_inference.runtime.backends.plan_cache import CachedPlan, PlanCache
from vla_inference.runtime.sample_views import CONFIDENCE_VIEWS, max_view_rows
from vla_inference.spec.manifest import Manifest, ModelDirError, shipped_model_dir
from vla_inference.spec.model_dir import open_model_dir

MIB = 2**20
DEFAULT_WORKSPACE_MIB = 4096  # the TensorRT backend's default


def build_plans(manifest: Manifest, precision: str, num_samples: int, view_rows: int, cache_dir: Optional[Path],
                workspace_bytes: int, builder: str = "tensorrt", device_index: int = 0) -> List[CachedPlan]:
    """The plans ``builder`` serves ``manifest`` with at this precision, K and view rows, built where missing."""
    if builder == "onnxruntime":
        ort_builder = OnnxRuntimePlanBuilder()
        recipe = build_recipe(manifest, precision, ort_builder.target)
        cache = PlanCache(cache_dir)
        return [plan_for(cache, ort_builder, request)  # no workspace to limit: 0 in its keys
                for request in plan_requests(manifest, recipe, num_samples, view_rows, 0)]
    backend = create_backend("tensorrt", manifest, precision=precision, engine_cache_dir=cache_dir,
                             num_samples=num_samples, view_rows=view_rows, device_index=device_index,
                             workspace_bytes=workspace_bytes)
    return backend.build_plans()


def _mib(value: object, digits: int) -> str:
    """MiB of a byte count, or "-" where the runtime reports none (0)."""
    nbytes = int(value)  # type: ignore[call-overload]
    return f"{nbytes / MIB:.{digits}f}" if nbytes else "-"


def summary_table(plans: Sequence[CachedPlan]) -> str:
    header = (f"{'plan':<44}{'status':>8}{'build s':>9}{'plan MiB':>10}{'workspace MiB':>15}{'activations MiB':>17}"
              f"  layers per precision")
    lines = [header, "-" * len(header)]
    for plan in plans:
        record = plan.record
        layers = ", ".join(f"{k} {v}" for k, v in sorted(dict(record.get("layers", {})).items()))  # type: ignore[call-overload]
        lines.append(
            f"{plan.path.name:<44}{'built' if plan.built_now else 'cached':>8}"
            f"{float(record.get('build_seconds', 0.0)):>9.1f}"  # type: ignore[arg-type]
            f"{_mib(record.get('plan_bytes', 0), 2):>10}{_mib(record.get('workspace_bytes', 0), 0):>15}"
            f"{_mib(record.get('device_memory_bytes', 0), 2):>17}  {layers}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="model directory (default: the shipped tiny policy)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16")
    parser.add_argument("--num-samples", type=int, default=4, help="the node's num_samples (K)")
    parser.add_argument("--confidence-views", choices=CONFIDENCE_VIEWS, default="cameras",
                        help="the node's confidence_views: sets the vision engine's view rows")
    parser.add_argument("--cache-dir", type=Path, help="plan cache (default: $ROS_HOME or ~/.cache .../vla_inference/engines)")
    parser.add_argument("--workspace-mib", type=int, default=DEFAULT_WORKSPACE_MIB, help="TensorRT builder workspace limit")
    parser.add_argument("--builder", choices=("tensorrt", "onnxruntime"), default="tensorrt")
    parser.add_argument("--device-index", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[build-engines] %(message)s", stream=sys.stderr)
    try:
        manifest = open_model_dir(args.model_dir or shipped_model_dir())
        view_rows = max_view_rows(args.confidence_views, manifest.config.max_cameras)
        plans = build_plans(manifest, args.precision, args.num_samples, view_rows, args.cache_dir,
                            args.workspace_mib * MIB, args.builder, args.device_index)
    except (BackendUnavailableError, PrecisionUnavailableError, ModelDirError) as exc:
        print(f"vla-build-engines: {exc}", file=sys.stderr)
        return 2
    print(f"{args.precision} plans for {manifest.model_dir} (K={args.num_samples}, view rows {view_rows}) "
          f"in {plans[0].path.parent}")
    print(summary_table(plans))
    return 0


if __name__ == "__main__":
    sys.exit(main())
