"""The worker's HTTP client (bouncetrack.forward.httpclient) over real loopback sockets.

Kept-alive connections and when they are replaced, bounded response bodies, redirects
not followed, TLS verified (a real TLS server with a certificate made here), URLs that
cannot break the request line, Basic auth from the URL.
"""

from __future__ import annotations

import base64
import datetime
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from bouncetrack.forward import webhook
from bouncetrack.forward.httpclient import HttpClient, InvalidURL, parse_url
from bouncetrack.harness.webhook_receiver import WebhookReceiver
from tests.test_webhook import SECRET, make_event


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int]


@dataclass
class Script:
    """What the test server answers: status, extra headers, body; and what it saw."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok\n"
    close_after: bool = False  # close the connection after answering without saying so
    seen: list[Seen] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        script = self.server.script
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        script.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                                self.client_address[:2]))
        self.send_response(script.status)
        for name, value in script.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(script.body)))
        self.end_headers()
        self.wfile.write(script.body)
        self.wfile.flush()
        if script.close_after:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            script.closed.set()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    script: Script


@pytest.fixture
def server() -> Iterator[tuple[_Server, str]]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.script = Script()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}/hook"
    finally:
        srv.shutdown()
        srv.server_close()


def post(client: HttpClient, url: str, body: bytes = b"{}", timeout: float = 10.0) -> webhook.DeliveryResult:
    request = webhook.WebhookRequest(url=url, headers={"content-type": "application/json"}, body=body)
    return webhook.deliver(client, request, timeout, time.time())


def test_one_connection_kept_across_posts(server: tuple[_Server, str]) -> None:
    srv, url = server
    client = HttpClient()
    for i in range(5):
        assert post(client, url, b'{"n":%d}' % i).outcome == "delivered"
    client.close()
    seen = srv.script.seen
    assert [s.body for s in seen] == [b'{"n":%d}' % i for i in range(5)]
    assert len({s.peer for s in seen}) == 1
    assert seen[0].headers["content-length"] == "7" and seen[0].headers["host"] == url.split("/")[2]


def test_a_connection_the_peer_closed_is_replaced_not_failed(server: tuple[_Server, str]) -> None:
    """The receiver closes its end after an answer without `Connection: close` (an idle
    timeout): the next POST finds the connection readable (EOF) and opens a new one."""
    srv, url = server
    srv.script.close_after = True
    client = HttpClient()
    for _ in range(3):
        assert post(client, url).outcome == "delivered"
        assert srv.script.closed.wait(10)
        srv.script.closed.clear()
    assert len({s.peer for s in srv.script.seen}) == 3


def test_an_idle_connection_is_replaced(server: tuple[_Server, str]) -> None:
    srv, url = server
    now = [1000.0]
    client = HttpClient(idle_seconds=5.0, clock=lambda: now[0])
    assert post(client, url).outcome == "delivered"
    now[0] += 4.0
    assert post(client, url).outcome == "delivered"  # within the idle time: the same connection
    now[0] += 5.5
    assert post(client, url).outcome == "delivered"  # idle too long: a new one
    peers = [s.peer for s in srv.script.seen]
    assert peers[0] == peers[1] != peers[2]


def test_connections_kept_are_bounded() -> None:
    with WebhookReceiver(SECRET, keep_alive=True) as a, WebhookReceiver(SECRET, keep_alive=True) as b:
        client = HttpClient(max_connections=1)
        for rx in (a, b, a):
            req = webhook.build_request(make_event(), rx.url, SECRET, time.time())
            assert webhook.deliver(client, req, 5.0, time.time()).outcome == "delivered"
        assert len(client._kept) == 1
        assert len({r.peer for r in a.accepted()}) == 2  # a's connection was closed for b's
        client.close()
        assert not client._kept


def test_long_bodies_are_not_read_and_their_connection_not_reused(server: tuple[_Server, str]) -> None:
    srv, url = server
    srv.script.body = b"x" * 1_000_000
    client = HttpClient()
    assert post(client, url).outcome == "delivered"  # a 2xx is a delivery whatever its body
    srv.script.status = 500
    result = post(client, url)
    assert result.outcome == "retry" and result.status_code == 500
    assert result.error is not None and len(result.error) < 600  # 512 bytes of the body at most
    srv.script.status, srv.script.body = 200, b"ok"
    assert post(client, url).outcome == "delivered"
    assert post(client, url).outcome == "delivered"
    peers = [s.peer for s in srv.script.seen]
    assert len(set(peers[:3])) == 3 and peers[2] == peers[3]  # short body read to its end: kept


def test_redirects_are_not_followed(server: tuple[_Server, str]) -> None:
    srv, url = server
    srv.script.status, srv.script.headers = 302, {"Location": url + "/elsewhere"}
    result = post(HttpClient(), url)
    assert result.outcome == "retry" and result.status_code == 302
    assert [s.path for s in srv.script.seen] == ["/hook"]


def test_retry_after_and_gone(server: tuple[_Server, str]) -> None:
    srv, url = server
    srv.script.status, srv.script.headers = 429, {"Retry-After": "30"}
    client = HttpClient()
    result = post(client, url)
    assert (result.outcome, result.status_code, result.retry_after) == ("retry", 429, 30)
    srv.script.status, srv.script.headers = 410, {}
    assert post(client, url).outcome == "dead"


def test_basic_auth_from_the_url(server: tuple[_Server, str]) -> None:
    srv, url = server
    authed = url.replace("http://", "http://hook%20user:p%40ss@")
    assert post(HttpClient(), authed).outcome == "delivered"
    assert srv.script.seen[0].headers["authorization"] == "Basic " + base64.b64encode(b"hook user:p@ss").decode()


def test_urls_cannot_break_the_request_line(server: tuple[_Server, str]) -> None:
    srv, url = server
    assert post(HttpClient(), url + "/a b\r\nX-Injected: 1?q=1 2&r=%41").outcome == "delivered"
    [seen] = srv.script.seen
    assert seen.path == "/hook/a%20bX-Injected:%201?q=1%202&r=%41"  # urlsplit drops CR, LF, tab
    assert "x-injected" not in seen.headers


def test_parse_url() -> None:
    t = parse_url("https://hooks.example.com/b?key=1")
    assert (t.scheme, t.host, t.port, t.path, t.authorization) == ("https", "hooks.example.com", 443, "/b?key=1", None)
    assert parse_url("http://[::1]:8080").path == "/"
    assert (parse_url("http://[::1]:8080").host, parse_url("http://[::1]:8080").port) == ("::1", 8080)
    assert parse_url("HTTP://Bücher.example/x").host == "xn--bcher-kva.example"
    for bad in ("ftp://example.com/", "http:///nohost", "http://example.com:99999/", "http://[::1/nope",
                "http://exa mple.com/", "http://a\x00b/"):
        with pytest.raises(InvalidURL):
            parse_url(bad)


def test_refused_and_invalid_are_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens once closed
    result = post(HttpClient(), f"http://127.0.0.1:{port}/hook", timeout=2.0)
    assert result.outcome == "retry" and result.status_code is None
    assert result.error is not None and "ConnectionRefusedError" in result.error
    result = post(HttpClient(), "gopher://example.com/")
    assert result.outcome == "retry" and result.error is not None and result.error.startswith("invalid webhook URL")
    result = post(HttpClient(), "http://" + "a" * 64 + ".example/")  # a label IDNA refuses, at connect
    assert result.outcome == "retry" and result.error is not None and result.error.startswith("invalid webhook request")


# --- TLS -------------------------------------------------------------------------


def make_certificate(tmp: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for DNS name ``name`` (and nothing else), and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[_Server, int, Path]]:
    cert, key = make_certificate(tmp_path, "localhost")
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.script = Script()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv, srv.server_address[1], cert
    finally:
        srv.shutdown()
        srv.server_close()


def trusting(cert: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cert)
    return ctx


def test_https_certificate_is_verified(tls_server: tuple[_Server, int, Path]) -> None:
    srv, port, cert = tls_server
    url = f"https://localhost:{port}/hook"
    # The system's CAs do not know this certificate: no delivery, a retry that says why.
    result = post(HttpClient(), url, timeout=5.0)
    assert result.outcome == "retry" and result.error is not None and "CERTIFICATE_VERIFY_FAILED" in result.error
    # Trusted, and the name matches: delivered over TLS, the connection kept.
    client = HttpClient(ssl_context=trusting(cert))
    assert post(client, url).outcome == "delivered"
    assert post(client, url).outcome == "delivered"
    assert len({s.peer for s in srv.script.seen}) == 1
    # Trusted, but the URL names another host than the certificate: refused.
    result = post(HttpClient(ssl_context=trusting(cert)), f"https://127.0.0.1:{port}/hook", timeout=5.0)
    assert result.outcome == "retry" and result.error is not None and "CERTIFICATE_VERIFY_FAILED" in result.error
    assert len(srv.script.seen) == 2


def test_timeout_is_per_operation() -> None:
    """A receiver that accepts and never answers: the POST ends after the timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        started = time.monotonic()
        result = post(HttpClient(), f"http://127.0.0.1:{port}/hook", timeout=0.5)
        assert result.outcome == "retry" and result.error is not None and result.error.startswith("timeout")
        assert time.monotonic() - started < 30  # generous: the machine may be loaded



# --- answers written byte by byte: the client's reading of RFC 9112 ------------------


class RawServer:
    """Answers each request on a connection with the next scripted bytes; records the
    requests as (connection number, raw bytes). A None after an answer closes the
    connection once that answer is sent; a None in place of an answer closes it unanswered."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.requests: list[tuple[int, bytes]] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read_request(self, conn: socket.socket, buf: bytes) -> tuple[bytes, bytes] | None:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return None
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += conn.recv(65536)
        return head + b"\r\n\r\n" + rest[:length], rest[length:]

    def _serve(self) -> None:
        number = 0
        while self.answers:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            number += 1
            with conn:
                buf = b""
                while self.answers:
                    got = self._read_request(conn, buf)
                    if got is None:
                        break
                    request, buf = got
                    self.requests.append((number, request))
                    answer = self.answers.pop(0)
                    if answer is None:
                        break
                    conn.sendall(answer)
                    if self.answers and self.answers[0] is None:
                        self.answers.pop(0)
                        break

    def close(self) -> None:
        self.listener.close()


def raw_post(client: HttpClient, url: str) -> webhook.DeliveryResult:
    return post(client, url, timeout=10.0)


def test_chunked_answers() -> None:
    rx = RawServer([
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"e" * 1024 + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ])
    client = HttpClient()
    assert raw_post(client, rx.url).outcome == "delivered"
    result = raw_post(client, rx.url)  # the same connection: the chunked answer was read to its end
    assert result.status_code == 500 and result.error == "HTTP 500: " + "e" * 512  # bounded
    assert raw_post(client, rx.url).outcome == "delivered"  # a new one: 1 KiB was left unread
    assert [n for n, _ in rx.requests] == [1, 1, 2]
    rx.close()


def test_interim_answers_and_folded_headers() -> None:
    rx = RawServer([
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 429 Slow down\r\nRetry-After:\r\n  45\r\nContent-Length: 2\r\n\r\nno",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ])
    client = HttpClient()
    result = raw_post(client, rx.url)
    assert (result.status_code, result.retry_after, result.error) == (429, 45, "HTTP 429: no")
    assert raw_post(client, rx.url).outcome == "delivered"
    assert [n for n, _ in rx.requests] == [1, 1]
    rx.close()


def test_answers_that_end_the_connection() -> None:
    """`Connection: close`, HTTP/1.0, a body delimited by the close, bytes after the answer:
    each next POST takes a new connection."""
    rx = RawServer([
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", None,
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", None,
        b"HTTP/1.1 503 Busy\r\n\r\nbusy", None,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", None,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ])
    client = HttpClient()
    assert raw_post(client, rx.url).outcome == "delivered"
    assert raw_post(client, rx.url).outcome == "delivered"
    result = raw_post(client, rx.url)
    assert (result.status_code, result.error) == (503, "HTTP 503: busy")
    assert raw_post(client, rx.url).outcome == "delivered"
    assert raw_post(client, rx.url).outcome == "delivered"
    assert [n for n, _ in rx.requests] == [1, 2, 3, 4, 5]
    rx.close()


def test_broken_answers_are_retries() -> None:
    too_many = b"".join(b"X-H%d: 1\r\n" % i for i in range(101))
    answers: list[tuple[bytes | None, str]] = [
        (b"SMTP/1.0 220 hello\r\n\r\n", "BadStatusLine"),
        (b"HTTP/1.1 200 OK\r\n" + too_many + b"\r\n", "HTTPException: got more than 100 headers"),
        (b"HTTP/1.1 100 Continue\r\n\r\n" * 11 + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
         "HTTPException: more than 10 interim (1xx) answers"),
        (b"HTTP/1.1 500 Oops\r\nContent-Length: 10\r\n\r\nshort", "IncompleteRead"),
        (b"HTTP/1.1 502 Bad\r\nContent-Length: 1, 2\r\n\r\n", "HTTPException: bad Content-Length"),
        ("HTTP/1.1 502 Bad\r\nContent-Length: \u00b2\r\n\r\nxx".encode("latin-1"), "HTTPException: bad Content-Length"),
        (b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", "HTTPException: bad chunk size"),
        (b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n",
         "HTTPException: bad chunk size"),
        (b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n",
         "HTTPException: chunk not followed by CRLF"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + b"Filler: " + b"x" * 70_000 + b"\r\n\r\n", "LineTooLong"),
        (None, "RemoteDisconnected"),
    ]
    script: list[bytes | None] = []
    for answer, _ in answers:
        script += [answer] if answer is None else [answer, None]
    rx = RawServer(script)
    client = HttpClient()
    errors = [raw_post(client, rx.url) for _ in answers]
    assert all(r.outcome == "retry" and r.status_code is None for r in errors)
    for result, (_, expected) in zip(errors, answers):
        assert str(result.error).startswith(expected), (result.error, expected)
    assert len(rx.requests) == len(answers) and len({n for n, _ in rx.requests}) == len(answers)
    rx.close()


@pytest.mark.parametrize("first", [
    # Transfer-Encoding with Content-Length: delivered, the connection not kept (RFC 9112 §6.3)
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    # a 2xx whose body breaks off: delivered (the receiver accepted it), the connection not kept
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
], ids=["transfer-encoding-and-length", "2xx-body-breaks"])
def test_an_answer_that_ends_its_connection_is_delivered_and_the_next_post_reconnects(first: bytes) -> None:
    rx = RawServer([first, None, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    client = HttpClient()
    assert raw_post(client, rx.url).outcome == "delivered"
    assert raw_post(client, rx.url).outcome == "delivered"
    assert [n for n, _ in rx.requests] == [1, 2]
    rx.close()


def test_the_request_as_sent() -> None:
    rx = RawServer([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    request = webhook.build_request(make_event(), rx.url.replace("/hook", "/h?x=1"), SECRET, time.time())
    assert webhook.deliver(HttpClient(), request, 10.0, time.time()).outcome == "delivered"
    [(_, raw)] = rx.requests
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /h?x=1 HTTP/1.1" and lines[1] == "Host: " + rx.url.split("/")[2]
    assert f"Content-Length: {len(request.body)}" in lines and body == request.body
    assert f"webhook-signature: {request.headers['webhook-signature']}" in lines
    with pytest.raises(ValueError):
        HttpClient().post(rx.url, b"{}", {"x-bad": "a\r\nInjected: 1"}, 1.0, 512)
    rx.close()
