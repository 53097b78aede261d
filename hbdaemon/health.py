"""The health model: states, per-agent thresholds, and how one heartbeat is judged."""

import enum
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from hbdaemon.config import HealthCheckConfig, OverrideConfig


class State(str, enum.Enum):
    """An agent's health as the daemon judges it (the values are the API's words)."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    OVER_THRESHOLD = "over_threshold"
    NO_HEARTBEAT = "no_heartbeat"
    DEAD = "dead"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


# States in which a heartbeat is expected before a deadline.
WATCHED = frozenset((State.UNKNOWN, State.HEALTHY, State.OVER_THRESHOLD))
# States an agent leaves only by sending a heartbeat; forgotten after forget_after.
ENDED = frozenset((State.STOPPED, State.DEAD))


@dataclass(frozen=True)
class HealthPolicy:
    """The limits that apply to one agent."""

    heartbeat_timeout: float
    cpu_threshold: float
    memory_threshold: int
    threshold_duration: float
    recovery_count: int


class PolicySet:
    """Resolves each agent's HealthPolicy: the first matching override, else the defaults."""

    def __init__(self, health: HealthCheckConfig, overrides: Tuple[OverrideConfig, ...] = ()):
        self.health = health
        self.default = HealthPolicy(health.heartbeat_timeout, health.cpu_threshold,
                                    health.memory_threshold, health.threshold_duration,
                                    health.recovery_count)
        self._overrides = overrides
        self._cache: Dict[str, HealthPolicy] = {}

    def for_agent(self, agent_id: str) -> HealthPolicy:
        if not self._overrides:
            return self.default  # no cache of 100,000 entries that all say the same
        policy = self._cache.get(agent_id)
        if policy is None:
            policy = self.default
            for ov in self._overrides:
                if ov.matches(agent_id):
                    policy = HealthPolicy(*(
                        getattr(self.default, name) if getattr(ov, name) is None else getattr(ov, name)
                        for name in ("heartbeat_timeout", "cpu_threshold", "memory_threshold",
                                     "threshold_duration", "recovery_count")))
                    break
            if len(self._cache) < 100_000:
                self._cache[agent_id] = policy
        return policy

    def forget(self, agent_id: str) -> None:
        """Drop the cached policy of a forgotten agent."""
        self._cache.pop(agent_id, None)


def breach(policy: HealthPolicy, cpu: float, memory: int) -> Optional[str]:
    """Which limit the sample exceeds, in words, or None."""
    if cpu > policy.cpu_threshold:
        return f"cpu {cpu:.1f}% > {policy.cpu_threshold:g}%"
    if memory > policy.memory_threshold:
        return f"memory {human_bytes(memory)} > {human_bytes(policy.memory_threshold)}"
    return None


def judge_heartbeat(rec, policy: HealthPolicy, now: float) -> Tuple[State, str]:
    """The state a heartbeat puts `rec` in, updating its threshold bookkeeping.

    Over the limit: `over_threshold` once continuously above for threshold_duration.
    Back under: `healthy` again after recovery_count heartbeats in a row below the limits.
    """
    if rec.status == "stopping":
        return State.STOPPED, "agent said stopping"
    # over before a daemon restart counts as over still: a restart must not pass for a
    # recovery (and resolve its alert) only to find it over the limit again
    was_over = rec.state is State.OVER_THRESHOLD or (
        rec.state is State.UNKNOWN and (getattr(rec, "prior", None) or ("",))[0]
        == State.OVER_THRESHOLD.value)
    over = breach(policy, rec.cpu, rec.memory)
    if over is not None:
        rec.below_count = 0
        if rec.over_since is None:
            rec.over_since = now
        held = now - rec.over_since
        if was_over or held >= policy.threshold_duration:
            return State.OVER_THRESHOLD, f"{over} for {held:.0f}s"
        return State.HEALTHY, "first heartbeat" if rec.heartbeats <= 1 else "heartbeat received"
    rec.over_since = None
    if was_over:
        rec.below_count += 1
        if rec.below_count < policy.recovery_count:
            return State.OVER_THRESHOLD, ""
        return State.HEALTHY, f"below thresholds for {rec.below_count} heartbeats"
    if rec.state is State.HEALTHY:
        return State.HEALTHY, ""
    if rec.heartbeats <= 1:
        return State.HEALTHY, "first heartbeat"
    return State.HEALTHY, "heartbeat received"


def human_bytes(n: float) -> str:
    """1536 -> '1.5KiB': compact sizes for log lines and reasons."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
