"""Microsoft Exchange (2003 "did not reach", 2007+ / Office 365 "Delivery has failed")."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from ..common import ADDR_RE
from ..text import Entry, entries, report_lines, text_after
from ..view import ParsedView
from .base import TextDetector

_REMOTE_RE = lazy_re(r"Remote Server (?:at \S+ )?returned '([^']{1,500})'", re.IGNORECASE)
# Exchange 5.5/2000/2003: "Your message / To: … / Subject: … / did not reach the
# following recipient(s): / <recipient>; on <date> / <reason>". The To: above the
# phrase is the original message's (often a mailing list), not the failed recipient.
_DID_NOT_REACH_RE = lazy_re(r"did not reach the following recipient", re.IGNORECASE)
_YOUR_MESSAGE_TO_RE = lazy_re(r"^\s*To:\s*<?(" + ADDR_RE.pattern + r")>?\s*$", re.IGNORECASE)
# A recipient given as an X.400 address with its SMTP form: "c=US;a= ;p=ORG;…;dda:SMTP=addr;".
# (ADDR_RE's own start rule would not begin a match right after "=", an atext character.)
_X400_SMTP_RE = lazy_re(r"\bSMTP=([A-Za-z0-9!#$%&*+/?^_`{|}~-][A-Za-z0-9.!#$%&'*+/?^_`{|}~-]{0,63}@"
                        + ADDR_RE.pattern.split("@", 1)[1] + ")", re.IGNORECASE)


class Exchange(TextDetector):
    name = "exchange"
    header_names = ("x-ms-exchange-message-is-ndr", "x-ms-embedded-report")
    body_re = lazy_re(r"did not reach the following recipient|Delivery has failed to these recipients|"
                         r"Diagnostic information for administrators|Your message couldn't be delivered",
                         re.IGNORECASE)
    body_keys = ("did not reach the following recipient",
                 "delivery has failed to these recipients",
                 "diagnostic information for administrators",
                 "your message couldn't be delivered")

    def entries(self, view: ParsedView) -> list[Entry]:
        found = entries(view)
        lines = report_lines(view)
        start = next((i for i, line in enumerate(lines) if _DID_NOT_REACH_RE.search(line)), None)
        if start is None:
            return found
        after = [e for e in found if e.index > start]
        known = {e.address.lower() for e in after}
        for i in range(start + 1, len(lines)):
            m = _X400_SMTP_RE.search(lines[i])
            if m is not None and m.group(1).lower() not in known:
                known.add(m.group(1).lower())
                explained = [lines[i].strip()]
                for following in lines[i + 1 : i + 12]:  # its reason, up to a blank line
                    if not following.strip() or _X400_SMTP_RE.search(following):
                        break
                    explained.append(following.strip())
                after.append(Entry(m.group(1), explained, True, i))
        return sorted(after, key=lambda e: e.index) or found

    def fallback_addresses(self, view: ParsedView) -> list[str]:
        """A recipient named only by its display name ("Jane Doe on <date>"): the guess is the
        "To:" of the "Your message" block, the address the sender used."""
        found = super().fallback_addresses(view)
        if found:
            return found
        lines = report_lines(view)
        start = next((i for i, line in enumerate(lines) if _DID_NOT_REACH_RE.search(line)), None)
        for line in lines[max(0, (start or 0) - 8) : start or 0]:
            m = _YOUR_MESSAGE_TO_RE.match(line)
            if m is not None:
                return [m.group(1)]
        return []

    def diagnostic(self, view: ParsedView, entry: Entry | None) -> str:
        base = super().diagnostic(view, entry)
        m = _REMOTE_RE.search(view.report_text[:20000])
        if m is not None and m.group(1) not in base:
            return base + " " + m.group(1)
        if entry is not None and len(base) < 40:
            return base + " " + text_after(view, entry, 600)
        return base
