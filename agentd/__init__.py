"""agentd: sends heartbeats to hbdaemon (built in a later step)."""

__version__ = "0.1.0"
