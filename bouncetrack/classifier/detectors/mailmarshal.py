"""Trustwave/Marshal MailMarshal SMTP ('Undeliverable Mail: "subject"').

The reason comes first ("Could not be delivered because of" + the remote reply), then
"The following recipients were affected:" and the indented addresses: one diagnostic for
all the recipients listed after it.
"""

from __future__ import annotations

from ..common import ADDR_RE, make_recipient
from ..model import BOUNCE, RecipientResult, Report
from ..view import ParsedView


class MailMarshal:
    name = "mailmarshal"

    def matches(self, view: ParsedView) -> bool:
        return view.subject.startswith('Undeliverable Mail: "')

    def detect(self, view: ParsedView) -> Report | None:
        text = view.report_text
        i = text.find("Could not be delivered because of")
        j = text.find("The following recipients were affected:")
        if i < 0 or j < i:
            return None
        diag = " ".join(text[i + 33 : j].split())
        addrs: list[str] = []
        for line in text[j + 39 :].split("\n")[:100]:
            if line.strip() and not line.startswith((" ", "\t")):
                break  # "Additional Information": the list has ended
            m = ADDR_RE.search(line)
            if m is not None:
                addrs.append(m.group(0))
        if not addrs:
            return None
        out: list[RecipientResult] = [make_recipient(a, diagnostic=diag, hosts=view.hosts) for a in addrs[:50]]
        return Report(kind=BOUNCE, recipients=tuple(out), detector=self.name)
