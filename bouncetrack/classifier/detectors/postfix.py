"""Postfix bounce(8) text without (or with a broken) delivery-status part."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from .base import TextDetector


class Postfix(TextDetector):
    name = "postfix"
    body_re = lazy_re(r"This is the mail system at host|I'm sorry to have to inform you that your message|"
                         r"The Postfix program|could not be delivered to one or more recipients", re.IGNORECASE)
    body_keys = ("this is the mail system at host",
                 "i'm sorry to have to inform you that your message",
                 "the postfix program",
                 "could not be delivered to one or more recipients")
    subject_re = lazy_re(r"^Undelivered Mail Returned to Sender|^Delayed Mail", re.IGNORECASE)
