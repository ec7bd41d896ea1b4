"""Gmail / Google Workspace non-DSN notices ("Technical details of permanent failure")."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from ..text import Entry
from ..view import ParsedView
from .base import TextDetector

_DETAILS_RE = lazy_re(r"Technical details of (?:permanent|temporary) failure:\s*(.{1,1500})", re.IGNORECASE | re.DOTALL)
_REMOTE_RE = lazy_re(r"The response (?:from the remote server|was):\s*(.{1,800})", re.IGNORECASE | re.DOTALL)


class Gmail(TextDetector):
    name = "gmail"
    from_re = lazy_re(r"mailer-daemon@(?:googlemail|google)\.com", re.IGNORECASE)
    body_re = lazy_re(r"Technical details of (?:permanent|temporary) failure|Google tried to deliver your message",
                         re.IGNORECASE)
    body_keys = ("technical details of ", "google tried to deliver your message")

    def diagnostic(self, view: ParsedView, entry: Entry | None) -> str:
        base = super().diagnostic(view, entry)
        text = view.report_text[:20000]
        m = _REMOTE_RE.search(text) or _DETAILS_RE.search(text)
        if m is not None:
            return " ".join(m.group(1).split())[:1000] + " " + base
        return base

    def temporary(self, view: ParsedView) -> bool | None:
        if re.search(r"temporary failure|will (?:be )?retr", view.report_text[:6000], re.IGNORECASE):
            return True
        return super().temporary(view)
