"""Trend Micro InterScan Messaging Security Suite notices ("Mail could not be delivered").

Recipients appear as "<addr>" on a line with "Unable to deliver message to", or in the
session lines "Sent <<< RCPT TO:<addr>" / "Received >>> 550 ..." (the remote reply). A bare
"Unable to deliver message to <addr>" is the suite's way of saying the address was refused
(Sisimai's InterScanMSS module reads it as userunknown, and so do we).
"""

from __future__ import annotations

from ..common import ADDR_RE, make_recipient
from ..model import BOUNCE, RecipientResult, Report
from ..view import ParsedView

_TITLES = ("Mail could not be delivered", "メッセージを配信できません。", "メール配信に失敗しました")


class InterScanMSS:
    name = "interscanmss"

    def matches(self, view: ParsedView) -> bool:
        return view.from_.startswith('"InterScan') or any(t in view.subject for t in _TITLES)

    def detect(self, view: ParsedView) -> Report | None:
        found: dict[str, list[str]] = {}
        cur: list[str] | None = None
        for line in view.report_text.split("\n")[:300]:
            s = line.strip()
            if not s:
                continue
            lt, gt = s.rfind("<"), s.rfind(">")
            m = ADDR_RE.search(s[lt + 1 : gt]) if 0 <= lt < gt else None
            if m is not None and (" <<< " in s or " >>> " in s or "Unable to deliver " in s):
                cur = found.setdefault(m.group(0), [])
            if cur is None:
                continue
            if s.startswith("Received >>> "):
                cur.append(s[13:])
            elif "Unable to deliver " in s or " <<< " in s or " >>> " in s:
                cur.append(s)
        if not found:
            return None
        out: list[RecipientResult] = []
        for addr, lines in list(found.items())[:50]:
            diag = " ".join(lines)
            preset = "userunknown" if "Unable to deliver" in diag and ">>> " not in diag else None
            out.append(make_recipient(addr, diagnostic=diag, preset=preset, hosts=view.hosts))
        return Report(kind=BOUNCE, recipients=tuple(out), detector=self.name)
