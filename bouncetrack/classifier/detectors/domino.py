"""IBM/Lotus Domino and Notes ("was not delivered to: ... because:")."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from .base import TextDetector


class Domino(TextDetector):
    name = "domino"
    body_re = lazy_re(r"was not delivered to:|Failure Reasons|Domino Directory|Lotus Notes", re.IGNORECASE)
    body_keys = ("was not delivered to:", "failure reasons", "domino directory", "lotus notes")
