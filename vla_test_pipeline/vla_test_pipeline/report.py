"""The smoke check's files: a JSON record and a PNG of policy vs expert end-effector paths."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from vla_test_pipeline.checker import SmokeReport  # noqa: E402

MAX_PLOTTED_EPISODES = 12


def plot_paths(episodes: List[Dict[str, Any]], path: Path, tolerance_m: float) -> Path:
    """Top view (x forward, y left) of each episode: the policy's path, the expert's, start and target."""
    shown = episodes[:MAX_PLOTTED_EPISODES]
    columns = min(4, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(max(3.4 * columns, 7.0), 3.4 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, episode in zip(axes.flat, shown):
        ax.set_axis_on()
        policy = list(zip(*episode["path"]))
        expert = list(zip(*episode["expert_path"]))
        ax.plot(expert[1], expert[0], "--", color="0.45", lw=1.5, label="expert")
        ax.plot(policy[1], policy[0], "-", color="tab:blue" if episode["success"] else "tab:red", lw=1.8,
                label="policy")
        ax.plot(episode["start"][1], episode["start"][0], "o", color="black", ms=5)
        ax.add_patch(plt.Circle((episode["target"][1], episode["target"][0]), tolerance_m, color="tab:green",
                                alpha=0.35))
        ax.plot(episode["target"][1], episode["target"][0], "*", color="tab:green", ms=10)
        verdict = "reached" if episode["success"] else "missed"
        ax.set_title(f"scene {episode['scene']}: {verdict}, {episode['final_error_m'] * 100:.1f} cm\n"
                     f"'{episode['text']}'", fontsize=8)
        ax.set_aspect("equal", adjustable="datalim")
        ax.invert_xaxis()  # y to the left, as seen from behind the robot
        ax.set_xlabel("y (m)", fontsize=7)
        ax.set_ylabel("x (m)", fontsize=7)
        ax.tick_params(labelsize=6)
    if not shown:
        axes[0, 0].text(0.5, 0.5, "no episode finished in the window", ha="center", va="center")
    else:
        axes.flat[0].legend(fontsize=7, loc="best")
    figure.suptitle("end-effector paths, top view: policy (blue: reached, red: missed) vs expert (dashed)",
                    fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_artifacts(report: SmokeReport, out_dir: Path, tolerance_m: float) -> SmokeReport:
    """Write ``paths.png`` and ``smoke_report.json`` under ``out_dir``; records their paths in the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_paths(report.episodes, out_dir / "paths.png", tolerance_m)
    record = out_dir / "smoke_report.json"
    report.artifacts = {"png": str(png), "json": str(record)}
    record.write_text(report.to_json())
    return report
