"""Reference pymilters for bench/milter_overhead.py --reference: the floor under our milter.

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

The gap between these and bouncetrack's milter is what our own code costs; the
gap between ``trivial`` (or ``trivial+nohdr``) and no milter is pymilter and the
milter protocol, which no milter written with pymilter can go below;
``actions`` - ``trivial`` is the price of the rewrite itself (mostly Postfix's
cleanup editing the queue file).

Run by the benchmark as ``python _ref_milter.py SOCKET MODE`` (stdlib + pymilter
only, so it can run from a world-readable copy as the milter user).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import Milter

VERP = "<b+aaaaaaaaaaaaaaaaaaaaaaaa@bounce.test>"
MAIL_PARAMS = "RET=HDRS ENVID=aaaaaaaaaaaaaaaaaaaaaaaa"
CONTINUE: int = Milter.CONTINUE
BASES = ("trivial", "actions")
FLAGS = ("nohdr", "lean", "rcptreply")


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


def main() -> None:
    socket_path, mode = sys.argv[1], sys.argv[2]
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
