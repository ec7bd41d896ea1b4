"""Pre-send address validation (issue 19) against a local authoritative DNS server.

``bouncetrack check-address``, ``POST /v1/addresses/validate`` and the send API's
``validate_recipients``: verdicts for zones with and without MX, null MX, A-only and
AAAA-only domains, NXDOMAIN, a server that never answers (timeouts), mailbox-provider
rules chosen by MX host, the caller's own suppression list; and the DNS cache: TTL
expiry, the cap on TTLs, negative caching by the SOA (RFC 2308 §5), the LRU bound.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from bouncetrack.api.app import create_app
from bouncetrack.cli import build_cli
from bouncetrack.core.config import Config
from bouncetrack.core.config_loader import load_config_text
from bouncetrack.harness.fakemx import FakeMX
from bouncetrack.core.resolver import DnsPythonResolver
from bouncetrack.store import open_store
from bouncetrack.store.views import Suppression
from bouncetrack.core.tokens import hash_api_token
from bouncetrack.validation import DomainCache, Validator
from tests.dnsserver import DnsServer
from tests.test_addresses import HOSTILE

ZONES: dict[str, list[Any]] = {
    "good.test": [("MX", "10 mx1.good.test.", 60), ("MX", "20 mx2.good.test.", 60)],
    "mx1.good.test": [("A", "192.0.2.1")],
    "aonly.test": [("A", "192.0.2.2", 120)],
    "aaaaonly.test": [("AAAA", "2001:db8::2")],
    "nullmx.test": [("MX", "0 .")],
    "nomail.test": [("TXT", '"v=spf1 -all"')],
    "gmailhosted.test": [("MX", "5 gmail-smtp-in.l.google.com.")],
    "yahoohosted.test": [("MX", "1 mta5.am0.yahoodns.net.")],
    "long.test": [("MX", "10 mx.long.test.", 10 * 86400)],
    "bücher.test".encode("idna").decode(): [("MX", "10 mx.xn--bcher-kva.test.")],
}
for i in range(8):
    ZONES[f"d{i}.test"] = [("MX", f"10 mx.d{i}.test.", 300)]

TOKEN_A, TOKEN_B = "bt_tok-a", "bt_tok-b"


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer(ZONES, negative_ttl=30, silent=["slow.test"]) as server:
        yield server


def run(*args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(build_cli(), ["check-address", *args], input=stdin)


def lines(output: str) -> list[list[str]]:
    return [line.split("\t") for line in output.splitlines() if line]


# ------------------------------------------------------------------ check-address verdicts


def test_check_address_verdicts(dns: DnsServer) -> None:
    ns = ["--nameserver", f"127.0.0.1:{dns.port}", "--timeout", "0.5"]
    want = {
        "a@good.test": ("valid", "-"),
        "a@aonly.test": ("valid", "-"),  # RFC 5321 §5.1 implicit MX
        "a@aaaaonly.test": ("valid", "-"),
        "a@nullmx.test": ("invalid", "domain"),
        "a@nomail.test": ("invalid", "domain"),
        "a@nx.test": ("invalid", "domain"),
        "a@slow.test": ("unknown", "dns"),
        "abc@gmailhosted.test": ("invalid", "provider"),  # Gmail: 6 to 30 characters
        "john.smith.1@gmailhosted.test": ("valid", "-"),
        "a..b@yahoohosted.test": ("invalid", "syntax"),
        "x@yahoohosted.test": ("invalid", "provider"),  # Yahoo: 4 to 32 characters
        "jo@bücher.test": ("valid", "-"),
        '"jo smith"@good.test': ("valid", "-"),
    }
    r = run(*ns, *want)
    assert r.exit_code == 1, r.output
    got = lines(r.output)
    assert len(got) == len(want), r.output
    for (raw, (verdict, check)), row in zip(want.items(), got):
        assert (row[1], row[2]) == (verdict, check), (raw, row)
    reasons = {row[0]: row[3] for row in got}
    assert "null MX, RFC 7505" in reasons["a@nullmx.test"]
    assert "NXDOMAIN" in reasons["a@nx.test"] and "neither an MX nor an A/AAAA" in reasons["a@nomail.test"]
    assert "gmail" in reasons["abc@gmailhosted.test"]
    assert reasons["jo@xn--bcher-kva.test"] == "ok"
    # Only DNS: MX, then A/AAAA where there is no MX; nothing else was asked.
    assert {t for _, t in dns.queries} <= {"MX", "A", "AAAA"}
    r = run(*ns, "a@good.test", "john.smith.1@gmailhosted.test")
    assert r.exit_code == 0 and [row[1] for row in lines(r.output)] == ["valid", "valid"]


def test_check_address_json_and_stdin(dns: DnsServer) -> None:
    stdin = "# a list\na@good.test\n\nbad@@good.test\na@nx.test\n"
    r = run("--nameserver", f"127.0.0.1:{dns.port}", "--json", "-", stdin=stdin)
    assert r.exit_code == 1
    got = [json.loads(line) for line in r.output.splitlines()]
    assert [(g["input"], g["verdict"], g["check"]) for g in got] == [
        ("a@good.test", "valid", None), ("bad@@good.test", "invalid", "syntax"), ("a@nx.test", "invalid", "domain")]


@pytest.mark.parametrize("raw,fragment", HOSTILE)
def test_check_address_hostile_inputs(dns: DnsServer, raw: str, fragment: str) -> None:
    before = len(dns.queries)
    r = run("--nameserver", f"127.0.0.1:{dns.port}", raw, "a@good.test")
    assert r.exit_code == 1, r.output
    rows = lines(r.output)
    assert len(rows) == 2, r.output  # one line per address, whatever the input held
    assert rows[0][1:3] == ["invalid", "syntax"] and fragment in rows[0][3], rows[0]
    assert rows[1][:2] == ["a@good.test", "valid"]
    assert all(q[0] in ("good.test.", "mx1.good.test.") for q in dns.queries[before:])  # no lookup for the bad one
    if "\n" not in raw and "\r" not in raw and raw.strip():
        r = run("--nameserver", f"127.0.0.1:{dns.port}", "-", stdin=raw + "\n")
        assert r.exit_code == 1 and lines(r.output)[0][1:3] == ["invalid", "syntax"], r.output


def test_check_address_suppression_is_per_sender_domain(dns: DnsServer, tmp_path: Path) -> None:
    config = _config(tmp_path, dns)
    store = open_store(config.store_url)
    store.add_suppressions([Suppression("b.test", "gone@good.test", "hard_bounce", None, time.time(), None)])
    store.close()
    base = ["--config", str(config.path)]
    r = run(*base, "--domain", "b.test", "Gone@good.test")
    assert r.exit_code == 1 and lines(r.output)[0][1:] == ["suppressed", "suppression", "on the suppression list of b.test"]
    r = run(*base, "--domain", "a.test", "gone@good.test")  # another sender domain's list: not consulted
    assert r.exit_code == 0 and lines(r.output)[0][1] == "valid", r.output
    r = run("--domain", "a.test", "gone@good.test")
    assert r.exit_code == 2 and "--domain needs --config" in r.output


# ------------------------------------------------------------------ the cache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _validator(dns: DnsServer, size: int = 100, **kw: float) -> tuple[Validator, Clock]:
    clock = Clock()
    cache = DomainCache(size, clock=clock, **kw)
    return Validator(DnsPythonResolver("127.0.0.1", dns.port, timeout=0.5), cache), clock


def _asked(dns: DnsServer, since: int, name: str) -> int:
    """MX lookups of ``name`` since query number ``since``."""
    return sum(1 for q, t in dns.queries[since:] if q == name + "." and t == "MX")


def test_cache_honours_ttl(dns: DnsServer) -> None:
    v, clock = _validator(dns)
    n = len(dns.queries)
    assert v.check("a@good.test").verdict == "valid"
    assert v.check("b@good.test").verdict == "valid"
    assert _asked(dns, n, "good.test") == 1 and v.cache.hits == 1
    clock.now += 59
    v.check("c@good.test")
    assert _asked(dns, n, "good.test") == 1
    clock.now += 2  # past the MX records' TTL of 60 s
    v.check("d@good.test")
    assert _asked(dns, n, "good.test") == 2 and v.cache.expired == 1
    # A domain without MX: the smaller of the two answers' TTLs (no-data 30 s, A 120 s).
    v.check("a@aonly.test")
    clock.now += 31
    v.check("a@aonly.test")
    assert _asked(dns, n, "aonly.test") == 2


def test_cache_caps_ttls_and_caches_negative_answers_by_soa(dns: DnsServer) -> None:
    v, clock = _validator(dns, max_ttl=100, max_negative_ttl=10)
    n = len(dns.queries)
    v.check("a@long.test")  # TTL 10 days, capped at 100 s
    clock.now += 101
    v.check("a@long.test")
    assert _asked(dns, n, "long.test") == 2
    v.check("a@nx.test")  # NXDOMAIN, SOA says 30 s, capped at 10 s
    v.check("b@nx.test")
    assert _asked(dns, n, "nx.test") == 1
    clock.now += 11
    assert v.check("c@nx.test").check == "domain"
    assert _asked(dns, n, "nx.test") == 2
    v2, clock2 = _validator(dns)  # uncapped: the SOA's 30 s
    v2.check("a@nx2.test")
    clock2.now += 29
    v2.check("a@nx2.test")
    assert _asked(dns, n, "nx2.test") == 1


def test_negative_answers_without_soa_and_dns_failures_are_not_cached() -> None:
    with DnsServer(ZONES, silent=["slow.test"]) as bare:  # no SOA in negative answers
        v, _ = _validator(bare)
        v.check("a@nx.test")
        v.check("a@nx.test")
        assert sum(1 for q, t in bare.queries if q == "nx.test." and t == "MX") == 2
        assert v.check("a@slow.test").verdict == "unknown"
        assert len(v.cache) == 0


def test_cache_is_a_bounded_lru(dns: DnsServer) -> None:
    v, _ = _validator(dns, size=3)
    n = len(dns.queries)
    for i in range(3):
        v.check(f"a@d{i}.test")
    v.check("a@d0.test")  # d0 used again: d1 is now the least recently used
    v.check("a@d3.test")
    assert len(v.cache) == 3 and v.cache.evictions == 1
    v.check("a@d0.test")
    assert _asked(dns, n, "d0.test") == 1  # kept
    v.check("a@d1.test")
    assert _asked(dns, n, "d1.test") == 2  # evicted, asked again
    for i in range(8):
        v.check(f"a@d{i}.test")
    assert len(v.cache) == 3


# ------------------------------------------------------------------ the API


def _config(tmp_path: Path, dns: DnsServer, *, fake_mx: int = 2525, extra: str = "") -> Config:
    text = f"""
bounce_domain: bounce.test
secret_file: {tmp_path}/verp.key
store: sqlite:///{tmp_path}/bt.db
outbox:
  smtp_host: 127.0.0.1
  smtp_port: {fake_mx}
validation:
  nameserver: "127.0.0.1:{dns.port}"
  dns_timeout: 0.5
  max_batch: 20
  rate_per_minute: 40
domains:
  a.test:
    api_tokens: ["{hash_api_token(TOKEN_A)}"]
    validate_recipients: true
  b.test:
    api_tokens: ["{hash_api_token(TOKEN_B)}"]
{extra}"""
    path = tmp_path / "bouncetrack.yaml"
    path.write_text(text)
    return load_config_text(text, path)


@pytest.fixture()
def fake_mx() -> Iterator[FakeMX]:
    with FakeMX() as mx:
        yield mx


@pytest.fixture()
def api(tmp_path: Path, dns: DnsServer, fake_mx: FakeMX) -> Iterator[tuple[TestClient, Config]]:
    config = _config(tmp_path, dns, fake_mx=fake_mx.port)
    store = open_store(config.store_url)
    now = time.time()
    store.add_suppressions([
        Suppression("a.test", "gone@good.test", "hard_bounce", None, now, None),
        Suppression("b.test", "other@good.test", "complaint", None, now, None),
    ])
    store.close()
    with TestClient(create_app(config)) as client:
        yield client, config


def _validate(client: TestClient, token: str, addresses: list[Any], **kw: Any) -> Any:
    return client.post("/v1/addresses/validate", headers={"Authorization": f"Bearer {token}"},
                       json={"addresses": addresses, **kw})


def test_validate_endpoint_verdicts_and_own_suppression_list(api: tuple[TestClient, Config]) -> None:
    client, _ = api
    r = _validate(client, TOKEN_A, ["ok@good.test", "gone@good.test", "other@good.test", "a@nx.test",
                                    "abc@gmailhosted.test", "jo@remote.test\r\nBcc: x@y.test"])
    assert r.status_code == 200, r.text
    got = [(x["input"], x["verdict"], x["check"]) for x in r.json()["results"]]
    assert got == [
        ("ok@good.test", "valid", None),
        ("gone@good.test", "suppressed", "suppression"),
        ("other@good.test", "valid", None),  # on b.test's list: another tenant's, never consulted
        ("a@nx.test", "invalid", "domain"),
        ("abc@gmailhosted.test", "invalid", "provider"),
        ("jo@remote.test\r\nBcc: x@y.test", "invalid", "syntax"),
    ]
    assert r.json()["counts"] == {"valid": 2, "invalid": 3, "suppressed": 1, "unknown": 0}
    assert r.json()["results"][4]["provider"] == "gmail"
    r = _validate(client, TOKEN_B, ["other@good.test", "gone@good.test"])
    assert [x["verdict"] for x in r.json()["results"]] == ["suppressed", "valid"]
    r = _validate(client, TOKEN_A, ["ok@good.test"], domain="b.test")
    assert r.status_code == 403 and r.json()["parameter"] == "domain"
    r = _validate(client, TOKEN_A, ["ok@good.test"], domain="exa_mple.test")
    assert r.status_code == 400 and r.json()["parameter"] == "domain"
    # Counted for Prometheus, by verdict and failed check.
    text = client.get("/metrics").text
    assert 'bouncetrack_address_validations_total{check="suppression",verdict="suppressed"} 2.0' in text
    assert 'bouncetrack_address_validations_total{check="domain",verdict="invalid"} 1.0' in text
    assert "bouncetrack_address_dns_cache_entries" in text


@pytest.mark.parametrize("raw,fragment", HOSTILE)
def test_validate_endpoint_hostile_inputs(api: tuple[TestClient, Config], raw: str, fragment: str) -> None:
    client, _ = api
    r = _validate(client, TOKEN_A, [raw])
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert (res["verdict"], res["check"], res["address"]) == ("invalid", "syntax", None)
    assert fragment in res["reason"]


def test_validate_endpoint_caps_batch_and_rate(api: tuple[TestClient, Config]) -> None:
    client, _ = api
    r = _validate(client, TOKEN_A, [f"u{i}@good.test" for i in range(21)])
    assert r.status_code == 400 and "at most 20" in r.json()["detail"]
    for bad in ([], [1], "a@good.test", [None]):
        assert _validate(client, TOKEN_A, bad).status_code == 422  # type: ignore[arg-type]
    assert client.post("/v1/addresses/validate", json={"addresses": ["a@good.test"]}).status_code == 401
    assert _validate(client, TOKEN_A, [f"u{i}@good.test" for i in range(20)]).status_code == 200
    assert _validate(client, TOKEN_A, [f"u{i}@good.test" for i in range(20)]).status_code == 200
    r = _validate(client, TOKEN_A, ["one-more@good.test"])  # 40 a minute: spent
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert _validate(client, TOKEN_B, ["a@good.test"]).status_code == 200  # per token


def test_validation_settings_follow_a_reload(api: tuple[TestClient, Config], tmp_path: Path) -> None:
    client, _ = api
    assert _validate(client, TOKEN_A, ["ok@good.test"]).status_code == 200
    assert _validate(client, TOKEN_A, [f"u{i}@good.test" for i in range(21)]).status_code == 400
    path = tmp_path / "bouncetrack.yaml"
    new = load_config_text(path.read_text().replace("max_batch: 20", "max_batch: 30"), path)
    client.app.state.ctx.apply(new)  # type: ignore[attr-defined]  # what SIGHUP does (bouncetrack.core.reload)
    assert _validate(client, TOKEN_A, [f"u{i}@good.test" for i in range(21)]).status_code == 200
    # the verdicts counted before the reload are still counted: 1 + 21 valid
    valid = [line for line in client.get("/metrics").text.splitlines()
             if line.startswith("bouncetrack_address_validations_total{") and 'verdict="valid"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in valid) == 22.0, valid


def test_send_api_validate_recipients_option(api: tuple[TestClient, Config], fake_mx: FakeMX) -> None:
    client, _ = api

    def send(sender: str, *rcpts: str) -> Any:
        token = TOKEN_A if sender.endswith("a.test") else TOKEN_B
        return client.post("/v1/send", headers={"Authorization": f"Bearer {token}"},
                           json={"recipient": list(rcpts), "from": sender, "to": rcpts[0], "text": "Hi."})

    r = send("info@a.test", "ok@good.test", "a@nullmx.test")
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "recipient", 1] and "null MX" in err["msg"] and "domain check" in err["msg"]
    r = send("info@a.test", "abc@gmailhosted.test")
    assert r.status_code == 422 and "provider check" in r.json()["detail"][0]["msg"]
    assert fake_mx.transactions() == []  # nothing sent
    r = send("info@a.test", "ok@good.test", "x@slow.test")  # DNS undecided: sent, with a warning
    assert r.status_code == 202, r.text
    assert any("x@slow.test: not validated" in w for w in r.json()["warnings"])
    r = send("info@b.test", "a@nullmx.test")  # b.test has no validate_recipients
    assert r.status_code == 202, r.text
    assert len(fake_mx.delivered()) == 2


def test_dashboard_panel_shows_own_counts_only(api: tuple[TestClient, Config]) -> None:
    client, _ = api

    def panel(token: str) -> str:
        client.cookies.clear()
        r = client.post("/login", data={"token": token, "next": ""}, follow_redirects=False)
        assert r.status_code in (302, 303), r.text
        page: str = client.get("/dashboard").text
        start = page.index('id="address-validation"')
        return page[start:page.index("</section>", start)]

    assert "No addresses validated" in panel(TOKEN_A)
    assert _validate(client, TOKEN_A, ["ok@good.test", "a@nx.test", "gone@good.test"]).status_code == 200
    text = panel(TOKEN_A)
    assert "<td>valid</td><td class=\"n\">1</td>" in text and "<td>invalid</td><td class=\"n\">1</td>" in text
    assert "<td>suppressed</td><td class=\"n\">1</td>" in text
    other = panel(TOKEN_B)  # b.test's user: a.test's validations are not theirs
    assert "<td>valid</td><td class=\"n\">0</td>" in other and "<td>invalid</td><td class=\"n\">0</td>" in other
