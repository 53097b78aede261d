"""FairGate: at most N threads inside, the others let in in the order they came."""

import threading
import time

import pytest

from hbdaemon.connlimit import FairGate


def _crowd(gate, count, hold):
    """`count` threads enter `gate` one after another (each waits or enters before the next
    starts) and stay inside until `hold` is set; returns (threads, entry order, peak inside)."""
    inside, order, peak = [], [], [0]
    lock = threading.Lock()

    def enter(n):
        with gate:
            with lock:
                inside.append(n)
                order.append(n)
                peak[0] = max(peak[0], len(inside))
            hold.wait(5)
            with lock:
                inside.remove(n)

    threads = []
    for n in range(count):
        t = threading.Thread(target=enter, args=(n,))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(gate._waiters) + len(order) < n + 1:
            time.sleep(0.001)
    return threads, order, peak


def test_waiters_enter_in_the_order_they_came():
    gate, hold = FairGate(1), threading.Event()
    threads, order, _ = _crowd(gate, 6, hold)
    assert order == [0] and len(gate._waiters) == 5
    hold.set()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4, 5]  # a slot is handed on: nobody barges in


def test_at_most_slots_threads_are_inside():
    gate, hold = FairGate(2), threading.Event()
    threads, order, peak = _crowd(gate, 6, hold)
    assert sorted(order) == [0, 1] and len(gate._waiters) == 4
    hold.set()
    for t in threads:
        t.join(5)
    assert sorted(order) == list(range(6)) and peak[0] == 2
    assert gate._free == 2 and not gate._waiters


def test_a_holder_that_raises_still_hands_its_slot_on():
    gate = FairGate(1)
    with pytest.raises(RuntimeError):
        with gate:
            raise RuntimeError("boom")
    entered = threading.Event()
    t = threading.Thread(target=lambda: gate.__enter__() and entered.set())
    t.start()
    assert entered.wait(5)
    t.join(5)
