"""Courier MTA ("Delivery Status Notification ... Courier mail server")."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from .base import TextDetector


class Courier(TextDetector):
    name = "courier"
    body_re = lazy_re(r"This is a delivery status notification from|Courier mail server at", re.IGNORECASE)
    body_keys = ("delivery status notification from", "courier mail server at")
