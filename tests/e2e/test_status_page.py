"""The status page in a real headless Chromium: rendered DOM, state colours, escaping."""

import os
import re
import subprocess
import tempfile
import time

from support.browser import Browser
from support.fleet import write_fleet
from support.tools import require_tool

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=5000"]
EVIL = "<script>document.title='x'</script><img src=x onerror=alert(1)>"  # 63 chars


def chromium(url: str, *extra) -> str:
    binary = require_tool("chromium")
    with tempfile.TemporaryDirectory(prefix="hbchrome") as profile:
        proc = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_page_renders_agents_states_sparklines_and_escapes_what_agents_send(daemon_factory, short_tmp):
    d = daemon_factory(daemon={"history_step": "0.1s"}).start()
    for cpu in (5.0, 20.0, 10.0):
        assert d.post({"agent_id": "web-1", "pid": os.getpid(), "cpu": cpu, "memory": 40 << 20,
                       "version": EVIL, "status": "<b>bold</b>"})[0] == 200
        time.sleep(0.15)  # one history sample each
    crashy = d.unix_agent("db-1", interval=0.1)
    crashy.kill()
    crashy.wait(5)
    d.wait_state("db-1", "dead")
    assert len(d.get("/history")[2]["agents"]["web-1"]["cpu"]) >= 2
    status, headers, _ = d.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]

    dom = chromium(f"http://127.0.0.1:{d.port}/", "--dump-dom")
    assert 'data-loaded="yes"' in dom, dom[-2000:]
    rows = dict(re.findall(r'<tr data-agent="([^"]+)" data-state="([^"]+)">', dom))
    assert rows == {"web-1": "healthy", "db-1": "dead"}
    assert 'class="state s-healthy">healthy<' in dom and 'class="state s-dead">dead<' in dom
    assert "&lt;script&gt;document.title='x'&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in dom
    assert dom.count("<script") == 1 and "<img" not in dom  # only the page's own script
    assert "<title>hbdaemon</title>" in dom  # the agent's script did not run
    assert re.search(r'<polyline points="[\d., ]+"', dom)  # a sparkline was drawn
    assert "db-1 </strong>" in dom and "process" in dom  # the dead event, listed as text

    shot = os.path.join(short_tmp, "page.png")
    chromium(f"http://127.0.0.1:{d.port}/", f"--screenshot={shot}", "--window-size=420,800")
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"  # a phone-sized render


def test_page_marks_silenced_agents_and_highlights_the_one_an_alert_links_to(daemon_factory):
    d = daemon_factory().start()
    for agent in ("web-1", "db-1"):
        assert d.post({"agent_id": agent, "pid": os.getpid()})[0] == 200
    status, _, silence = d.request("POST", "/silences",
                                   {"match": "db-*", "for": "10m", "reason": "maintenance"})
    assert status == 200, silence
    dom = chromium(f"http://127.0.0.1:{d.port}/#agent=db-1", "--dump-dom")
    rows = {m[0]: m[1] for m in re.findall(r'<tr data-agent="([^"]+)"([^>]*)>', dom)}
    assert f'data-silenced="{silence["id"]}"' in rows["db-1"] and 'class="focus"' in rows["db-1"]
    assert "silenced" not in rows["web-1"] and "focus" not in rows["web-1"]
    assert dom.count(">silenced<") + dom.count("> silenced<") == 1
    broken = chromium(f"http://127.0.0.1:{d.port}/#agent=%E0%A4%A", "--dump-dom")
    assert 'data-loaded="yes"' in broken  # a malformed link does not stop the page


def test_page_at_100000_agents_shows_problems_first_and_polls_only_what_changed(daemon_factory):
    driver = require_tool("chromedriver", "chromium-driver")
    binary = require_tool("chromium")
    d = daemon_factory(agent={"max_agents": 200000})
    dead = write_fleet(d.config["daemon"]["state_dir"], 100_000, 300)
    d.start(wait=False)
    d.wait_ready(timeout=90)
    assert d.post({"agent_id": "web-1", "pid": os.getpid()})[0] == 200
    browser = Browser(driver, binary)
    try:
        browser.open(f"http://127.0.0.1:{d.port}/")
        browser.wait("return document.body.dataset.loaded", timeout=60)
        rows = browser.run("return [...document.querySelectorAll('#problems tr')]"
                           ".map(r => [r.dataset.agent, r.dataset.state])")
        assert sorted(rows) == [[agent, "dead"] for agent in dead]
        assert "100001 agents" in browser.run("return document.getElementById('summary').textContent")
        listed = browser.run("return document.querySelectorAll('#agents tr').length")
        assert listed == 50  # one page of the whole table, not all of it
        assert browser.run("return document.body.dataset.firstPaint")  # the problems were drawn

        crashy = d.unix_agent("db-1", interval=0.1)  # a change, picked up by a poll
        crashy.kill()
        crashy.wait(5)
        d.wait_state("db-1", "dead")
        browser.wait("return [...document.querySelectorAll('#problems tr')]"
                     ".some(r => r.dataset.agent === 'db-1' && r.dataset.state === 'dead')",
                     timeout=30)
        browser.run("document.getElementById('next').click()")
        browser.wait("return document.getElementById('page-note').textContent.startsWith('page 2')")
        polls = int(browser.run("return document.body.dataset.polls"))
        biggest = int(browser.run("return document.body.dataset.maxPollBytes"))
        assert polls >= 2 and biggest < 1_000_000, (polls, biggest)
    finally:
        browser.close()
