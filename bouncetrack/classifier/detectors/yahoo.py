"""Yahoo! Mail / AOL (Verizon Media) text notices ("Sorry, we were unable to deliver")."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from .base import TextDetector


class Yahoo(TextDetector):
    name = "yahoo"
    from_re = lazy_re(r"@(?:\S+\.)?yahoo(?:inc)?\.(?:com|co\.\w+|\w+)", re.IGNORECASE)
    body_re = lazy_re(r"Sorry, we were unable to deliver your message to the following address", re.IGNORECASE)
