"""`hbctl`: see and script everything the daemon knows, through its HTTP API.

Exit codes: 0 ok, 1 error (unknown agent, refused token), 2 usage, 3 daemon not running
(LSB). `hbctl check` speaks the Nagios/Icinga plugin language instead: 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN.
"""

import argparse
import json
import os
import sys
import time
from typing import List, Optional
from urllib.parse import quote

from hbdaemon import __version__
from hbdaemon.ctl_client import ApiError, Client, DaemonDown, default_url
from hbdaemon.health import human_bytes
from hbdaemon.protocol import parse_rfc3339, valid_agent_id

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3
NAGIOS = {"healthy": 0, "stopped": 0, "over_threshold": 1, "unknown": 1,
          "no_heartbeat": 2, "dead": 2}
NAGIOS_WORDS = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
COLOURS = {"healthy": "32", "stopped": "36", "over_threshold": "33", "unknown": "33",
           "no_heartbeat": "31", "dead": "31;1"}


def age(rfc3339: Optional[str], now: Optional[float] = None) -> str:
    """'4m12s' since an RFC 3339 time ('-' if none)."""
    then = parse_rfc3339(rfc3339) if rfc3339 else None
    if then is None:
        return "-"
    s = max(0, int((now or time.time()) - then))
    for size, unit, sub, sub_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s")):
        if s >= size:
            rest = (s % size) // sub
            return f"{s // size}{unit}{rest}{sub_unit}" if rest else f"{s // size}{unit}"
    return f"{s}s"


def paint(state: str, text: str, colour: bool) -> str:
    return f"\033[{COLOURS.get(state, '0')}m{text}\033[0m" if colour else text


def printable(value) -> str:
    """Agents choose their version and status: no control characters reach the terminal."""
    return "".join(c if c.isprintable() else "?" for c in str(value))


def table(rows: List[List[str]], states: List[str], colour: bool) -> str:
    rows = [[printable(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) for c, w in zip(row, widths)]
        if n and colour:
            cells[1] = paint(states[n - 1], cells[1], True)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def cmd_status(client: Client, args) -> int:
    agents = client.get("/agents")["agents"]
    if args.json:
        print(json.dumps(agents, indent=2))
        return EXIT_OK
    if not agents:
        print("no agents known")
        return EXIT_OK
    fleet = any(a.get("summary") for a in agents)  # downstream daemons report their agents
    watched = any(a.get("watcher") for a in agents)  # processes an agentd speaks for
    silenced = any(a.get("silenced") for a in agents)
    rows = [["AGENT", "STATE", "SINCE", "LAST HEARTBEAT", "PID", "CPU", "MEMORY", "VERSION",
             "TRANSPORT"] + (["WATCHED BY"] if watched else []) + (["SILENCED"] if silenced else [])
            + (["ITS AGENTS"] if fleet else [])]
    for a in agents:
        rows.append([a["agent_id"], a["state"] + ("*" if a.get("flapping") else ""),
                     age(a["state_since"]), age(a["last_seen"]), str(a["pid"]),
                     f"{a['cpu']:.1f}%", human_bytes(a["memory"]), a["version"] or "-",
                     a["transport"] or "-"] + ([a.get("watcher") or "-"] if watched else [])
                    + ([a.get("silenced") or "-"] if silenced else [])
                    + ([_summary(a.get("summary"))] if fleet else []))
    print(table(rows, [a["state"] for a in agents], _colour()))
    if any(a.get("flapping") for a in agents):
        print("* flapping: changing state too often")
    return EXIT_OK


def _summary(counts: Optional[dict]) -> str:
    """'3 healthy, 1 dead' from a downstream daemon's summary ('-' for a plain agent)."""
    if not counts:
        return "-"
    return ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "none"


def cmd_show(client: Client, args) -> int:
    rec = client.get(f"/agents/{quote(args.agent)}")
    events = client.get(f"/events?agent={quote(args.agent)}&limit=20")["events"]
    if args.json:
        print(json.dumps({"agent": rec, "events": events}, indent=2))
        return EXIT_OK
    width = max(len(k) for k in rec)
    for key, value in rec.items():
        shown = paint(value, value, _colour()) if key == "state" else printable(value)
        print(f"{key.ljust(width)}  {'-' if value in (None, '') else shown}")
    print("\nrecent events:" if events else "\nno events")
    for ev in events:
        print(printable(f"  {ev['time']}  {_change(ev)}  {ev['reason']}"))
    return EXIT_OK


def _change(ev: dict) -> str:
    """`healthy -> dead` for a change of state; the kind (`forgotten:`) for other events."""
    kind = ev.get("kind", "state")
    return f"{ev['from']} -> {ev['to']}" if kind == "state" else f"{kind}:"


def cmd_events(client: Client, args) -> int:
    query = "&".join(f"{k}={quote(v)}" for k, v in (("since", args.since), ("agent", args.agent)) if v)
    events = client.get("/events" + ("?" + query if query else ""))["events"]
    last = _print_events(events, args.json)
    if args.follow and not events:  # follow from the newest event, whatever it is
        newest = client.get("/events?limit=1")["events"]
        last = newest[-1]["id"] if newest else 0
    while args.follow:
        try:
            time.sleep(1.0)
            extra = f"&agent={quote(args.agent)}" if args.agent else ""
            last = max(last, _print_events(client.get(f"/events?after={last}{extra}")["events"],
                                           args.json))
        except KeyboardInterrupt:
            return EXIT_OK
    return EXIT_OK


def _print_events(events: list, as_json: bool) -> int:
    for ev in events:
        if as_json:
            print(json.dumps(ev))
        else:
            print(printable(f"{ev['time']}  {ev['agent_id']}  {_change(ev)}  {ev['reason']}"))
    sys.stdout.flush()
    return events[-1]["id"] if events else 0


def cmd_stats(client: Client, args) -> int:
    stats = client.get("/stats")
    if args.json:
        print(json.dumps(stats, indent=2))
        return EXIT_OK
    alerting = stats.pop("alerting", None)
    width = max(len(k) for k in stats)
    for key, value in stats.items():
        shown = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value
        print(f"{key.ljust(width)}  {printable(shown) if shown not in ('', None) else '-'}")
    if alerting:
        silences = alerting.get("silences") or {}
        print(f"{'alerting'.ljust(width)}  {alerting['firing']} firing; silences: "
              f"{silences.get('active', 0)} active ({silences.get('mode', '-')})"
              + (f", {printable(silences['last_error'])}" if silences.get("last_error") else ""))
        receivers = alerting.get("receivers") or []
        if receivers:
            rows = [["RECEIVER", "KIND", "SENT", "FAILED", "DROPPED", "SILENCED", "QUEUE",
                     "LAST SUCCESS", "LAST ERROR"]]
            rows += [[r["receiver"], r["kind"], str(r["sent"]), str(r["failed"]),
                      str(r["dropped"]), str(r["silenced"]), str(r["queue_depth"]),
                      age(r["last_success"]) + " ago" if r["last_success"] else "never",
                      r["last_error"][:60] or "-"] for r in receivers]
            print(table(rows, [], False))
    return EXIT_OK


def cmd_silence(client: Client, args) -> int:
    doc = client.post("/silences", {"match": args.glob, "for": args.duration,
                                    "reason": args.reason, "created_by": _user()})
    print(f"silence {doc['id']}: agents {args.glob} until {doc['ends_at']}")
    return EXIT_OK


def cmd_silences(client: Client, args) -> int:
    doc = client.get("/silences" + ("?all=1" if args.all else ""))
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    if not doc["silences"]:
        print(f"no silences ({doc['mode']})")
        return EXIT_OK
    rows = [["ID", "STATE", "MATCHERS", "ENDS", "BY", "REASON"]]
    for sil in doc["silences"]:
        matchers = ",".join(f"{m['name']}{m['op']}{m['value']}" for m in sil["matchers"])
        rows.append([sil["id"], sil["state"], matchers, sil["ends_at"], sil["created_by"],
                     sil["comment"][:60]])
    print(table(rows, [], False))
    return EXIT_OK


def cmd_unsilence(client: Client, args) -> int:
    client.delete(f"/silences/{quote(args.id, safe='')}")
    print(f"silence {args.id} expired")
    return EXIT_OK


def _user() -> str:
    try:
        import pwd
        name = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        name = str(os.getuid())
    return f"{name}@{os.uname().nodename}"


def cmd_forget(client: Client, args) -> int:
    print(client.delete(f"/agents/{quote(args.agent)}")["message"])
    return EXIT_OK


def cmd_check(client: Client, args) -> int:
    """A Nagios/Icinga plugin: one status line with perfdata."""
    try:
        if args.all:
            return _check_all(client.get("/agents")["agents"])
        rec = client.get(f"/agents/{quote(args.agent)}")
    except (DaemonDown, ApiError) as exc:
        print(f"UNKNOWN - {exc}")
        return 3
    code = NAGIOS.get(rec["state"], 3)
    perf = (f"cpu={rec['cpu']:g}%;{rec['cpu_threshold']:g} "
            f"memory={rec['memory'] / 1e6:.1f}MB;{rec['memory_threshold'] / 1e6:g}")
    detail = f"{rec['reason']}; " if rec["state"] != "healthy" and rec["reason"] else ""
    print(f"{NAGIOS_WORDS[code]} - agent {rec['agent_id']} is {rec['state']} "
          f"({detail}last heartbeat {age(rec['last_seen'])} ago) | {perf}")
    return code


def _check_all(agents: list) -> int:
    counts = {state: 0 for state in NAGIOS}
    for a in agents:
        counts[a["state"]] = counts.get(a["state"], 0) + 1
    code = max([NAGIOS.get(a["state"], 3) for a in agents] or [0])
    bad = [f"{a['agent_id']} {a['state']}" for a in agents if NAGIOS.get(a["state"], 3) > 0]
    summary = ", ".join(bad) if bad else f"all {len(agents)} agents fine"
    perf = " ".join(f"{state}={n}" for state, n in counts.items())
    print(f"{NAGIOS_WORDS[code]} - {summary} | {perf}")
    return code


def cmd_send(client: Client, args) -> int:
    """One heartbeat by hand, for shell-script agents and debugging."""
    doc = {"agent_id": args.agent_id, "pid": args.pid or os.getppid(), "status": args.status,
           "cpu": args.cpu, "memory": args.memory, "version": args.version,
           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.transport == "http":
        print(client.post("/heartbeat", doc)["message"])
        return EXIT_OK
    import socket
    doc["pid"] = os.getpid()  # the daemon checks it against the connecting process
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(client.timeout)
        try:
            sock.connect(args.socket)
            sock.sendall(json.dumps(doc).encode() + b"\n")
        except OSError as exc:
            raise DaemonDown(f"cannot reach hbdaemon at {args.socket}: {exc.strerror or exc}") from None
    print("heartbeat sent" + ("" if args.status == "stopping" else
                             " (over the socket the connection is the liveness signal: this agent"
                             " shows as dead once hbctl exits; use --transport http or --status stopping)"))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hbctl", description="Query and control hbdaemon.")
    p.add_argument("--version", action="version", version=f"hbctl {__version__}")
    p.add_argument("-c", "--config", metavar="FILE",
                   help="daemon config to find the URL and token (default /etc/hbdaemon/hbdaemon.yaml)")
    p.add_argument("--url", help="the daemon's HTTP API, e.g. http://127.0.0.1:8690")
    p.add_argument("--token-file", metavar="FILE", help="bearer token for forget and send")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    p.add_argument("--ca-file", metavar="FILE", default="",
                   help="CAs (PEM) to verify an https:// daemon with (default: the system's)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    s = sub.add_parser("status", help="table of agents (exit 3 if the daemon is not running)")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("show", help="one agent and its recent events")
    s.add_argument("agent")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("events", help="state changes")
    s.add_argument("--since", help="RFC 3339 time or a duration ago, e.g. 10m")
    s.add_argument("--agent")
    s.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s = sub.add_parser("stats", help="receiver statistics")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("forget", help="drop an agent (DELETE /agents/AGENT)")
    s.add_argument("agent")
    s = sub.add_parser("check", help="Nagios/Icinga plugin: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN")
    s.add_argument("agent", nargs="?")
    s.add_argument("--all", action="store_true", help="the worst state of all agents")
    s = sub.add_parser("silence", help="silence agents: Alertmanager's silence, or a local mute "
                                       "that webhooks and hooks honour")
    s.add_argument("glob", help="agent ids, e.g. web-* (quote it from the shell)")
    s.add_argument("--for", dest="duration", required=True, help="e.g. 30m, 2h")
    s.add_argument("--reason", required=True)
    s = sub.add_parser("silences", help="list silences")
    s.add_argument("--all", action="store_true", help="expired ones too")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("unsilence", help="expire a silence")
    s.add_argument("id")
    s = sub.add_parser("send", help="send one heartbeat by hand")
    s.add_argument("--agent-id", required=True)
    s.add_argument("--pid", type=int, help="default: hbctl's parent (the calling script)")
    s.add_argument("--status", default="running")
    s.add_argument("--cpu", type=float, default=0.0)
    s.add_argument("--memory", type=int, default=0)
    s.add_argument("--version", dest="version", default="")
    s.add_argument("--transport", choices=("http", "unix"), default="http")
    s.add_argument("--socket", default="/run/hbdaemon/hbdaemon.sock")
    return p


COMMANDS = {"status": cmd_status, "show": cmd_show, "events": cmd_events, "stats": cmd_stats,
            "forget": cmd_forget, "check": cmd_check, "send": cmd_send,
            "silence": cmd_silence, "silences": cmd_silences, "unsilence": cmd_unsilence}


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check" and bool(args.agent) == bool(args.all):
        print("hbctl check: name one AGENT or --all", file=sys.stderr)
        return EXIT_USAGE
    for value in (getattr(args, "agent", None), getattr(args, "agent_id", None)):
        if value and not valid_agent_id(value):
            print(f"hbctl: {value!r} is not an agent id", file=sys.stderr)
            return EXIT_USAGE
    url, token, note = default_url(args.config)
    if args.token_file:
        try:
            with open(args.token_file) as f:
                token, note = f.read().strip(), ""
        except OSError as exc:
            print(f"hbctl: cannot read {args.token_file}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    try:
        client = Client(args.url or url, token, args.timeout, args.ca_file)
    except OSError as exc:  # ssl.SSLError among them: a CA file it cannot load
        print(f"hbctl: cannot load --ca-file {args.ca_file}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](client, args)
    except BrokenPipeError:  # `hbctl status | head`: the reader left, that is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except DaemonDown as exc:
        print(f"hbctl: {exc} (is hbdaemon running?)", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except ApiError as exc:
        if exc.status == 401:
            hint = f" ({note})" if note else ""
            print(f"hbctl: the daemon refused the token (401): give --token-file{hint}", file=sys.stderr)
        else:
            print(f"hbctl: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


if __name__ == "__main__":  # python -m hbdaemon.ctl, as the tests run it
    sys.exit(main())
