"""Reference pymilters for bench/milter_overhead.py --reference: the floor under our milter.

``trivial``: the same negotiated protocol as bouncetrack's milter (envfrom, envrcpt
and header with @noreply; connect/helo/data/eoh/body skipped) and an eom that
changes nothing. ``actions``: the same, plus the modifications a tracked message
gets (chgfrom with RET/ENVID, delrcpt + addrcpt with NOTIFY/ORCPT per recipient),
with constant values: no policy, no token, no store. The gap between these and
bouncetrack's milter is what our own Python costs; the gap between ``trivial`` and
no milter is pymilter + the milter protocol; ``actions`` − ``trivial`` is the price of
the rewrite itself (mostly Postfix's cleanup editing the queue file).

Run by the benchmark as ``python _ref_milter.py SOCKET trivial|actions`` (stdlib +
pymilter only, so it can run from a world-readable copy as the milter user).
"""

from __future__ import annotations

import os
import sys

import Milter

VERP = "<b+aaaaaaaaaaaaaaaaaaaaaaaa@bounce.test>"
MAIL_PARAMS = "RET=HDRS ENVID=aaaaaaaaaaaaaaaaaaaaaaaa"
CONTINUE: int = Milter.CONTINUE


def make(mode: str) -> type:
    class Ref(Milter.Base):  # type: ignore[misc]
        def __init__(self) -> None:
            self.rcpts: list[str] = []

        @Milter.noreply
        def envfrom(self, sender: str, *params: str) -> int:
            self.rcpts = []
            return CONTINUE

        @Milter.noreply
        def envrcpt(self, to: str, *params: str) -> int:
            self.rcpts.append(to)
            return CONTINUE

        @Milter.noreply
        def header(self, name: str, value: str) -> int:
            return CONTINUE

        def eom(self) -> int:
            if mode == "actions":
                self.chgfrom(VERP, MAIL_PARAMS)
                for rcpt in self.rcpts:
                    self.delrcpt(rcpt)
                    self.addrcpt(rcpt, "NOTIFY=FAILURE,DELAY ORCPT=rfc822;" + rcpt.strip("<>"))
            return CONTINUE

        def abort(self) -> int:
            return CONTINUE

        def close(self) -> int:
            return CONTINUE

    return Ref


def main() -> None:
    socket_path, mode = sys.argv[1], sys.argv[2]
    if mode not in ("trivial", "actions"):
        raise SystemExit(f"mode must be trivial or actions, not {mode!r}")
    os.umask(0)
    Milter.factory = make(mode)
    Milter.set_flags(Milter.CHGFROM | Milter.ADDHDRS | Milter.CHGHDRS | Milter.DELRCPT
                     | Milter.ADDRCPT | Milter.ADDRCPT_PAR)
    Milter.runmilter(f"ref-{mode}", f"unix:{socket_path}", timeout=600)


if __name__ == "__main__":
    main()
