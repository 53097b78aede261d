"""hbdaemon: receives heartbeats from agents, judges their health and reports it."""

__version__ = "0.1.0"
