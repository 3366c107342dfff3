"""request_slot: one in flight, one pending, newest wins, and every item comes back exactly once."""
import threading
import time
from collections import Counter

import pytest

from vla_inference.serving.request_slot import RequestSlot, SlotClosedError


def test_offer_into_an_empty_slot_supersedes_nothing():
    slot = RequestSlot()
    assert slot.offer("a") is None
    assert slot.pending == "a" and slot.in_flight is None


def test_newer_offer_returns_the_superseded_pending_item():
    slot = RequestSlot()
    slot.offer("a")
    assert slot.offer("b") == "a"
    assert slot.offer("c") == "b"
    assert slot.pending == "c"


def test_take_moves_the_pending_item_in_flight_and_finish_clears_it():
    slot = RequestSlot()
    slot.offer("a")
    assert slot.take(timeout=0) == "a"
    assert slot.in_flight == "a" and slot.pending is None
    assert slot.offer("b") is None
    slot.finish()
    assert slot.in_flight is None
    assert slot.take(timeout=0) == "b"


def test_take_returns_none_when_nothing_arrives():
    assert RequestSlot().take(timeout=0.01) is None


def test_falsy_items_are_items():
    slot = RequestSlot()
    slot.offer(0)
    assert slot.offer(None) == 0
    assert slot.take(timeout=0) is None and slot.in_flight is None
    slot.finish()
    slot.offer("")
    assert slot.close() == [""]


def test_take_while_in_flight_and_finish_without_in_flight_are_errors():
    slot = RequestSlot()
    with pytest.raises(RuntimeError, match="finish"):
        slot.finish()
    slot.offer("a")
    slot.take(timeout=0)
    slot.offer("b")
    with pytest.raises(RuntimeError, match="in flight"):
        slot.take(timeout=0)
    assert slot.pending == "b"


def test_close_returns_the_never_started_item_and_refuses_offers():
    slot = RequestSlot()
    slot.offer("a")
    slot.take(timeout=0)
    slot.offer("b")
    assert slot.close() == ["b"]
    assert slot.closed and slot.in_flight == "a"
    with pytest.raises(SlotClosedError):
        slot.offer("c")
    assert slot.pending is None
    slot.finish()
    assert slot.take(timeout=0) is None
    assert slot.close() == []


def test_blocked_take_is_woken_by_offer():
    slot = RequestSlot()
    taken = []
    worker = threading.Thread(target=lambda: taken.append(slot.take(timeout=30)))
    worker.start()
    slot.offer("a")
    worker.join(30)
    assert taken == ["a"]


def test_blocked_take_is_woken_by_close():
    slot = RequestSlot()
    taken = []
    worker = threading.Thread(target=lambda: taken.append(slot.take(timeout=30)))
    worker.start()
    slot.close()
    worker.join(30)
    assert not worker.is_alive() and taken == [None]


def test_wait_idle_returns_once_the_in_flight_item_finishes():
    slot = RequestSlot()
    assert slot.wait_idle(timeout=0)
    slot.offer("a")
    slot.take(timeout=0)
    assert not slot.wait_idle(timeout=0)
    finisher = threading.Thread(target=slot.finish)
    finisher.start()
    assert slot.wait_idle(timeout=30)
    finisher.join()


def test_concurrent_producers_and_worker_lose_nothing_and_answer_nothing_twice():
    slot = RequestSlot()
    producers, per_producer = 4, 400
    answered = Counter()
    lock = threading.Lock()
    max_in_flight = []
    running = [0]
    start = threading.Barrier(producers + 1)

    def answer(item, how):
        with lock:
            answered[(item, how)] += 1

    def produce(producer):
        start.wait()
        for k in range(per_producer):
            superseded = slot.offer((producer, k))
            if superseded is not None:
                answer(superseded, "superseded")
            time.sleep(0)

    def work():
        start.wait()
        while True:
            item = slot.take(timeout=0.5)
            if item is None:
                if slot.closed:
                    return
                continue
            running[0] += 1
            max_in_flight.append(running[0])
            answer(item, "ran")
            running[0] -= 1
            slot.finish()

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    worker = threading.Thread(target=work)
    for thread in threads + [worker]:
        thread.start()
    for thread in threads:
        thread.join()
    final = ("final", 0)
    superseded = slot.offer(final)
    if superseded is not None:
        answer(superseded, "superseded")
    for _ in range(3000):
        if answered[(final, "ran")]:
            break
        time.sleep(0.01)
    for item in slot.close():
        answer(item, "never started")
    worker.join(30)
    assert not worker.is_alive()

    offered = {(p, k) for p in range(producers) for k in range(per_producer)} | {final}
    items = Counter(item for item, _ in answered.elements())
    assert set(items) == offered
    assert all(count == 1 for count in items.values())
    assert max(max_in_flight, default=1) == 1
    assert answered[(final, "ran")] == 1
