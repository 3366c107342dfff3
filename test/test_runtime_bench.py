"""vla-bench end to end on a few requests: table, JSON record and CDF PNG."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_runtime_support import runtime_model_dir

from vla_inference.lab import bench


def test_bench_writes_json_and_png(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys) -> None:
    model_dir = runtime_model_dir(tmp_path_factory)
    out = tmp_path / "result"
    code = bench.main(["--model-dir", str(model_dir), "--steps", "1,3", "--iterations", "4", "--cameras", "2",
                       "--num-samples", "2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "steps=1" in printed and "steps=3" in printed and "peak host RSS" in printed
    record = json.loads(out.with_suffix(".json").read_text())
    assert [r["steps"] for r in record["results"]] == [1, 3]
    for result in record["results"]:
        assert set(result["latency_ms"]) == set(bench.STAGES)
        assert result["latency_ms"]["total"]["p50"] <= result["latency_ms"]["total"]["p99"]
        assert result["throughput_rps"]["sequential"] > 0 and result["throughput_rps"]["pipelined"] > 0
        assert result["pipelined_equals_sequential"] is True
    assert record["memory"]["peak_rss_mib"] > 0 and record["memory"]["peak_gpu_mib"] is None
    assert record["config"]["cameras"] == 2 and record["backend"]["backend"] == "onnxruntime"
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_random_weights_need_the_torch_backend() -> None:
    with pytest.raises(SystemExit, match="--backend torch"):
        bench.make_backend(bench.parse_args(["--random-weights", "--backend", "onnxruntime"]))
