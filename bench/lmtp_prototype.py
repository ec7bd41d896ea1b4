#!/usr/bin/env python3
"""A measuring prototype, not a product: the bounce pipe behind LMTP, no process per bounce.

``bench/capacity.py --transport lmtp`` runs this as the bounce domain's transport
(``lmtp:unix:SOCKET``) to measure what a transport without a process per bounce would
carry (issue 21, point 4). It forks once per LMTP connection (Postfix's lmtp client keeps
connections open across deliveries), and per message calls the very code of ``bouncetrack
pipe`` (:func:`bouncetrack.bounce_pipe.main.main`, message and the server's configuration
handed in, as the pipe server's child does): exit 0 → ``250``, anything else → ``451``.
The client address comes from XFORWARD (announced; ``[UNAVAILABLE]`` → empty, as pipe(8)'s
``${client_address}`` for mail Postfix made itself).

Bounds kept here are a sketch (command line length, message size, read timeout); a
production transport needs the pipe's own bounds per connection, reload and log rules.

    python bench/lmtp_prototype.py --socket PATH --config FILE
"""

from __future__ import annotations

import argparse
import io
import os
import socketserver
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MAX_LINE = 4096  # RFC 5321 §4.5.3.1.4: 512 octets for a command line; generous here
MAX_MESSAGE = 50 * 1024 * 1024
READ_TIMEOUT_S = 300.0


class Handler(socketserver.StreamRequestHandler):
    """One LMTP session (RFC 2033): LHLO, XFORWARD, MAIL, RCPT*, DATA, RSET, NOOP, QUIT."""

    server: "Server"

    def say(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def line(self) -> bytes | None:
        raw = self.rfile.readline(MAX_LINE + 1)
        if not raw:
            return None
        if len(raw) > MAX_LINE:
            self.say("500 5.5.2 line too long")
            return None
        return raw.rstrip(b"\r\n")

    def handle(self) -> None:
        self.request.settimeout(READ_TIMEOUT_S)
        self.say("220 bouncetrack LMTP prototype")
        sender: str | None = None
        rcpts: list[str] = []
        client = ""
        try:
            while True:
                cmd = self.line()
                if cmd is None:
                    return
                verb = cmd[:4].upper()
                arg = cmd[4:].decode("utf-8", "replace").strip()
                if verb == b"LHLO":
                    self.say("250-bouncetrack\r\n250-XFORWARD ADDR\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME")
                elif verb == b"XFOR":
                    for item in arg.split()[1:] if arg.upper().startswith("WARD") else []:
                        k, _, v = item.partition("=")
                        if k.upper() == "ADDR":
                            client = "" if v.upper() == "[UNAVAILABLE]" else v
                    self.say("250 2.0.0 Ok")
                elif verb == b"MAIL":
                    sender, rcpts = _path(arg), []
                    self.say("250 2.1.0 Ok")
                elif verb == b"RCPT":
                    if sender is None:
                        self.say("503 5.5.1 MAIL first")
                    else:
                        rcpts.append(_path(arg))
                        self.say("250 2.1.5 Ok")
                elif verb == b"DATA":
                    if sender is None or not rcpts:
                        self.say("503 5.5.1 RCPT first")
                        continue
                    self.say("354 End data with <CR><LF>.<CR><LF>")
                    data = self.read_data()
                    for r in rcpts:
                        if data is None:
                            self.say("552 5.3.4 Message too big")
                        else:
                            code = self.deliver(data, r, sender, client)
                            self.say("250 2.0.0 Stored" if code == 0 else "451 4.3.0 Try again later")
                    sender, rcpts = None, []
                elif verb == b"RSET":
                    sender, rcpts = None, []
                    self.say("250 2.0.0 Ok")
                elif verb == b"NOOP":
                    self.say("250 2.0.0 Ok")
                elif verb == b"QUIT":
                    self.say("221 2.0.0 Bye")
                    return
                else:
                    self.say("502 5.5.2 Command not recognised")
        except (OSError, TimeoutError):
            return

    def read_data(self) -> bytes | None:
        """The message up to the lone dot, dot-unstuffed (RFC 5321 §4.5.2); None past
        :data:`MAX_MESSAGE` (read to the end and dropped)."""
        parts: list[bytes] = []
        size = 0
        while True:
            raw = self.rfile.readline(1 << 20)
            if not raw:
                raise OSError("connection lost in DATA")
            if raw in (b".\r\n", b".\n"):
                break
            if raw.startswith(b"."):
                raw = raw[1:]
            size += len(raw)
            if size <= MAX_MESSAGE:
                parts.append(raw)
        return b"".join(parts) if size <= MAX_MESSAGE else None

    def deliver(self, data: bytes, rcpt: str, sender: str, client: str) -> int:
        from bouncetrack.bounce_pipe.main import main

        said = io.StringIO()
        sys.stderr = said
        try:
            return main(["--config", self.server.config_path, f"--client-address={client}", rcpt, sender],
                        raw=data, started=time.time(), fallback=self.server.runtime)
        except BaseException:  # noqa: BLE001 - a failure is a 451, never a lost bounce
            return 75
        finally:
            sys.stderr = sys.__stderr__


def _path(arg: str) -> str:
    """The address of ``FROM:<a>``/``TO:<a>`` (parameters after it dropped)."""
    inner = arg.split(":", 1)[1] if ":" in arg else arg
    inner = inner.strip()
    if inner.startswith("<"):
        inner = inner[1:inner.find(">")] if ">" in inner else inner[1:]
    return inner.split()[0] if inner.split() else ""


class Server(socketserver.ForkingMixIn, socketserver.UnixStreamServer):
    """Forks one child per connection; the child serves every message of its connection."""

    max_children = 200
    config_path: str
    runtime: Any


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--config", required=True)
    a = ap.parse_args()
    from bouncetrack.bounce_pipe.server import warm
    from bouncetrack.core.config_loader import load_config
    from bouncetrack.core.tokens import load_keyring

    config = load_config(a.config)
    warm(a.config)
    if os.path.exists(a.socket):
        os.unlink(a.socket)
    old = os.umask(0)  # the postfix user's lmtp client connects (the directory guards it)
    try:
        srv = Server(a.socket, Handler)
    finally:
        os.umask(old)
    srv.config_path = a.config
    srv.runtime = (config, load_keyring(config))
    print(f"lmtp prototype listening on {a.socket}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
        try:
            os.unlink(a.socket)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
