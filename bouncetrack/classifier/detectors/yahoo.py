"""Yahoo! Mail / AOL (Verizon Media) text notices ("Sorry, we were unable to deliver"),
and AOL's older "Mail Delivery Problem" notice, which lists bare screen names."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from ..text import Entry, entries, report_lines
from ..view import ParsedView
from .base import TextDetector

_AOL_FROM_RE = lazy_re(r"@aol\.com\b", re.IGNORECASE)
# "Your mail to the following recipients could not be delivered because ...:", then one
# tab-indented screen name per line (an AOL mailbox is <screenname>@aol.com).
_AOL_LIST_RE = lazy_re(r"following recipients? could not be delivered", re.IGNORECASE)
_SCREEN_NAME_RE = lazy_re(r"^\s+([A-Za-z][A-Za-z0-9._-]{1,63})\s*$")


class Yahoo(TextDetector):
    name = "yahoo"
    from_re = lazy_re(r"@(?:\S+\.)?(?:yahoo(?:inc)?\.(?:com|co\.\w+|\w+)|aol\.com\b)", re.IGNORECASE)
    body_re = lazy_re(r"Sorry, we were unable to deliver your message to the following address", re.IGNORECASE)
    body_keys = ("sorry, we were unable to deliver your message to the following address",)

    def entries(self, view: ParsedView) -> list[Entry]:
        ents = entries(view)
        if ents or not _AOL_FROM_RE.search(view.from_[:300]):
            return ents
        out: list[Entry] = []
        listing = False
        for idx, line in enumerate(report_lines(view)):
            if _AOL_LIST_RE.search(line):
                listing, reason = True, line.strip()
                continue
            if listing:
                m = _SCREEN_NAME_RE.match(line)
                if m is None:
                    if out:
                        break
                    continue
                out.append(Entry(m.group(1) + "@aol.com", [reason], True, idx))
        return out[:50]
