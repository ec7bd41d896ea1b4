"""Is a milter answering on a unix socket? The MTA's side of the first milter exchange.

Shared by ``bouncetrack doctor`` (its "milter socket" check) and the API's ``/metrics``
(``bouncetrack_milter_up``, :mod:`bouncetrack.metrics.collector`), so both ask the same
question the same way: connect, send SMFIC_OPTNEG as Postfix does, read the answer, quit.
Standard library only; no pymilter (the API does not import it).
"""

from __future__ import annotations

import socket
import struct

# Milter protocol (libmilter's mfdef.h).
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFI_V6_PROT = 0x1FFFFF
SMFIF_CHGFROM = 0x40


def negotiate(path: str, timeout: float = 5.0) -> tuple[int, int, int]:
    """Send SMFIC_OPTNEG as an MTA would; return the milter's (version, actions, protocol).

    Raises OSError (no socket, refused, timeout) or ValueError (not a milter's answer).
    Never waits longer than ``timeout`` per step."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        body = SMFIC_OPTNEG + struct.pack(">III", 6, 0x1FF, SMFI_V6_PROT)
        s.sendall(struct.pack(">I", len(body)) + body)
        head = _recv(s, 4)
        (length,) = struct.unpack(">I", head)
        if not 13 <= length <= 1 << 16:
            raise ValueError(f"unexpected reply length {length}")
        reply = _recv(s, length)
        if reply[:1] != SMFIC_OPTNEG:
            raise ValueError(f"unexpected reply command {reply[:1]!r}")
        version, actions, protocol = struct.unpack(">III", reply[1:13])
        try:
            s.sendall(struct.pack(">I", 1) + SMFIC_QUIT)
        except OSError:
            pass
        return version, actions, protocol


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ValueError("connection closed during negotiation")
        buf += chunk
    return buf
