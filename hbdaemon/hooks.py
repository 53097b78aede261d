"""Hooks: commands run on events, without a shell, with a timeout and restart-style backoff.

Per hook and agent, runs are spaced by backoff_base * 2^n (capped at backoff_max); after
max_retries runs without the agent becoming healthy in between, the hook is suspended for
that agent and a `hook_suspended` event says so. A `healthy` event resets the count.

What is waiting (a run and its event, the backoff, a suspension) is kept in the state store
(take_dirty/restore): a run queued or cut short when the daemon stops or crashes runs after
its restart. Runs are at least once: one that was running at a crash runs again.
"""

import json

import logging
import os
import signal
import subprocess
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from hbdaemon.config import HookConfig, RestartConfig
from hbdaemon.events import Event
from hbdaemon.threads import Component, alive, guard, halt, spawn

log = logging.getLogger(__name__)

MAX_PARALLEL = 8
STUCK_AFTER = 30.0  # the scheduler wakes at least once a second
OUTPUT_LIMIT = 2000


class _Slot:
    """Backoff bookkeeping for one (hook, agent) pair."""

    __slots__ = ("attempts", "next_at", "pending", "retry", "running", "suspended")

    def __init__(self):
        self.attempts = 0
        self.next_at = 0.0
        self.pending: Optional[Event] = None
        self.retry = False  # pending is a failed run's retry, not a new event
        self.running: Optional[Event] = None  # the event of the run in progress
        self.suspended = False

    def saved(self, now: float, wall: float) -> Optional[dict]:
        """What the state store keeps of this slot, or None if nothing is waiting."""
        event = self.pending or self.running
        if event is None and not self.attempts and not self.suspended:
            return None
        return {"event": event.to_row() if event else None, "attempts": self.attempts,
                "next_at": wall + max(0.0, self.next_at - now), "suspended": self.suspended,
                "retry": self.retry and self.pending is not None}


def hook_key(hook: HookConfig) -> str:
    """A hook's identity in the state store: its name, command and events (a reload that
    only changes its timeout keeps what waits for it across a restart)."""
    return json.dumps([hook.name, list(hook.command), sorted(hook.on), list(hook.agents)])


class HookRunner:
    """Schedules and runs hooks in its own threads, so a slow hook never blocks intake.

    on_event is thread-safe and returns at once.
    """

    def __init__(self, hooks: Tuple[HookConfig, ...], restart: RestartConfig,
                 emit: Callable[..., Event], lookup: Callable[[str], Optional[dict]],
                 clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time,
                 execute: Callable[[HookConfig, Event, dict], bool] = None,
                 spawn_run: Callable[..., None] = None,
                 silenced: Callable[[str, str], Optional[str]] = lambda agent_id, state: None):
        self._hooks, self._restart = tuple(hooks), restart
        self._emit, self._lookup, self._clock, self._wall = emit, lookup, clock, wallclock
        self._execute = execute or run_hook
        self._spawn = spawn_run or spawn
        self._silenced = silenced  # (agent, state) -> the silence that holds its hooks back
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # agent -> hook -> slot: keyed by the hook itself, so that a reload that removes or
        # reorders hooks never points a waiting retry at another hook (or past the end)
        self._slots: Dict[str, Dict[HookConfig, _Slot]] = {}
        self._keys = {hook: hook_key(hook) for hook in self._hooks}
        self._dirty: set = set()  # (agent, hook key) whose slot changed since take_dirty
        self._running = 0
        self.component: Optional[Component] = None
        self.runs = 0
        self.failures = 0
        self.silenced = 0

    def configure(self, hooks: Tuple[HookConfig, ...], restart: RestartConfig) -> None:
        """Replace the hooks (SIGHUP). A hook that stays keeps its waiting runs and backoff;
        a removed one's are dropped (a run in progress finishes, and is not retried)."""
        with self._lock:
            self._hooks, self._restart = tuple(hooks), restart
            self._keys = {hook: hook_key(hook) for hook in self._hooks}
            same = {key: hook for hook, key in self._keys.items()}  # by name, command, events
            for slots in self._slots.values():  # a changed timeout alone keeps the slot
                for old in [h for h in slots if h not in self._hooks and hook_key(h) in same]:
                    if same[hook_key(old)] not in slots and not slots[old].running:
                        slots[same[hook_key(old)]] = slots.pop(old)
            for agent, slots in self._slots.items():
                self._dirty.update((agent, hook_key(h)) for h in slots if h not in self._hooks)
            self._slots = {agent: kept for agent, kept in (
                (agent, {h: s for h, s in slots.items() if h in self._hooks or s.running})
                for agent, slots in self._slots.items()) if kept}

    def take_dirty(self) -> List[Tuple[str, str, Optional[dict]]]:
        """(agent, hook key, what to keep or None to delete) for each slot changed since the
        last call: the store's writer persists them with the events that queued them."""
        now, wall = self._clock(), self._wall()
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            hooks = {key: hook for hook, key in self._keys.items()}
            out = []
            for agent, key in dirty:
                slot = self._slots.get(agent, {}).get(hooks.get(key))
                out.append((agent, key, slot.saved(now, wall) if slot else None))
            return out

    def restore(self, saved: List[Tuple[str, str, dict]]) -> int:
        """Take back what waited before a restart (from the store, so checked field by
        field); a hook no longer configured loses its runs. Returns the runs queued."""
        now, wall = self._clock(), self._wall()
        queued = 0
        with self._lock:
            hooks = {key: hook for hook, key in self._keys.items()}
            for agent, key, data in saved:
                hook = hooks.get(key)
                slot = _restored(data, now, wall, self._restart.backoff_max)
                if hook is None or slot is None:
                    self._dirty.add((agent, key))  # deleted at the next write
                    if slot is not None and slot.pending is not None:
                        log.warning("hooks: dropping the run waiting for %s since the restart: "
                                    "its hook %s is no longer configured", agent, key)
                    continue
                self._slots.setdefault(agent, {})[hook] = slot
                queued += slot.pending is not None
        if queued:
            log.info("hooks: %d runs waiting from before the restart", queued)
            self._wake.set()
        return queued

    def on_event(self, ev: Event) -> None:
        """Event listener: queue the hooks this event triggers."""
        trigger = ev.to_state if ev.kind == "state" else ev.kind
        with self._lock:
            if ev.kind == "forgotten":  # nothing is kept for an agent the daemon forgot
                for hook in self._slots.pop(ev.agent_id, {}):
                    self._dirty.add((ev.agent_id, hook_key(hook)))
                return
            slots = self._slots.get(ev.agent_id, {})
            if ev.kind == "state" and ev.to_state == "healthy":
                for hook, slot in slots.items():
                    slot.attempts, slot.next_at, slot.suspended = 0, 0.0, False
                    if slot.retry:  # it retried while the agent stayed in that state
                        slot.pending, slot.retry = None, False
                    self._dirty.add((ev.agent_id, hook_key(hook)))
            chosen = [h for h in self._hooks if trigger in h.on and h.covers(ev.agent_id)]
            if chosen and ev.kind == "state" and ev.to_state != "healthy":
                silence = self._silenced(ev.agent_id, ev.to_state)
                if silence is not None:  # an operator is on it: do not restart under them
                    log.info("hooks for %s (%s) held back: silenced by %s", ev.agent_id,
                             ev.to_state, silence)
                    self.silenced += len(chosen)
                    return
            for hook in chosen:
                slot = self._slots.setdefault(ev.agent_id, slots).setdefault(hook, _Slot())
                if not slot.suspended:
                    slot.pending, slot.retry = ev, False
                    self._dirty.add((ev.agent_id, self._keys[hook]))
                    self._wake.set()

    def start(self) -> None:
        self.component = guard("hb-hooks", self._loop, stuck_after=STUCK_AFTER)

    def stop(self, timeout: float) -> None:
        """Stop scheduling; hooks already running finish on their own (bounded by their timeout)."""
        self._stop.set()
        self._wake.set()
        halt(self.component, timeout)

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
                    self._dirty.add((agent, hook_key(hook)))
                    continue
                if slot.next_at > now:
                    delay = min(delay, slot.next_at - now)
                    continue
                if self._running >= MAX_PARALLEL:
                    break
                due.append((hook, agent, slot, slot.pending))
                slot.pending, slot.running = None, slot.pending
                self._running += 1
        for n, (hook, agent, slot, ev) in enumerate(due):
            try:
                self._spawn(f"hb-hook-{hook.label}", self._run, hook, agent, slot, ev)
            except RuntimeError as exc:  # no thread to be had: give the runs back, try later
                log.error("hooks: cannot start a thread (%s); %d runs wait", exc, len(due) - n)
                with self._lock:
                    for _, _, waiting, event in due[n:]:
                        waiting.pending = waiting.pending or event
                        waiting.running = None
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
            slot.running = None
            self._dirty.add((agent, hook_key(hook)))
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
            # the exponent capped: 2 ** 1024 is past a float (max_retries may be 1,000,000)
            slot.next_at = self._clock() + min(
                rs.backoff_base * 2 ** min(slot.attempts - 1, 64), rs.backoff_max)
            if not ok and slot.pending is None and current in hook.on and hook in self._hooks:
                slot.pending, slot.retry = ev, True  # after the backoff, while still in that state
            if slot.attempts >= rs.max_retries and current != "healthy" and not slot.suspended:
                slot.suspended, slot.pending = True, None
                suspended_after = slot.attempts
            self._wake.set()
        if suspended_after is not None:
            self._emit(agent, current or ev.to_state, current or ev.to_state,
                       f"hook {hook.label} suspended for this agent after {suspended_after} runs "
                       f"without it becoming healthy", kind="hook_suspended")


def _restored(data, now: float, wall: float, backoff_max: float) -> Optional[_Slot]:
    """A slot from what the store kept (see _Slot.saved), or None if it is not plausible."""
    try:
        row = data["event"]
        if row is not None and not (len(row) == 7 and type(row[0]) is int
                                    and type(row[1]) in (int, float)
                                    and all(type(v) is str for v in row[2:])):
            raise ValueError("event")
        event = None if row is None else Event(*row)
        slot = _Slot()
        slot.pending, slot.suspended = event, data["suspended"] is True
        slot.retry = event is not None and data.get("retry") is True
        slot.attempts = data["attempts"]
        if type(slot.attempts) is not int or slot.attempts < 0:
            raise ValueError("attempts")
        wait = data["next_at"] - wall
        if wait != wait:  # NaN
            raise ValueError("next_at")
        slot.next_at = now + min(max(0.0, wait), backoff_max)
        return slot
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
        log.warning("hooks: ignoring an unreadable waiting run in the state store (%s)", exc)
        return None


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
