"""qmail / netqmail "failure notice" (status hint "(#5.1.1)" at the end of a paragraph)."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from .base import TextDetector


class Qmail(TextDetector):
    name = "qmail"
    body_re = lazy_re(r"This is the qmail-send program|I'm afraid I wasn't able to deliver your message", re.IGNORECASE)
    body_keys = ("this is the qmail-send program", "i'm afraid i wasn't able to deliver your message")
    subject_re = lazy_re(r"^failure notice$", re.IGNORECASE)
    # qmail appends an RFC 3463 code in "(#d.d.d)" to its own diagnostics
    status_hint_re = lazy_re(r"\(#([245]\.\d{1,3}\.\d{1,3})\)")
