"""Loopback helpers for the tools and tests that start servers of their own."""

import socket


def free_port() -> int:
    """A loopback port no one listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
