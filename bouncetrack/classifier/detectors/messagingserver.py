"""Oracle/Sun Java System Messaging Server, and other "Reporting-MTA"-style text notices."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from .base import TextDetector


class MessagingServer(TextDetector):
    name = "messagingserver"
    body_re = lazy_re(r"This report relates to a message you sent|Your message cannot be delivered to the following recipients",
                         re.IGNORECASE)
    body_keys = ("this report relates to a message you sent",
                 "your message cannot be delivered to the following recipients")
