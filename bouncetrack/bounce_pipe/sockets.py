"""The pipe server's listening unix sockets (its own and, with ``pipe.transport: lmtp``,
the LMTP one): one way to take over a socket path."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def listen_unix(path: Path, umask: int, what: str) -> socket.socket:
    """A socket listening on ``path``, created under ``umask``. A stale socket file (its
    server died) is replaced; one another server still answers on is refused with
    RuntimeError naming ``what``, never taken over."""
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale, from a server that died
        else:
            raise RuntimeError(f"another {what} is listening on {path}")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(umask)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(128)
    return listener
