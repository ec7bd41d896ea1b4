"""An SMTP sink for tests and the demo: accepts mail on 127.0.0.1 and records it.

Built on aiosmtpd (its controller runs the server in a background thread).
Each accepted transaction is recorded with its envelope (``MAIL FROM`` -
``"<>"`` for the null reverse-path - and ``RCPT TO``), the ESMTP options and the raw
data bytes. :meth:`SmtpSink.reject_next` makes it answer the next transactions
with an error (4xx: the sender retries), to test the forwarder's retries.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from .webhook_receiver import free_port


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str  # "<>" for the null reverse-path
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...]
    data: bytes
    received_at: float

    def message(self) -> Message:
        return message_from_bytes(self.data)


class _Handler:
    def __init__(self, sink: "SmtpSink") -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        return self.sink._record(envelope)


class SmtpSink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.messages: list[ReceivedMail] = []
        self._rejections: list[str] = []
        self._cond = threading.Condition()
        self._controller: Controller | None = None

    def start(self) -> "SmtpSink":
        self._controller = Controller(_Handler(self), hostname=self.host, port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> "SmtpSink":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reject_next(self, n: int, reply: str = "451 4.3.0 Try again later") -> None:
        """Answer ``reply`` at end of DATA for the next ``n`` transactions (nothing recorded)."""
        with self._cond:
            self._rejections.extend([reply] * n)

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _record(self, envelope: Any) -> str:
        with self._cond:
            if self._rejections:
                return self._rejections.pop(0)
            data = envelope.content if isinstance(envelope.content, bytes) else envelope.original_content
            self.messages.append(
                ReceivedMail(
                    mail_from=envelope.mail_from or "<>",
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    mail_options=tuple(envelope.mail_options),
                    data=bytes(data or b""),
                    received_at=time.time(),
                )
            )
            self._cond.notify_all()
        return "250 2.0.0 OK queued"


__all__ = ["ReceivedMail", "SmtpSink"]
