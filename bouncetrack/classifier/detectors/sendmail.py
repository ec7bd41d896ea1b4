"""Sendmail (and V5 sendmail) "Returned mail" reports with a session transcript."""

from __future__ import annotations

import re

from ..lazy import lazy_re

from .base import TextDetector


class Sendmail(TextDetector):
    name = "sendmail"
    subject_re = lazy_re(r"^Returned mail:|^Warning: could not send message", re.IGNORECASE)
    body_re = lazy_re(r"-{3,} The following addresses had (?:permanent fatal|transient non-fatal) errors|"
                         r"-{3,} Transcript of session follows", re.IGNORECASE)
    body_keys = ("the following addresses had ", "transcript of session follows")
