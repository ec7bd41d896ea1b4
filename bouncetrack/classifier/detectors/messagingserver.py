"""Oracle/Sun Java System Messaging Server, and other "Reporting-MTA"-style text notices."""

from __future__ import annotations

import re

from .base import TextDetector


class MessagingServer(TextDetector):
    name = "messagingserver"
    body_re = re.compile(r"This report relates to a message you sent|Your message cannot be delivered to the following recipients",
                         re.IGNORECASE)
