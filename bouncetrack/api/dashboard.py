"""The dashboard: server-rendered pages behind the API tokens (issue 5).

Routes (all HTML, none in the OpenAPI schema):

* ``GET /login``, ``POST /login``: paste an API token; a valid one gets a signed session
  cookie (see :mod:`bouncetrack.api.session`); ``POST /logout`` (CSRF-checked) ends it.
* ``GET /`` → ``/dashboard``: overview per domain and period (last 7/30 days or custom
  dates, UTC): sent, bounced hard/soft, delayed, complaints, rates, a stacked bar chart
  of events per day (inline SVG, no JavaScript), top bounce reasons, top recipient domains.
* ``GET /events``: the event list, filterable and keyset-paginated on ``events.id``;
  ``GET /events/{event_id}``: every classified field and the raw report (escaped, capped).
* ``GET /outbox``: pending, failed and dead-lettered jobs; ``POST /outbox/{id}/replay``
  (CSRF-checked) makes a dead job pending again.

Every POST is also refused (403) when the browser says another site sent it
(:func:`~bouncetrack.api.session.same_origin`): the only defence login has, since it
has no session to hold a CSRF token. A store that cannot be reached is a 503 page
with ``Retry-After``, never a stack trace.

Everything is scoped to the session's domains: another domain's event or job is a 404,
exactly like one that does not exist. Templates are rendered by Jinja2 with autoescaping
on for every template, and pages carry a strict Content-Security-Policy (no inline
script, no third-party origin) as a second line of defence against hostile bounce text.
Assets (CSS only) ship in the package under ``static/`` and are served at
:data:`STATIC_PREFIX`; nothing is loaded from a CDN.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ..core.config import Config
from ..core.events import EVENT_TYPES, event_to_json, iso_utc
from ..store import Store
from ..store.base import MAX_ROW_ID, BounceEvent
from ..store.views import DailyCount, EventQuery, JobView
from .deps import ApiContext, context
from ..core.tokens import hash_api_token
from .auth import SESSION_COOKIE, domains_for_token
from .session import Session, SessionManager, csrf_ok, same_origin
from .validate import dashboard_counts

router = APIRouter(include_in_schema=False)

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
STATIC_PREFIX = "/dashboard/static"

RAW_REPORT_CAP = 256 * 1024  # bytes of a raw report shown on the event page
DIAGNOSTIC_PREVIEW = 240  # characters of the diagnostic shown in the event list
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_RANGE_DAYS = 366
TOP_N = 10
OUTBOX_LIMIT = 100

SECURITY_HEADERS = {
    # No inline script anywhere: hostile text that slipped through escaping could not run.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


# ----------------------------------------------------------------------------- setup


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static_url"] = lambda name: f"{STATIC_PREFIX}/{name}"
    env.filters["ts"] = _fmt_ts
    env.filters["pct"] = _fmt_pct
    env.filters["num"] = lambda n: f"{int(n):,}"
    return env


@functools.cache
def templates() -> Jinja2Templates:
    return Jinja2Templates(env=_environment())


class LoginRequired(Exception):
    """Raised by :func:`require_session`; answered with a redirect to the login form."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


async def _login_redirect(request: Request, exc: Exception) -> Response:
    next_path = exc.next_path if isinstance(exc, LoginRequired) else "/dashboard"
    return _redirect("/login?" + urlencode({"next": next_path}))


_managers_lock = threading.Lock()


def mount_static(app: FastAPI) -> None:
    """Mount the packaged static assets (no CDN) and the dashboard's login redirect."""
    app.mount(STATIC_PREFIX, StaticFiles(directory=str(STATIC_DIR)), name="dashboard-static")
    app.add_exception_handler(LoginRequired, _login_redirect)
    ctx = getattr(app.state, "ctx", None)
    if isinstance(ctx, ApiContext):
        app.state.dashboard_sessions = SessionManager.for_config(ctx.config, cookie_name=SESSION_COOKIE)

        def renew_sessions(config: Config) -> None:  # a reload: the session settings may have changed
            app.state.dashboard_sessions = SessionManager.for_config(config, cookie_name=SESSION_COOKIE)

        ctx.on_apply.append(renew_sessions)


def sessions(request: Request, ctx: ApiContext = Depends(context)) -> SessionManager:
    """The app's :class:`SessionManager` (created on first use if the app did not)."""
    manager: SessionManager | None = getattr(request.app.state, "dashboard_sessions", None)
    if manager is None:
        with _managers_lock:
            manager = getattr(request.app.state, "dashboard_sessions", None)
            if manager is None:
                manager = SessionManager.for_config(ctx.config, cookie_name=SESSION_COOKIE)
                request.app.state.dashboard_sessions = manager
    return manager


def current_session(
    request: Request,
    ctx: ApiContext = Depends(context),
    manager: SessionManager = Depends(sessions),
) -> Session | None:
    return manager.verify(request.cookies.get(manager.cookie_name), ctx.config)


def require_session(request: Request, session: Session | None = Depends(current_session)) -> Session:
    if session is None:
        path = request.url.path
        if request.url.query:
            path += "?" + request.url.query
        raise LoginRequired(path if request.method == "GET" else "/dashboard")
    return session


# ----------------------------------------------------------------------------- helpers


def _redirect(location: str) -> RedirectResponse:
    response = RedirectResponse(location, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


def _render(
    request: Request,
    name: str,
    values: Mapping[str, Any],
    *,
    session: Session | None = None,
    status_code: int = 200,
) -> Response:
    page: dict[str, Any] = {"session": session, "path": request.url.path, **values}
    response = templates().TemplateResponse(request, name, page, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def _error_page(
    request: Request, status_code: int, title: str, message: str, session: Session | None = None
) -> Response:
    return _render(request, "error.html", {"title": title, "message": message}, session=session, status_code=status_code)


def _cross_site(request: Request, session: Session | None = None) -> Response | None:
    """A 403 page for a POST another site's page made the browser send; None when it is ours."""
    ctx: ApiContext = request.app.state.ctx
    if same_origin(request.headers, behind_proxy=ctx.config.api.behind_proxy):
        return None
    return _error_page(
        request, 403, "Forbidden",
        "This form was sent from another site; open the dashboard and try again.", session,
    )


def store_unavailable_page(request: Request) -> Response:
    """503 with Retry-After when the store cannot be reached (locked, PostgreSQL down)."""
    response = _error_page(
        request, 503, "Store unavailable",
        "The event store cannot be reached right now; retry in a moment.",
    )
    response.headers["Retry-After"] = "5"
    return response


def _not_found(request: Request, session: Session, what: str = "Not found") -> Response:
    return _error_page(request, 404, "Not found", what, session)


def safe_next(value: str | None) -> str:
    """A local path to return to after login; anything else (open redirect) → /dashboard."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
        or value.startswith("/login")
    ):
        return "/dashboard"
    return value


def _fmt_ts(ts: float | None) -> str:
    if ts is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.2f} %"


def _parse_day(text: str) -> date | None:
    if not _DATE_RE.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _day_start(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()


def _today() -> date:
    return datetime.now(timezone.utc).date()


@dataclass(frozen=True)
class Period:
    """A range of whole UTC days, both ends inclusive."""

    first: date
    last: date
    key: str  # "7", "30" or "custom"

    @property
    def start(self) -> float:
        return _day_start(self.first)

    @property
    def end(self) -> float:
        return _day_start(self.last + timedelta(days=1))

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range((self.last - self.first).days + 1)]


def parse_period(period: str, start: str, end: str, today: date | None = None) -> tuple[Period, list[str]]:
    """The period the overview shows, and what was wrong with the request (if anything)."""
    today = today or _today()
    errors: list[str] = []
    if period == "custom" or start or end:
        first = _parse_day(start) if start else today - timedelta(days=6)
        last = _parse_day(end) if end else today
        if first is None:
            errors.append(f"start date {start!r} is not a valid YYYY-MM-DD date")
        if last is None:
            errors.append(f"end date {end!r} is not a valid YYYY-MM-DD date")
        if first is not None and last is not None:
            if first > last:
                errors.append("the start date is after the end date")
            elif (last - first).days + 1 > MAX_RANGE_DAYS:
                errors.append(f"the period is longer than {MAX_RANGE_DAYS} days")
            else:
                return Period(first, last, "custom"), errors
        return Period(today - timedelta(days=6), today, "7"), errors
    days = 30 if period == "30" else 7
    return Period(today - timedelta(days=days - 1), today, str(days)), errors


def _scope(session: Session, domain: str) -> tuple[tuple[str, ...], list[str]]:
    """The domains a page covers: one of the session's, or all of them."""
    if not domain:
        return session.domains, []
    if domain in session.domains:
        return (domain,), []
    return (), [f"domain {domain!r} is not one of yours"]


# ----------------------------------------------------------------------------- chart

# Bottom to top; every event type lands in exactly one series.
SERIES = (
    ("hard", "Hard bounce"),
    ("soft", "Soft bounce"),
    ("delay", "Delayed"),
    ("complaint", "Complaint"),
    ("other", "Other (delivered, auto-reply, unknown)"),
)


def series_of(event_type: str, hard: bool) -> str:
    if event_type == "bounce":
        return "hard" if hard else "soft"
    if event_type in ("delay", "complaint"):
        return event_type
    return "other"


@dataclass(frozen=True)
class Segment:
    series: str
    label: str
    count: int
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    day: str
    label: str  # shown under the bar, "" for most days when there are many
    x: float
    width: float
    total: int
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    max_value: int
    ticks: tuple[tuple[int, float], ...]  # (value, y)
    bars: tuple[Bar, ...]
    series: tuple[tuple[str, str], ...] = field(default=SERIES)

    @property
    def baseline(self) -> float:
        return self.top + self.plot_height


def _nice_ceiling(value: int) -> int:
    """The smallest 1/2/5 × 10^k at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1
    exp = int(10 ** int(math.floor(math.log10(value))))
    for step in (1, 2, 5, 10):
        if step * exp >= value:
            return step * exp
    return 10 * exp  # pragma: no cover


def _tick_divisions(top_value: int) -> int:
    """Grid lines for a 1/2/5 × 10^k axis top: steps of 1/5, 1/4 (for 2×) or whole units."""
    if top_value <= 2:
        return top_value
    return 4 if str(top_value).startswith("2") else 5


def build_chart(days: Sequence[date], daily: Sequence[DailyCount]) -> Chart:
    """Stacked bars of events per day and series, laid out for an inline SVG."""
    width, height, left, top, right, bottom = 1100, 260, 44, 12, 8, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    per_day: dict[str, dict[str, int]] = {d.isoformat(): {} for d in days}
    for row in daily:
        bucket = per_day.get(row.day)
        if bucket is not None:
            key = series_of(row.type, row.hard)
            bucket[key] = bucket.get(key, 0) + row.count
    max_total = max((sum(b.values()) for b in per_day.values()), default=0)
    top_value = _nice_ceiling(max_total)
    scale = plot_h / top_value
    n = max(1, len(days))
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.72)
    label_every = max(1, math.ceil(n / 10))
    labels = dict(SERIES)
    bars = []
    for i, day in enumerate(days):
        key = day.isoformat()
        counts = per_day[key]
        y = float(top + plot_h)
        segments = []
        for series, _ in SERIES:
            c = counts.get(series, 0)
            if not c:
                continue
            h = c * scale
            y -= h
            segments.append(Segment(series, labels[series], c, round(y, 2), round(h, 2)))
        bars.append(
            Bar(
                day=key,
                label=day.strftime("%m-%d") if i % label_every == 0 else "",
                x=round(left + i * slot + (slot - bar_w) / 2, 2),
                width=round(bar_w, 2),
                total=sum(counts.values()),
                segments=tuple(segments),
            )
        )
    step = top_value // _tick_divisions(top_value)
    ticks = tuple((v, round(top + plot_h - v * scale, 2)) for v in range(0, top_value + 1, step))
    return Chart(width, height, left, top, plot_w, plot_h, top_value, ticks, tuple(bars))


# ----------------------------------------------------------------------------- login


@router.get("/login")
def login_form(request: Request, next: str = "", session: Session | None = Depends(current_session)) -> Response:
    if session is not None:
        return _redirect(safe_next(next))
    return _render(request, "login.html", {"next": safe_next(next), "error": None})


@router.post("/login")
def login_submit(
    request: Request,
    token: str = Form(""),
    next: str = Form(""),
    ctx: ApiContext = Depends(context),
    manager: SessionManager = Depends(sessions),
) -> Response:
    refused = _cross_site(request)
    if refused is not None:  # login CSRF: signing the victim into the attacker's token
        return refused
    token = token.strip()
    domains = domains_for_token(ctx.config, token)
    if not domains:
        return _render(
            request,
            "login.html",
            {"next": safe_next(next), "error": "That token is not valid."},
            status_code=401,
        )
    value, _ = manager.issue(domains, hash_api_token(token))
    response = _redirect(safe_next(next))
    response.set_cookie(manager.cookie_name, value, **manager.cookie_kwargs(request.url.scheme == "https"))
    return response


@router.post("/logout")
def logout(
    request: Request,
    csrf: str = Form(""),
    session: Session | None = Depends(current_session),
    manager: SessionManager = Depends(sessions),
) -> Response:
    refused = _cross_site(request, session)
    if refused is not None:
        return refused
    if session is not None and not csrf_ok(session, csrf):
        return _error_page(
            request, 403, "Forbidden",
            "The form was stale; reload the page and try again.", session,
        )
    response = _redirect("/login")
    kwargs = manager.cookie_kwargs(request.url.scheme == "https")
    response.delete_cookie(
        manager.cookie_name, path="/", secure=kwargs["secure"], httponly=True, samesite="lax"
    )
    return response


# ----------------------------------------------------------------------------- overview


@router.get("/")
def root() -> Response:
    return _redirect("/dashboard")


@router.get("/dashboard")
def overview(
    request: Request,
    domain: str = "",
    period: str = "7",
    start: str = "",
    end: str = "",
    session: Session = Depends(require_session),
    ctx: ApiContext = Depends(context),
) -> Response:
    span, errors = parse_period(period, start, end)
    scope, scope_errors = _scope(session, domain)
    errors += scope_errors
    dash = ctx.store()
    daily = dash.dashboard_daily(scope, span.start, span.end)
    messages, recipients = dash.dashboard_sent(scope, span.start, span.end)
    totals = {key: 0 for key, _ in SERIES}
    for row in daily:
        totals[series_of(row.type, row.hard)] += row.count
    bounced = totals["hard"] + totals["soft"]
    # Rates per recipient: events are per recipient, a message may have several.
    rates = {
        "bounce": bounced / recipients if recipients else None,
        "hard": totals["hard"] / recipients if recipients else None,
        "complaint": totals["complaint"] / recipients if recipients else None,
    }
    filters = {"domain": domain if not scope_errors else ""}
    span_filter = {"start": span.first.isoformat(), "end": span.last.isoformat()}
    return _render(
        request,
        "overview.html",
        {
            "errors": errors,
            "domain": domain,
            "period": span,
            "messages": messages,
            "recipients": recipients,
            "totals": totals,
            "bounced": bounced,
            "rates": rates,
            "chart": build_chart(span.days, daily),
            "top_reasons": dash.dashboard_top_reasons(scope, span.start, span.end, TOP_N),
            "top_domains": dash.dashboard_top_recipient_domains(scope, span.start, span.end, TOP_N),
            "validation": dashboard_counts(request.app, tuple(scope)),  # issue 19
            "events_link": lambda **kw: "/events?" + urlencode({**filters, **span_filter, **kw}),
        },
        session=session,
        status_code=400 if errors else 200,
    )


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class EventRow:
    pk: int
    event: BounceEvent
    preview: str


@router.get("/events")
def events_page(
    request: Request,
    q: str = "",
    type: str = "",
    severity: str = "",
    reason: str = "",
    domain: str = "",
    start: str = "",
    end: str = "",
    before: int | None = None,
    after: int | None = None,
    limit: int = PAGE_SIZE,
    session: Session = Depends(require_session),
    ctx: ApiContext = Depends(context),
) -> Response:
    errors: list[str] = []
    scope, scope_errors = _scope(session, domain)
    errors += scope_errors
    q, reason = q.strip()[:200], reason.strip()[:100]
    if type and type not in EVENT_TYPES:
        errors.append(f"unknown type {type!r}")
    if severity not in ("", "hard", "soft"):
        errors.append("severity must be hard or soft")
    first = _parse_day(start) if start else None
    last = _parse_day(end) if end else None
    if start and first is None:
        errors.append(f"start date {start!r} is not a valid YYYY-MM-DD date")
    if end and last is None:
        errors.append(f"end date {end!r} is not a valid YYYY-MM-DD date")
    limit = min(max(1, limit), MAX_PAGE_SIZE)
    for name, value in (("before", before), ("after", after)):
        if value is not None and abs(value) > MAX_ROW_ID:  # OverflowError in the driver otherwise
            errors.append(f"{name} is not an event of this list")
    rows: list[tuple[int, BounceEvent]] = []
    newer: str | None = None
    older: str | None = None
    filters = {
        k: v
        for k, v in (
            ("q", q),
            ("type", type),
            ("severity", severity),
            ("reason", reason),
            ("domain", domain),
            ("start", start),
            ("end", end),
        )
        if v
    }
    if limit != PAGE_SIZE:
        filters["limit"] = str(limit)
    if not errors:
        query = EventQuery(
            domains=scope,
            start=_day_start(first) if first else None,
            end=_day_start(last + timedelta(days=1)) if last else None,
            type=type or None,
            hard=None if not severity else severity == "hard",
            reason=reason or None,
            recipient_contains=q or None,
        )
        dash = ctx.store()
        if after is not None and before is None:
            rows = dash.dashboard_events(query, after_pk=after, limit=limit + 1)
            more_newer = len(rows) > limit
            rows = rows[1:] if more_newer else rows
            if more_newer:
                newer = "?" + urlencode({**filters, "after": rows[0][0]})
            if rows:
                older = "?" + urlencode({**filters, "before": rows[-1][0]})
        else:
            rows = dash.dashboard_events(query, before_pk=before, limit=limit + 1)
            more_older = len(rows) > limit
            rows = rows[:limit]
            if more_older:
                older = "?" + urlencode({**filters, "before": rows[-1][0]})
            if before is not None and rows:
                newer = "?" + urlencode({**filters, "after": rows[0][0]})
    view = [EventRow(pk, e, _preview(e.diagnostic)) for pk, e in rows]
    return _render(
        request,
        "events.html",
        {
            "errors": errors,
            "rows": view,
            "f": {
                "q": q,
                "type": type,
                "severity": severity,
                "reason": reason,
                "domain": domain,
                "start": start,
                "end": end,
            },
            "types": EVENT_TYPES,
            "newer": newer,
            "older": older,
            "first_page": "?" + urlencode(filters) if (before is not None or after is not None) else None,
        },
        session=session,
        status_code=400 if errors else 200,
    )


def _preview(text: str | None) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= DIAGNOSTIC_PREVIEW else flat[: DIAGNOSTIC_PREVIEW - 1] + "…"


@router.get("/events/{event_id}")
def event_page(
    request: Request,
    event_id: str,
    session: Session = Depends(require_session),
    ctx: ApiContext = Depends(context),
) -> Response:
    store = ctx.store()
    event = store.event(event_id) if len(event_id) <= 64 else None
    if event is None or event.domain not in session.domains:
        # Another domain's event answers exactly like a missing one.
        return _not_found(request, session, "No such event.")
    raw = store.raw_report(event_id)
    raw_text: str | None = None
    raw_size = 0
    truncated = False
    if raw is not None:
        raw_size = len(raw)
        truncated = raw_size > RAW_REPORT_CAP
        raw_text = raw[:RAW_REPORT_CAP].decode("utf-8", errors="replace")
    fields = event_to_json(event)
    return _render(
        request,
        "event.html",
        {
            "event": event,
            "fields": fields,
            "raw_text": raw_text,
            "raw_size": raw_size,
            "raw_cap": RAW_REPORT_CAP,
            "truncated": truncated,
            "iso": iso_utc,
        },
        session=session,
    )


# ----------------------------------------------------------------------------- outbox

OUTBOX_SECTIONS = (
    ("dead", "Dead-lettered", "Gave up after the last attempt; replay makes the job pending again."),
    ("failed", "Failing", "Pending, failed at least once; the worker retries with back-off."),
    ("pending", "Pending", "Waiting for their first delivery attempt."),
)


@router.get("/outbox")
def outbox_page(
    request: Request,
    replayed: int | None = None,
    session: Session = Depends(require_session),
    ctx: ApiContext = Depends(context),
) -> Response:
    dash = ctx.store()
    sections: list[tuple[str, str, str, list[JobView]]] = [
        (kind, title, note, dash.dashboard_jobs(session.domains, kind, OUTBOX_LIMIT))
        for kind, title, note in OUTBOX_SECTIONS
    ]
    return _render(
        request,
        "outbox.html",
        {
            "sections": sections,
            "counts": dash.dashboard_job_counts(session.domains),
            "replayed": replayed,
            "limit": OUTBOX_LIMIT,
            "now": time.time(),
        },
        session=session,
    )


@router.post("/outbox/{job_id}/replay")
def replay(
    request: Request,
    job_id: int,
    csrf: str = Form(""),
    session: Session = Depends(require_session),
    ctx: ApiContext = Depends(context),
) -> Response:
    refused = _cross_site(request, session)
    if refused is not None:
        return refused
    if not csrf_ok(session, csrf):
        return _error_page(
            request, 403, "Forbidden",
            "The form was stale or forged (CSRF check failed).", session,
        )
    store = ctx.store()
    view = store.dashboard_job(job_id) if abs(job_id) <= MAX_ROW_ID else None
    if view is None or view.domain not in session.domains:
        return _not_found(request, session, "No such outbox job.")
    if view.job.state != "dead":
        return _error_page(
            request, 409, "Not dead-lettered",
            f"Job {job_id} is {view.job.state}; only dead jobs are replayed.", session,
        )
    store.replay_job(job_id, time.time())
    return _redirect(f"/outbox?replayed={job_id}")
