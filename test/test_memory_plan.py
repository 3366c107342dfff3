"""vla-plan-memory against what PyTorch measured on an H200 (the recorded vla-bench runs)."""
import json
from pathlib import Path

import pytest

from vla_inference.lab.memory_plan import SEED_BUDGET_GIB, main, plan
from vla_inference.spec.config import get_preset

RECORDS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


@pytest.mark.parametrize("record", ["bench_pi05_h200_cameras.json", "bench_pi05_h200_noise.json",
                                    "bench_pi05_lerobot_h200_cameras.json", "bench_pi05_lerobot_h200_noise.json"])
def test_the_plan_is_within_15_percent_of_the_measured_torch_peak(record):
    data = json.loads((RECORDS / record).read_text())
    config = data["config"]
    estimate = plan(get_preset(config["preset"]), config["precision"], config["num_samples"],
                    config["confidence_views"], workspace_gib=0.0)  # no TensorRT workspace under PyTorch
    measured_gib = data["memory"]["peak_gpu_mib"] / 1024
    assert abs(estimate.gpu_gib - measured_gib) / measured_gib <= 0.15, (estimate, measured_gib)


def test_quantized_weights_halve_and_only_they_meet_the_seed_budget_on_an_orin_nano():
    cfg = get_preset("pi05_lerobot")
    bf16, int8 = plan(cfg, "bf16"), plan(cfg, "int8")
    assert int8.weights_gib == pytest.approx(bf16.weights_gib / 2)
    assert bf16.gpu_gib > SEED_BUDGET_GIB >= int8.gpu_gib
    assert not bf16.fits()["Orin Nano 8GB"] and int8.fits()["Orin Nano 8GB"] and bf16.fits()["Orin NX 16GB"]
    assert plan(cfg, "bf16", views="noise").prefix_buffers_gib < bf16.prefix_buffers_gib


def test_the_command_prints_a_row_per_precision(capsys):
    assert main(["--preset", "tiny", "--precision", "all"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny")]
    assert [row.split()[1] for row in rows] == ["bf16", "fp16", "fp32", "fp8", "int8"]
    with pytest.raises(ValueError, match="precision"):
        plan(get_preset("tiny"), "int4")
