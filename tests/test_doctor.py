"""`bouncetrack doctor` (issue 6): verdict rules, DNS against a local authoritative
server (tests/dnsserver.py) with good and broken zones, the milter negotiation, the
Postfix wiring of a real config directory before/after install, and the whole command
against the harness's running stack."""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from bouncetrack.core.config import Config, DomainPolicy
from bouncetrack.doctor import checks
from bouncetrack.doctor.checks import FAIL, OK, SKIP, WARN, Result
from bouncetrack.doctor.dnscheck import DnsPythonResolver, check_spf, dns_results
from tests.dnsserver import DnsServer
from tests.test_milter_policy import make_config

HERE = "192.0.2.10"
HERE6 = "2001:db8::10"
ELSEWHERE = "198.51.100.7"


def cfg(bounce: str = "bounce.example.com", *tracked: str) -> Config:
    base = make_config()
    domains = {d: DomainPolicy(d, tracking=True) for d in tracked}
    return Config(**{**base.__dict__, "bounce_domain": bounce, "domains": domains})


# --- pure verdicts ---------------------------------------------------------------------


@pytest.mark.parametrize("name,org", [
    ("bounce.example.com", "example.com"), ("example.com", "example.com"), ("a.b.example.co.uk", "example.co.uk"),
    ("example.co.uk", "example.co.uk"), ("mail.shop.com.au", "shop.com.au"), ("EXAMPLE.COM.", "example.com"),
])
def test_org_domain(name: str, org: str) -> None:
    assert checks.org_domain(name) == org


def test_dmarc_alignment_verdicts() -> None:
    ok = checks.dmarc_result("example.com", "bounce.example.com", "v=DMARC1; p=reject", "_dmarc.example.com")
    assert ok.verdict == OK and "relaxed alignment holds" in ok.why
    other = checks.dmarc_result("example.com", "bounces.example.net", "v=DMARC1; p=reject", "_dmarc.example.com")
    assert other.verdict == WARN and "example.com" in other.fix and "p=reject" in other.why
    strict = checks.dmarc_result("example.com", "bounce.example.com", "v=DMARC1; p=none; aspf=s", "_dmarc.example.com")
    assert strict.verdict == WARN and "aspf=s" in strict.why
    uk = checks.dmarc_result("shop.example.co.uk", "bounce.example.co.uk", None, None)
    assert uk.verdict == OK and "no DMARC record" in uk.why
    assert checks.dmarc_result("a.co.uk", "bounce.b.co.uk", None, None).verdict == WARN


def test_mx_verdicts() -> None:
    addrs = {"mx.example.com": [HERE]}
    assert checks.mx_result("b.example.com", [(10, "mx.example.com")], addrs, [HERE], explicit_expected=True).verdict == OK
    far = checks.mx_result("b.example.com", [(10, "mx.example.com")], {"mx.example.com": [ELSEWHERE]}, [HERE],
                           explicit_expected=True)
    assert far.verdict == FAIL and ELSEWHERE in far.why
    assert checks.mx_result("b.example.com", [(10, "mx.example.com")], {"mx.example.com": [ELSEWHERE]}, [HERE],
                            explicit_expected=False).verdict == WARN  # maybe NAT
    assert checks.mx_result("b.example.com", [(0, ".")], {}, [HERE], explicit_expected=True).verdict == FAIL
    assert checks.mx_result("b.example.com", [], {}, [HERE], explicit_expected=True, nxdomain=True).verdict == FAIL
    implicit = checks.mx_result("b.example.com", [], {"b.example.com": [HERE]}, [HERE], explicit_expected=True)
    assert implicit.verdict == WARN and "implicit MX" in implicit.why


def test_result_line_and_exit_code() -> None:
    r = Result("dns spf x", FAIL, "SPF rejects this host", "publish it")
    assert r.line() == "FAIL  dns spf x: SPF rejects this host -- fix: publish it"
    assert Result("a", OK, "fine", "ignored").line() == "OK    a: fine"
    assert checks.exit_code([Result("a", OK, ""), Result("b", WARN, ""), Result("c", SKIP, "")]) == 0
    assert checks.exit_code([Result("a", OK, ""), r]) == 1


def test_master_entry_with_the_pipe_client_warns_when_no_server_listens(tmp_path: Path) -> None:
    from bouncetrack.ops import postfix_wiring as wiring

    from bouncetrack.ops.install import default_pipe_client

    sock = tmp_path / "pipe.sock"
    master = ("bouncepipe unix - n n - 10 pipe flags=Rq user=bouncetrack argv=/v/bin/python -S "
              f"{default_pipe_client()} --socket {sock} --config /etc/bt.yaml ${{recipient}} ${{sender}}")
    kw: dict[str, Any] = dict(config_path="/etc/bt.yaml", pipe_user="bouncetrack", install="bouncetrack install")
    r = checks.master_result(master, **kw)
    assert r.verdict == WARN and "no pipe server listens" in r.line()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    listener.listen(1)
    try:
        assert checks.master_result(master, **kw).verdict == OK
    finally:
        listener.close()
    no_socket = master.replace(f"--socket {sock} ", "")
    assert checks.master_result(no_socket, **kw).verdict == FAIL
    # An upgrade moved the package: master.cf still names the old client (Python would exit 2).
    moved = checks.master_result(master.replace(default_pipe_client(), "/old/site-packages/bouncetrack/bounce_pipe/client.py"), **kw)
    assert moved.verdict == WARN and "moved by an upgrade" in moved.why
    assert wiring.SERVICE in checks.master_result(None, **kw).name


def test_postfix_results_from_values() -> None:
    from bouncetrack.ops import postfix_wiring as wiring

    sock = "/run/bouncetrack/milter.sock"
    good = {"smtpd_milters": f"inet:1:2, {wiring.milter_entry(sock)}", "non_smtpd_milters": f"unix:{sock}",
            "milter_default_action": "tempfail", "message_drop_headers": "bcc", "relay_domains": "b.test",
            "bouncepipe_destination_recipient_limit": "1"}
    master = ("bouncepipe unix - n n - 10 pipe flags=Rq user=bouncetrack argv=/v/bin/bouncetrack pipe --config "
              "/etc/bt.yaml ${recipient} ${sender}")
    kw: dict[str, Any] = dict(bounce_domain="b.test", milter_socket=sock, config_path="/etc/bt.yaml",
                              pipe_user="bouncetrack", transport_lookup="bouncepipe:", config_dir="/etc/postfix")
    rs = checks.postfix_results(good, master, **kw)
    assert all(r.verdict == OK for r in rs), [r.line() for r in rs]
    # the operator's global default_action=accept applies to a plain entry: FAIL
    bad = {**good, "milter_default_action": "accept"}
    verdicts = {r.name: r.verdict for r in checks.postfix_results(bad, master, **kw)}
    assert verdicts["postfix non_smtpd_milters"] == FAIL and verdicts["postfix smtpd_milters"] == OK
    rs = checks.postfix_results(good, master.replace("user=bouncetrack", "user=root"),
                                **{**kw, "transport_lookup": "smtp:[x]"})
    verdicts = {r.name: r.verdict for r in rs}
    assert verdicts["postfix transport"] == FAIL and verdicts["postfix master.cf bouncepipe"] == FAIL


# --- DNS against a local authoritative server ---------------------------------------------

GOOD: dict[str, list[tuple[str, str]]] = {
    "bounce.example.com": [("MX", "10 mx.example.com."), ("TXT", '"v=spf1 mx include:_spf.example.com -all"')],
    "mx.example.com": [("A", HERE), ("AAAA", HERE6)],
    "_spf.example.com": [("TXT", '"v=spf1 ip4:203.0.113.0/24 ip6:2001:db8::/64 ~all"')],
    "_dmarc.example.com": [("TXT", '"v=DMARC1; p=reject; rua=mailto:d@example.com"')],
    "example.com": [("A", HERE)],
    "example.net": [("A", ELSEWHERE)],
    "_dmarc.example.net": [("TXT", '"v=DMARC1; p=quarantine"')],
    "shop.example.co.uk": [("A", HERE)],
    "_dmarc.example.co.uk": [("TXT", '"v=DMARC1; p=none; aspf=s"')],
}


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer(GOOD) as server:
        yield server


@pytest.fixture()
def resolver(dns: DnsServer) -> DnsPythonResolver:
    dns.zones = GOOD
    return DnsPythonResolver("127.0.0.1", dns.port, timeout=2)


def by_name(results: list[Result]) -> dict[str, Result]:
    return {r.name: r for r in results}


def test_good_zone_all_ok(resolver: DnsPythonResolver) -> None:
    rs = by_name(dns_results(resolver, cfg("bounce.example.com", "example.com"), [HERE], explicit_expected=True))
    assert rs["dns mx bounce.example.com"].verdict == OK, rs["dns mx bounce.example.com"].line()
    assert rs["dns spf bounce.example.com"].verdict == OK, rs["dns spf bounce.example.com"].line()
    assert rs["dmarc example.com"].verdict == OK and "p=reject" in rs["dmarc example.com"].why


def test_resolver_seam(resolver: DnsPythonResolver) -> None:
    from bouncetrack.doctor.dnscheck import NxDomain

    assert resolver.mx("bounce.example.com") == [(10, "mx.example.com")]
    assert sorted(resolver.a("mx.example.com")) == sorted([HERE, HERE6])
    assert resolver.txt("nothing.example.com") == []  # NXDOMAIN: empty
    assert resolver.mx("example.com") == []  # name exists, no MX
    with pytest.raises(NxDomain):
        resolver.mx("nothing.example.com")


@pytest.mark.parametrize("ip,result", [
    (HERE, "pass"), (HERE6, "pass"),  # mx
    ("203.0.113.9", "pass"), ("2001:db8::99", "pass"),  # include
    (ELSEWHERE, "fail"),  # -all
])
def test_spf_evaluator(resolver: DnsPythonResolver, ip: str, result: str) -> None:
    assert check_spf(resolver, ip, "bounce.example.com")[0] == result


def test_dmarc_warnings(resolver: DnsPythonResolver) -> None:
    rs = by_name(dns_results(resolver, cfg("bounce.example.com", "example.net", "shop.example.co.uk"), [HERE],
                             explicit_expected=True))
    net = rs["dmarc example.net"]
    assert net.verdict == WARN and "not under example.net" in net.why and "p=quarantine" in net.why
    uk = rs["dmarc shop.example.co.uk"]  # org domain differs (example.co.uk vs example.com)
    assert uk.verdict == WARN
    rs = by_name(dns_results(resolver, cfg("bounce.example.co.uk", "shop.example.co.uk"), [HERE], explicit_expected=True))
    strict = rs["dmarc shop.example.co.uk"]  # same org domain, but the org's record says aspf=s
    assert strict.verdict == WARN and "aspf=s" in strict.why and "_dmarc.example.co.uk" in strict.why


BROKEN: dict[str, dict[str, list[tuple[str, str]]]] = {
    "mx elsewhere, spf fails": {
        "bounce.example.com": [("MX", "10 mx.other.test."), ("TXT", '"v=spf1 ip4:198.51.100.0/24 -all"')],
        "mx.other.test": [("A", ELSEWHERE)],
    },
    "null mx, two spf records": {
        "bounce.example.com": [("MX", "0 ."), ("TXT", '"v=spf1 -all"'), ("TXT", '"v=spf1 +all"')],
    },
    "mx without address, spf loops on lookups": {
        "bounce.example.com": [("MX", "10 gone.example.com."), ("TXT", '"v=spf1 include:l1.example.com -all"')],
        **{f"l{i}.example.com": [("TXT", f'"v=spf1 a:x{i}.example.com include:l{i + 1}.example.com -all"')]
           for i in range(1, 12)},
        **{f"x{i}.example.com": [("A", ELSEWHERE)] for i in range(1, 12)},
    },
    "domain missing": {},
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_zones_fail(dns: DnsServer, case: str) -> None:
    dns.zones = BROKEN[case]
    resolver = DnsPythonResolver("127.0.0.1", dns.port, timeout=2)
    rs = by_name(dns_results(resolver, cfg("bounce.example.com"), [HERE], explicit_expected=True))
    mx, spf = rs["dns mx bounce.example.com"], rs["dns spf bounce.example.com"]
    assert mx.verdict == FAIL and mx.fix, mx.line()
    if case == "domain missing":
        assert spf.verdict == WARN and "no SPF record" in spf.why
    else:
        assert spf.verdict == FAIL, spf.line()
    if case.startswith("null mx"):
        assert "null MX" in mx.why and "2 SPF records" in spf.why
    if "loops" in case:
        assert "more than 10 DNS-querying terms" in spf.why


def test_spf_redirect_void_and_macros(dns: DnsServer) -> None:
    dns.zones = {
        "r.test": [("TXT", '"v=spf1 redirect=_spf.r.test"')],
        "_spf.r.test": [("TXT", f'"v=spf1 exists:%{{i}}.x.r.test a:h.r.test/24 ?all"')],
        "h.r.test": [("A", "192.0.2.200")],
        "void.test": [("TXT", '"v=spf1 a:n1.void.test a:n2.void.test a:n3.void.test -all"')],
        "bad.test": [("TXT", '"v=spf1 redirect=none.test"')],
    }
    resolver = DnsPythonResolver("127.0.0.1", dns.port, timeout=2)
    result, note = check_spf(resolver, HERE, "r.test")
    assert result == "pass" and "macros not evaluated" in note  # a:/24 covers 192.0.2.10
    assert check_spf(resolver, ELSEWHERE, "r.test")[0] == "neutral"
    assert check_spf(resolver, HERE, "void.test") == ("permerror", "more than 2 void lookups (RFC 7208 §4.6.4)")
    assert check_spf(resolver, HERE, "bad.test")[0] == "permerror"  # redirect to a domain without SPF


def test_dns_timeout_is_a_warning_not_a_crash() -> None:
    # A port nobody answers on: the lookup times out.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        resolver = DnsPythonResolver("127.0.0.1", s.getsockname()[1], timeout=0.5)
        rs = by_name(dns_results(resolver, cfg("bounce.example.com"), [HERE], explicit_expected=True))
    finally:
        s.close()
    assert rs["dns mx bounce.example.com"].verdict == WARN
    assert rs["dns spf bounce.example.com"].verdict == WARN and "temperror" in rs["dns spf bounce.example.com"].why


# --- milter negotiation ----------------------------------------------------------------------


def _fake_milter(path: str, actions: int) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            length = struct.unpack(">I", conn.recv(4))[0]
            body = conn.recv(length)
            assert body[:1] == b"O"
            reply = b"O" + struct.pack(">III", 6, actions, 0)
            conn.sendall(struct.pack(">I", len(reply)) + reply)
            conn.recv(16)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_milter_probe(tmp_path: Path) -> None:
    from bouncetrack.doctor.cli import check_milter

    sock = tmp_path / "m.sock"
    config = Config(**{**make_config().__dict__, "milter_socket": sock})
    assert check_milter(config).verdict == FAIL  # no socket
    t = _fake_milter(str(sock), 0x1FF)
    r = check_milter(config)
    t.join(5)
    # OK, or WARN because tmp_path is not group postfix: the negotiation itself worked
    assert r.verdict in (OK, WARN) and "answers" in r.why and "does not ask for CHGFROM" not in r.why
    sock.unlink()
    t = _fake_milter(str(sock), 0x01)  # answers, but does not want CHGFROM: not ours
    r = check_milter(config)
    t.join(5)
    assert r.verdict == WARN and "CHGFROM" in r.why
    sock.unlink()
    plain = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    plain.bind(str(sock))
    plain.listen(1)
    try:
        r = check_milter(config, timeout=0.5)  # accepts the connection, never answers
    finally:
        plain.close()
    assert r.verdict == FAIL and "does not answer" in r.why


# --- Postfix wiring of a real config directory --------------------------------------------------


def _root_postfix() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/usr/sbin/postconf"):
        return "Postfix is not installed"
    return None


@pytest.mark.skipif(_root_postfix() is not None, reason=_root_postfix() or "")
def test_postfix_checks_before_and_after_install(tmp_path: Path) -> None:
    from bouncetrack.core.config_loader import load_config
    from bouncetrack.doctor.cli import check_postfix
    from bouncetrack.harness.postfix import PrivatePostfix
    from bouncetrack.ops.install import install

    pf = PrivatePostfix(tmp_path / "pf", routes={"remote.test": "smtp:[127.0.0.1]:2526"})
    pf.write()
    path = tmp_path / "config.yaml"
    path.write_text(f"bounce_domain: bounce.test\nmilter_socket: {tmp_path}/milter.sock\n")
    config = load_config(path)
    before = by_name(check_postfix(config, pf.config_dir, "bouncetrack"))
    assert before["postfix smtpd_milters"].verdict == FAIL and "bouncetrack install" in before["postfix smtpd_milters"].fix
    assert before["postfix transport"].verdict == FAIL and before["postfix master.cf bouncepipe"].verdict == FAIL
    install(config, pf.config_dir, echo=lambda s: None)
    after = check_postfix(config, pf.config_dir, "bouncetrack")
    # Wired; only the pipe server is not running here (install wires the pipe client).
    not_ok = [r.line() for r in after if r.verdict != OK]
    assert len(not_ok) == 1 and not_ok[0].startswith("WARN  postfix master.cf bouncepipe: no pipe server"), not_ok
    assert check_postfix(config, tmp_path / "nope", "bouncetrack")[0].verdict == SKIP


@pytest.mark.skipif(_root_postfix() is not None, reason=_root_postfix() or "")
def test_pipe_user_cannot_read_a_private_config(tmp_path: Path) -> None:
    from bouncetrack.core.config_loader import load_config
    from bouncetrack.doctor.cli import check_pipe_user

    tmp_path.chmod(0o700)  # like /root: the pipe user cannot get in
    path = tmp_path / "config.yaml"
    path.write_text(f"bounce_domain: bounce.test\nsecret_file: {tmp_path}/verp.key\nstore: sqlite:///{tmp_path}/bt.db\n")
    (tmp_path / "bt.db").write_bytes(b"")
    rs = by_name(check_pipe_user(load_config(path), "bouncetrack", "/opt/bouncetrack/venv/bin/python"))
    assert rs["pipe reads config file"].verdict == FAIL and "cannot read" in rs["pipe reads config file"].why
    assert rs["store"].verdict == FAIL
    assert by_name(check_pipe_user(load_config(path), "no-such-user-bt", "/x"))["pipe user"].verdict == FAIL


# --- the whole command against the running harness -------------------------------------------------

STACK_OPTIONS = {"with_milter": True, "pipe": "real"}


@pytest.mark.postfix
def test_doctor_against_the_running_stack(stack: Any, dns: DnsServer) -> None:
    from click.testing import CliRunner

    from bouncetrack.cli import build_cli

    dns.zones = {
        "bounce.test": [("MX", "10 mx.harness.test."), ("TXT", f'"v=spf1 ip4:{HERE} -all"')],
        "mx.harness.test": [("A", HERE)],
        "_dmarc.tracked.test": [("TXT", '"v=DMARC1; p=reject"')],
    }
    # one tracked message, so that the milter has created the store
    assert stack.send("info@tracked.test", ["someone@remote.test"]).accepted
    stack.wait_for(lambda: stack.db_path.exists(), 10)
    args = ["doctor", "--config", str(stack.config_path), "--postfix-dir", str(stack.postfix.config_dir),
            "--nameserver", f"127.0.0.1:{dns.port}", "--expect-ip", HERE]
    r = CliRunner().invoke(build_cli(), args)
    lines = r.output.splitlines()
    assert r.exit_code == 0, r.output
    assert any(line.startswith("OK    milter socket:") for line in lines), r.output
    assert any(line.startswith("OK    store:") for line in lines), r.output
    assert any(line.startswith("OK    dns mx bounce.test") for line in lines), r.output
    assert any(line.startswith("WARN  dmarc tracked.test") for line in lines), r.output  # bounce.test is another org
    # the same with the milter stopped: FAIL and exit 1
    stack.stop_milter()
    try:
        r = CliRunner().invoke(build_cli(), [*args, "--no-dns"])
        assert r.exit_code == 1 and "FAIL  milter socket" in r.output, r.output
    finally:
        stack.start_milter()
