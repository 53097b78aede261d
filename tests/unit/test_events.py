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


def test_a_storm_logs_100_lines_a_second_then_one_line_counting_the_rest(caplog):
    import logging
    from hbdaemon import events as events_module
    from support.clock import FakeClock
    clock = FakeClock()
    log = EventLog(10_000, wallclock=lambda: 1000.0)
    log._clock = clock
    caplog.set_level(logging.INFO, logger="hbdaemon.events")
    for n in range(250):
        log.record(f"a{n}", "unknown", "healthy", "first heartbeat")
    log.record("z", "healthy", "dead", "gone")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == events_module.LOG_PER_SECOND  # the rest waits for its count
    log.flush_unlogged()
    assert len(caplog.records) == 100  # the second is not over yet
    clock.advance(1.0)
    log.flush_unlogged()
    summary = caplog.records[-1]
    assert summary.levelname == "WARNING"  # a dead among them
    assert summary.getMessage().startswith("151 more events in 1.0s not logged one by one")
    assert "unknown -> healthy 150, healthy -> dead 1" in summary.getMessage()
    assert len(log.query(limit=0)) == 251  # every event is kept all the same
    log.record("b", "unknown", "healthy", "first heartbeat")
    assert caplog.records[-1].getMessage().startswith("agent b: unknown -> healthy")


def test_the_pump_records_in_order_on_its_own_thread_and_stop_drains():
    import threading
    from hbdaemon.events import EventPump
    log = EventLog(100_000, wallclock=lambda: 1000.0)
    threads_seen = set()
    log.subscribe(lambda ev: threads_seen.add(threading.current_thread().name))
    pump = EventPump(log.record, log)
    pump.put("early", "unknown", "healthy", "before start")  # queued until started
    pump.start()

    def produce(prefix):
        for n in range(2000):
            pump.put(f"{prefix}-{n}", "unknown", "healthy", "r")

    producers = [threading.Thread(target=produce, args=(p,)) for p in "abc"]
    for t in producers:
        t.start()
    for t in producers:
        t.join(10)
    pump.stop(5.0)
    recorded = [ev.agent_id for ev in log.query(limit=0)]
    assert len(recorded) == 6001 and recorded[0] == "early" and pump.backlog == 0
    for prefix in "abc":  # each producer's events in the order it put them
        mine = [a for a in recorded if a.startswith(prefix + "-")]
        assert mine == [f"{prefix}-{n}" for n in range(2000)]
    assert threads_seen <= {"hb-events", threading.current_thread().name}


def test_the_next_id_block_is_asked_ahead_and_only_an_exhausted_one_waits_for_the_store():
    from hbdaemon.events import ID_BLOCK
    now, ahead = [], []
    log = EventLog(10, wallclock=lambda: 1000.0, reserve=now.append, reserve_ahead=ahead.append)
    for _ in range(ID_BLOCK // 2):
        log.record("a", "unknown", "healthy", "r")
    assert now == [ID_BLOCK] and ahead == []
    log.record("a", "healthy", "dead", "r")  # past half of the block: ask for the next
    assert ahead == [2 * ID_BLOCK]
    log.reserved(2 * ID_BLOCK)  # the store wrote it with its next batch
    for _ in range(ID_BLOCK):
        log.record("a", "dead", "healthy", "r")
    assert now == [ID_BLOCK] and ahead == [2 * ID_BLOCK, 3 * ID_BLOCK]  # no synchronous write
    for _ in range(ID_BLOCK):  # the store never answers: the ids run out and it waits
        log.record("a", "healthy", "dead", "r")
    assert now == [ID_BLOCK, 3 * ID_BLOCK]
