"""`agentd run --agent-id ID [--] COMMAND [ARGS...]`: start COMMAND as agentd's child,
report it as agent ID, forward signals to it, and exit with its exit status.

    ExecStart=/usr/bin/agentd run --agent-id billing -- /usr/bin/billing-worker

gives systemd's restarts (Restart=on-failure sees the child's status) plus the daemon's
verdict the moment the child ends, with its exit code or signal in the event.
"""

import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
from typing import List, Optional

from agentd.agent import EXITED, Agent
from agentd.config import AgentdConfig
from agentd.targets import Target

log = logging.getLogger(__name__)

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)  # asked to stop: an exit is `stopped`


_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """In the child before exec: its own process group, and SIGTERM should agentd die
    without passing one on (kill -9), so that it is never left running unreported."""
    os.setpgrp()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def exit_status(returncode: int) -> int:
    """The status to exit with: the child's own, or 128 + the signal that killed it."""
    return returncode if returncode >= 0 else 128 - returncode


class ChildRunner:
    """Runs one command as a reported target (see the module's docstring)."""

    def __init__(self, cfg: AgentdConfig, agent_id: str, command: List[str]):
        self.cfg, self.agent_id, self.command = cfg, agent_id, command
        self.child: Optional[subprocess.Popen] = None
        self.stop_signal: Optional[int] = None  # the stop asked for, if any
        self.target = Target(agent_id, f"command {command[0]}", self._locate)
        # the child only: watch: entries are the agentd service's to report
        self.agent = Agent(dataclasses.replace(cfg, watch=()), targets=[self.target],
                           report_self=False)
        self.agent.agent_id = agent_id  # in its log lines
        self.agent.watcher = f"agentd-run:{os.getpid()}"  # no record of its own

    def _locate(self):
        child = self.child
        if child is None or child.returncode is not None:
            return None, f"command {self.command[0]} is not running"
        return child.pid, ""

    def run(self) -> int:
        """Start the child, report it until it ends, and return the status to exit with.
        Raises OSError if the command cannot be started."""
        for signum in FORWARDED:  # before the child exists: a stop then is not lost
            signal.signal(signum, self._forward)
        # its own process group: a signal for it reaches what it started too, and a
        # Ctrl-C in agentd's terminal reaches it only through us
        self.child = subprocess.Popen(self.command, preexec_fn=_child_setup)
        if self.stop_signal is not None:  # asked to stop while it was being started
            self._forward(self.stop_signal, None)
        self.agent.start()
        returncode = self.child.wait()
        self.agent.scheduler.stop()  # no beat after the last word below
        self.target.done = True
        # a stop it was asked for: exit 0, death by that signal, or 128 + it (the JVM,
        # shell wrappers)
        stopped = self.stop_signal is not None and (
            returncode == 0 or -returncode in (self.stop_signal, signal.SIGTERM)
            or returncode in (128 + self.stop_signal, 128 + signal.SIGTERM))
        self.agent._target_ended(
            self.target, self.child.pid,
            exit_code=returncode if returncode >= 0 else None,
            signal=-returncode if returncode < 0 else None,
            status="stopping" if stopped else EXITED)
        self.agent.targets = []  # said: nothing more to say for it
        self.agent.stop()
        log.info("agent %s: %s ended with %s", self.agent_id, self.command[0],
                 f"code {returncode}" if returncode >= 0 else f"signal {-returncode}")
        return exit_status(returncode)

    def _forward(self, signum, frame) -> None:
        """Pass a signal on to the child's process group (only flags and a kill here)."""
        if signum in STOPS and self.stop_signal is None:
            self.stop_signal = signum
        child = self.child
        if child is not None and child.returncode is None:
            try:
                os.killpg(child.pid, signum)
            except ProcessLookupError:
                pass
