"""Hostile HTTP against the real API server (issue 16): uvicorn on loopback with the
settings ``bouncetrack api`` uses (:func:`bouncetrack.api.server.server_config`).

Inputs built by the tests: a 100 MB request header, a 300 MB body without a
token, bodies over the limits (declared and chunked), forged integers at 2^63
and 2^64-1. Every answer is a 4xx, never a 500, and the server's memory does
not follow the input's size.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from bouncetrack.api.app import create_app
from bouncetrack.api import send
from bouncetrack.api.compose import SendRequest, html_to_text
from bouncetrack.api.edge import MAX_TRACKED, FailureLimit, allowed_hosts, host_name
from bouncetrack.api.pagination import _fingerprint, decode_cursor, parse_range
from bouncetrack.api.server import server_config
from bouncetrack.api.session import same_origin
from bouncetrack.core.config import Config
from bouncetrack.store.views import DownloadQuery
from bouncetrack.core.tokens import hash_api_token, load_keyring
from tests.configkit import write_config
from tests.services import free_port

TOKEN = "tok-hostile-a"
MB = 1 << 20


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    return write_config(tmp_path, f"""\
        log_level: WARNING
        domains:
          a.test: {{api_tokens: ["{hash_api_token(TOKEN)}"]}}
        """)


@pytest.fixture()
def server(config: Config) -> Iterator[tuple[str, int]]:
    """The API on a loopback port, served as ``bouncetrack api`` serves it."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(server_config(create_app(config), config, "127.0.0.1", port))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield "127.0.0.1", port
    finally:
        srv.should_exit = True
        thread.join(10)


def vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def read_response(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_100_mb_header_gets_400_without_being_buffered(server: tuple[str, int]) -> None:
    host, port = server
    before = vm_rss_mb()
    sent = 0
    with socket.create_connection(server) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Junk: ")
        chunk = b"a" * MB
        try:
            while sent < 100 * MB:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed on us: what we want
        answer = read_response(sock) if sent < 100 * MB else b""
        if sent >= 100 * MB:
            sock.sendall(b"\r\n\r\n")
            answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert sent < 100 * MB, "the server read the whole 100 MB header"
    assert vm_rss_mb() - before < 50
    # and the server still answers others
    assert httpx.get(f"http://{host}:{port}/metrics", timeout=10).status_code == 200


def test_a_300_mb_body_without_a_token_gets_401_unread(server: tuple[str, int]) -> None:
    before = vm_rss_mb()
    for path in ("/v1/send", "/v1/suppressions"):
        sent = 0
        with socket.create_connection(server) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {300 * MB}\r\n\r\n".encode()
            )
            answer = read_response(sock)
            chunk = b" " * MB
            try:
                while sent < 300 * MB:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
        assert answer.startswith(b"HTTP/1.1 401"), answer[:300]
        assert b"connection: close" in answer.lower()
        assert sent < 300 * MB, f"{path}: the server read the whole body"
    assert vm_rss_mb() - before < 50


def test_bodies_over_the_limit_get_413(server: tuple[str, int], config: Config) -> None:
    host, port = server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = f"http://{host}:{port}"
    # declared too large: refused before reading
    r = httpx.post(base + "/v1/suppressions", headers={**auth, "Content-Length": str(config.api.max_body_bytes + 1)},
                   content=b"x" * (config.api.max_body_bytes + 1), timeout=30)
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(config.api.max_body_bytes // 65536 + 2):
            yield b" " * 65536

    # chunked, no length: refused once past the limit
    r = httpx.post(base + "/v1/suppressions", headers=auth, content=chunks(), timeout=30)
    assert r.status_code == 413
    # the dashboard's login form too (no token needed there, but a limit)
    r = httpx.post(base + "/login", content=b"a=" + b"x" * (config.api.max_body_bytes + 10), timeout=30)
    assert r.status_code == 413
    # within the limit: the endpoint answers as before
    r = httpx.post(base + "/v1/suppressions", headers=auth, json={"addresses": ["x@remote.test"]}, timeout=30)
    assert r.status_code == 201, r.text


def test_a_wrong_token_with_a_body_is_refused_early(server: tuple[str, int]) -> None:
    host, port = server
    r = httpx.post(f"http://{host}:{port}/v1/send", headers={"Authorization": "Bearer nope"},
                   json={"from": "a@a.test"}, timeout=10)
    assert r.status_code == 401
    assert r.json() == {"detail": "missing or invalid access token"}
    assert r.headers["www-authenticate"] == "Bearer"


# --------------------------------------------------------------------------- 64-bit integers


def forged_cursor(last_id: int, query: DownloadQuery) -> str:
    """A cursor with a valid check over any 64-bit id: the check is public, not a secret."""
    head = struct.pack(">BQ", 1, last_id)
    check = hashlib.sha256(b"bouncetrack-cursor\x00" + head + _fingerprint(query)).digest()[:8]
    return base64.urlsafe_b64encode(head + check).rstrip(b"=").decode()


@pytest.mark.parametrize("huge", [2**63, 2**64 - 1])
def test_integers_past_64_bits_are_400_not_500(server: tuple[str, int], config: Config, huge: int) -> None:
    host, port = server
    base = f"http://{host}:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    start, end = parse_range("2026-01-01", "2026-01-02", config.api.max_range_days)
    query = DownloadQuery(domains=("a.test",), start=start, end=end)
    cursor = forged_cursor(huge, query)
    assert decode_cursor(forged_cursor(5, query), query) == 5  # the forgery is well-formed
    r = httpx.get(base + "/v1/bounces/2026-01-01/2026-01-02", params={"cursor": cursor}, headers=auth)
    assert r.status_code == 400 and r.json()["parameter"] == "cursor", r.text
    r = httpx.get(base + "/v1/suppressions", params={"cursor": str(huge)}, headers=auth)
    assert r.status_code == 400 and r.json()["parameter"] == "cursor", r.text
    with httpx.Client(base_url=base) as dash:
        assert dash.post("/login", data={"token": TOKEN}).status_code == 303
        for name in ("after", "before"):
            r = dash.get("/events", params={name: str(huge)})
            assert r.status_code == 400 and "is not an event of this list" in r.text
            r = dash.get("/events", params={name: str(-huge)})
            assert r.status_code == 400
        page = dash.get("/outbox").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        token = csrf.group(1) if csrf else ""
        r = dash.post(f"/outbox/{huge}/replay", data={"csrf": token})
        assert r.status_code == 404, r.text
    # one below the bound is an ordinary id
    r = httpx.get(base + "/v1/suppressions", params={"cursor": str(2**63 - 1)}, headers=auth)
    assert r.status_code == 200


# --------------------------------------------------------------------------- send endpoint


@pytest.mark.parametrize("brk", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])
@pytest.mark.parametrize("field", ["subject", "from", "to"])
def test_a_unicode_line_break_in_a_header_field_is_422_not_500(config: Config, brk: str, field: str) -> None:
    body = {"from": "Info <info@a.test>", "to": "Friend <friend@remote.test>", "recipient": "friend@remote.test",
            "subject": "Hello", "text": "hi"}
    body[field] = body[field].replace(" ", brk, 1) if field != "subject" else f"Hello{brk}Bcc: x@y.test"
    with TestClient(create_app(config)) as c:
        r = c.post("/v1/send", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", field]
    assert "line break" in r.json()["detail"][0]["msg"]


HOSTILE_HTML = {
    # shapes that were quadratic in the standard library's HTMLParser or in the link text
    # (an <a> inside an open <a> closes it: 199,999 empty links, shown by their href)
    "nested links": ("<a href='https://x.test/'>" * 200_000 + "x" + "</a>" * 200_000, "https://x.test/https"),
    "unterminated tags": ("<a" * 300_000, ""),
    "lone <": ("a < b " * 200_000, "a < b a < b"),
    "open comment": ("ok<!--" + "-" * 1_000_000, "ok"),
    "open script": ("ok<script>" + "<p>" * 300_000, "ok"),
    "long attribute": ("<a href='" + "h" * 1_000_000 + ">t</a>", "t"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_HTML))
def test_html_to_text_on_hostile_shapes(name: str) -> None:
    source, starts = HOSTILE_HTML[name]
    text = html_to_text(source)
    assert text.startswith(starts), text[:100]
    assert len(text) <= len(source) + 2


def test_html_to_text_keeps_the_readable_rendering() -> None:
    source = (
        '<html><head><title>T</title><style>p{}</style></head><body><h1>Hi &amp; welcome</h1>'
        '<p>See <a href="https://x.test/?a=1&amp;b=2">our site</a> or <a href="mailto:a@x.test">a@x.test</a>.</p>'
        "<ul><li>one<li>two</ul><table><tr><td>a<td>b</table>x<br>y<pre>  code\n  more</pre>"
        "<!-- gone --><p>1 < 2</p></body></html>"
    )
    assert html_to_text(source) == (
        "Hi & welcome\n\nSee our site (https://x.test/?a=1&b=2) or a@x.test.\n\n- one\n- two\n\n"
        "a b\n\nx\ny\ncode\nmore\n\n1 < 2\n"
    )


def test_bounce_in_another_domain_of_the_token_is_403(tmp_path: Path) -> None:
    """The milter's Return-Path rule (esmtp.return_path_allowed), said before any SMTP."""
    both = write_config(tmp_path, f"""\
        domains:
          a.test: {{api_tokens: ["{hash_api_token(TOKEN)}"]}}
          b.test: {{api_tokens: ["{hash_api_token(TOKEN)}"]}}
        """)
    body = {"from": "info@a.test", "to": "x@remote.test", "recipient": "x@remote.test", "text": "hi",
            "bounce": "victim@b.test"}
    with TestClient(create_app(both)) as c:
        r = c.post("/v1/send", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 403, r.text
    assert r.json()["detail"]["field"] == "bounce"
    assert r.json()["detail"]["error"] == "forbidden_sender_domain"


# --------------------------------------------------------------------------- sessions


def test_rotate_key_ends_dashboard_sessions_in_the_running_api(config: Config) -> None:
    """README: `bouncetrack rotate-key` logs everybody out, without restarting the API."""
    load_keyring(config)
    with TestClient(create_app(config), follow_redirects=False) as c:
        assert c.post("/login", data={"token": TOKEN}).status_code == 303
        assert c.get("/dashboard").status_code == 200
        proc = subprocess.run([sys.executable, "-m", "bouncetrack", "rotate-key", "--config", str(config.path)],
                              capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
        assert proc.returncode == 0, proc.stderr
        r = c.get("/dashboard")
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), r.status_code
        # a new login works with the new key
        assert c.post("/login", data={"token": TOKEN}).status_code == 303
        assert c.get("/dashboard").status_code == 200


def test_the_composing_process_is_replaced_when_it_dies() -> None:
    """POST /v1/send composes in a child process (its CPU off the API's GIL); a dead one is replaced."""
    request = SendRequest.model_validate({"from": "info@a.test", "to": "x@remote.test", "recipient": "x@remote.test",
                                          "html": "<p>Hello &amp; welcome</p>"})
    first = send.compose_elsewhere(request)
    assert b"Hello & welcome" in first.message
    processes = list(send._pool()._processes.values())
    assert processes and all(p.pid != os.getpid() for p in processes)
    for p in processes:
        p.kill()
        p.join(10)
    again = send.compose_elsewhere(request)
    assert b"Hello & welcome" in again.message


# --------------------------------------------------------------------------- the edge


def raw_get(server: tuple[str, int], path: str, host: str) -> bytes:
    with socket.create_connection(server) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return read_response(sock)


def test_dns_rebinding_host_cannot_read_metrics(server: tuple[str, int]) -> None:
    host, port = server
    assert raw_get(server, "/metrics", "evil.example").startswith(b"HTTP/1.1 400")
    assert raw_get(server, "/metrics", f"evil.example:{port}").startswith(b"HTTP/1.1 400")
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        assert raw_get(server, "/metrics", good).startswith(b"HTTP/1.1 200"), good


def test_allowed_hosts_and_a_metrics_token_from_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"""\
        log_level: WARNING
        api:
          allowed_hosts: [bt.example.org]
          metrics_token: "{hash_api_token('scrape-me')}"
        domains:
          a.test: {{api_tokens: ["{hash_api_token(TOKEN)}"]}}
        """)
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(server_config(create_app(config), config, "127.0.0.1", port))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        while not srv.started:
            assert thread.is_alive()
            time.sleep(0.02)
        assert raw_get(("127.0.0.1", port), "/metrics", "127.0.0.1").startswith(b"HTTP/1.1 400")
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Host": "bt.example.org"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = httpx.get(f"http://127.0.0.1:{port}/metrics",
                      headers={"Host": "bt.example.org", "Authorization": "Bearer scrape-me"})
        assert r.status_code == 200 and "bouncetrack_" in r.text
    finally:
        srv.should_exit = True
        thread.join(10)


def test_failed_tokens_are_limited_per_address(server: tuple[str, int], config: Config) -> None:
    host, port = server
    base = f"http://{host}:{port}"
    limit = config.api.failed_auth_per_minute
    for _ in range(limit):
        assert httpx.get(base + "/v1/suppressions", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = httpx.get(base + "/v1/suppressions", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
    # the right token too, from this address, until the minute ends; failed logins likewise
    assert httpx.get(base + "/v1/suppressions", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 429
    assert httpx.post(base + "/login", data={"token": TOKEN}).status_code == 429
    assert httpx.get(base + "/metrics").status_code == 200  # the rest is not concerned


def test_failure_limit_windows_and_bounded_memory() -> None:
    now = [1000.0]
    limit = FailureLimit(3, clock=lambda: now[0])
    for _ in range(3):
        assert limit.retry_after("198.51.100.7") == 0
        limit.failed("198.51.100.7")
    assert limit.retry_after("198.51.100.7") == 60 and limit.retry_after("198.51.100.8") == 0
    now[0] += 59.5
    assert limit.retry_after("198.51.100.7") == 1
    now[0] += 1
    assert limit.retry_after("198.51.100.7") == 0
    limit.failed("198.51.100.7")  # a new window
    assert limit.retry_after("198.51.100.7") == 0
    for i in range(MAX_TRACKED + 500):
        limit.failed(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
    assert len(limit) == MAX_TRACKED
    assert FailureLimit(0).retry_after("x") == 0  # 0: no limit


def test_every_response_has_a_csp_and_docs_are_not_served(config: Config) -> None:
    with TestClient(create_app(config)) as c:
        for path in ("/openapi.json", "/v1/suppressions", "/metrics"):
            r = c.get(path)
            assert r.headers["content-security-policy"].startswith("default-src 'none'"), path
            assert r.headers["x-content-type-options"] == "nosniff"
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
        assert c.get("/openapi.json").json()["info"]["title"] == "bouncetrack"
        login = c.get("/login")  # the dashboard keeps its own policy (its stylesheet)
        assert "style-src 'self'" in login.headers["content-security-policy"]


def test_x_forwarded_host_counts_only_behind_a_proxy() -> None:
    headers = {"origin": "https://dash.example", "host": "127.0.0.1:8025", "x-forwarded-host": "dash.example"}
    assert not same_origin(headers)
    assert same_origin(headers, behind_proxy=True)


def test_the_guard_follows_a_reloaded_configuration(config: Config, tmp_path: Path) -> None:
    """A token added by SIGHUP (ApiContext.apply) passes the early token check at once."""
    app = create_app(config)
    newer = write_config(tmp_path, f"""\
        domains:
          a.test: {{api_tokens: ["{hash_api_token(TOKEN)}", "{hash_api_token('tok-added')}"]}}
        """, name="reloaded.yaml")
    with TestClient(app) as c:
        added = {"Authorization": "Bearer tok-added"}
        assert c.post("/v1/suppressions", json={"addresses": ["x@remote.test"]}, headers=added).status_code == 401
        app.state.ctx.apply(newer)
        assert c.post("/v1/suppressions", json={"addresses": ["x@remote.test"]}, headers=added).status_code == 201


def test_check_config_refuses_secrets_everybody_knows(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    path = tmp_path / "copied.yaml"
    path.write_text(textwrap.dedent(f"""\
        bounce_domain: bounce.test
        secret_file: {tmp_path}/verp.key
        store: sqlite:///{tmp_path}/bt.db
        domains:
          a.test:
            api_tokens: ["{hash_api_token('test')}"]
            webhook: {{url: "https://hooks.example.com/b", secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}}
          b.test:
            webhook: {{url: "https://hooks.example.com/b", secret: short}}
        """))
    proc = subprocess.run([sys.executable, "-m", "bouncetrack", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=root)
    assert proc.returncode == 1, proc.stdout
    assert "domains.a.test.api_tokens: the hash of the well-known token 'test'" in proc.stderr
    assert "domains.a.test.webhook.secret: the example's secret" in proc.stderr
    assert "domains.b.test.webhook.secret: 5 characters" in proc.stderr
    ok = subprocess.run([sys.executable, "-m", "bouncetrack", "check-config", str(root / "conf" / "example.yaml")],
                        capture_output=True, text=True, timeout=60, cwd=root)
    assert ok.returncode == 0, ok.stderr


def test_default_hosts_follow_where_the_api_listens(config: Config) -> None:
    assert allowed_hosts(config) == ("localhost", "127.0.0.1", "::1")
    assert allowed_hosts(config, "10.1.2.3") == ("localhost", "127.0.0.1", "::1", "10.1.2.3")
    assert allowed_hosts(config, "0.0.0.0") == ("localhost", "127.0.0.1", "::1")  # a wildcard names no host
    assert host_name("[::1]:8025") == "::1" and host_name("Bt.Example.org:443") == "bt.example.org"
