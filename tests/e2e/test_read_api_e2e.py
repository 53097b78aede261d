"""The read API at fleet size: /agents in pages with filters, and /summary."""

import os
from urllib.parse import quote

import pytest

from support.wait import wait_for

pytestmark = pytest.mark.timeout(60)


def test_agents_in_pages_filtered_by_state_and_glob(daemon_factory):
    d = daemon_factory().start()
    for n in range(25):
        assert d.post({"agent_id": f"web-{n:02d}", "pid": os.getpid()})[0] == 200
    for n in range(5):
        assert d.post({"agent_id": f"db-{n}", "pid": os.getpid(), "status": "stopping"})[0] == 200
    # a 200 is a heartbeat taken; a worker applies it a moment later
    wait_for(lambda: len(d.get("/agents?limit=1000")[2]["agents"]) == 30, what="30 agents")
    everything = d.get("/agents")[2]
    assert len(everything["agents"]) == 30 and "next" not in everything  # as before
    seen, after, pages = [], "", 0
    while True:
        doc = d.get(f"/agents?limit=10&after={quote(after)}")[2]
        seen += [a["agent_id"] for a in doc["agents"]]
        pages += 1
        if "next" not in doc:
            break
        after = doc["next"]
    assert seen == sorted(a["agent_id"] for a in everything["agents"]) and pages == 3
    stopped = d.get("/agents?state=stopped")[2]
    assert [a["agent_id"] for a in stopped["agents"]] == [f"db-{n}" for n in range(5)]
    web = d.get("/agents?match=web-1%3F&limit=5")[2]
    assert [a["agent_id"] for a in web["agents"]] == [f"web-1{n}" for n in range(5)]
    assert web["next"] == "web-14"
    assert d.get("/agents?match=web-1%3F&after=web-14")[2]["agents"][0]["agent_id"] == "web-15"
    for bad in ("state=exploded", "limit=x", "limit=0", "limit=-5", "limit=%EF%BC%95",
                "limit=1_0", "match=" + "a" * 300):
        status, _, doc = d.get(f"/agents?{bad}")
        assert status == 400, (bad, doc)
    assert len(d.get("/agents?limit=99999")[2]["agents"]) == 30  # capped at 1000 a page


def test_summary_counts_by_state_and_transport_and_names_the_oldest_problem(daemon_factory):
    d = daemon_factory().start()
    assert d.post({"agent_id": "ok-1", "pid": os.getpid()})[0] == 200
    d.wait_state("ok-1", "healthy")
    first = d.unix_agent("gone-1")
    first.kill()
    first.wait()
    d.wait_state("gone-1", "dead")
    second = d.unix_agent("gone-2")
    second.kill()
    second.wait()
    d.wait_state("gone-2", "dead")
    doc = d.get("/summary")[2]
    assert doc["total"] == 3 and doc["by_state"]["dead"] == 2 and doc["by_state"]["healthy"] == 1
    assert doc["by_transport"] == {"http": 1, "unix": 2}
    assert doc["oldest_problem"]["agent_id"] == "gone-1"
    assert doc["oldest_problem"]["state"] == "dead"


def test_metrics_keep_per_agent_series_up_to_the_limit_and_stay_promtool_clean(daemon_factory):
    import subprocess
    from support.tools import require_tool
    promtool = require_tool("promtool", "prometheus")
    d = daemon_factory(metrics={"max_agent_series": 2}).start()
    for n in range(5):
        assert d.post({"agent_id": f"m-{n}", "pid": os.getpid()})[0] == 200
    wait_for(lambda: len(d.get("/agents?limit=1000")[2]["agents"]) == 5, what="5 agents")
    text = d.get("/metrics")[2]
    assert {line.split('agent_id="')[1].split('"')[0] for line in text.splitlines()
            if line.startswith("hbdaemon_agent_memory_bytes{")} == {"m-0", "m-1"}
    assert "hbdaemon_agent_series_dropped 3" in text
    assert 'hbdaemon_agents{state="healthy"} 5' in text
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_changes_since_a_cursor_streamed_answers_and_blank_parameters(daemon_factory):
    d = daemon_factory().start()
    for n in range(3):
        assert d.post({"agent_id": f"web-{n}", "pid": os.getpid()})[0] == 200
    wait_for(lambda: len(d.get("/agents?limit=10")[2]["agents"]) == 3, what="3 agents")
    cursor = d.get("/summary")[2]["cursor"]
    assert d.post({"agent_id": "web-1", "pid": os.getpid(), "status": "stopping"})[0] == 200
    assert d.request("DELETE", "/agents/web-2")[0] == 200
    wait_for(lambda: d.get(f"/agents?changed_since={cursor}")[2]["forgotten"], what="changes")
    doc = d.get(f"/agents?changed_since={cursor}")[2]
    assert [a["agent_id"] for a in doc["agents"]] == ["web-1"] and doc["forgotten"] == ["web-2"]
    assert doc["more"] is False
    assert d.get(f"/agents?changed_since={doc['cursor']}")[2]["agents"] == []
    run = cursor.split(".")[0]
    stale = d.get(f"/agents?changed_since={'0' * len(run)}.1")[2]
    assert stale["reset"] is True and stale["cursor"]
    status, headers, everything = d.get("/agents")  # every agent: streamed, chunked
    assert status == 200 and headers.get("Transfer-Encoding") == "chunked"
    assert [a["agent_id"] for a in everything["agents"]] == ["web-0", "web-1"]
    assert d.get("/agents?state=dead,stopped")[2]["agents"][0]["agent_id"] == "web-1"
    for bad in ("changed_since=", "changed_since=x.1", "limit=", "state=dead,nope",
                f"changed_since={cursor}&state=dead", f"changed_since={cursor}&after=a"):
        status, _, body = d.get(f"/agents?{bad}")
        assert status == 400, (bad, body)
    assert "next" in d.get("/agents?match=&limit=1")[2]  # blank: a page, not everything
    assert d.get("/history?agent=")[2]["agents"] == {}
    assert set(d.get("/history?agent=web-0&agent=nobody")[2]["agents"]) <= {"web-0"}
