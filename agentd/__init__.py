"""agentd: sends heartbeats to hbdaemon; also usable as a library (HeartbeatSender)."""

__version__ = "0.1.0"
__all__ = ["HeartbeatSender", "__version__"]


def __getattr__(name):
    # Lazy, so `agentd --version` and the config module load no more than they need.
    if name == "HeartbeatSender":
        from agentd.agent import HeartbeatSender
        return HeartbeatSender
    raise AttributeError(name)
