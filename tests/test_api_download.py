"""The download API over real HTTP (FastAPI's TestClient, uvicorn on loopback) on a real SQLite file.

GET /v1/bounces/{start_date}/{end_date}: auth and scoping, date validation,
JSON/CSV/NDJSON, CSV injection, filters, keyset pages that stay stable while
bounces arrive, and a large export that is streamed rather than built in memory.
"""

from __future__ import annotations

import csv
import io
import json
import socket
import sqlite3
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, cast

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bouncetrack.api.app import create_app
from bouncetrack.api.download import BounceEventOut
from bouncetrack.api.pagination import ParamError, decode_cursor, encode_cursor, negotiate, parse_range
from bouncetrack.core.config import Config
from bouncetrack.core.config_loader import load_config_text
from bouncetrack.core.events import event_to_json
from bouncetrack.store import Store
from bouncetrack.store.base import BounceEvent
from bouncetrack.store.views import DownloadQuery
from bouncetrack.store.sqlite import SQLiteStore
from bouncetrack.store.sqlite_download import SCHEMA_KEYS
from bouncetrack.core.tokens import hash_api_token

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DAY0 = 1767225600.0  # 2026-01-01T00:00:00Z
URL = "/v1/bounces/{}/{}"
JAN1 = URL.format("2026-01-01", "2026-01-01")
TOKENS = {"a": "tok-a-secret", "b": "tok-b-secret", "ab": "tok-ab-secret"}


def write_config(tmp: Path, max_range_days: int | None = None) -> Config:
    api = f"api: {{max_range_days: {max_range_days}}}\n" if max_range_days else ""
    text = textwrap.dedent(
        f"""\
        bounce_domain: bounce.test
        store: sqlite:///{tmp}/bt.db
        secret_file: {tmp}/verp.key
        domains:
          a.test: {{api_tokens: ["{hash_api_token(TOKENS['a'])}", "{hash_api_token(TOKENS['ab'])}"]}}
          b.test: {{api_tokens: ["{hash_api_token(TOKENS['b'])}", "{hash_api_token(TOKENS['ab'])}"]}}
          c.test: {{tracking: true}}
        """
    ) + api
    (tmp / "bouncetrack.yaml").write_text(text)
    return load_config_text(text, tmp / "bouncetrack.yaml")


def event(i: int, *, domain: str | None = "a.test", at: float | None = None, **over: Any) -> BounceEvent:
    fields: dict[str, Any] = dict(
        event_id=uuid.uuid4().hex,
        type="bounce",
        hard=True,
        reason="userunknown",
        status="5.1.1",
        reply_code="550",
        diagnostic=f"smtp; 550 5.1.1 <u{i}@remote.test>: Recipient address rejected",
        recipient=f"u{i}@remote.test",
        reported_recipient=f"u{i}@remote.test",
        action="failed",
        remote_mta="dns; mx.remote.test",
        domain=domain,
        original_sender=f"news@{domain}",
        original_message_id=f"<{i}@{domain}>",
        token="aebagbafaydqqcikbmgq2dq4",
        token_status="valid",
        flagged=False,
        message_pk=None,
        received_at=DAY0 + 60 * i if at is None else at,
        dedupe_key=uuid.uuid4().hex,
        sent_at=DAY0 - 5,
    )
    fields.update(over)
    return BounceEvent(**fields)


def add(store: SQLiteStore, *events: BounceEvent) -> list[BounceEvent]:
    store.store_report(list(events), b"raw", [], uuid.uuid4().hex)
    return list(events)


def bulk(path: Path, n: int, domain: str = "a.test", start: float = DAY0) -> None:
    """n events straight into the table (one transaction), like the benchmark."""
    conn = sqlite3.connect(path)
    cols = ("event_id, type, hard, reason, status, reply_code, diagnostic, recipient, reported_recipient, "
            "action, remote_mta, domain, original_sender, original_message_id, token, token_status, flagged, "
            "received_at, dedupe_key, sent_at")
    with conn:
        conn.executemany(
            f"INSERT INTO events ({cols}) VALUES ({', '.join('?' * 20)})",
            (
                (uuid.uuid4().hex, "bounce", i % 3 == 0, "userunknown", "5.1.1", "550",
                 f"smtp; 550 5.1.1 <bulk{i}@remote.test>: Recipient address rejected: User unknown",
                 f"bulk{i}@remote.test", f"bulk{i}@remote.test", "failed", "dns; mx.remote.test", domain,
                 f"news@{domain}", f"<bulk{i}@{domain}>", "aebagbafaydqqcikbmgq2dq4", "valid", 0,
                 start + i * 0.5, f"bulk{i}", start - 5)
                for i in range(n)
            ),
        )
    conn.close()


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    return write_config(tmp_path)


@pytest.fixture()
def store(config: Config) -> Iterator[SQLiteStore]:
    s = SQLiteStore.from_url(config.store_url)
    yield s
    s.close()


@pytest.fixture()
def client(config: Config, store: SQLiteStore) -> Iterator[TestClient]:
    with TestClient(create_app(config)) as c:
        yield c


def get(client: TestClient, url: str, token: str | None = "a", **params: Any) -> httpx.Response:
    if token is not None:
        params["access_token"] = TOKENS.get(token, token)
    # TestClient is typed against httpx2, which is not installed: its answer is Any to mypy.
    response: httpx.Response = client.get(url, params=params)
    return response


def expected(store: SQLiteStore, events: list[BounceEvent]) -> list[dict[str, Any]]:
    out = []
    for e in events:
        stored = store.event(e.event_id)
        assert stored is not None
        out.append(event_to_json(stored))
    return out


# ---------------------------------------------------------------------- auth


def test_missing_and_wrong_tokens_get_the_same_401_and_never_touch_the_store(config: Config) -> None:
    opened: list[int] = []

    def factory(c: Config) -> Store:
        opened.append(1)
        return SQLiteStore.from_url(c.store_url)

    with TestClient(create_app(config, store_factory=factory)) as c:
        answers = [
            c.get(JAN1),
            c.get(JAN1, params={"access_token": "nope"}),
            c.get(JAN1, params={"access_token": ""}),
            c.get(JAN1, headers={"Authorization": "Bearer nope"}),
            c.get(JAN1, headers={"Authorization": "Basic " + TOKENS["a"]}),
            # bad parameters do not change the answer: auth comes first
            c.get(URL.format("2026-02-30", "x"), params={"limit": "0", "cursor": "!!"}),
            c.get(JAN1, params={"access_token": TOKENS["a"] + "x", "format": "xml"}),
        ]
    for r in answers:
        assert r.status_code == 401
        assert r.json() == {"detail": "missing or invalid access token"}
        assert r.headers["www-authenticate"] == "Bearer"
    assert {r.content for r in answers} == {answers[0].content}
    assert opened == []  # no store, no query before auth


def test_bearer_and_query_token_and_domain_scoping(client: TestClient, store: SQLiteStore) -> None:
    a = add(store, event(1, domain="a.test"), event(2, domain="a.test"))
    b = add(store, event(3, domain="b.test"))
    add(store, event(4, domain="c.test"), event(5, domain=None))  # no token covers these

    def ids(r: httpx.Response) -> list[str]:
        return [e["event_id"] for e in r.json()["events"]]

    assert ids(get(client, JAN1, "a")) == [e.event_id for e in a]
    assert ids(get(client, JAN1, "b")) == [e.event_id for e in b]
    assert ids(get(client, JAN1, "ab")) == [e.event_id for e in a + b]
    r = client.get(JAN1, headers={"Authorization": f"Bearer {TOKENS['b']}"})
    assert r.status_code == 200 and ids(r) == [e.event_id for e in b]
    # domain= narrows the scope; outside it is 403, not an empty list
    assert ids(get(client, JAN1, "ab", domain="B.test.")) == [e.event_id for e in b]
    r = get(client, JAN1, "a", domain="b.test")
    assert r.status_code == 403
    assert r.json()["parameter"] == "domain"
    assert get(client, JAN1, "a", domain="c.test").status_code == 403


# --------------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("start", "end", "parameter", "words"),
    [
        ("2026-02-30", "2026-03-01", "start_date", "not a valid calendar date"),
        ("2026-01-01", "2026-13-01", "end_date", "not a valid calendar date"),
        ("2025-02-29", "2025-03-01", "start_date", "not a valid calendar date"),
        ("yesterday", "2026-01-01", "start_date", "neither a date"),
        ("2026-1-1", "2026-01-02", "start_date", "neither a date"),
        ("2026-01-01", "2026-01-02T10:00:00", "end_date", "no time zone"),
        ("2026-01-01T25:00:00Z", "2026-01-02", "start_date", "not a valid date and time"),
        ("2026-01-01T10:00:00+24:00", "2026-01-02", "start_date", "not a valid date and time"),
        ("2026-01-02", "2026-01-01", "start_date", "after end_date"),
        ("2026-01-01T12:00:00Z", "2026-01-01T11:59:59Z", "start_date", "after end_date"),
        ("2024-01-01", "2025-01-01", "end_date", "more than the maximum of 366 days"),
    ],
)
def test_date_validation_names_the_parameter(
    client: TestClient, start: str, end: str, parameter: str, words: str
) -> None:
    r = get(client, URL.format(start, end))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["parameter"] == parameter
    assert words in body["detail"]


def test_date_semantics_utc_inclusive(client: TestClient, store: SQLiteStore) -> None:
    at = {
        "before": DAY0 - 0.001,
        "midnight": DAY0,
        "noon": DAY0 + 43200,
        "last_ms": DAY0 + 86400 - 0.001,
        "next_midnight": DAY0 + 86400,
    }
    events = {k: add(store, event(i, at=t))[0].event_id for i, (k, t) in enumerate(at.items())}

    def names(start: str, end: str) -> set[str]:
        r = get(client, URL.format(start, end))
        assert r.status_code == 200, r.text
        got = {e["event_id"] for e in r.json()["events"]}
        return {k for k, v in events.items() if v in got}

    assert names("2026-01-01", "2026-01-01") == {"midnight", "noon", "last_ms"}
    assert names("2025-12-31", "2026-01-01") == {"before", "midnight", "noon", "last_ms"}
    # timestamps: end inclusive, offsets honoured
    assert names("2026-01-01T00:00:00Z", "2026-01-01T12:00:00Z") == {"midnight", "noon"}
    assert names("2026-01-01T13:00:00+01:00", "2026-01-01T23:59:59.999Z") == {"noon", "last_ms"}
    assert names("2026-01-01T12:00:00.000001Z", "2026-01-02") == {"last_ms", "next_midnight"}
    assert names("2026-01-01t02:00+0200", "2026-01-01 00:00:00z") == {"midnight"}


def test_range_maximum_comes_from_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, max_range_days=7)
    assert config.api.max_range_days == 7
    SQLiteStore.from_url(config.store_url).close()
    with TestClient(create_app(config)) as c:
        assert get(c, URL.format("2026-01-01", "2026-01-07")).status_code == 200
        r = get(c, URL.format("2026-01-01", "2026-01-08"))
        assert r.status_code == 400 and r.json()["parameter"] == "end_date"


def test_parse_range_unit() -> None:
    assert parse_range("2026-01-01", "2026-01-01", 366) == (DAY0, DAY0 + 86400)
    start, end = parse_range("2024-01-01", "2024-12-31", 366)  # a leap year is 366 days
    assert end - start == 366 * 86400
    with pytest.raises(ParamError) as info:
        parse_range("2026-01-01", "2026-02-30", 366)
    assert info.value.parameter == "end_date"


# ---------------------------------------------------------- formats and schema


def test_json_page_is_the_webhook_schema(client: TestClient, store: SQLiteStore) -> None:
    events = add(
        store,
        event(1),
        event(2, type="complaint", hard=False, feedback_type="abuse", sent_at=None),
        event(3, type="something-new", received_at=DAY0 + 1.0625),  # unknown type; half-ms rounding
        event(4, diagnostic="ünïcode ✓ \"quoted\"\n\ttabbed \\ back"),
    )
    r = get(client, JAN1)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert list(body) == ["events", "next_cursor", "count"]
    assert body["count"] == 4 and body["next_cursor"] is None
    assert body["events"] == expected(store, events)
    assert all(list(e) == list(SCHEMA_KEYS) for e in body["events"])
    assert body["events"][2]["type"] == "unknown"
    # the OpenAPI model documents exactly the schema's keys
    assert tuple(BounceEventOut.model_fields) == SCHEMA_KEYS


def test_ndjson_by_accept_and_by_format(client: TestClient, store: SQLiteStore) -> None:
    events = add(store, *(event(i) for i in range(5)))
    for kwargs in ({"headers": {"Accept": "application/x-ndjson"}}, {"params": {"format": "ndjson"}}):
        params = {"access_token": TOKENS["a"], **kwargs.get("params", {})}
        r = client.get(JAN1, params=params, headers=kwargs.get("headers"))
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-ndjson"
        assert "attachment" in r.headers["content-disposition"]
        lines = r.text.split("\n")
        assert lines[-1] == ""
        assert [json.loads(line) for line in lines[:-1]] == expected(store, events)


def csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def test_csv_header_quoting_and_formula_injection(client: TestClient, store: SQLiteStore) -> None:
    nasty = ["=1+2", "+SUM(A1)", "-2+3", "@cmd", "\tTAB", "\rCR", 'a "quoted", field', "line\nbreak", "plain"]
    events = add(store, *(event(i, diagnostic=d, reason=d) for i, d in enumerate(nasty)))
    r = client.get(JAN1, params={"access_token": TOKENS["a"]}, headers={"Accept": "text/csv"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/csv; charset=utf-8; header=present"
    assert r.content.endswith(b"\r\n")
    rows = list(csv.reader(io.StringIO(r.text, newline="")))
    assert rows[0] == list(SCHEMA_KEYS)
    assert len(rows) == len(events) + 1
    want = expected(store, events)
    for row, ev, raw in zip(rows[1:], want, nasty):
        got = dict(zip(rows[0], row))
        neutral = "'" + raw if raw[0] in "=+-@\t\r" else raw
        assert got["diagnostic"] == neutral and got["reason"] == neutral
        for key in SCHEMA_KEYS:
            if key not in ("diagnostic", "reason"):
                assert got[key] == csv_value(ev[key]), key
    # ?format= wins over Accept
    r = client.get(JAN1, params={"access_token": TOKENS["a"], "format": "csv"}, headers={"Accept": "application/json"})
    assert r.headers["content-type"].startswith("text/csv")


def test_accept_negotiation_unit() -> None:
    assert negotiate(None) == "json"
    assert negotiate("*/*") == "json"
    assert negotiate("text/csv") == "csv"
    assert negotiate("application/json;q=0.5, text/csv") == "csv"
    assert negotiate("text/csv;q=0, application/x-ndjson") == "ndjson"
    assert negotiate("image/png") == "json"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(max_size=40),
    opt=st.none() | st.text(max_size=20),
    ts=st.floats(min_value=0, max_value=4102444800, allow_nan=False) | st.integers(0, 4102444800).map(lambda i: i + 0.0625 * (i % 16)),
    sent=st.none() | st.floats(min_value=0, max_value=4102444800),
    hard=st.booleans(),
    etype=st.sampled_from(["bounce", "complaint", "delay", "delivered", "auto_reply", "unknown", "other", ""]),
)
def test_rendering_in_sql_equals_event_to_json(
    tmp_path: Path, text: str, opt: str | None, ts: float, sent: float | None, hard: bool, etype: str
) -> None:
    """Property: what SQLite renders (json and csv) is event_to_json of the stored event."""
    s = SQLiteStore(":memory:")
    e = event(0, at=ts, sent_at=sent, hard=hard, type=etype, diagnostic=text, reason=text or "r",
              recipient=opt, remote_mta=text, flagged=not hard)
    add(s, e)
    want = event_to_json(s.event(e.event_id))  # type: ignore[arg-type]
    q = DownloadQuery(domains=("a.test",), start=-1e12, end=1e12)
    [(_, rendered)] = s.rendered_page(q, "json")
    assert json.loads(rendered) == want
    [(_, record)] = s.rendered_page(q, "csv")
    [row] = list(csv.reader(io.StringIO(record, newline="")))
    for key, value in zip(SCHEMA_KEYS, row):
        plain = csv_value(want[key])
        if plain[:1] in ("=", "+", "-", "@", "\t", "\r") and key not in ("type", "severity", "hard", "flagged"):
            plain = "'" + plain
        assert value == plain, key
    s.close()


# ------------------------------------------------------------------- filters


def test_filters(client: TestClient, store: SQLiteStore) -> None:
    add(
        store,
        event(1, type="bounce", hard=True, reason="userunknown", recipient="x@Remote.TEST"),
        event(2, type="bounce", hard=False, reason="mailboxfull", recipient="y@remote.test"),
        event(3, type="delay", hard=False, reason="expired", recipient="z@sub.remote.test"),
        event(4, type="complaint", hard=False, reason="feedback", recipient="w@other.test"),
        event(5, type="weird", hard=False, reason="undefined", recipient=None),
    )

    def recips(**params: Any) -> list[str | None]:
        r = get(client, JAN1, **params)
        assert r.status_code == 200, r.text
        return [e["recipient"] for e in r.json()["events"]]

    assert recips(type="bounce") == ["x@Remote.TEST", "y@remote.test"]
    assert recips(type=["delay", "complaint"]) == ["z@sub.remote.test", "w@other.test"]
    assert recips(type="unknown") == [None]
    assert recips(severity="hard") == ["x@Remote.TEST"]
    assert recips(severity="soft", type="bounce") == ["y@remote.test"]
    assert recips(reason="expired") == ["z@sub.remote.test"]
    assert recips(recipient_domain="REMOTE.test") == ["x@Remote.TEST", "y@remote.test"]
    assert recips(recipient_domain="sub.remote.test") == ["z@sub.remote.test"]
    for params, parameter in (
        ({"recipient_domain": "%"}, "recipient_domain"),
        ({"recipient_domain": "a b"}, "recipient_domain"),
        ({"type": "nonsense"}, "type"),
        ({"severity": "medium"}, "severity"),
        ({"limit": 10001}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"format": "xml"}, "format"),
    ):
        r = get(client, JAN1, **params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["parameter"] == parameter


# ---------------------------------------------------------------- pagination


def pages(client: TestClient, url: str, between: Any = None, **params: Any) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        extra: dict[str, str] = {"cursor": cursor} if cursor else {}
        r = get(client, url, **params, **extra)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["count"] == len(body["events"])
        out.append(body["events"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out
        if between is not None:
            between(len(out))


def test_pages_cover_everything_once(client: TestClient, store: SQLiteStore) -> None:
    events = add(store, *(event(i) for i in range(25)))
    got = pages(client, JAN1, limit=10)
    assert [len(p) for p in got] == [10, 10, 5]
    assert [e["event_id"] for p in got for e in p] == [e.event_id for e in events]
    # exactly a multiple of the limit: the last full page already says "no more"
    add(store, *(event(100 + i) for i in range(5)))
    assert [len(p) for p in pages(client, JAN1, limit=10)] == [10, 10, 10]


def test_pages_stay_stable_while_bounces_arrive(client: TestClient, store: SQLiteStore) -> None:
    initial = add(store, *(event(i) for i in range(30)))
    arrived: list[BounceEvent] = []

    def insert(page_no: int) -> None:
        # New bounces between page fetches: some later, some *earlier* in the
        # day than events already paged (pipes commit out of order), one in b.test.
        new = [event(1000 + page_no, at=DAY0 + 5 + page_no), event(2000 + page_no, at=DAY0 + 80000),
               event(3000 + page_no, domain="b.test")]
        add(store, *new)
        arrived.extend(e for e in new if e.domain == "a.test")

    got = [e["event_id"] for p in pages(client, JAN1, between=insert, limit=7) for e in p]
    assert len(got) == len(set(got))  # no duplicates
    # no gaps: every event that existed at the start, then every arrival, in id order
    assert got == [e.event_id for e in initial + arrived]


def test_pages_stable_under_a_concurrent_writer(client: TestClient, store: SQLiteStore, config: Config) -> None:
    add(store, *(event(i) for i in range(200)))
    stop = threading.Event()
    written: list[str] = []

    def writer() -> None:
        s = SQLiteStore.from_url(config.store_url)
        i = 0
        while not stop.is_set():
            e = event(10_000 + i, at=DAY0 + (i * 7919) % 86400)
            add(s, e)
            written.append(e.event_id)
            i += 1
            time.sleep(0.001)
        s.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        while len(written) < 5:
            time.sleep(0.001)
        got = [e["event_id"] for p in pages(client, JAN1, between=lambda n: time.sleep(0.003), limit=13) for e in p]
    finally:
        stop.set()
        t.join()
    assert len(got) == len(set(got))
    ids = [row[0] for row in store._conn.execute("SELECT event_id FROM events ORDER BY id")]
    # a prefix of everything in id order: nothing skipped, nothing repeated
    assert got == ids[: len(got)]
    assert len(got) > 200 + 5  # it saw arrivals too


def test_cursor_garbage_tampering_and_reuse(client: TestClient, store: SQLiteStore) -> None:
    add(store, *(event(i) for i in range(5)))
    cursor = get(client, JAN1, limit=2).json()["next_cursor"]
    assert isinstance(cursor, str)
    flipped = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
    for bad in ("", "x", "!!!!", "A" * 64, flipped, cursor + "AAAA"):
        r = get(client, JAN1, limit=2, cursor=bad)
        assert r.status_code == 400, bad
        assert r.json()["parameter"] == "cursor"
    # a cursor belongs to its query: other dates or filters are refused
    r = get(client, URL.format("2026-01-01", "2026-01-02"), limit=2, cursor=cursor)
    assert r.status_code == 400 and "does not belong" in r.json()["detail"]
    assert get(client, JAN1, limit=2, cursor=cursor, type="bounce").status_code == 400
    # the same query with another limit or format is fine
    assert get(client, JAN1, limit=3, cursor=cursor).json()["count"] == 3
    q = DownloadQuery(domains=("a.test",), start=0.0, end=1.0)
    assert decode_cursor(encode_cursor(12345, q), q) == 12345


def test_csv_and_ndjson_pages_carry_the_cursor_in_headers(client: TestClient, store: SQLiteStore) -> None:
    events = add(store, *(event(i) for i in range(5)))
    r = get(client, JAN1, format="ndjson", limit=3, type="bounce")
    assert r.headers["x-event-count"] == "3"
    cursor = r.headers["x-next-cursor"]
    link = r.headers["link"]
    assert link.endswith('>; rel="next"') and "access_token" not in link and "type=bounce" in link
    r2 = get(client, JAN1, format="ndjson", limit=3, type="bounce", cursor=cursor)
    assert "x-next-cursor" not in r2.headers
    got = [json.loads(x)["event_id"] for x in (r.text + r2.text).splitlines()]
    assert got == [e.event_id for e in events]
    r = get(client, JAN1, format="csv", limit=2)
    assert len(list(csv.reader(io.StringIO(r.text, newline="")))) == 3 and "x-next-cursor" in r.headers


def test_store_unavailable_is_503(config: Config) -> None:
    from bouncetrack.store.base import StoreUnavailable

    def factory(c: Config) -> Store:
        raise StoreUnavailable("locked")

    with TestClient(create_app(config, store_factory=factory)) as c:
        r = get(c, JAN1)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"


# ----------------------------------------------------------------- streaming


class CountingStore:
    """Wraps a store; counts the batches the export has pulled from the database."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.batches = 0

    def iter_rendered(self, *args: Any, **kwargs: Any) -> Iterator[list[tuple[int, str]]]:
        for batch in self.inner.iter_rendered(*args, **kwargs):
            self.batches += 1
            yield batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_large_export_is_streamed_not_built(config: Config, store: SQLiteStore, tmp_path: Path) -> None:
    import uvicorn

    n = 50_000
    bulk(tmp_path / "bt.db", n)
    counting = CountingStore(SQLiteStore.from_url(config.store_url))
    app = create_app(config, store_factory=lambda c: cast(SQLiteStore, counting))  # a wrapper, typed as what it wraps
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        total_batches = -(-n // 2000)
        url = f"http://127.0.0.1:{port}" + URL.format("2026-01-01", "2026-01-02")
        with httpx.stream("GET", url, params={"access_token": TOKENS["a"], "format": "ndjson"}, timeout=60) as r:
            assert r.status_code == 200
            assert "content-length" not in r.headers  # chunked: not built up front
            chunks = r.iter_bytes()
            first = next(chunks)
            time.sleep(0.5)  # a slow reader: the server must wait for it, not read ahead
            in_flight = counting.batches
            assert in_flight < total_batches / 2, (in_flight, total_batches)
            lines = first.count(b"\n") + sum(c.count(b"\n") for c in chunks)
        assert lines == n
        assert counting.batches == total_batches
        # CSV streams the same rows, plus the header
        with httpx.stream("GET", url, params={"access_token": TOKENS["a"], "format": "csv"}, timeout=60) as r:
            # counted over the whole body: a chunk may end between "\r" and "\n"
            assert b"".join(r.iter_bytes()).count(b"\r\n") == n + 1
    finally:
        server.should_exit = True
        thread.join(10)
