"""Google Groups: a post to a group refused ("the group you tried to contact may not exist").

The notice is localised, so the reason comes from its shape, not its words: the refusal
lists exactly four possible causes as "*" bullets (wrong name, group deleted, membership
required, posting closed) - all about the *sender's* right to post, hence ``rejected``.
The failed address is in X-Failed-Recipients.
"""

from __future__ import annotations

from ..common import ADDR_RE, make_recipient
from ..model import BOUNCE, Report
from ..view import ParsedView


class GoogleGroups:
    name = "googlegroups"

    def matches(self, view: ParsedView) -> bool:
        return ("x-failed-recipients" in view.headers and "Google Groups" in view.body[:20000]
                and "google" in view.from_.lower())

    def detect(self, view: ParsedView) -> Report | None:
        addrs = ADDR_RE.findall(view.headers.get("x-failed-recipients", ""))
        if not addrs:
            return None
        text = view.report_text
        bullets = sum(1 for line in text.split("\n") if line.lstrip(" ").startswith("* "))
        reason = "rejected" if bullets == 4 else None
        diag = " ".join(text.split())[:1000]
        out = tuple(make_recipient(a, diagnostic=diag, preset=reason, reason=reason) for a in addrs[:50])
        return Report(kind=BOUNCE, recipients=out, detector=self.name)
