"""DragonFly Mail Agent (dma): "There was an error delivering your mail to <addr>"."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from ..text import Entry, text_after
from ..view import ParsedView
from .base import TextDetector


class DragonFly(TextDetector):
    name = "dragonfly"
    body_re = lazy_re(r"This is the DragonFly Mail Agent|There was an error delivering your mail to", re.IGNORECASE)
    body_keys = ("dragonfly mail agent", "error delivering your mail to")

    def diagnostic(self, view: ParsedView, entry: Entry | None) -> str:
        # the remote reply follows the sentence naming the recipient, after a blank line
        base = super().diagnostic(view, entry)
        if entry is not None:
            return base + " " + text_after(view, entry, 800)
        return base
