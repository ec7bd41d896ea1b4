"""OpenSMTPD ("This is the MAILER-DAEMON, please DO NOT REPLY to this e-mail")."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from .base import TextDetector


class OpenSMTPD(TextDetector):
    name = "opensmtpd"
    body_re = lazy_re(r"please DO NOT REPLY to this e-?mail|An error has occurred while attempting to deliver",
                         re.IGNORECASE)
    body_keys = ("please do not reply to this e", "an error has occurred while attempting to deliver")
