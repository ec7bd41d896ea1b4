"""What the pipe tells Postfix's log: lines on stderr, which pipe(8) logs (and
quotes in a bounce's delivery status when the pipe fails)."""

from __future__ import annotations

import sys

PROG = "bouncetrack pipe"


def say(line: str) -> None:
    """``line`` on stderr, prefixed so that it never begins with an enhanced status
    code, every secret masked (a configuration error may quote a line of the YAML
    file; a report's text is the Internet's)."""
    from ..core.redact import redact_text  # its patterns: only for a pipe that has something to say

    sys.stderr.write(redact_text(f"{PROG}: {line}") + "\n")
