"""chunk_executor: rows played in order from the time-aligned start, stale chunks refused, safe hold."""
import numpy as np
import pytest

from vla_inference.client.chunk_executor import ChunkExecutor, ExecutorState, HoldPolicy

PERIOD = 0.1
CHUNK = np.arange(16 * 8, dtype=np.float64).reshape(16, 8) + 1.0


def executor(hold=HoldPolicy.ZERO, max_age=0.5, delta_dims=None):
    """delta_dims=None: rows count as progress; tests of position-delta progress pass (0, 1, 2)."""
    return ChunkExecutor(control_period_s=PERIOD, max_chunk_age_s=max_age, hold_policy=hold, action_dim=8,
                         delta_dims=delta_dims)


def test_idle_before_any_chunk():
    command, state = executor(HoldPolicy.ZERO).command(0.0)
    assert state is ExecutorState.IDLE and state.value == "idle"
    np.testing.assert_array_equal(command, np.zeros(8))
    command, state = executor(HoldPolicy.LAST).command(0.0)
    assert state is ExecutorState.IDLE and command is None


def test_fresh_chunk_plays_every_row_in_order_then_holds_zero():
    ex = executor(HoldPolicy.ZERO)
    decision = ex.accept_chunk(CHUNK, stamp_s=10.0, now_s=10.0)
    assert decision.accepted and decision.start_row == 0
    for k in range(16):
        command, state = ex.command(10.0 + k * PERIOD)
        assert state is ExecutorState.EXECUTING
        np.testing.assert_array_equal(command, CHUNK[k])
    command, state = ex.command(11.6)
    assert state is ExecutorState.HOLDING and ex.hold_reason == "exhausted"
    np.testing.assert_array_equal(command, np.zeros(8))


def test_last_policy_holds_the_last_emitted_row():
    ex = executor(HoldPolicy.LAST)
    ex.accept_chunk(CHUNK[:2], stamp_s=0.0, now_s=0.0)
    ex.command(0.0)
    ex.command(0.1)
    for now in (0.2, 0.3):
        command, state = ex.command(now)
        assert state is ExecutorState.HOLDING
        np.testing.assert_array_equal(command, CHUNK[1])


def test_nothing_is_skipped_when_the_robot_held_still_since_the_observation():
    ex = executor()
    decision = ex.accept_chunk(CHUNK, stamp_s=5.0, now_s=5.25)
    assert decision.accepted and decision.start_row == 0
    assert ex.rows_remaining == 16
    np.testing.assert_array_equal(ex.command(5.25)[0], CHUNK[0])


def test_rows_executed_since_the_observation_are_skipped():
    ex = executor()
    ex.accept_chunk(CHUNK, stamp_s=5.0, now_s=5.0)
    for k in range(3):
        ex.command(5.0 + k * PERIOD)  # executed at 5.0, 5.1, 5.2
    decision = ex.accept_chunk(-CHUNK, stamp_s=5.05, now_s=5.25)  # planned from the state at 5.05
    assert decision.accepted and decision.start_row == 2
    np.testing.assert_array_equal(ex.command(5.3)[0], -CHUNK[2])


def test_position_delta_progress_picks_the_row_the_robot_reached():
    ex = executor(delta_dims=(0, 1, 2))
    plan = np.zeros((16, 8))
    plan[:, 0] = 0.05  # 5 cm per row along x
    ex.accept_chunk(plan, stamp_s=0.0, now_s=0.0)
    for k in range(3):
        ex.command(k * PERIOD)  # executed 15 cm, 10 cm of it after the stamp below
    decision = ex.accept_chunk(plan, stamp_s=0.05, now_s=0.25)
    assert decision.accepted and decision.start_row == 2


def test_a_chunk_planned_from_a_standstill_reaches_its_goal():
    """Near the goal each new chunk has one moving row then zeros: the moving row must be played."""
    ex = executor(delta_dims=(0, 1, 2))
    final_step = np.zeros((16, 8))
    final_step[0, :3] = 0.05
    travelled = 0.0
    now = 0.0
    for _ in range(3):
        ex.accept_chunk(final_step, stamp_s=now, now_s=now + 0.15)  # 150 ms of inference
        for _ in range(16):
            travelled += ex.command(now + 0.15)[0][0]
            now += PERIOD
    assert travelled == pytest.approx(0.15)


def test_jittery_calls_neither_skip_nor_repeat_rows():
    ex = executor()
    ex.accept_chunk(CHUNK, stamp_s=0.0, now_s=0.0)
    times = [0.0, 0.13, 0.19, 0.31, 0.38, 0.52]
    rows = [ex.command(t)[0] for t in times]
    np.testing.assert_array_equal(np.stack(rows), CHUNK[:6])


def test_newer_chunk_replaces_the_current_one_at_its_elapsed_row():
    ex = executor()
    ex.accept_chunk(CHUNK, stamp_s=0.0, now_s=0.0)
    ex.command(0.0)
    ex.command(0.1)
    newer = -CHUNK
    decision = ex.accept_chunk(newer, stamp_s=0.05, now_s=0.2)
    assert decision.accepted and decision.start_row == 1  # the row executed at 0.1 came after the stamp
    np.testing.assert_array_equal(ex.command(0.2)[0], newer[1])


def test_chunk_older_than_max_age_is_refused_and_current_continues():
    ex = executor(max_age=0.5)
    ex.accept_chunk(CHUNK, stamp_s=1.0, now_s=1.0)
    decision = ex.accept_chunk(-CHUNK, stamp_s=1.0, now_s=1.6)
    assert not decision.accepted and decision.reason.startswith("stale")
    np.testing.assert_array_equal(ex.command(1.0)[0], CHUNK[0])


def test_out_of_order_chunk_is_refused():
    ex = executor()
    ex.accept_chunk(CHUNK, stamp_s=2.0, now_s=2.1)
    decision = ex.accept_chunk(-CHUNK, stamp_s=1.9, now_s=2.1)
    assert not decision.accepted and "out of order" in decision.reason


def test_out_of_order_chunk_is_refused_after_exhaustion_too():
    ex = executor()
    ex.accept_chunk(CHUNK[:1], stamp_s=2.0, now_s=2.0)
    ex.command(2.0)
    ex.command(2.1)
    assert not ex.accept_chunk(-CHUNK, stamp_s=1.95, now_s=2.2).accepted


def test_chunk_whose_rows_were_all_executed_already_is_refused():
    ex = ChunkExecutor(PERIOD, max_chunk_age_s=5.0, hold_policy="zero", action_dim=8, delta_dims=None)
    ex.accept_chunk(CHUNK, stamp_s=0.0, now_s=0.0)
    for k in range(4):
        ex.command(k * PERIOD)
    decision = ex.accept_chunk(CHUNK[:3], stamp_s=0.0, now_s=0.35)
    assert not decision.accepted and "rows" in decision.reason


def test_stamp_in_the_future_is_refused():
    ex = executor()
    assert not ex.accept_chunk(CHUNK, stamp_s=10.5, now_s=10.0).accepted
    assert ex.accept_chunk(CHUNK, stamp_s=10.05, now_s=10.0).start_row == 0


@pytest.mark.parametrize("actions, detail", [
    (np.zeros(8), "shape"),
    (np.zeros((16, 7)), "shape"),
    (np.zeros((0, 8)), "shape"),
    (np.zeros((2, 16, 8)), "shape"),
    (np.full((16, 8), np.nan), "NaN"),
    (np.where(np.eye(16, 8) > 0, np.inf, 0.0), "Inf"),
    ([["a"] * 8], "not numeric"),
])
def test_malformed_chunks_are_refused(actions, detail):
    ex = executor()
    decision = ex.accept_chunk(actions, stamp_s=0.0, now_s=0.0)
    assert not decision.accepted and detail in decision.reason
    assert ex.command(0.0)[1] is ExecutorState.IDLE


@pytest.mark.parametrize("stamp_s", [float("nan"), float("inf"), None])
def test_non_finite_stamp_is_refused(stamp_s):
    decision = executor().accept_chunk(CHUNK, stamp_s=stamp_s, now_s=0.0)
    assert not decision.accepted and decision.reason.startswith("stamp")


def test_stalled_control_loop_drops_the_chunk_and_holds():
    ex = executor(max_age=0.5)
    ex.accept_chunk(CHUNK, stamp_s=0.0, now_s=0.0)
    ex.command(0.0)
    command, state = ex.command(0.7)
    assert state is ExecutorState.HOLDING and ex.hold_reason.startswith("stale")
    np.testing.assert_array_equal(command, np.zeros(8))
    assert ex.command(0.8)[1] is ExecutorState.HOLDING


def test_accepted_chunk_is_copied():
    ex = executor()
    actions = CHUNK.copy()
    ex.accept_chunk(actions, stamp_s=0.0, now_s=0.0)
    actions[:] = 0.0
    command, _ = ex.command(0.0)
    np.testing.assert_array_equal(command, CHUNK[0])
    command[:] = -1.0
    ex.reset()
    assert ex.command(0.0)[1] is ExecutorState.IDLE


def test_nested_list_of_rows_is_accepted():
    ex = executor()
    assert ex.accept_chunk(CHUNK.tolist(), stamp_s=0.0, now_s=0.0).accepted


@pytest.mark.parametrize("kwargs", [
    {"control_period_s": 0.0}, {"max_chunk_age_s": -1.0}, {"max_chunk_age_s": float("inf")},
    {"hold_policy": "freeze"}, {"action_dim": 0}, {"action_dim": 2.0},
])
def test_invalid_settings_are_refused(kwargs):
    settings = {"control_period_s": PERIOD, "max_chunk_age_s": 0.5, "hold_policy": "last", "action_dim": 8}
    settings.update(kwargs)
    with pytest.raises(ValueError):
        ChunkExecutor(**settings)


def test_hold_drops_the_current_chunk_from_the_next_command_on():
    ex = executor(HoldPolicy.ZERO)
    ex.accept_chunk(CHUNK, stamp_s=10.0, now_s=10.0)
    command, state = ex.command(10.0)
    np.testing.assert_array_equal(command, CHUNK[0])
    ex.hold("server missing")
    command, state = ex.command(10.1)
    assert state is ExecutorState.HOLDING and ex.hold_reason == "server missing"
    np.testing.assert_array_equal(command, np.zeros(8))
    assert ex.accept_chunk(CHUNK, stamp_s=10.2, now_s=10.2).accepted  # a fresh chunk plays again
    command, state = ex.command(10.2)
    assert state is ExecutorState.EXECUTING
