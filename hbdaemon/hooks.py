"""Hooks: commands run on events, without a shell, with a timeout and restart-style backoff.

Per hook and agent, runs are spaced by backoff_base * 2^n (capped at backoff_max); after
max_retries runs without the agent becoming healthy in between, the hook is suspended for
that agent and a `hook_suspended` event says so. A `healthy` event resets the count.
"""

import logging
import os
import signal
import subprocess
import threading
import time
from typing import Callable, Dict, Optional, Tuple

from hbdaemon.config import HookConfig, RestartConfig
from hbdaemon.events import Event
from hbdaemon.threads import Component, alive, guard, join, spawn

log = logging.getLogger(__name__)

MAX_PARALLEL = 8
STUCK_AFTER = 30.0  # the scheduler wakes at least once a second
OUTPUT_LIMIT = 2000


class _Slot:
    """Backoff bookkeeping for one (hook, agent) pair."""

    __slots__ = ("attempts", "next_at", "pending", "running", "suspended")

    def __init__(self):
        self.attempts = 0
        self.next_at = 0.0
        self.pending: Optional[Event] = None
        self.running = False
        self.suspended = False


class HookRunner:
    """Schedules and runs hooks in its own threads, so a slow hook never blocks intake.

    on_event is thread-safe and returns at once.
    """

    def __init__(self, hooks: Tuple[HookConfig, ...], restart: RestartConfig,
                 emit: Callable[..., Event], lookup: Callable[[str], Optional[dict]],
                 clock: Callable[[], float] = time.monotonic,
                 execute: Callable[[HookConfig, Event, dict], bool] = None,
                 spawn_run: Callable[..., None] = None):
        self._hooks, self._restart = tuple(hooks), restart
        self._emit, self._lookup, self._clock = emit, lookup, clock
        self._execute = execute or run_hook
        self._spawn = spawn_run or spawn
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # agent -> hook -> slot: keyed by the hook itself, so that a reload that removes or
        # reorders hooks never points a waiting retry at another hook (or past the end)
        self._slots: Dict[str, Dict[HookConfig, _Slot]] = {}
        self._running = 0
        self.component: Optional[Component] = None
        self.runs = 0
        self.failures = 0

    def configure(self, hooks: Tuple[HookConfig, ...], restart: RestartConfig) -> None:
        """Replace the hooks (SIGHUP). A hook that stays keeps its waiting runs and backoff;
        a removed one's are dropped (a run in progress finishes, and is not retried)."""
        with self._lock:
            self._hooks, self._restart = tuple(hooks), restart
            self._slots = {agent: kept for agent, kept in (
                (agent, {h: s for h, s in slots.items() if h in self._hooks or s.running})
                for agent, slots in self._slots.items()) if kept}

    def on_event(self, ev: Event) -> None:
        """Event listener: queue the hooks this event triggers."""
        trigger = ev.to_state if ev.kind == "state" else ev.kind
        with self._lock:
            if ev.kind == "forgotten":  # nothing is kept for an agent the daemon forgot
                self._slots.pop(ev.agent_id, None)
                return
            slots = self._slots.get(ev.agent_id, {})
            if ev.kind == "state" and ev.to_state == "healthy":
                for slot in slots.values():
                    slot.attempts, slot.next_at, slot.suspended = 0, 0.0, False
            for hook in self._hooks:
                if trigger in hook.on:
                    slot = self._slots.setdefault(ev.agent_id, slots).setdefault(hook, _Slot())
                    if not slot.suspended:
                        slot.pending = ev
                        self._wake.set()

    def start(self) -> None:
        self.component = guard("hb-hooks", self._loop, stuck_after=STUCK_AFTER)

    def stop(self, timeout: float) -> None:
        """Stop scheduling; hooks already running finish on their own (bounded by their timeout)."""
        self._stop.set()
        self._wake.set()
        if self.component is not None:
            self.component.stop()
            join(self.component.thread, timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            alive()
            delay = self._dispatch()
            self._wake.wait(delay)
            self._wake.clear()

    def _dispatch(self) -> float:
        """Start every due run; return how long to sleep."""
        now = self._clock()
        delay = 1.0
        due = []
        with self._lock:
            for agent, hook, slot in ((a, h, s) for a, slots in self._slots.items()
                                      for h, s in slots.items()):
                if slot.pending is None or slot.running or slot.suspended:
                    continue
                if hook not in self._hooks:  # removed by a reload while its retry waited
                    slot.pending = None
                    continue
                if slot.next_at > now:
                    delay = min(delay, slot.next_at - now)
                    continue
                if self._running >= MAX_PARALLEL:
                    break
                due.append((hook, agent, slot, slot.pending))
                slot.pending, slot.running = None, True
                self._running += 1
        for n, (hook, agent, slot, ev) in enumerate(due):
            try:
                self._spawn(f"hb-hook-{hook.label}", self._run, hook, agent, slot, ev)
            except RuntimeError as exc:  # no thread to be had: give the runs back, try later
                log.error("hooks: cannot start a thread (%s); %d runs wait", exc, len(due) - n)
                with self._lock:
                    for _, _, waiting, event in due[n:]:
                        waiting.pending = waiting.pending or event
                        waiting.running = False
                        self._running -= 1
                return 1.0
        return max(delay, 0.01)

    def _run(self, hook: HookConfig, agent: str, slot: _Slot, ev: Event) -> None:
        ok, current = False, None
        try:
            ok = self._execute(hook, ev, self._lookup(agent) or {})
            current = (self._lookup(agent) or {}).get("state")  # not under our lock: see on_event
        except Exception:  # a run must always give its place back (below)
            log.exception("hook %s for %s: failed to run", hook.label, agent)
        finally:
            self._finish(hook, agent, slot, ev, ok, current)

    def _finish(self, hook: HookConfig, agent: str, slot: _Slot, ev: Event, ok: bool,
                current: Optional[str]) -> None:
        """Bookkeeping after a run: free its place, schedule a retry or suspend the hook."""
        suspended_after = None
        with self._lock:
            self._running -= 1
            self.runs += 1
            self.failures += 0 if ok else 1
            slot.running = False
            if hook not in self._hooks:  # removed by a reload while it ran: forget its slot
                slots = self._slots.get(agent, {})
                if slots.get(hook) is slot:
                    del slots[hook]
                    if not slots:
                        self._slots.pop(agent, None)
                self._wake.set()
                return
            slot.attempts += 1
            rs = self._restart
            slot.next_at = self._clock() + min(rs.backoff_base * 2 ** (slot.attempts - 1),
                                               rs.backoff_max)
            if not ok and slot.pending is None and current in hook.on and hook in self._hooks:
                slot.pending = ev  # retry after the backoff while the agent is still in that state
            if slot.attempts >= rs.max_retries and current != "healthy" and not slot.suspended:
                slot.suspended, slot.pending = True, None
                suspended_after = slot.attempts
            self._wake.set()
        if suspended_after is not None:
            self._emit(agent, current or ev.to_state, current or ev.to_state,
                       f"hook {hook.label} suspended for this agent after {suspended_after} runs "
                       f"without it becoming healthy", kind="hook_suspended")


def run_hook(hook: HookConfig, ev: Event, record: dict) -> bool:
    """Run one hook to completion or timeout; True if it exited 0. Output goes to the log."""
    env = dict(os.environ, HB_AGENT_ID=ev.agent_id, HB_PID=str(record.get("pid", "")),
               HB_FROM=ev.from_state, HB_TO=ev.to_state, HB_REASON=ev.reason,
               HB_TIME=ev.to_dict()["time"], HB_EVENT_KIND=ev.kind, HB_EVENT_ID=str(ev.id))
    started = time.monotonic()
    try:
        proc = subprocess.Popen(hook.command, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    except OSError as exc:
        log.error("hook %s for %s: cannot run %s: %s", hook.label, ev.agent_id,
                  hook.command[0], exc)
        return False
    try:
        out, _ = proc.communicate(timeout=hook.timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        log.error("hook %s for %s: killed after %.1fs timeout", hook.label, ev.agent_id,
                  hook.timeout)
        return False
    text = out.decode("utf-8", "replace").strip()[-OUTPUT_LIMIT:]
    took = time.monotonic() - started
    if proc.returncode == 0:
        log.info("hook %s for %s (%s) ran in %.2fs%s", hook.label, ev.agent_id, ev.to_state,
                 took, f": {text}" if text else "")
        return True
    log.error("hook %s for %s (%s) failed with exit status %s in %.2fs%s", hook.label,
              ev.agent_id, ev.to_state, proc.returncode, took, f": {text}" if text else "")
    return False


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the hook and anything it started (it runs in its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        log.warning("hook process %d: output still open after kill", proc.pid)
