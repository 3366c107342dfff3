"""Time ``parse_xyz`` on a 32k-point cloud laid out like an Ouster/Velodyne driver's output.

Usage: ``python -m vla_inference.lab.bench_pointcloud OUT.json [--points N] [--repeats R]``.
Prints the median milliseconds and writes a JSON record to OUT.json. Kept out of the unit tests so
they hold no timed assertions.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import numpy as np

from vla_inference.sensors.pointcloud import FLOAT32, UINT16, UINT32, parse_xyz_msg


def make_cloud(points: int, nan_fraction: float = 0.1, seed: int = 0) -> SimpleNamespace:
    """A non-dense cloud with intensity, ring and time fields around x, y, z (point_step 32)."""
    layout = np.dtype({
        "names": ["intensity", "x", "y", "z", "ring", "t"],
        "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<u4"],
        "offsets": [0, 4, 8, 12, 16, 20],
        "itemsize": 32,
    })
    rng = np.random.default_rng(seed)
    cloud = np.zeros(points, dtype=layout)
    for name in ("x", "y", "z"):
        cloud[name] = rng.uniform(-30.0, 30.0, points)
    cloud["x"][rng.random(points) < nan_fraction] = np.nan
    fields = [
        SimpleNamespace(name=name, offset=offset, datatype=datatype, count=1)
        for name, offset, datatype in (
            ("intensity", 0, FLOAT32), ("x", 4, FLOAT32), ("y", 8, FLOAT32), ("z", 12, FLOAT32),
            ("ring", 16, UINT16), ("t", 20, UINT32),
        )
    ]
    return SimpleNamespace(
        fields=fields, height=1, width=points, point_step=32, row_step=32 * points,
        data=cloud.tobytes(), is_bigendian=False, is_dense=False,
    )


def run(points: int, repeats: int) -> Dict[str, Any]:
    msg = make_cloud(points)
    parse_xyz_msg(msg)
    samples_ms: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        parsed = parse_xyz_msg(msg)
        samples_ms.append((time.perf_counter() - start) * 1000.0)
    return {
        "benchmark": "pointcloud.parse_xyz",
        "points": points,
        "kept_points": int(parsed.xyz.shape[0]),
        "repeats": repeats,
        "median_ms": statistics.median(samples_ms),
        "p95_ms": float(np.percentile(samples_ms, 95)),
        "min_ms": min(samples_ms),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
    }


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="where to write the JSON record")
    parser.add_argument("--points", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    record = run(args.points, args.repeats)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"parse_xyz, {record['points']} points: median {record['median_ms']:.3f} ms "
          f"(p95 {record['p95_ms']:.3f} ms over {record['repeats']} runs)")


if __name__ == "__main__":
    main()
