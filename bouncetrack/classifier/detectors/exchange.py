"""Microsoft Exchange (2003 "did not reach", 2007+ / Office 365 "Delivery has failed")."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from ..text import Entry, text_after
from ..view import ParsedView
from .base import TextDetector

_REMOTE_RE = lazy_re(r"Remote Server (?:at \S+ )?returned '([^']{1,500})'", re.IGNORECASE)


class Exchange(TextDetector):
    name = "exchange"
    header_names = ("x-ms-exchange-message-is-ndr", "x-ms-embedded-report")
    body_re = lazy_re(r"did not reach the following recipient|Delivery has failed to these recipients|"
                         r"Diagnostic information for administrators|Your message couldn't be delivered",
                         re.IGNORECASE)

    def diagnostic(self, view: ParsedView, entry: Entry | None) -> str:
        base = super().diagnostic(view, entry)
        m = _REMOTE_RE.search(view.report_text[:20000])
        if m is not None and m.group(1) not in base:
            return base + " " + m.group(1)
        if entry is not None and len(base) < 40:
            return base + " " + text_after(view, entry, 600)
        return base
