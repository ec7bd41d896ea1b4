"""Pure parts of the download API: the date range, the cursor, content negotiation.

No FastAPI here: every function takes strings and returns values or raises
:class:`ParamError` naming the parameter, which the router turns into a 400.

Dates (path parameters ``start_date``/``end_date``), always UTC:

- ``YYYY-MM-DD``: a whole day. The start date starts at 00:00:00Z, the end
  date *includes* its whole day (the range ends before the next midnight).
- A full ISO 8601 / RFC 3339 timestamp with ``Z`` or an offset:
  ``2026-01-31T12:00:00Z``, ``2026-01-31T14:00:00.5+02:00``. An end timestamp
  is inclusive. A timestamp without ``Z`` or an offset is refused (it would
  be ambiguous), so are impossible dates (``2026-02-30``), a start after the
  end and a range longer than the configured maximum (``api.max_range_days``).

The cursor is opaque to clients: ``base64url(version | last id | check)``
where ``check`` is a truncated SHA-256 over the id and the query it was issued
for (scope, range, filters). It is not a secret and need not be: the token's
scope is applied on every request whatever the cursor says. The check catches
garbage, truncation and a cursor reused with a different query (400).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ..store.base import MAX_ROW_ID
from ..store.views import DownloadQuery

DAY = 86400.0


class ParamError(Exception):
    """A request parameter is wrong: 400 with ``parameter`` and a readable ``message``."""

    def __init__(self, parameter: str, message: str, status: int = 400) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message
        self.status = status


# ----------------------------------------------------------------- dates

_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
# RFC 3339 §5.6 (a profile of ISO 8601): "T" or a space, seconds optional,
# any number of fraction digits, "Z" or +hh:mm (also +hhmm, ISO 8601 basic).
_TS_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?"
)


@dataclass(frozen=True)
class Bound:
    """One end of the range: ``at`` (epoch seconds) and whether it named a whole day."""

    at: float
    whole_day: bool


def parse_bound(parameter: str, text: str) -> Bound:
    """``YYYY-MM-DD`` (a day, at its midnight UTC) or a timestamp with Z/offset."""
    shown = text if len(text) <= 40 else text[:40] + "..."
    m = _DATE_RE.fullmatch(text)
    if m:
        try:
            day = datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=timezone.utc)
        except ValueError as exc:
            raise ParamError(parameter, f"{shown!r} is not a valid calendar date ({exc})") from None
        return Bound(day.timestamp(), True)
    m = _TS_RE.fullmatch(text)
    if not m:
        raise ParamError(
            parameter,
            f"{shown!r} is neither a date (YYYY-MM-DD) nor an ISO 8601 timestamp "
            "(e.g. 2026-01-31T12:00:00Z or 2026-01-31T14:00:00+02:00)",
        )
    year, month, day_, hour, minute = (int(m[i]) for i in range(1, 6))
    second = int(m[6] or 0)
    fraction = m[7] or ""
    if m[8] is None and m[9] is None:
        raise ParamError(
            parameter, f"{shown!r} has no time zone: add Z (UTC) or an offset such as +02:00"
        )
    try:
        if m[9] is not None:
            oh, om = int(m[10]), int(m[11])
            if oh > 23 or om > 59:
                raise ValueError("offset out of range")
            offset = timedelta(hours=oh, minutes=om) * (-1 if m[9] == "-" else 1)
        else:
            offset = timedelta(0)
        at = datetime(year, month, day_, hour, minute, second, tzinfo=timezone(offset))
    except ValueError as exc:
        raise ParamError(parameter, f"{shown!r} is not a valid date and time ({exc})") from None
    # Whole seconds from datetime (exact), the fraction added as a float.
    whole = (at - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(seconds=1)
    return Bound(whole + (int(fraction) / 10 ** len(fraction) if fraction else 0.0), False)


def parse_range(start_text: str, end_text: str, max_days: int) -> tuple[float, float]:
    """``(start, end)`` with ``start <= received_at < end``; ParamError naming the culprit."""
    start = parse_bound("start_date", start_text)
    end = parse_bound("end_date", end_text)
    if start.at > end.at:
        raise ParamError("start_date", f"start_date {start_text!r} is after end_date {end_text!r}")
    # A day includes all of itself; a timestamp end is inclusive.
    end_excl = end.at + DAY if end.whole_day else math.nextafter(end.at, math.inf)
    if end_excl - start.at > max_days * DAY:
        span = (end_excl - start.at) / DAY
        raise ParamError(
            "end_date",
            f"the range covers {span:.6g} days, more than the maximum of {max_days} days "
            "(api.max_range_days); split the download",
        )
    return start.at, end_excl


# ---------------------------------------------------------------- cursor

_CURSOR = struct.Struct(">BQ")
_CURSOR_VERSION = 1
_CHECK_LEN = 8
_CURSOR_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _fingerprint(query: DownloadQuery) -> bytes:
    parts = (
        ",".join(sorted(query.domains)),
        repr(query.start),
        repr(query.end),
        ",".join(sorted(query.types)),
        repr(query.hard),
        query.reason or "",
        query.recipient_domain or "",
    )
    return "\x1f".join(parts).encode("utf-8", "surrogatepass")


def _check(head: bytes, query: DownloadQuery) -> bytes:
    return hashlib.sha256(b"bouncetrack-cursor\x00" + head + _fingerprint(query)).digest()[:_CHECK_LEN]


def encode_cursor(last_id: int, query: DownloadQuery) -> str:
    head = _CURSOR.pack(_CURSOR_VERSION, last_id)
    return base64.urlsafe_b64encode(head + _check(head, query)).rstrip(b"=").decode("ascii")


def decode_cursor(text: str, query: DownloadQuery) -> int:
    """The last id a cursor names; ParamError("cursor") on garbage or another query's cursor."""
    if not _CURSOR_RE.fullmatch(text):
        raise ParamError("cursor", "not a cursor issued by this API (pass next_cursor unchanged)")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _CURSOR.size + _CHECK_LEN or raw[0] != _CURSOR_VERSION:
        raise ParamError("cursor", "not a cursor issued by this API (pass next_cursor unchanged)")
    head, check = raw[: _CURSOR.size], raw[_CURSOR.size :]
    if check != _check(head, query):
        raise ParamError(
            "cursor",
            "the cursor does not belong to this query (same dates and filters as the first page) "
            "or was altered",
        )
    last_id = int(_CURSOR.unpack(head)[1])
    if last_id > MAX_ROW_ID:  # the check is not a secret: a forged id must not reach the store
        raise ParamError("cursor", "not a cursor issued by this API (pass next_cursor unchanged)")
    return last_id


# ----------------------------------------------------------- negotiation

FORMATS = ("json", "csv", "ndjson")
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8; header=present",
    "ndjson": "application/x-ndjson",
}
_ACCEPTED = {
    "application/json": "json",
    "application/*": "json",
    "*/*": "json",
    "text/csv": "csv",
    "text/*": "csv",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/jsonlines": "ndjson",
}


def negotiate(accept: str | None) -> str:
    """The format the Accept header prefers (highest q, then first listed); json by default."""
    best: tuple[float, int, str] | None = None
    for position, item in enumerate((accept or "").split(",")):
        media, *params = (p.strip() for p in item.split(";"))
        fmt = _ACCEPTED.get(media.lower())
        if fmt is None:
            continue
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if not q > 0:  # q=0: "not acceptable"; NaN too
            continue
        key = (-q, position, fmt)
        if best is None or key < best:
            best = key
    return best[2] if best is not None else "json"


__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "Bound",
    "ParamError",
    "decode_cursor",
    "encode_cursor",
    "negotiate",
    "parse_bound",
    "parse_range",
]
