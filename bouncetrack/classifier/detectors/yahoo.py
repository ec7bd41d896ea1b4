"""Yahoo! Mail / AOL (Verizon Media) text notices ("Sorry, we were unable to deliver"),
and AOL's older "Mail Delivery Problem" notice, which lists bare screen names (read by the
shared ``text.bare_name_entries``: a screen name is <name>@aol.com)."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from .base import TextDetector


class Yahoo(TextDetector):
    name = "yahoo"
    from_re = lazy_re(r"@(?:\S+\.)?(?:yahoo(?:inc)?\.(?:com|co\.\w+|\w+)|aol\.com\b)", re.IGNORECASE)
    body_re = lazy_re(r"Sorry, we were unable to deliver your message to the following address", re.IGNORECASE)
    body_keys = ("sorry, we were unable to deliver your message to the following address",)
