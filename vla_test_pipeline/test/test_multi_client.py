"""Three client processes, one server process, 5 Hz in total for 60 s: every response reaches its sender."""
import json

from vla_test_pipeline.multi_client import main

DURATION_S = 60.0


def test_every_client_gets_each_of_its_responses_exactly_once(tmp_path):
    out = tmp_path / "multi_client"
    assert main(["--clients", "3", "--total-rate-hz", "5", "--duration", str(DURATION_S), "--out", str(out),
                 "--check"]) == 0
    record = json.loads((out / "multi_client.json").read_text())
    assert record["lost"] == 0 and record["duplicated"] == 0, record
    for client in record["per_client"]:
        expected = DURATION_S * 5.0 / 3
        assert client["sent"] >= 0.5 * expected, client  # one outstanding: a slow answer skips a send slot
        assert set(client["responses_seen_by_id"].values()) == {1}, client
        assert client["statuses"].get("OK", 0) > 0, client
