"""rate_limiter: accepted requests never closer than 1 / rate; retry_after says when to come back."""
import threading

import pytest

from vla_inference.serving.rate_limiter import RateLimiter


def test_first_request_is_accepted_and_a_close_second_is_refused_with_retry_after():
    limiter = RateLimiter(5.0)
    assert limiter.try_acquire(10.0) == (True, 0.0)
    accepted, retry_after_s = limiter.try_acquire(10.05)
    assert not accepted
    assert retry_after_s == pytest.approx(0.15)


def test_refused_requests_do_not_push_the_next_slot_back():
    limiter = RateLimiter(5.0)
    limiter.try_acquire(0.0)
    for now in (0.01, 0.1, 0.19):
        assert not limiter.try_acquire(now).accepted
    assert limiter.try_acquire(0.2).accepted


def test_waiting_retry_after_gets_accepted():
    limiter = RateLimiter(3.0)
    limiter.try_acquire(1.0)
    decision = limiter.try_acquire(1.1)
    assert limiter.try_acquire(1.1 + decision.retry_after_s).accepted


def test_exact_interval_is_accepted_despite_float_rounding():
    limiter = RateLimiter(5.0)
    accepted = [limiter.try_acquire(k * 0.2).accepted for k in range(50)]
    assert all(accepted)


def test_flood_at_30_hz_for_5_s_never_exceeds_5_hz_in_any_window():
    limiter = RateLimiter(5.0)
    times = [k / 30.0 for k in range(150)]
    accepted = [t for t in times if limiter.try_acquire(t).accepted]
    assert 24 <= len(accepted) <= 26
    assert all(b - a >= 0.2 - 1e-9 for a, b in zip(accepted, accepted[1:]))
    for start in accepted:
        assert sum(start <= t < start + 1.0 for t in accepted) <= 5


def test_set_rate_applies_to_the_next_decision():
    limiter = RateLimiter(5.0)
    limiter.try_acquire(0.0)
    assert not limiter.try_acquire(0.15).accepted
    limiter.set_rate(10.0)
    assert limiter.max_rate_hz == pytest.approx(10.0)
    assert limiter.try_acquire(0.15).accepted
    limiter.set_rate(1.0)
    decision = limiter.try_acquire(0.5)
    assert not decision.accepted and decision.retry_after_s == pytest.approx(0.65)


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_rates_are_refused(rate):
    with pytest.raises(ValueError, match="max_rate_hz"):
        RateLimiter(rate)
    with pytest.raises(ValueError, match="max_rate_hz"):
        RateLimiter(5.0).set_rate(rate)


def test_reset_forgets_the_last_accept():
    limiter = RateLimiter(1.0)
    limiter.try_acquire(0.0)
    limiter.reset()
    assert limiter.try_acquire(0.1).accepted


def test_concurrent_callers_at_the_same_instant_get_one_accept():
    limiter = RateLimiter(5.0)
    results = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def caller():
        barrier.wait()
        for _ in range(100):
            decision = limiter.try_acquire(42.0)
            with lock:
                results.append(decision.accepted)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 800 and sum(results) == 1


@pytest.mark.parametrize("now", [float("nan"), float("inf")])
def test_non_finite_time_is_refused_so_it_cannot_disable_the_limit(now):
    limiter = RateLimiter(5.0)
    with pytest.raises(ValueError, match="now"):
        limiter.try_acquire(now)
    assert limiter.try_acquire(0.0).accepted
    assert not limiter.try_acquire(0.1).accepted
