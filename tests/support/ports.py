"""Loopback ports for the servers tests start, held by the test process so nobody else takes them.

Picking a free port and closing it before the server binds leaves a window (seconds, for a gateway that
loads its engine first) in which another process on the machine can take it. ``reserved_port`` binds a
socket with ``SO_REUSEADDR`` and keeps it, never listening, until the test process exits: the kernel then
gives the port to no other ``bind(port 0)`` and refuses a plain bind of it, while a server that sets
``SO_REUSEADDR`` itself (asyncio and uvicorn, pynetdicom, dcmtk, Orthanc, PostgreSQL, tritonserver, Go's
net package) binds and listens on it as usual. A server stopped and started again finds its port still
held for it. Connecting to a reserved port nobody serves is refused at once, as for any closed port.
"""

from __future__ import annotations

import socket

_HELD: list[socket.socket] = []


def reserved_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` held for this process (see the module's docstring)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    _HELD.append(sock)
    return int(sock.getsockname()[1])
