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

# The pipe server's LMTP listener (issue 21, bouncetrack/bounce_pipe/lmtp.py): RFC 2033
# with RFC 3463 enhanced codes (announced as ENHANCEDSTATUSCODES, RFC 2034).
LMTP_GREETING = Reply("220", "", "bouncetrack LMTP ready")
LMTP_OK = Reply("250", "2.0.0", "Ok")  # RSET, NOOP, XFORWARD
LMTP_SENDER_OK = Reply("250", "2.1.0", "Sender ok")  # §3.5 X.1.0 other address status
LMTP_RECIPIENT_OK = Reply("250", "2.1.5", "Recipient ok")  # §3.5 X.1.5 destination address valid
LMTP_GO_AHEAD = Reply("354", "", "End data with <CR><LF>.<CR><LF>")  # RFC 5321 §4.2.2: no enhanced code
# One reply per recipient after DATA (RFC 2033 §4.2): the bounce is stored ...
LMTP_STORED = Reply("250", "2.0.0", "Bounce stored")
# ... or not yet, where the pipe exits 75 (store down, record still in the milter's journal,
# our deadline, any failure before the bounce is stored): Postfix keeps it and retries.
# §3.4 X.3.0 "other or undefined mail system status", as STORE_UNAVAILABLE.
LMTP_TEMPFAIL = Reply("451", "4.3.0", "Bounce not stored, try again later")
# Larger than pipe.lmtp.max_message_bytes (announced as SIZE, RFC 1870): §3.4 X.3.4
# "message too big for system". DATA is drained, never kept.
LMTP_TOO_BIG = Reply("552", "5.3.4", "Message too big")
# More RCPTs than pipe.lmtp.max_recipients in one transaction: RFC 5321 §4.5.3.1.10 (452),
# RFC 3463 §3.6 X.5.3 "too many recipients". The client sends them again in another one.
LMTP_TOO_MANY_RECIPIENTS = Reply("452", "4.5.3", "Too many recipients")
LMTP_BAD_SEQUENCE = Reply("503", "5.5.1", "Bad sequence of commands")  # §3.6 X.5.1 invalid command
LMTP_UNKNOWN_COMMAND = Reply("500", "5.5.1", "Command not recognized")
LMTP_SYNTAX = Reply("501", "5.5.4", "Syntax error in parameters")  # §3.6 X.5.4 invalid arguments
# A command line longer than the listener reads (RFC 5321 §4.5.3.1.4: 512 octets; we allow
# more for XFORWARD): the connection is closed after this, it cannot be resynchronised.
LMTP_LINE_TOO_LONG = Reply("500", "5.5.2", "Line too long")  # §3.6 X.5.2 syntax error
LMTP_BYE = Reply("221", "2.0.0", "Bye")
# The client was idle past pipe.lmtp.command_timeout_seconds, or DATA took longer than
# data_timeout_seconds: §3.5 X.4.2 "bad connection". Nothing of the transaction was stored.
LMTP_TIMEOUT = Reply("421", "4.4.2", "Timeout, closing connection")
# The server is stopping (SIGTERM) or replacing this worker: §3.4 X.3.2 "system not accepting".
LMTP_SHUTTING_DOWN = Reply("421", "4.3.2", "Service shutting down, try again later")
# A connection idle between transactions (parked in lmtp(8)'s connection cache) while a new
# one waits for a worker: closed for it (lmtp(8) opens another when it needs one).
LMTP_YIELD = Reply("421", "4.3.2", "Idle connection closed for a waiting one")
# Too many errors on one connection.
LMTP_TOO_MANY_ERRORS = Reply("421", "4.7.0", "Too many errors, closing connection")
