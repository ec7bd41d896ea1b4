"""Every SMTP reply the product itself gives, in one registry.

A reply is (code, enhanced status, text). Keeping them together makes the
wording consistent and lets tests refer to them by name.
"""

from __future__ import annotations

from typing import NamedTuple


class Reply(NamedTuple):
    code: str  # RFC 5321 §4.2 reply code
    status: str  # RFC 3463 enhanced status code
    text: str


# The milter could not record a tracked message (store down or locked): the client
# retries later, nothing is lost. RFC 3463 §3.4 X.3.0 "other or undefined mail system status".
STORE_UNAVAILABLE = Reply("451", "4.3.0", "Bounce tracking is temporarily unavailable, try again later")
# Any unexpected failure inside the milter: same outcome as milter_default_action=tempfail.
MILTER_FAILURE = Reply("451", "4.3.0", "Temporary local problem, try again later")
# A recipient on the domain's suppression list, policy "reject" (issue 6).
SUPPRESSED = Reply("550", "5.1.1", "Recipient address is suppressed after earlier bounces")
# A mail for the bounce domain whose VERP token does not verify (issue 6).
INVALID_VERP = Reply("550", "5.1.1", "Unknown bounce address")
# An untracked message whose Return-Path header names another domain than its
# MAIL FROM (issue 16): refused whole, at end of message. RFC 3463 §3.8 X.7.1
# "delivery not authorized, message refused".
RETURN_PATH_FOREIGN = Reply("550", "5.7.1", "Return-Path must be in the sender's own domain")
