"""Addresses from people (issue 19): the parser, and hostile or odd addresses at every entry point.

Every entry point (the YAML config, the send API, the suppression CLI and API, the API's
filters) gets the same odd and hostile inputs: the odd-but-valid ones come back in one
canonical form, the others are refused with a clear 4xx or CLI error naming the field and
what is wrong, and nothing is stored or sent. The send API talks to a real SMTP sink; the
suppression list is a real SQLite file.
"""

from __future__ import annotations

import email
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from bouncetrack.core import addresses
from bouncetrack.core.addresses import AddressError, parse_address, parse_domain, parse_mailbox_list
from bouncetrack.api.app import create_app
from bouncetrack.cli import build_cli
from bouncetrack.core.config import Config, ConfigError
from bouncetrack.core.config_loader import load_config_text
from bouncetrack.harness.fakemx import FakeMX
from bouncetrack.store import open_store
from bouncetrack.core.tokens import hash_api_token

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bt_addr-token"

# (input, fragment of the refusal): refused at every entry point that takes an address.
HOSTILE: list[tuple[str, str]] = [
    ("Jo Smith <jo@remote.test>", "display name"),
    ("jo@remote.test (work)", "comments"),
    ("jo(work)@remote.test", "comments"),
    ("jo@remote.test.", "ends with a dot"),
    ("a" * 994 + "@x.test", "characters long"),
    ("jo@remote.test\r\nBcc: victim@x.test", "CR or LF"),
    ("jo@remote.test\n", "CR or LF"),
    ("jo\x00@remote.test", "NUL"),
    ("jo@remote.test\x7f", "control characters"),
    ("jo\u2028@remote.test", "control characters"),
    ("jö@remote.test", "non-ASCII local part"),
    ("a" * 65 + "@remote.test", "local part is 65"),
    ("jo@" + "l" * 64 + ".test", "at most 63"),
    ("jo@re_mote.test", "letters, digits and hyphens"),
    ("jo@-remote.test", "hyphen"),
    ("jo@xn--zz.test", "invalid domain"),
    ("jo@remote", "single label"),
    ("jo..smith@remote.test", "invalid local part"),
    ('"unterminated@remote.test', "not an email address"),
    ("jo@[300.1.1.1]", "not an IP address"),
    ("jo@remote.test, eve@remote.test", "not a valid address"),
    ("", "empty"),
    ("   ", "empty"),  # (the config loader says "must not be empty" before parsing)
]

# (input, canonical form): odd but valid, accepted everywhere in this form.
ODD: list[tuple[str, str]] = [
    ('"jo smith"@remote.test', '"jo smith"@remote.test'),
    ('"jo@home"@remote.test', '"jo@home"@remote.test'),
    ("jo@bücher.test", "jo@xn--bcher-kva.test"),
    ("jo@BÜCHER.test", "jo@xn--bcher-kva.test"),
    ("jo@xn--bcher-kva.test", "jo@xn--bcher-kva.test"),
    ("<Jo.Smith@Remote.TEST>", "Jo.Smith@remote.test"),
    ("  jo@remote.test  ", "jo@remote.test"),
    ("a" * 64 + "@remote.test", "a" * 64 + "@remote.test"),
]


# ------------------------------------------------------------------ the parser itself


@pytest.mark.parametrize("raw,fragment", HOSTILE)
def test_parse_address_refuses_saying_why(raw: str, fragment: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_address(raw)
    assert fragment in str(exc.value), str(exc.value)


@pytest.mark.parametrize("raw,canonical", ODD)
def test_parse_address_canonical_form(raw: str, canonical: str) -> None:
    assert parse_address(raw).addr_spec == canonical


@pytest.mark.parametrize("raw,want", [
    ("Example.COM", "example.com"), ("example.com.", "example.com"), ("bücher.test", "xn--bcher-kva.test"),
    ("XN--BCHER-KVA.test", "xn--bcher-kva.test"),
])
def test_parse_domain(raw: str, want: str) -> None:
    assert parse_domain(raw) == want


@pytest.mark.parametrize("raw,fragment", [
    ("https://example.com/", "without scheme"), ("jo@example.com", "not an address"), ("localhost", "single label"),
    ("192.0.2.1", "numeric"), ("exa_mple.com", "letters, digits"), ("a..b.com", "not a valid domain"),
    ("x" * 300 + ".com", "characters long"), ("example.com\r\n", "CR or LF"), ("[192.0.2.1]", "address literal"),
])
def test_parse_domain_refuses(raw: str, fragment: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_domain(raw)
    assert fragment in str(exc.value)


def test_mailbox_lists_keep_display_names() -> None:
    got = parse_mailbox_list('"Doe, Jane" <jane@remote.test>; Jö <jo@bücher.test>, =?utf-8?q?J=C3=B6?= <j@x.test>')
    assert [(a.display_name, a.addr_spec) for a in got] == [
        ("Doe, Jane", "jane@remote.test"), ("Jö", "jo@xn--bcher-kva.test"), ("Jö", "j@x.test")]
    for bad in ("a@b.test, broken", "G: a@b.test;", "http://x.test/", "a@b.test (c)", ",", "x\r\nBcc: v@x.test"):
        with pytest.raises(AddressError):
            parse_mailbox_list(bad)


_atext = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=12)
_label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(_atext, min_size=1, max_size=4), st.lists(_label, min_size=2, max_size=4))
def test_fast_path_agrees_with_flanker(local_atoms: list[str], labels: list[str]) -> None:
    """The regular-expression layer returns exactly what the flanker layer would."""
    local, domain = ".".join(local_atoms), ".".join(labels)
    fast = addresses._fast(local, domain)
    if fast is None:
        return
    parsed = addresses._flanker().parse(f"{local}@{domain}", addr_spec_only=True, strict=True)
    assert parsed is not None
    assert addresses._checked(parsed.mailbox, parsed.hostname, "") == fast


def test_flanker_stays_off_the_milter_and_pipe_start() -> None:
    """Loading an ordinary configuration (the milter's and the pipe's start) imports no flanker."""
    code = textwrap.dedent("""
        import sys
        import bouncetrack.bounce_pipe.client, bouncetrack.bounce_pipe.main, bouncetrack.bounce_pipe.process
        import bouncetrack.milter.runner, bouncetrack.milter.app
        from bouncetrack.core.config_loader import load_config_text
        load_config_text('bounce_domain: bounce.example.com\\ndomains:\\n  example.com:\\n'
                         '    forward: bounces@example.com\\n', 'x.yaml')
        assert not [m for m in sys.modules if m.startswith('flanker')], sorted(sys.modules)
        assert 'bouncetrack.validation' not in sys.modules
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ------------------------------------------------------------------ the config


def _config_text(tmp_path: Path, forward: str, domain: str = "example.com") -> str:
    q = forward.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
    q = q.replace("\x00", "\\0").replace("\x7f", "\\x7f").replace("\u2028", "\\L")
    return (f"bounce_domain: bounce.example.com\nsecret_file: {tmp_path}/verp.key\n"
            f"store: sqlite:///{tmp_path}/bt.db\ndomains:\n  {domain}:\n    forward: \"{q}\"\n")


@pytest.mark.parametrize("raw,fragment", HOSTILE)
def test_config_forward_address_refused_with_file_line_key(tmp_path: Path, raw: str, fragment: str) -> None:
    if raw.strip() and raw.strip() != raw and "\n" not in raw.strip():
        # The loader strips every string's surrounding whitespace (YAML block scalars end in a newline).
        config = load_config_text(_config_text(tmp_path, raw), tmp_path / "bt.yaml")
        assert config.domains["example.com"].forward == raw.strip()
        return
    with pytest.raises(ConfigError) as exc:
        load_config_text(_config_text(tmp_path, raw), tmp_path / "bt.yaml")
    (prob,) = exc.value.problems
    assert prob.line == 6 and prob.key == "domains.example.com.forward", str(prob)
    assert str(prob).startswith(f"{tmp_path}/bt.yaml:6: domains.example.com.forward: ")
    assert fragment in prob.message, str(prob)


@pytest.mark.parametrize("raw,canonical", ODD)
def test_config_forward_address_canonical(tmp_path: Path, raw: str, canonical: str) -> None:
    config = load_config_text(_config_text(tmp_path, raw), tmp_path / "bt.yaml")
    assert config.domains["example.com"].forward == canonical


def test_config_idn_domains(tmp_path: Path) -> None:
    text = (f"bounce_domain: Bounce.Bücher.test.\nsecret_file: {tmp_path}/verp.key\n"
            f"store: sqlite:///{tmp_path}/bt.db\ndomains:\n  bücher.test:\n    tracking: true\n")
    config = load_config_text(text, tmp_path / "bt.yaml")
    assert config.bounce_domain == "bounce.xn--bcher-kva.test"
    assert list(config.domains) == ["xn--bcher-kva.test"]
    # The same domain twice, once as U-label and once as A-label: named as a duplicate.
    text += "  XN--BCHER-KVA.test:\n    tracking: true\n"
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, tmp_path / "bt.yaml")
    assert "listed twice" in str(exc.value) and "bt.yaml:7: domains.XN--BCHER-KVA.test" in str(exc.value)


@pytest.mark.parametrize("domain,fragment", [("exa_mple.com", "letters, digits"), ("a" * 64 + ".com", "at most 63"),
                                              ("localhost", "single label")])
def test_config_bad_domain_keys(tmp_path: Path, domain: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config_text(_config_text(tmp_path, "a@example.net", domain), tmp_path / "bt.yaml")
    (prob,) = exc.value.problems
    assert prob.line == 5 and prob.key == f"domains.{domain}" and fragment in prob.message, str(prob)


# ------------------------------------------------------------------ the send API (real SMTP sink)


@pytest.fixture()
def sink() -> Iterator[FakeMX]:
    """The local MTA the send API submits to: a real SMTP server that records every
    transaction (MAIL FROM on), and takes the DSN parameters the API sends."""
    with FakeMX() as s:
        yield s


@pytest.fixture()
def api_config(tmp_path: Path, sink: FakeMX) -> Config:
    text = f"""
bounce_domain: bounce.test
secret_file: {tmp_path}/verp.key
store: sqlite:///{tmp_path}/bt.db
outbox:
  smtp_host: 127.0.0.1
  smtp_port: {sink.port}
domains:
  a.test:
    tracking: false
    api_tokens: ["{hash_api_token(TOKEN)}"]
"""
    (tmp_path / "bouncetrack.yaml").write_text(text)
    return load_config_text(text, tmp_path / "bouncetrack.yaml")


@pytest.fixture()
def client(api_config: Config) -> Iterator[TestClient]:
    with TestClient(create_app(api_config)) as c:
        yield c


def _send(client: TestClient, **over: Any) -> Any:
    body: dict[str, Any] = {"recipient": "rcpt@remote.test", "from": "info@a.test", "to": "rcpt@remote.test",
                            "subject": "Hi", "text": "Hello."}
    body.update(over)
    return client.post("/v1/send", json=body, headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.mark.parametrize("field", ["recipient", "envelope", "bounce", "to", "from"])
@pytest.mark.parametrize("raw,fragment", HOSTILE)
def test_send_api_refuses_hostile_addresses(client: TestClient, sink: FakeMX, field: str, raw: str,
                                            fragment: str) -> None:
    if field in ("to", "from") and raw.startswith("Jo Smith <"):
        return  # a display name is what header fields allow
    if field in ("to", "from") and "," in raw:
        fragment = "exactly one From" if field == "from" else "not a valid address"
        if field == "to":
            return  # two recipients in To: a valid list
    if field == "envelope" or field == "bounce":
        if raw.strip() == "":
            fragment = ""
    r = _send(client, **{field: raw})
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert any(e["loc"][-1] == field or (len(e["loc"]) > 1 and e["loc"][1] == field) for e in errors), errors
    if field not in ("to", "from"):
        assert any(fragment in e["msg"] for e in errors), errors
    assert sink.transactions() == []


@pytest.mark.parametrize("raw,canonical", ODD)
def test_send_api_odd_recipient_goes_out_canonical(client: TestClient, sink: FakeMX, raw: str,
                                                   canonical: str) -> None:
    r = _send(client, recipient=raw)
    assert r.status_code == 202, r.text
    assert r.json()["recipients"] == [canonical]
    (t,) = sink.delivered()
    assert t.accepted == [canonical]


def test_send_api_header_fields_take_display_names_and_idn(client: TestClient, sink: FakeMX) -> None:
    r = _send(client, to='"Doe, Jane" <jane@bücher.test>', **{"from": "Info Desk <info@a.test>"})
    assert r.status_code == 202, r.text
    (t,) = sink.delivered()
    assert t.data is not None
    msg = email.message_from_bytes(t.data)
    assert msg["To"] == '"Doe, Jane" <jane@xn--bcher-kva.test>' and msg["From"] == "Info Desk <info@a.test>"


# ------------------------------------------------------------------ the suppression API and CLI


def _store_entries(config: Config) -> list[Any]:
    store = open_store(config.store_url)
    try:
        return list(store.suppressions(None, time.time(), limit=100))
    finally:
        store.close()


@pytest.mark.parametrize("raw,fragment", HOSTILE)
def test_suppression_api_refuses_and_stores_nothing(client: TestClient, api_config: Config, raw: str,
                                                    fragment: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/v1/suppressions", headers=auth, json={"addresses": ["ok@remote.test", raw]})
    assert r.status_code == 400 and r.json()["parameter"] == "addresses[1]", r.text
    assert fragment in r.json()["detail"]
    assert _store_entries(api_config) == []  # the valid first address was not stored either
    r = client.get("/v1/suppressions", headers=auth, params={"address": raw})
    assert r.status_code in (400, 422), r.text
    if raw.strip():
        r = client.delete(f"/v1/suppressions/{quote(raw, safe='')}", headers=auth)
        assert r.status_code in (400, 422), r.text


@pytest.mark.parametrize("raw,canonical", ODD)
def test_suppression_api_stores_the_canonical_key(client: TestClient, api_config: Config, raw: str,
                                                  canonical: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/v1/suppressions", headers=auth, json={"addresses": [raw]})
    assert r.status_code == 201, r.text
    local, _, domain = canonical.rpartition("@")
    assert [e.address for e in _store_entries(api_config)] == [f"{local.lower()}@{domain}"]


def test_api_filters_parse_domains(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for params in ({"recipient_domain": "exa_mple.com"}, {"recipient_domain": "x\r\ny.com"},
                   {"recipient_domain": "a@b.com"}, {"domain": "a.test\x00"}):
        r = client.get("/v1/bounces/2026-01-01/2026-01-02", headers=auth, params=params)
        assert r.status_code == 400, (params, r.text)
    r = client.get("/v1/bounces/2026-01-01/2026-01-02", headers=auth, params={"recipient_domain": "Bücher.test."})
    assert r.status_code == 200, r.text
    r = client.get("/v1/suppressions", headers=auth, params={"domain": "exa_mple.com"})
    assert r.status_code == 400 and r.json()["parameter"] == "domain"


def _cli(config: Config, *args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(build_cli(), ["suppression", args[0], "--config", str(config.path), *args[1:]],
                              input=stdin)


@pytest.mark.parametrize("raw,fragment", HOSTILE)
def test_suppression_cli_refuses_and_stores_nothing(api_config: Config, raw: str, fragment: str) -> None:
    r = _cli(api_config, "add", "--domain", "a.test", "ok@remote.test", raw)
    assert r.exit_code != 0 and "not an email address" in r.output and fragment in r.output, r.output
    assert _store_entries(api_config) == []
    if "\n" not in raw and "\r" not in raw and raw.strip():
        r = _cli(api_config, "add", "--domain", "a.test", "-", stdin=f"ok@remote.test\n{raw}\n")
        assert r.exit_code != 0 and "line 2" in r.output and fragment in r.output, r.output
        assert _store_entries(api_config) == []


def test_suppression_cli_bulk_import_and_bad_domain(api_config: Config) -> None:
    stdin = "# exported list\nJo@Remote.test\n\n\"jo smith\"@remote.test\njo@bücher.test\n"
    r = _cli(api_config, "add", "--domain", "A.test.", "-", stdin=stdin)
    assert r.exit_code == 0 and "added 3 to a.test" in r.output, r.output
    assert sorted(e.address for e in _store_entries(api_config)) == [
        '"jo smith"@remote.test', "jo@remote.test", "jo@xn--bcher-kva.test"]
    r = _cli(api_config, "add", "--domain", "a_b.test", "x@remote.test")
    assert r.exit_code != 0 and "--domain" in r.output and "letters, digits" in r.output, r.output
