"""`hbdaemon` command line: the one place that turns errors into exit codes."""

import argparse
import logging
import os
import sys
from typing import List, Optional

from hbdaemon import __version__, logsetup
from hbdaemon.config import DEFAULT_PATH, ConfigError, load_config
from hbdaemon.store import DB_NAME, StoreError
from hbdaemon.unix_server import SocketInUseError

log = logging.getLogger("hbdaemon")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hbdaemon",
        description="Receive heartbeats from agents, judge their health, report it.")
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"configuration file (default {DEFAULT_PATH}; env HBDAEMON_CONFIG)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration, print a summary and exit (0 ok, 2 bad)")
    p.add_argument("--version", action="version", version=f"hbdaemon {__version__}")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="override log.level")
    p.add_argument("--socket-path", metavar="PATH", help="override unix.socket_path")
    p.add_argument("--http-port", metavar="PORT", help="override http.port (0: no HTTP)")
    p.add_argument("--state-dir", metavar="DIR", help="override daemon.state_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key, e.g. --set agent.health_check.heartbeat_timeout=30s")
    return p


def _overrides(args) -> dict:
    out = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--set {item}: expected KEY=VALUE")
        out[name.strip()] = value
    for key, value in (("log.level", args.log_level), ("unix.socket_path", args.socket_path),
                       ("http.port", args.http_port), ("daemon.state_dir", args.state_dir)):
        if value is not None:
            out[key] = value
    return out


SERVICE_USER = "hbdaemon"  # the packaged service's user (systemd unit, init script)


def check_paths(cfg) -> None:
    """--check-config: the log file and state directory the daemon will write must be
    writable (by the service's user when run as root). Raises ConfigError."""
    for name, path, directory in (("log.file", cfg.log.file, False),
                                  ("daemon.state_dir", cfg.daemon.state_dir, True)):
        problem = path and logsetup.unwritable(path, SERVICE_USER, directory)
        if problem:
            raise ConfigError(f"{cfg.source}: {name}: {path} will not be writable: {problem}")
    for suffix in ("", "-wal", "-shm"):  # a store left by another user (root, say)
        db = os.path.join(cfg.daemon.state_dir, DB_NAME + suffix)
        problem = os.path.exists(db) and logsetup.unwritable(db, SERVICE_USER)
        if problem:
            raise ConfigError(f"{cfg.source}: daemon.state_dir: {db} will not be writable: "
                              f"{problem}")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    path = args.config or os.environ.get("HBDAEMON_CONFIG") or DEFAULT_PATH
    named = bool(args.config or os.environ.get("HBDAEMON_CONFIG"))

    def load():
        return load_config(path, overrides=_overrides(args), required=named)

    from hbdaemon.daemon import Daemon, StartupError, preflight  # keeps --version light
    try:
        cfg = load()
        if args.check_config:
            preflight(cfg)
            check_paths(cfg)
            print(f"{cfg.source}: configuration OK (unix {cfg.unix.socket_path}, http "
                  f"{cfg.http.host + ':' + str(cfg.http.port) if cfg.http.port else 'off'}, "
                  f"{len(cfg.hooks)} hooks, {len(cfg.agent.overrides)} overrides)")
            return EXIT_OK
        logsetup.configure(cfg.log.level, cfg.log.file, cfg.log.format)
        daemon = Daemon(cfg, reload_config=load)
    except ConfigError as exc:
        print(f"hbdaemon: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the log file cannot be opened
        print(f"hbdaemon: cannot open log file: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        daemon.install_signal_handlers()
        daemon.start()
    except (StartupError, StoreError, SocketInUseError) as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE
    try:
        daemon.run_forever()
    finally:
        daemon.stop()
    return EXIT_OK
