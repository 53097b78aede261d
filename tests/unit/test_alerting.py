"""The alert book's decisions, what a webhook hears of, silences' matching, and the
alerting config: each against hostile or odd input too."""

import fnmatch
import json
import re

import pytest

from hbdaemon import convert as cv
from hbdaemon.alerting import news
from hbdaemon.alerts import Alert, AlertBook, AlertmanagerSender, alert_labels
from hbdaemon.config import AlertmanagerConfig, ConfigError, load_config, redacted_url
from hbdaemon.events import Event
from hbdaemon.silences import Silence, Silences, SilenceError, _from_am, glob_regex


def ev(to, frm="healthy", agent="a", kind="state", at=100.0, reason="why"):
    return Event(1, at, agent, frm, to, reason, kind)


def test_an_agent_fires_once_per_failing_state_and_resolves_on_recovery_or_forgetting():
    book = AlertBook()
    change = book.apply(ev("no_heartbeat"))
    assert change.fired.state == "no_heartbeat" and change.resolved is None
    assert not book.apply(ev("no_heartbeat", "unknown"))  # the same alert goes on
    assert not book.apply(ev("unknown", "no_heartbeat"))  # a restart changes nothing
    change = book.apply(ev("dead", "no_heartbeat", at=150.0))  # another alert: old one ends
    assert change.resolved.state == "no_heartbeat" and change.resolved.ended == 150.0
    assert change.fired.state == "dead" and change.fired.since == 150.0
    change = book.apply(ev("healthy", "dead", at=200.0))
    assert change.resolved.state == "dead" and change.resolved.since == 150.0
    assert change.fired is None and len(book) == 0
    assert not book.apply(ev("healthy", "unknown"))  # nothing was firing
    book.apply(ev("over_threshold"))
    assert book.apply(ev("dead", "over_threshold", kind="forgotten")).resolved
    assert not book.apply(ev("dead", kind="hook_suspended"))


def test_the_book_is_rebuilt_from_the_registry_with_the_old_start_times():
    book = AlertBook()
    assert book.rebuild([("a", "dead", 5.0, "gone", False), ("b", "healthy", 6.0, "", False),
                         ("c", "no_heartbeat", 7.0, "silent", True)]) == 2
    assert book.get("a").since == 5.0 and book.get("c").daemon
    assert not book.apply(ev("no_heartbeat", "unknown", agent="c"))  # after the restart


def test_webhooks_hear_of_failures_and_recoveries_not_of_restarts_or_planned_stops():
    book = AlertBook()
    assert news(ev("dead"), book.apply(ev("dead"))) == "firing"
    assert news(ev("healthy", "dead"), book.apply(ev("healthy", "dead"))) == "resolved"
    assert news(ev("healthy", "unknown"), book.apply(ev("healthy", "unknown"))) is None
    assert news(ev("stopped", "healthy"), book.apply(ev("stopped", "healthy"))) is None
    book.rebuild([("a", "no_heartbeat", 1.0, "", False)])
    assert news(ev("no_heartbeat", "unknown"), book.apply(ev("no_heartbeat", "unknown"))) is None
    assert news(ev("dead", kind="hook_suspended"), book.apply(ev("dead", kind="hook_suspended"))) \
        == "event"
    assert news(ev("unknown", "healthy"), book.apply(ev("unknown", "healthy"))) == "event"
    book.apply(ev("dead", agent="b"))  # forgotten while failing: its alert ends for webhooks too
    gone = ev("dead", "dead", agent="b", kind="forgotten")
    assert news(gone, book.apply(gone)) == "resolved"
    gone = ev("healthy", "healthy", agent="c", kind="forgotten")
    assert news(gone, book.apply(gone)) is None


def test_an_ha_pair_gives_identical_labels_and_configured_ones_cannot_hide_the_identity():
    alert = Alert("web-1", "dead", 1.0, "gone")
    extra = (("agent_id", "forged"), ("cluster", "eu"), ("severity", "page"))
    one, two = alert_labels(alert, "pair", extra), alert_labels(alert, "pair", extra)
    assert one == two
    assert one["agent_id"] == "web-1" and one["severity"] == "page" and one["cluster"] == "eu"
    assert one["role"] == "agent" and one["hbdaemon"] == "pair"
    host = alert_labels(Alert("host-b", "no_heartbeat", 1.0, "", daemon=True), "central", ())
    assert host["role"] == "hbdaemon" and host["hbdaemon"] == "host-b"


def test_the_alertmanager_document_has_ends_ahead_while_firing_and_the_end_once_resolved():
    cfg = AlertmanagerConfig(urls=("http://127.0.0.1:1",), resend_interval=60.0)
    sender = AlertmanagerSender(cfg.urls[0], cfg, AlertBook(), "me",
                                "http://h:8690/", wallclock=lambda: 1000.0)
    firing = sender.document(Alert("a b/c", "over_threshold", 900.0, "cpu 99%"))
    assert firing["startsAt"] == "1970-01-01T00:15:00.000Z"
    assert firing["endsAt"] == "1970-01-01T00:20:40.000Z"  # 1000 + 4 x 60
    assert firing["generatorURL"] == "http://h:8690/#agent=a%20b%2Fc"
    assert firing["labels"]["alertname"] == "HeartbeatAgentOverThreshold"
    done = sender.document(Alert("a", "dead", 900.0, "", ended=950.0))
    assert done["endsAt"] == "1970-01-01T00:15:50.000Z"


def test_a_sender_keeps_the_newest_word_on_each_alert_and_bounds_its_queue(monkeypatch):
    import hbdaemon.alerts as alerts
    monkeypatch.setattr(alerts, "MAX_PENDING", 3)
    cfg = AlertmanagerConfig(urls=("http://127.0.0.1:1",))
    sender = AlertmanagerSender(cfg.urls[0], cfg, AlertBook(), "me")
    first = Alert("a", "dead", 1.0, "")
    sender.offer([first, Alert("b", "dead", 1.0, "")])
    sender.offer([first.resolved(2.0)])
    assert sender.delivery.depth == 2
    sender.offer([Alert(f"x{n}", "dead", 1.0, "") for n in range(3)])
    assert sender.delivery.depth == 3 and sender.delivery.dropped == 2


@pytest.mark.parametrize("glob", ["web-*", "db-?.x", "[!a]bc", "[]x]y", "a[bc", "u@uid0:*",
                                  "*", "[a-c]1", "exact"])
def test_a_glob_becomes_the_regex_alertmanager_anchors(glob):
    regex = glob_regex(glob)
    for agent in ("web-1", "db-1.x", "db-12x", "xbc", "abc", "]y", "a[bc", "u@uid0:7", "b1",
                  "exact", "exactly", ""):
        assert bool(re.fullmatch(regex, agent)) == fnmatch.fnmatchcase(agent, glob), agent


def test_silence_matchers_follow_alertmanager():
    labels = {"agent_id": "web-1", "state": "dead"}
    assert Silence("s", [("agent_id", "=~", "web-.*")], 0, 10, "", "").matches(labels)
    assert not Silence("s", [("agent_id", "=~", "web")], 0, 10, "", "").matches(labels)
    assert Silence("s", [("state", "!=", "no_heartbeat")], 0, 10, "", "").matches(labels)
    assert Silence("s", [("team", "=", "")], 0, 10, "", "").matches(labels)  # missing is ""
    assert not Silence("s", [("agent_id", "!~", "w.*")], 0, 10, "", "").matches(labels)
    assert not Silence("s", [("agent_id", "=~", "(")], 0, 10, "", "").matches(labels)
    assert not Silence("s", [("agent_id", "=", "web-1")], 5, 10, "", "").active(4.0)


@pytest.mark.parametrize("item", [
    None, [], {"status": {"state": "active"}}, {"id": 1, "status": {"state": "active"},
                                                "matchers": [], "startsAt": "x", "endsAt": "y"},
    {"id": "i", "status": {"state": "active"}, "matchers": [{"name": 1, "value": "v"}],
     "startsAt": "2026-01-01T00:00:00Z", "endsAt": "2026-01-02T00:00:00Z"},
    {"id": "i", "status": {"state": "expired"}, "matchers": [],
     "startsAt": "2026-01-01T00:00:00Z", "endsAt": "2026-01-02T00:00:00Z"},
])
def test_a_silence_alertmanager_lists_that_makes_no_sense_is_left_out(item):
    assert _from_am(item) is None


def test_local_silences_survive_a_restart_and_a_hostile_file_is_refused(tmp_path):
    cfg = AlertmanagerConfig()
    silences = Silences(cfg, str(tmp_path), "me", wallclock=lambda: 1000.0)
    made = silences.create("job-*", 60, "backup", "ops")
    assert silences.silenced("job-1", "dead") == made["id"]
    assert silences.silenced("web-1", "dead") is None
    again = Silences(cfg, str(tmp_path), "me", wallclock=lambda: 1030.0)
    again._load_local()
    assert again.silenced("job-9", "healthy") == made["id"]
    assert Silences(cfg, str(tmp_path), "me", wallclock=lambda: 1061.0).list()["silences"] == []
    with pytest.raises(SilenceError) as err:
        again.expire("not-a-uuid")
    assert err.value.code == 404
    again.expire(made["id"])
    assert again.silenced("job-9", "dead") is None
    for text in ("{", "[1, {\"id\": 5}]", json.dumps([{"id": "x", "matchers": [["a", "==", "b"]],
                                                      "starts": 0, "ends": 1e12}]),
                 json.dumps([{"id": "x", "matchers": [], "starts": "nan", "ends": 1e12}])):
        (tmp_path / "silences.json").write_text(text)
        hostile = Silences(cfg, str(tmp_path), "me", wallclock=lambda: 1000.0)
        hostile._load_local()
        assert hostile.silenced("x", "dead") is None


@pytest.mark.parametrize("value, expected", [
    ({"cluster": "eu-1", "team": 7}, (("cluster", "eu-1"), ("team", "7"))),
    ("cluster=eu-1, team=ops", (("cluster", "eu-1"), ("team", "ops"))),
    ({}, ()),
])
def test_labels_from_yaml_or_the_environment(value, expected):
    assert cv.label_map(value) == expected


@pytest.mark.parametrize("value", [{"1x": "a"}, {"__name__": "a"}, {"a-b": "c"}, {"a": None},
                                   {"a": [1]}, "novalue", ["a=b"]])
def test_bad_labels_are_refused(value):
    with pytest.raises(ValueError):
        cv.label_map(value)


def test_alerting_config_errors_name_the_key(tmp_path):
    for text, needle in (("alertmanager: {urls: [ftp://x]}", "alertmanager.urls"),
                         ("webhooks: [{on: [dead]}]", "webhooks[0].url"),
                         ("webhooks: [{url: 'http://h/', on: [exploded]}]", "webhooks[0].on"),
                         ("alertmanager: {resend_interval: 0s}", "resend_interval")):
        path = tmp_path / "hb.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_config(str(path))
        assert needle in str(err.value), (text, err.value)


def test_urls_in_logs_and_metrics_keep_no_secrets():
    assert redacted_url("https://hooks.slack.com/services/T0/B0/abcdefghijklmnopqrstuvwx") \
        == "https://hooks.slack.com/…"
    assert redacted_url("http://user:pw@127.0.0.1:9000/hook?token=x#f") \
        == "http://127.0.0.1:9000/hook"


def _apply(db: dict, rows) -> None:
    """What the store's writer does with Alerting.take_dirty's rows."""
    for key, seq, body in rows:
        if body is None:
            db.pop((key, seq), None)
        else:
            db[(key, seq)] = body


def test_webhook_queues_in_the_store_follow_deliveries_drops_reloads_and_restarts(tmp_path):
    from hbdaemon.alerting import Alerting
    path = tmp_path / "hb.yaml"
    path.write_text("webhooks: [{url: 'http://127.0.0.1:1/a', queue_size: 3},"
                    " {url: 'http://127.0.0.1:1/a', queue_size: 3}]")
    cfg = load_config(str(path))
    alerting = Alerting(cfg, [None, None], "me", "", lambda a: None)
    first, second = alerting.webhooks
    assert first.key != second.key  # the same URL twice: two queues
    db = {}
    for n in range(5):  # one more than fits: the oldest two are dropped
        first.offer(b"e%d" % n)
    second.offer(b"x")
    _apply(db, alerting.take_dirty())
    assert sorted(db.values()) == [b"e2", b"e3", b"e4", b"x"]
    # a reload that changes the first webhook's timeout: a new sender takes its queue
    path.write_text("webhooks: [{url: 'http://127.0.0.1:1/a', queue_size: 3, timeout: 3s},"
                    " {url: 'http://127.0.0.1:1/a', queue_size: 3}]")
    alerting.configure(load_config(str(path)), [None, None])
    _apply(db, alerting.take_dirty())
    assert sorted(db.values()) == [b"e2", b"e3", b"e4", b"x"]
    assert alerting.webhooks[0] is not first and alerting.webhooks[1] is second
    # a restart: the queues come back from the store, each to its webhook
    again = Alerting(load_config(str(path)), [None, None], "me", "", lambda a: None)
    assert again.restore([(k, n, b) for (k, n), b in db.items()]) == 4
    assert [b for _, b in again.webhooks[0]._queue] == [b"e2", b"e3", b"e4"]
    assert [b for _, b in again.webhooks[1]._queue] == [b"x"]
    # a webhook removed by the time of the restart loses its queue from the store
    path.write_text("webhooks: [{url: 'http://127.0.0.1:1/b'}]")
    gone = Alerting(load_config(str(path)), [None], "me", "", lambda a: None)
    assert gone.restore([(k, n, b) for (k, n), b in db.items()]) == 0
    _apply(db, gone.take_dirty())
    assert db == {}


@pytest.mark.parametrize("glob", ["web-*", "db-?.x", "[!a]bc", "[]x]y", "a[bc", "exact", "*",
                                  "[a-c]1", "u@uid0:*"])
def test_a_glob_made_regex_is_read_back_as_the_same_glob(glob):
    from hbdaemon.silences import regex_glob
    back = regex_glob(glob_regex(glob))
    for agent in ("web-1", "db-1.x", "xbc", "abc", "]y", "a[bc", "exact", "b1", "u@uid0:7", ""):
        assert fnmatch.fnmatchcase(agent, back) == fnmatch.fnmatchcase(agent, glob), (agent, back)


def test_a_regex_python_would_take_hours_on_covers_nothing_and_returns_at_once():
    import time as clock
    from hbdaemon.silences import regex_glob
    assert regex_glob("web.+") == "web?*" and regex_glob("(a+)+c") is None
    assert regex_glob("[[:alpha:]]*") is None and regex_glob("a\\d") is None
    evil = Silence("s", [("alertname", "=~", "((.+)+)+Q"), ("agent_id", "=~", "(a+)+c")],
                   0, 10, "", "")
    started = clock.monotonic()
    assert not evil.matches({"alertname": "HeartbeatAgentDown", "agent_id": "a" * 40})
    assert clock.monotonic() - started < 0.1


def test_silenced_answers_follow_the_clock_and_the_list(tmp_path):
    now = [1000.0]
    silences = Silences(AlertmanagerConfig(), str(tmp_path), "me", wallclock=lambda: now[0])
    made = silences.create("web-1", 60, "disk", "ops")
    assert silences.silenced("web-1", "dead") == made["id"]  # by the exact-id index
    assert silences.silenced("web-2", "dead") is None
    now[0] = 1061.0  # past its end: the kept answers are dropped
    assert silences.silenced("web-1", "dead") is None
    for glob in ("[[:alpha:]]*", "[z-a]x"):
        with pytest.raises(SilenceError) as err:
            silences.create(glob, 60, "x", "ops")
        assert err.value.code == 400


def test_a_hostile_local_silences_file_is_moved_aside_not_followed(tmp_path):
    import os
    cfg = AlertmanagerConfig()
    (tmp_path / "silences.json").write_text("[" * 100000 + "]" * 100000)
    hostile = Silences(cfg, str(tmp_path), "me", wallclock=lambda: 1000.0)
    hostile._load_local()  # no RecursionError
    assert not (tmp_path / "silences.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("silences.json.bad-")]
    os.mkfifo(tmp_path / "silences.json")
    Silences(cfg, str(tmp_path), "me")._load_local()  # a FIFO does not block the start
    assert not (tmp_path / "silences.json").exists()
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("silences.json.bad-")]) == 2
    (tmp_path / "target").write_text("keep")
    os.symlink(tmp_path / "target", tmp_path / "silences.json.tmp")
    Silences(cfg, str(tmp_path), "me").create("a", 60, "x", "ops")
    assert (tmp_path / "target").read_text() == "keep"
    (tmp_path / "silences.json").write_text(json.dumps(
        [{"id": "i", "matchers": [["agent_id", "=", "a"]], "starts": 0, "ends": 1e300}]))
    far = Silences(cfg, str(tmp_path), "me", wallclock=lambda: 1000.0)
    far._load_local()
    assert far.list()["silences"] == []
