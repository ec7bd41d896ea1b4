"""``POST /v1/send``: the spec's REST send endpoint (issue 5).

The request is validated and turned into a MIME message by the pure
:mod:`bouncetrack.api.compose`; here are the edges: the caller's domains, one
SMTP transaction with the local Postfix, and the store lookup that tells the
caller whether (and under which token) the milter tracked the message.

Why submit over SMTP instead of writing a tracked message ourselves: the milter
then applies exactly the rules it applies to every SMTP client (tracking on:
VERP sender, NOTIFY/RET/ENVID overridden; off: envelope, Return-Path and DSN as
given), so there is one implementation of the policy, not two.

Where: ``outbox.smtp_host``/``outbox.smtp_port`` of the configuration, the local
Postfix the outbox worker also submits forwarded bounces to (default
127.0.0.1:25). The transaction is all or nothing: if Postfix refuses any
recipient the API sends RSET and reports the refusal, so a retry never
duplicates mail to the recipients that had been accepted.

Status codes: 202 queued; 401 no or wrong token; 403 a sender domain (``from``,
``envelope``, ``bounce``) outside the token's domains; 422 invalid request (the
error's ``loc`` names the field); 502 Postfix refused the message (5xx, don't
retry unchanged); 503 Postfix unreachable or answered 4xx (retry later,
``Retry-After`` is set).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import smtplib
import socket
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from ..core import esmtp
from ..core.config import Config
from ..store import StoreUnavailable
from .deps import ApiContext, context
from .auth import Principal, require_token
from .compose import SendRequest, Submission, compose, cross_field_errors, domains_outside
from .validate import undeliverable_recipients

log = logging.getLogger(__name__)

router = APIRouter(tags=["send"])

SMTP_TIMEOUT_SECONDS = 60.0
RETRY_AFTER_SECONDS = 60
# How long a response waits for the milter journal writer to store a tracked message (issue 20).
RECORD_WAIT_SECONDS = 5.0
_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")


class SendResponse(BaseModel):
    """The message was queued by the local MTA; delivery happens afterwards."""

    message_id: str = Field(description="The Message-ID header of the message, with angle brackets.")
    queue_id: str | None = Field(
        description="The Postfix queue id (from `250 2.0.0 Ok: queued as ...`); null if the MTA did not say."
    )
    tracked: bool = Field(
        description="True when the milter tracks the message: bounces are classified and stored for it."
    )
    token: str | None = Field(
        description=(
            "The tracking (VERP) token naming this message; every bounce and webhook event "
            "for it carries this token. Null when not tracked."
        )
    )
    envelope_sender: str = Field(
        description=(
            "The envelope sender the message leaves with: the VERP address when tracked, "
            "else `bounce` when given, else `envelope` (or the From address)."
        )
    )
    recipients: list[str] = Field(description="The envelope recipients the message was queued for.")
    warnings: list[str] = Field(default_factory=list, description="Things worth knowing; empty normally.")


class SendError(BaseModel):
    """The ``detail`` of a 403, 502 or 503 answer."""

    error: str = Field(description="Machine-readable: forbidden_sender_domain, smtp_rejected, smtp_unavailable.")
    message: str = Field(description="Human-readable explanation.")
    retryable: bool = Field(default=False, description="True: the same request may succeed later (503).")
    field: str | None = Field(default=None, description="The request field at fault (403).")
    smtp_code: int | None = Field(default=None, description="The SMTP reply code from the local MTA (502/503).")
    smtp_reply: str | None = Field(default=None, description="The SMTP reply text from the local MTA.")
    smtp_stage: str | None = Field(default=None, description="The SMTP command that failed, e.g. `RCPT TO:<a@b>`.")


class SendErrorBody(BaseModel):
    detail: SendError


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid access token."},
    403: {"model": SendErrorBody, "description": "A sender domain is outside the token's domains."},
    502: {"model": SendErrorBody, "description": "The local MTA refused the message (SMTP 5xx): do not retry unchanged."},
    503: {"model": SendErrorBody, "description": "The local MTA is unreachable or answered 4xx: retry later."},
}


@router.post(
    "/v1/send",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SendResponse,
    responses=_ERROR_RESPONSES,
    summary="Send a message (tracked or not, by the sender domain's policy)",
)
def send_message(
    request: SendRequest,
    http: Request,
    principal: Principal = Depends(require_token),
    ctx: ApiContext = Depends(context),
) -> SendResponse:
    """Build the message and submit it to the local Postfix, where the tracking
    milter applies the sender domain's policy. Accepts `?access_token=` or
    `Authorization: Bearer`."""
    errors = cross_field_errors(request)
    if errors:
        raise RequestValidationError(errors)
    outside = domains_outside(request.sender_fields(), principal.domains)
    if outside:
        name, domain = outside[0]
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=SendError(
                error="forbidden_sender_domain",
                field=name,
                message=f"the {name} address's domain {domain!r} is not one of this access token's domains",
            ).model_dump(),
        )
    if request.bounce and not esmtp.return_path_allowed(request.mail_from, request.bounce):
        # The milter's rule for a Return-Path header, said here before any SMTP.
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=SendError(
                error="forbidden_sender_domain",
                field="bounce",
                message=f"the bounce address must be in the envelope sender's domain "
                        f"{request.mail_from.rpartition('@')[2]!r}",
            ).model_dump(),
        )
    # issue 19: the sender domain's validate_recipients refuses recipients that cannot receive mail
    errors, warnings = undeliverable_recipients(http.app, ctx, request.mail_from, request.recipients)
    if errors:
        raise RequestValidationError(errors)
    submission = compose_elsewhere(request)
    try:
        queued = submit(ctx.config, submission)
    except SmtpFailure as exc:
        log.warning("send: %s not queued: %s", submission.message_id, exc)
        raise exc.http_exception() from None
    response = _response(ctx, request, submission, queued)
    response.warnings.extend(warnings)
    return response


# --------------------------------------------------------------------------- composing


COMPOSER_NICE = 10
_composer: ProcessPoolExecutor | None = None
_composer_lock = threading.Lock()


def _pool() -> ProcessPoolExecutor:
    global _composer
    with _composer_lock:
        if _composer is None:
            # spawn: a clean interpreter, not a fork of this threaded server; niced, so
            # that the API's other requests come first when the cores are busy.
            _composer = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=os.nice, initargs=(COMPOSER_NICE,))
        return _composer


def compose_elsewhere(request: SendRequest) -> Submission:
    """:func:`compose` in a child process (one, started on first use).

    Building the message is the send endpoint's CPU: the HTML-to-text rendering
    and the transfer encoding take about 0.2 s per MB of HTML, up to seconds for
    the 10 million characters allowed. Here it never holds this process's GIL, so
    every other request keeps its latency while large sends are composed (issue 16,
    bench/api_hostile.py); one worker, niced, leaves the other cores to the API.
    A worker that died is replaced once.
    """
    global _composer
    for attempt in (1, 2):
        pool = _pool()
        try:
            return pool.submit(compose, request).result()
        except BrokenProcessPool:
            log.warning("send: the composing process died; starting another (attempt %d)", attempt)
            with _composer_lock:
                if _composer is pool:
                    _composer = None
    return compose(request)  # two workers died in a row: compose here rather than fail the send


# --------------------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class Queued:
    queue_id: str | None
    reply: str


class SmtpFailure(Exception):
    """The local MTA did not take the message; ``code`` 0 means no SMTP reply at all."""

    def __init__(self, code: int, reply: str, stage: str) -> None:
        super().__init__(f"{stage}: {code} {reply}")
        self.code = code
        self.reply = reply
        self.stage = stage

    def http_exception(self) -> HTTPException:
        if self.code == 0:
            return _http(503, "smtp_unavailable", f"cannot reach the local MTA ({self.reply}); retry later",
                         self, retryable=True)
        if 400 <= self.code < 500:
            return _http(503, "smtp_unavailable",
                         f"the local MTA answered {self.code} to {self.stage} (temporary); retry later",
                         self, retryable=True)
        return _http(502, "smtp_rejected", f"the local MTA refused {self.stage} with {self.code}", self,
                     retryable=False)


def _http(code: int, error: str, message: str, failure: SmtpFailure, *, retryable: bool) -> HTTPException:
    detail = SendError(
        error=error, message=message, retryable=retryable,
        smtp_code=failure.code or None, smtp_reply=failure.reply or None, smtp_stage=failure.stage,
    ).model_dump()
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if retryable else None
    return HTTPException(code, detail=detail, headers=headers)


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def submit(config: Config, sub: Submission, timeout: float = SMTP_TIMEOUT_SECONDS) -> Queued:
    """One SMTP transaction with the local MTA; raise :class:`SmtpFailure` unless queued.

    All or nothing: any refused recipient aborts the transaction (RSET).
    """
    host, port = config.outbox.smtp_host, config.outbox.smtp_port
    stage = "connect"
    try:
        with smtplib.SMTP(host, port, timeout=timeout, local_hostname=_helo_name()) as smtp:
            stage = "EHLO"
            code, reply = smtp.ehlo()
            if code != 250:
                raise SmtpFailure(code, _text(reply), stage)
            stage = f"MAIL FROM:<{sub.mail_from}>"
            code, reply = smtp.mail(sub.mail_from, list(sub.mail_options))
            if code != 250:
                _rset(smtp)
                raise SmtpFailure(code, _text(reply), stage)
            for rcpt in sub.recipients:
                stage = f"RCPT TO:<{rcpt}>"
                code, reply = smtp.rcpt(rcpt, list(sub.rcpt_options.get(rcpt, ())))
                if code not in (250, 251):
                    _rset(smtp)
                    raise SmtpFailure(code, _text(reply), stage)
            stage = "DATA"
            code, reply = smtp.data(sub.message)
            if code != 250:
                raise SmtpFailure(code, _text(reply), stage)
            text = _text(reply)
            match = _QUEUED_AS.search(text)
            return Queued(match.group(1) if match else None, text)
    except SmtpFailure:
        raise
    except smtplib.SMTPResponseException as exc:  # e.g. 421 greeting, 554 to DATA
        raise SmtpFailure(exc.smtp_code, _text(exc.smtp_error), stage) from None
    except (smtplib.SMTPException, OSError) as exc:  # refused, timeout, dropped connection
        raise SmtpFailure(0, f"{host}:{port}: {exc or type(exc).__name__}", stage) from None


def _rset(smtp: smtplib.SMTP) -> None:
    try:
        smtp.rset()
    except (smtplib.SMTPException, OSError):
        pass


def _helo_name() -> str:
    # smtplib's default, socket.getfqdn(), may wait on DNS; the hostname is enough
    # for a loopback submission.
    name = socket.gethostname()
    return name if name and name.isascii() and " " not in name else "localhost"


# --------------------------------------------------------------------------- response


def _response(ctx: ApiContext, request: SendRequest, sub: Submission, queued: Queued) -> SendResponse:
    """What the milter made of it: it recorded a tracked message before Postfix said 250."""
    warnings: list[str] = []
    record = None
    policy_tracks = ctx.config.policy_for(request.mail_from.rpartition("@")[2]).tracking
    # The milter journals the record before Postfix's 250 and its writer moves it into
    # the store within milliseconds (issue 20): wait that long for a tracked domain.
    deadline = time.monotonic() + (RECORD_WAIT_SECONDS if policy_tracks else 0.0)
    try:
        while True:
            record = ctx.store().message_by_message_id(sub.message_id, queued.queue_id)
            if record is None and queued.queue_id is not None:
                # The milter could not read the queue id macro: match the Message-ID alone.
                record = ctx.store().message_by_message_id(sub.message_id)
            if record is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
    except StoreUnavailable as exc:
        log.warning("send: message %s queued as %s, store lookup failed: %s", sub.message_id, queued.queue_id, exc)
        warnings.append(f"queued, but the tracking record could not be read: {exc}")
    if record is None and policy_tracks and not warnings:
        warnings.append(
            "tracking is enabled for the sender domain but the milter recorded no message: "
            "is Postfix's smtpd_milters set to the bouncetrack milter?"
        )
    if record is not None:
        return SendResponse(
            message_id=sub.message_id, queue_id=queued.queue_id, tracked=True, token=record.token,
            envelope_sender=record.verp_sender, recipients=list(sub.recipients), warnings=warnings,
        )
    log.info("send: message %s queued as %s (untracked)", sub.message_id, queued.queue_id)
    return SendResponse(
        message_id=sub.message_id, queue_id=queued.queue_id, tracked=False, token=None,
        envelope_sender=request.bounce or request.mail_from, recipients=list(sub.recipients),
        warnings=warnings,
    )
