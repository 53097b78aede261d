"""The status page at fleet size: headless Chromium (through chromedriver) on a daemon that
remembers --agents agents, --problems of them dead.

python bench/bench_page.py [--agents 100000] [--problems 300] [--loads 5]
Reports the time from navigation to the first frame with the problem list drawn (the
page's performance.now() at that frame), the JSON it read per poll, the daemon's start
with that table, and the read API calls the page makes, each timed from here.
"""

import argparse
import os
import shutil
import sys

from common import REPO, get_json, report, rss_bytes
from fleet_sim import Central, timed_get

sys.path.insert(0, os.path.join(REPO, "tests"))
from support.browser import Browser  # noqa: E402
from support.fleet import write_fleet  # noqa: E402


def main(argv=None) -> list:
    args = argparse.ArgumentParser()
    args.add_argument("--agents", type=int, default=100000)
    args.add_argument("--problems", type=int, default=300)
    args.add_argument("--loads", type=int, default=5)
    opts = args.parse_args(argv)
    central = Central(REPO, opts.agents, 60)
    write_fleet(os.path.join(central.tmp, "state"), opts.agents, opts.problems)
    rows = [("measure", "value")]
    try:
        ready = central.start()
        rows.append((f"daemon start with {opts.agents:,} stored agents, to ready",
                     f"{ready:.2f} s, RSS {rss_bytes(central.proc.pid) / 2**20:.0f} MB"))
        cursor = get_json(central.url + "/summary")["cursor"]
        for name, path in (("/summary", "/summary"),
                           ("problems (state=dead,no_heartbeat,over_threshold&limit=500)",
                            "/agents?state=dead,no_heartbeat,over_threshold&limit=500"),
                           ("one page (limit=50)", "/agents?limit=50"),
                           ("changes since the last poll", f"/agents?changed_since={cursor}"),
                           ("/events?limit=15", "/events?limit=15")):
            times = []
            for _ in range(5):
                seconds, size = timed_get(central.url + path)
                times.append(seconds)
            rows.append((f"GET {name}", f"{min(times) * 1000:.0f}-{max(times) * 1000:.0f} ms, "
                                        f"{size / 1024:.0f} kB"))
        browser = Browser(shutil.which("chromedriver"), shutil.which("chromium"))
        try:
            paints, biggest = [], 0
            for _ in range(opts.loads):
                browser.open("about:blank")
                browser.open(central.url + "/")
                browser.wait("return document.body.dataset.firstPaint", timeout=60)
                paints.append(float(browser.run("return document.body.dataset.firstPaint")))
                browser.wait("return Number(document.body.dataset.polls) >= 2", timeout=60)
                biggest = max(biggest, int(browser.run("return document.body.dataset.maxPollBytes")))
            rows.append(("first frame with the problem list (per load)",
                         ", ".join(f"{p:.0f} ms" for p in paints)))
            rows.append(("JSON read per poll, largest (first load included)",
                         f"{biggest / 1024:.0f} kB"))
        finally:
            browser.close()
    finally:
        central.close()
    report(f"Status page: {opts.agents:,} agents, {opts.problems} dead", rows)
    return rows


if __name__ == "__main__":
    main()
