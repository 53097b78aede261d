"""The event log's durable view: shown once written, in order, whatever order writes come in."""

from hbdaemon.events import EventLog


def test_an_event_shows_only_once_it_and_every_older_one_are_written():
    log = EventLog(100, wallclock=lambda: 1000.0, durable=True)
    ids = [log.record("a", "unknown", "healthy", "r").id for _ in range(3)]
    assert log.query() == []
    log.mark_written(ids[1:])  # a later id written first (two threads recorded at once)
    assert log.query() == []  # the oldest is not written yet: nothing after it shows
    log.mark_written(ids[:1])
    assert [e.id for e in log.query()] == ids


def test_ids_continue_after_every_reserved_one_and_reservations_come_in_blocks():
    reserved = []
    log = EventLog(100, wallclock=lambda: 1000.0, durable=True, reserve=reserved.append)
    log.restore([], reserved=10_000)  # ids up to 10,000 may have been given out before a crash
    first = log.record("a", "unknown", "healthy", "r")
    assert first.id == 10_001 and reserved == [20_000]
    for _ in range(5):
        log.record("a", "healthy", "dead", "r")
    assert reserved == [20_000]  # one write per block, not per event


def test_after_pages_forward_through_a_burst_larger_than_the_limit():
    log = EventLog(100, wallclock=lambda: 1000.0)
    for _ in range(20):
        log.record("a", "healthy", "dead", "r")
    assert [e.id for e in log.query(limit=5)] == [16, 17, 18, 19, 20]  # the newest
    pages, after = [], 0
    while True:
        page = log.query(after_id=after, limit=5)
        if not page:
            break
        pages.append([e.id for e in page])
        after = page[-1].id
    assert pages == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15], [16, 17, 18, 19, 20]]
