"""The SQLite store: round trip, pruning, and a corrupt file moved aside."""

import os

import pytest

from hbdaemon.events import Event
from hbdaemon.store import Store, StoreError


def test_agents_and_events_survive_a_reopen(tmp_path):
    dirty = [("a", {"agent_id": "a", "state": "healthy"}), ("b", {"agent_id": "b", "state": "dead"})]
    s = Store(str(tmp_path), max_events=3, interval=1.0, take_dirty=lambda everything=False: dirty)
    assert s.open() == ([], [])
    db = s._connect()
    for i in range(1, 6):
        s.add_event(Event(i, float(i), "a", "unknown", "healthy", f"r{i}"))
    s.flush(db)
    dirty[:] = [("b", None)]
    s.flush(db)
    db.close()
    agents, events = Store(str(tmp_path), 3, 1.0).open()
    assert agents == [{"agent_id": "a", "state": "healthy"}]
    assert [e.id for e in events] == [3, 4, 5]


def test_a_corrupt_store_is_moved_aside_and_a_fresh_one_started(tmp_path, caplog):
    path = tmp_path / "hbdaemon.db"
    path.write_bytes(b"this is not a database" * 100)
    assert Store(str(tmp_path), 10, 1.0).open() == ([], [])
    aside = [n for n in os.listdir(tmp_path) if n.startswith("hbdaemon.db.corrupt-")]
    assert aside and "moved it to" in caplog.text


def test_an_unusable_state_dir_is_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create state_dir"):
        Store(str(blocker / "state"), 10, 1.0).open()


def test_events_kept_for_a_retry_while_writes_fail_are_bounded(tmp_path, caplog):
    s = Store(str(tmp_path), max_events=5, interval=1.0)
    s.open()
    db = s._connect()
    db.execute("PRAGMA query_only=1")  # every write fails, as on a full or read-only disk
    for i in range(1, 21):
        s.add_event(Event(i, float(i), "a", "unknown", "healthy", f"r{i}"))
        s.flush(db)
    assert s.errors == 20 and s.dropped_events == 15
    assert [e.id for e in s._pending] == [16, 17, 18, 19, 20]  # the newest max_events
    assert "events dropped while writes fail" in caplog.text
    db.execute("PRAGMA query_only=0")
    s.flush(db)
    db.close()
    assert [e.id for e in Store(str(tmp_path), 5, 1.0).open()[1]] == [16, 17, 18, 19, 20]


@pytest.mark.parametrize("value", ["-5", "abc", "²", "9" * 40, ""])
def test_a_hostile_id_reservation_in_the_store_is_ignored(tmp_path, value):
    s = Store(str(tmp_path), max_events=5, interval=1.0)
    s.open()
    db = s._connect()
    db.execute("INSERT OR REPLACE INTO meta VALUES ('event_id_reserved', ?)", (value,))
    db.close()
    again = Store(str(tmp_path), max_events=5, interval=1.0)
    assert again.open() == ([], []) and again.reserved_id == 0


def test_writes_failing_for_a_while_are_a_problem_until_one_succeeds(tmp_path, monkeypatch):
    from hbdaemon import store as store_module
    monkeypatch.setattr(store_module, "FAILING_AFTER", 0.0)
    s = Store(str(tmp_path), max_events=5, interval=1.0)
    s.open()
    db = s._connect()
    assert s.problem() is None
    db.execute("PRAGMA query_only=1")
    s.add_event(Event(1, 1.0, "a", "unknown", "healthy", "r"))
    s.flush(db)
    assert s.problem().startswith("hb-store cannot write ") and "readonly" in s.problem()
    db.execute("PRAGMA query_only=0")
    s.flush(db)
    assert s.problem() is None
    db.close()


def test_an_id_block_asked_ahead_is_written_with_the_next_batch_and_never_lowered(tmp_path):
    s = Store(str(tmp_path), max_events=5, interval=1.0)
    s.open()
    written = []
    s.on_reserved = written.append
    s.reserve_ahead(30_000)
    s.reserve_ahead(20_000)  # asked twice before a write: the higher one
    db = s._connect()
    s.flush(db)
    assert written == [30_000] and s.reserved_id == 30_000
    s.reserve_ids(25_000)  # the synchronous path never lowers it
    s.flush(db)  # nothing asked: nothing written
    db.close()
    s.stop(1.0)
    assert written == [30_000]
    again = Store(str(tmp_path), max_events=5, interval=1.0)
    again.open()
    assert again.reserved_id == 30_000


def test_deeply_nested_rows_are_skipped_not_a_crash_at_start(tmp_path, caplog):
    s = Store(str(tmp_path), max_events=5, interval=1.0)
    s.open()
    db = s._connect()
    db.execute("INSERT INTO agents VALUES ('deep', ?)", ("[" * 100_000,))
    db.execute("INSERT INTO hook_runs VALUES ('deep', 'k', ?)", ("[" * 100_000,))
    db.close()
    again = Store(str(tmp_path), max_events=5, interval=1.0)
    assert again.open() == ([], []) and again.hook_runs == []
    assert "skipping unreadable record of agent deep" in caplog.text
