"""What the tests that launch processes share."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port free right now, for a launched process group or server to listen on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
