"""Reference milters for bench/milter_overhead.py --reference: the floor under our milter.

A mode is a base and optional ``+flags``:

- ``trivial``: the same negotiated protocol as bouncetrack's milter (envfrom and
  header with @noreply, envrcpt with @noreply here; connect/helo/data/eoh/body
  skipped) and an eom that changes nothing.
- ``actions``: the same, plus the modifications a tracked message gets (chgfrom
  with RET/ENVID, delrcpt + addrcpt with NOTIFY/ORCPT per recipient), with
  constant values: no policy, no token, no store.
- ``+nohdr``: no header callback (P_NOHDRS: Postfix sends no header at all);
  the least a milter can be told, short of not running.
- ``+lean``: ask Postfix for the one macro used (``i`` at end of message) and
  none at the other stages (smfi_setsymlist).
- ``+rcptreply``: envrcpt answers (as bouncetrack's must: VERP check, suppression).
- ``+async``: not pymilter. The same negotiation, replies and modifications
  spoken by one asyncio thread (stdlib only, wire format of libmilter's
  ``mfdef.h``) instead of libmilter's thread per connection and pymilter's GIL
  hand-offs. A measuring stick, not a milter to run: no timeouts, no error
  handling, nothing but what the benchmark's messages need.

The gap between these and bouncetrack's milter is what our own code costs; the
gap between ``trivial+nohdr+lean`` and no milter is pymilter and the milter
protocol, which no milter written with pymilter can go below;
``actions`` - ``trivial`` is the price of the rewrite itself (mostly Postfix's
cleanup editing the queue file). ``actions+async+rcptreply+lean`` is the floor of
any milter that does what the spec asks (the rewrite, an answer per RCPT) in any
language: what is left is the milter protocol and Postfix's own work for it.

Run by the benchmark as ``python _ref_milter.py SOCKET MODE`` (stdlib + pymilter
only, so it can run from a world-readable copy as the milter user).
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
from typing import Any

import Milter

VERP = "<b+aaaaaaaaaaaaaaaaaaaaaaaa@bounce.test>"
MAIL_PARAMS = "RET=HDRS ENVID=aaaaaaaaaaaaaaaaaaaaaaaa"
CONTINUE: int = Milter.CONTINUE
BASES = ("trivial", "actions")
FLAGS = ("nohdr", "lean", "rcptreply", "async")


def parse(mode: str) -> tuple[str, set[str]]:
    base, *flags = mode.split("+")
    if base not in BASES or not set(flags) <= set(FLAGS):
        raise SystemExit(f"mode must be one of {BASES} with optional +flags from {FLAGS}, not {mode!r}")
    return base, set(flags)


def make(mode: str) -> type:
    base, flags = parse(mode)

    def __init__(self: Any) -> None:
        self.rcpts = []

    def envfrom(self: Any, sender: str, *params: str) -> int:
        self.rcpts = []
        return CONTINUE

    def envrcpt(self: Any, to: str, *params: str) -> int:
        self.rcpts.append(to)
        return CONTINUE

    def header(self: Any, name: str, value: str) -> int:
        return CONTINUE

    def eom(self: Any) -> int:
        if base == "actions":
            self.chgfrom(VERP, MAIL_PARAMS)
            for rcpt in self.rcpts:
                self.delrcpt(rcpt)
                self.addrcpt(rcpt, "NOTIFY=FAILURE,DELAY ORCPT=rfc822;" + rcpt.strip("<>"))
        return CONTINUE

    def negotiate(self: Any, opts: list[int]) -> int:
        rc: int = Milter.Base.negotiate(self, opts)
        # Milter.Base.setsymlist passes bytes where pymilter 1.0.5's C side wants str.
        for stage in (Milter.M_ENVFROM, Milter.M_ENVRCPT, Milter.M_DATA, Milter.M_EOH):
            self._ctx.setsymlist(stage, "{none}")
        self._ctx.setsymlist(Milter.M_EOM, "i")
        return rc

    def done(self: Any) -> int:
        return CONTINUE

    ns: dict[str, Any] = {
        "__init__": __init__,
        "envfrom": Milter.noreply(envfrom),
        "envrcpt": envrcpt if "rcptreply" in flags else Milter.noreply(envrcpt),
        "eom": eom,
        "abort": done,
        "close": done,
    }
    if "nohdr" not in flags:
        ns["header"] = Milter.noreply(header)
    if "lean" in flags:
        ns["negotiate"] = negotiate
    return type("Ref", (Milter.Base,), ns)


# --- +async: the milter protocol (libmilter's mfdef.h) on asyncio --------------------
SMFIF_ACTIONS = 0x01 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # ADDHDRS ADDRCPT DELRCPT CHGHDRS CHGFROM ADDRCPT_PAR
P_NOCONNECT, P_NOHELO, P_NOBODY, P_NOHDRS, P_NOEOH = 0x1, 0x2, 0x10, 0x20, 0x40
P_NR_HDR, P_NOUNKNOWN, P_NODATA, P_NR_MAIL, P_NR_RCPT = 0x80, 0x100, 0x200, 0x4000, 0x8000


def _packet(cmd: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + cmd + data


def run_async(socket_path: str, mode: str) -> None:
    base, flags = parse(mode)
    want = P_NOCONNECT | P_NOHELO | P_NOBODY | P_NOEOH | P_NOUNKNOWN | P_NODATA | P_NR_MAIL
    want |= P_NOHDRS if "nohdr" in flags else P_NR_HDR
    if "rcptreply" not in flags:
        want |= P_NR_RCPT
    cont = _packet(b"c")
    lean_action = 0x100 if "lean" in flags else 0  # SMFIF_SETSYMLIST

    class Conn(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.buf = b""
            self.rcpts: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data
            pos, end = 0, len(buf)
            out = []
            while end - pos >= 4:
                (n,) = struct.unpack_from(">I", buf, pos)
                if end - pos - 4 < n:
                    break
                cmd = buf[pos + 4:pos + 5]
                body = buf[pos + 5:pos + 4 + n]
                pos += 4 + n
                if cmd == b"O":
                    _v, act, prot = struct.unpack_from(">III", body)
                    reply = struct.pack(">III", 6, act & (SMFIF_ACTIONS | lean_action), prot & want)
                    if "lean" in flags:  # macro lists per stage (mfdef.h SMFIM_*): only {i} at eom
                        reply += b"".join(struct.pack(">I", st) + (b"i" if st == 5 else b"{none}") + b"\0"
                                          for st in range(7))
                    out.append(_packet(b"O", reply))
                elif cmd == b"M":
                    self.rcpts = []
                elif cmd == b"R":
                    self.rcpts.append(body.split(b"\0", 1)[0])
                    if "rcptreply" in flags:
                        out.append(cont)
                elif cmd == b"E":
                    if base == "actions":
                        out.append(_packet(b"e", VERP.encode() + b"\0" + MAIL_PARAMS.encode() + b"\0"))
                        for r in self.rcpts:
                            out.append(_packet(b"-", r + b"\0"))
                            out.append(_packet(b"2", r + b"\0NOTIFY=FAILURE,DELAY ORCPT=rfc822;" + r.strip(b"<>") + b"\0"))
                    out.append(cont)
                elif cmd in (b"C", b"H", b"T", b"N", b"B", b"U"):
                    out.append(cont)
                elif cmd == b"Q":
                    self.t.close()
                    return
                # D (macros), A (abort), L (header, no reply), K (quit, new connection): nothing to say
            self.buf = buf[pos:]
            if out:
                self.t.write(b"".join(out))

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_unix_server(Conn, socket_path)
        async with server:
            await server.serve_forever()

    os.umask(0)
    asyncio.run(serve())


def main() -> None:
    socket_path, mode = sys.argv[1], sys.argv[2]
    if "async" in parse(mode)[1]:
        run_async(socket_path, mode)
        return
    factory = make(mode)
    os.umask(0)
    Milter.factory = factory
    actions = (Milter.CHGFROM | Milter.ADDHDRS | Milter.CHGHDRS | Milter.DELRCPT
               | Milter.ADDRCPT | Milter.ADDRCPT_PAR)
    if "lean" in parse(mode)[1]:
        actions |= Milter.SETSYMLIST
    Milter.set_flags(actions)
    Milter.runmilter(f"ref-{mode}", f"unix:{socket_path}", timeout=600)


if __name__ == "__main__":
    main()
