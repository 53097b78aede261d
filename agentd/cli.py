"""`agentd` command line: the one place that turns errors into exit codes."""

import argparse
import os
import sys
from typing import List, Optional

from agentd import __version__

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
SERVICE_USER = "agentd"  # the packaged service's user (systemd unit, init script)
DEFAULT_PATH = "/etc/agentd/agentd.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentd",
                                description="Send this host's heartbeat to hbdaemon.")
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"configuration file (default {DEFAULT_PATH}; env AGENTD_CONFIG; "
                        "the Go agent's -config FILE works too)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration and exit (0 ok, 2 bad)")
    p.add_argument("--version", action="version", version=f"agentd {__version__}")
    p.add_argument("--agent-id", help="override agent_id")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key, e.g. --set heartbeat.interval=10s")
    return p


def _go_flags(argv: List[str]) -> List[str]:
    """The Go agent's single-dash `-config FILE` / `-config=FILE` mean --config."""
    out = []
    for arg in argv:
        if arg == "-config":
            out.append("--config")
        elif arg.startswith("-config="):
            out.append("--config=" + arg[len("-config="):])
        else:
            out.append(arg)
    return out


def build_run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentd run", description="Start COMMAND as agentd's child and report it as "
        "agent ID: its end reaches the daemon at once, with its exit status, and agentd "
        "exits with that status. Signals to agentd are passed on to it.")
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"configuration file for the heartbeat settings (default {DEFAULT_PATH})")
    p.add_argument("--agent-id", required=True, help="the agent id to report COMMAND as")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key, e.g. --set heartbeat.interval=10s")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="[--] COMMAND [ARGS...]")
    return p


def _set_options(items: List[str], prog: str) -> Optional[dict]:
    """The --set KEY=VALUE options as overrides, or None (said on stderr) if one is bad."""
    overrides = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"{prog}: --set {item}: expected KEY=VALUE", file=sys.stderr)
            return None
        overrides[name.strip()] = value
    return overrides


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        return run_main(argv[1:])
    args = build_parser().parse_args(_go_flags(argv))
    from agentd import logsetup
    from agentd.config import ConfigError, load_config
    from agentd.service import AgentService

    path = args.config or os.environ.get("AGENTD_CONFIG") or DEFAULT_PATH
    named = bool(args.config or os.environ.get("AGENTD_CONFIG"))
    overrides = _set_options(args.set, "agentd")
    if overrides is None:
        return EXIT_USAGE
    if args.agent_id is not None:
        overrides["agent_id"] = args.agent_id
    if args.log_level:
        overrides["log.level"] = args.log_level

    def load():
        return load_config(path, overrides=overrides, required=named)

    try:
        cfg = load()
        secret = "heartbeat.auth_token_file"
        if cfg.heartbeat.auth_token_file:
            from agentd.agent import read_token
            read_token(cfg.heartbeat.auth_token_file)
        if cfg.heartbeat.transport == "udp":
            from agentd.keyfile import read_one_key
            secret = "heartbeat.key_file"
            read_one_key(cfg.heartbeat.key_file)
        if cfg.heartbeat.transport == "http" and cfg.heartbeat.url.startswith("https://"):
            from agentd.agent import make_transport
            secret = "heartbeat.ca_file"
            make_transport(cfg.heartbeat)  # loads the CAs: a bad file is said here
    except ConfigError as exc:
        print(f"agentd: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        print(f"agentd: configuration error: {secret}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.check_config:
        from agentd.logsetup import unwritable
        problem = cfg.log.file and unwritable(cfg.log.file, SERVICE_USER)
        if problem:
            print(f"agentd: configuration error: {cfg.source}: log.file: {cfg.log.file} will not "
                  f"be writable: {problem}", file=sys.stderr)
            return EXIT_USAGE
        hb = cfg.heartbeat
        target = {"http": hb.url, "udp": hb.udp_target}.get(hb.transport, hb.socket_path)
        print(f"{cfg.source}: configuration OK (agent {cfg.effective_agent_id}, "
              f"{cfg.heartbeat.transport} {target}, every {cfg.heartbeat.interval:g}s)")
        return EXIT_OK
    try:
        logsetup.configure(cfg.log.level, cfg.log.file, cfg.log.format)
    except OSError as exc:
        print(f"agentd: cannot open log file: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    service = AgentService(cfg, load)
    service.install_signal_handlers()
    try:
        service.start()
    except OSError as exc:
        print(f"agentd: cannot listen on http {cfg.http.host}:{cfg.http.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        service.run_forever()
    finally:
        service.stop()
    return EXIT_OK


def run_main(argv: List[str]) -> int:
    """`agentd run`: exit with the child's status (128 + signal if it was killed); 2 for a
    bad command line or configuration, 127 if COMMAND cannot be started."""
    args = build_run_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("agentd run: a COMMAND to run is required", file=sys.stderr)
        return EXIT_USAGE
    from agentd import logsetup
    from agentd.config import ConfigError, load_config, target_id

    try:
        target_id(args.agent_id)
    except ValueError as exc:
        print(f"agentd run: --agent-id {args.agent_id!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    path = args.config or os.environ.get("AGENTD_CONFIG") or DEFAULT_PATH
    overrides = _set_options(args.set, "agentd run")
    if overrides is None:
        return EXIT_USAGE
    overrides.setdefault("http.port", "0")  # no status API: the service's agentd has it
    if args.log_level:
        overrides["log.level"] = args.log_level
    try:
        cfg = load_config(path, overrides=overrides,
                          required=bool(args.config or os.environ.get("AGENTD_CONFIG")))
        logsetup.configure(cfg.log.level, cfg.log.file, cfg.log.format)
    except ConfigError as exc:
        print(f"agentd run: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"agentd run: cannot open log file: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if cfg.watch:
        print("agentd run: the configuration's watch: entries are left to the agentd service",
              file=sys.stderr)
    from agentd.run import ChildRunner
    try:  # reads heartbeat.auth_token_file for http
        runner = ChildRunner(cfg, args.agent_id, command)
    except OSError as exc:
        print(f"agentd run: configuration error: heartbeat.auth_token_file: {exc}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        return runner.run()
    except OSError as exc:  # the shell's codes: 126 found but not runnable, 127 not found
        print(f"agentd run: cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
