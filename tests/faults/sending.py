"""A small retrying SMTP client, as a real MTA would be, and the burst it drives.

A real MTA that gets a 4xx (or loses the connection) keeps the message and tries
again later; it gives up only on a 5xx. :func:`send_retrying` does the same with a
short delay, until a deadline. :func:`burst` sends many messages from several threads.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

from bouncetrack.harness.stack import SendResult, make_message

from .reconcile import Sent


@dataclass
class Delivery:
    """What the client saw for one message: every attempt's replies."""

    sent: Sent
    mail_from: str
    attempts: list[SendResult] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].accepted

    @property
    def tempfails(self) -> int:
        """Attempts answered 4xx (any stage) or dropped: the ones a real MTA retries."""
        return sum(1 for a in self.attempts if _temporary(a))


def _temporary(r: SendResult) -> bool:
    return r.error is not None or any(400 <= c < 500 for c in r.codes)


def new_message(mail_from: str, rcpt: str, *, subject: str = "fault suite",
                body: str = "Hello from the fault suite.\n") -> tuple[Sent, bytes]:
    mid = f"<{uuid.uuid4().hex}@faults.test>"
    data = make_message(mail_from, [rcpt], subject=subject, body=body, headers={"Message-ID": mid})
    return Sent(rcpt, mid), data


def send_retrying(stack: Any, mail_from: str, rcpt: str, *, deadline: float,
                  retry_delay: float = 0.25) -> Delivery:
    """Send one message; retry on 4xx or a dropped connection until accepted, a 5xx,
    or ``deadline`` (time.monotonic). The same bytes every time, like a queued message."""
    sent, data = new_message(mail_from, rcpt)
    d = Delivery(sent, mail_from)
    while True:
        r = stack.send(mail_from, [rcpt], data, timeout=15)
        d.attempts.append(r)
        if r.accepted or not _temporary(r) or time.monotonic() >= deadline:
            return d
        time.sleep(retry_delay)


def burst(stack: Any, mail_from: str, rcpts: Sequence[str], *, threads: int = 4,
          deadline_seconds: float = 60.0, started: threading.Event | None = None,
          pace: float = 0.0) -> list[Delivery]:
    """Send one message per recipient from ``threads`` client threads (retrying);
    each thread waits ``pace`` seconds after each message (so faults land mid-burst)."""
    deadline = time.monotonic() + deadline_seconds
    out: list[Delivery] = []
    lock = threading.Lock()

    def one(rcpt: str) -> None:
        d = send_retrying(stack, mail_from, rcpt, deadline=deadline)
        with lock:
            out.append(d)
            if started is not None:
                started.set()
        if pace:
            time.sleep(pace)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, rcpts))
    return out
