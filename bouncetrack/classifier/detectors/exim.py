"""Exim (and Exim-based providers such as mail.ru, GMX): "Mail delivery failed"."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from ..common import ADDR_RE, first_address
from ..text import Entry, entries
from ..view import ParsedView
from .base import TextDetector


class Exim(TextDetector):
    name = "exim"
    header_names = ("x-failed-recipients",)
    subject_re = lazy_re(r"^Mail delivery failed|^Warning: message .{1,40} delayed|^Mail failure", re.IGNORECASE)
    body_re = lazy_re(r"This message was created automatically by mail delivery software", re.IGNORECASE)
    body_keys = ("created automatically by mail delivery software",)

    def entries(self, view: ParsedView) -> list[Entry]:
        ents = entries(view)
        failed = {a.lower() for a in ADDR_RE.findall(view.headers.get("x-failed-recipients", ""))}
        if failed:
            # Exim names every failed address in X-Failed-Recipients; trust it over the text.
            picked = [e for e in ents if e.address.lower() in failed]
            if picked:
                return picked
            # The header and the text disagree: the text's address wins when it is the one
            # the sender used (the returned original's To), else the header's.
            sent_to = first_address((view.original or {}).get("to"))
            used = [e for e in ents if sent_to and e.address.lower() == sent_to.lower()]
            return used or [Entry(a) for a in ADDR_RE.findall(view.headers.get("x-failed-recipients", ""))]
        return ents
