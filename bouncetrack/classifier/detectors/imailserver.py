"""Ipswitch/Progress IMail Server ("X-Mailer: <SMTP32 vN>", "Unknown user: addr").

Each failed recipient is a line "Reason text: addr" (or "undeliverable to addr"); a remote
server's reply, when there was one, follows "Body of message generated response:". The
reason comes from IMail's own fixed texts (``providers._FAMILY["imailserver"]``).
"""

from __future__ import annotations

from ..common import ADDR_RE, make_recipient
from ..model import BOUNCE, RecipientResult, Report
from ..view import ParsedView


class IMailServer:
    name = "imailserver"

    def matches(self, view: ParsedView) -> bool:
        return (view.headers.get("x-mailer", "").lstrip().startswith("<SMTP32 v")
                or view.subject.startswith("Undeliverable Mail "))

    def detect(self, view: ParsedView) -> Report | None:
        text = view.report_text
        cut = text.find("Original message follows.")
        if cut >= 0:
            text = text[:cut]
        found: list[tuple[str, str]] = []
        response = ""
        for line in text.split("\n")[:300]:
            s = line.strip()
            if not s:
                continue
            m = ADDR_RE.search(s)
            i = s.find(": ")
            if m is not None and (8 < i < m.start() or s.lower().startswith("undeliverable ")):
                found.append((m.group(0), s))
            elif "Body of message generated response:" in s:
                response = s
            elif response:
                response += " " + s
        if not found:
            return None
        out: list[RecipientResult] = []
        for addr, diag in found[:50]:
            out.append(make_recipient(addr, diagnostic=(response + " " + diag).strip(), family=self.name,
                                      hosts=view.hosts))
        return Report(kind=BOUNCE, recipients=tuple(out), detector=self.name)
