"""A fake remote MX (aiosmtpd in a background thread) for the harness.

The private Postfix routes ``remote.test`` here. It advertises ``DSN`` in its EHLO
reply, because Postfix only passes NOTIFY/ORCPT/RET/ENVID on to a server that
advertises it (RFC 3461 §4), accepts those parameters, and records every
transaction exactly as received (parameter values keep their case: ORCPT carries an
address, ENVID a case-sensitive token).

Recipients are answered by a rule on the local part (see :data:`DEFAULT_RULES`);
the first rule whose prefix matches wins, everything else gets 250.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

#: (local-part prefix, SMTP reply); ``{addr}`` is replaced by the recipient address.
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("unknown-", "550 5.1.1 <{addr}>: Recipient address rejected: User unknown"),
    ("full-", "452 4.2.2 Mailbox full"),
    ("greylist-", "451 4.7.1 Greylisted, try again later"),
    ("delay-", "451 4.7.1 Greylisted, try again later"),
    ("gone-", "550 5.1.6 Recipient has moved"),
)


@dataclass
class Rcpt:
    """One RCPT TO as the fake MX saw it."""

    address: str
    params: dict[str, str]  # upper-case keys, values as sent (e.g. NOTIFY, ORCPT)
    reply: str
    accepted: bool


@dataclass
class Transaction:
    """One MAIL FROM … (RCPT TO …)* [DATA] as the fake MX saw it."""

    mail_from: str  # "" for the null sender
    mail_params: dict[str, str]  # e.g. {"RET": "FULL", "ENVID": "xyz", "SIZE": "123"}
    rcpts: list[Rcpt] = field(default_factory=list)
    data: bytes | None = None  # None until DATA completed
    peer: str = ""
    helo: str = ""
    time: float = field(default_factory=time.time)

    @property
    def accepted(self) -> list[str]:
        return [r.address for r in self.rcpts if r.accepted]

    def rcpt(self, address: str) -> Rcpt | None:
        """The RCPT record for ``address`` (case-insensitive), if any."""
        for r in self.rcpts:
            if r.address.lower() == address.lower():
                return r
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _parse_params(text: str) -> dict[str, str] | None:
    """ESMTP parameters ``KEY=value KEY2`` → dict; None on a syntax error (RFC 5321 §4.1.2)."""
    out: dict[str, str] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not key.isalnum() or (eq and not value):
            return None
        out[key.upper()] = value if eq else ""
    return out


def _split_path(arg: str) -> tuple[str, str] | None:
    """``<addr> params`` → (addr, params); tolerates a missing angle bracket pair."""
    arg = arg.strip()
    if arg.startswith("<"):
        end = arg.find(">")
        if end < 0:
            return None
        return arg[1:end], arg[end + 1 :]
    addr, _, rest = arg.partition(" ")
    return addr, rest


class _DsnSMTP(SMTP):
    """aiosmtpd's SMTP with DSN parameters (RFC 3461) accepted on MAIL and RCPT."""

    fake: "FakeMX"

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        assert self.session is not None and self.envelope is not None
        stripped = self._strip_command_keyword("FROM:", arg) if arg else None
        parsed = _split_path(stripped) if stripped is not None else None
        params = _parse_params(parsed[1]) if parsed else None
        if parsed is None or params is None:
            await self.push("501 5.5.4 Syntax: MAIL FROM:<address> [parameters]")
            return
        if self.envelope.mail_from is not None and self.envelope.mail_from != "":
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        address = parsed[0]
        self.envelope.mail_from = address
        self.envelope.mail_options = [f"{k}={v}" if v else k for k, v in params.items()]
        self.fake._begin(self.session, address, params)
        await self.push("250 2.1.0 Ok")

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        assert self.session is not None and self.envelope is not None
        if self.envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        stripped = self._strip_command_keyword("TO:", arg) if arg else None
        parsed = _split_path(stripped) if stripped is not None else None
        params = _parse_params(parsed[1]) if parsed else None
        if parsed is None or params is None or not parsed[0]:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address> [parameters]")
            return
        address = parsed[0]
        reply = self.fake.reply_for(address)
        accepted = reply.startswith("2")
        if accepted:
            self.envelope.rcpt_tos.append(address)
        self.fake._rcpt(self.session, Rcpt(address, params, reply, accepted))
        await self.push(reply)


class _Handler:
    def __init__(self, fake: "FakeMX") -> None:
        self.fake = fake

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # Insert DSN before the last line ("250 HELP"); RFC 3461 §4.
        return responses[:-1] + ["250-DSN"] + responses[-1:]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        self.fake._data(session, data)
        return "250 2.0.0 Ok: queued"


class _Controller(Controller):
    def __init__(self, fake: "FakeMX", host: str, port: int) -> None:
        self._fake = fake
        super().__init__(_Handler(fake), hostname=host, port=port, server_hostname="fakemx.remote.test")

    def factory(self) -> SMTP:
        smtp = _DsnSMTP(self.handler, **self.SMTP_kwargs)
        smtp.fake = self._fake
        return smtp


class FakeMX:
    """A fake remote MX on loopback; use as a context manager or start()/stop().

    ``rules``: (local-part prefix, reply) pairs replacing :data:`DEFAULT_RULES`;
    ``reply_for`` can also be replaced (``fake.rule = callable``) at run time.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        rules: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.rules: list[tuple[str, str]] = list(DEFAULT_RULES if rules is None else rules)
        self.rule: Callable[[str], str | None] | None = None
        self._lock = threading.Condition()
        self._transactions: list[Transaction] = []
        self._current: dict[int, Transaction] = {}
        self._controller: _Controller | None = None

    # --- lifecycle -----------------------------------------------------------
    def start(self) -> "FakeMX":
        if self._controller is None:
            self._controller = _Controller(self, self.host, self.port)
            self._controller.start()
        return self

    def stop(self) -> None:
        ctl, self._controller = self._controller, None
        if ctl is not None:
            try:
                ctl.stop()
            except Exception:  # noqa: BLE001 - teardown must not raise
                pass

    @property
    def running(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> "FakeMX":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- rules ---------------------------------------------------------------
    def reply_for(self, address: str) -> str:
        """The reply to ``RCPT TO:<address>``."""
        if self.rule is not None:
            custom = self.rule(address)
            if custom is not None:
                return custom
        local = address.rpartition("@")[0].lower() if "@" in address else address.lower()
        for prefix, reply in self.rules:
            if local.startswith(prefix.lower()):
                return reply.format(addr=address)
        return "250 2.1.5 Ok"

    # --- recording (called from the server thread) ----------------------------
    def _begin(self, session: Session, mail_from: str, params: dict[str, str]) -> None:
        peer = session.peer
        t = Transaction(mail_from, params, peer=str(peer), helo=str(session.host_name or ""))
        with self._lock:
            self._current[id(session)] = t
            self._transactions.append(t)
            self._lock.notify_all()

    def _rcpt(self, session: Session, rcpt: Rcpt) -> None:
        with self._lock:
            t = self._current.get(id(session))
            if t is not None:
                t.rcpts.append(rcpt)
            self._lock.notify_all()

    def _data(self, session: Session, data: bytes) -> None:
        with self._lock:
            t = self._current.pop(id(session), None)
            if t is not None:
                t.data = data
            self._lock.notify_all()

    # --- accessors (thread-safe) ----------------------------------------------
    def transactions(self) -> list[Transaction]:
        """A snapshot of every transaction so far (including ones without DATA)."""
        with self._lock:
            return list(self._transactions)

    def delivered(self) -> list[Transaction]:
        """Transactions that completed DATA."""
        return [t for t in self.transactions() if t.data is not None]

    def for_rcpt(self, address: str) -> list[Transaction]:
        """Transactions in which ``address`` was given as a recipient (accepted or not)."""
        return [t for t in self.transactions() if t.rcpt(address) is not None]

    def clear(self) -> None:
        with self._lock:
            self._transactions.clear()

    def wait_for(self, predicate: Callable[["FakeMX"], Any], timeout: float = 10.0) -> Any:
        """Wait until ``predicate(self)`` is truthy; return its value or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                self._lock.release()
                try:
                    value = predicate(self)
                finally:
                    self._lock.acquire()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"fake MX: condition not met within {timeout:.1f}s")
                self._lock.wait(min(left, 0.2))
