"""vla-bench-transport: request sizes, the delivery bookkeeping, and a short real run (separate processes, real DDS)."""
import json

import pytest

from vla_inference.lab import bench_transport
from vla_inference.nodes.entry_point import profile_variable


@pytest.mark.parametrize("size_kb", [400, 700, 1100])
def test_request_sizes_are_what_the_issue_names(size_kb):
    # Within 3 % of the nominal KiB: the CDR size is what DDS carries, headers and text included.
    size = bench_transport.serialized_bytes(bench_transport.payload_for(size_kb))
    assert abs(size - size_kb * 1024) <= 0.03 * size_kb * 1024, size


def test_delivery_counts_distinct_ids_per_client_and_keeps_strays_apart():
    reports = [{"index": i, "id_base": (i + 1) * bench_transport.ID_STRIDE, "sent": 4, "bytes": 10, "all_acked": True,
                "max_lag_ms": 0.0, "cpu_s": 0.1, "wall_s": 1.0} for i in range(2)]
    base0, base1 = reports[0]["id_base"], reports[1]["id_base"]
    received = {"ids": {"0": [base0, base0 + 1, base0 + 1, base0 + 3], "1": [base1 + 9], "7": [8 * bench_transport.ID_STRIDE]},
                "latency_ms": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "cpu_s": 0.5, "wall_s": 2.0}
    cell = bench_transport.summarise(reports, received, target=99.0)
    assert (cell["sent"], cell["delivered"], cell["duplicates"], cell["unexpected"]) == (8, 3, 1, 1)
    assert cell["per_client"][0]["missing"] == [2] and cell["per_client"][1]["missing"] == [0, 1, 2, 3]
    assert cell["delivered_pct"] == pytest.approx(37.5) and not cell["pass"]
    assert cell["receiver_cpu_pct"] == pytest.approx(25.0)


def test_default_transport_drops_the_profile_and_package_sets_it():
    variable = profile_variable()
    base = {"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", variable: "/mine.xml"}
    assert variable not in bench_transport.transport_env("default", base)
    package = bench_transport.transport_env("package", base)[variable]
    assert package.endswith("fastdds_large_data.xml")


def test_a_short_real_run_delivers_and_records_consistent_counts(tmp_path, capsys):
    duration, rate = 3.0, 5.0
    rc = bench_transport.main(["--duration", str(duration), "--sizes", "700", "--rates", str(rate), "--clients", "1,3",
                               "--transport", "package", "--out", str(tmp_path)])
    assert rc == 0
    assert "deliv %" in capsys.readouterr().out
    record = json.loads((tmp_path / "bench_transport.json").read_text())
    assert (tmp_path / "bench_transport.png").stat().st_size > 0
    assert set(record) >= {"config", "environment", "payloads", "host", "cells", "all_pass"}
    assert record["environment"]["package"][profile_variable()].endswith("fastdds_large_data.xml")
    assert 650_000 < record["payloads"]["700"]["serialized_bytes"] < 750_000
    assert [(c["transport"], c["size_kb"], c["rate_hz"], c["clients"]) for c in record["cells"]] == [
        ("package", 700, 5.0, 1), ("package", 700, 5.0, 3)]
    for cell in record["cells"]:
        assert cell["error"] is None, cell["error"]
        per_client = cell["per_client"]
        assert len(per_client) == cell["clients"]
        assert all(c["sent"] == round(duration * rate) for c in per_client)
        assert cell["sent"] == sum(c["sent"] for c in per_client)
        assert cell["delivered"] == sum(c["delivered"] for c in per_client) <= cell["sent"]
        ranges = sorted((c["id_base"], c["id_base"] + c["sent"]) for c in per_client)
        assert all(end <= start for (_, end), (start, _) in zip(ranges, ranges[1:])), ranges  # distinct id ranges
        assert cell["duplicates"] == 0 and cell["unexpected"] == 0
        assert cell["delivered_pct"] >= 99.0, cell
        assert cell["latency_ms"]["count"] >= cell["delivered"]
        assert 0.0 < cell["latency_ms"]["p50"] <= cell["latency_ms"]["p99"]
        assert cell["receiver_cpu_pct"] >= 0.0
        assert cell["target_pct"] == 99.9
