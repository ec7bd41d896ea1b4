"""Verdicts of ``bouncetrack doctor`` (pure: inputs in, :class:`Result` out).

The probes that gather the inputs (postconf, the milter socket, the pipe user, DNS)
live in :mod:`bouncetrack.doctor.cli` and :mod:`bouncetrack.doctor.dnscheck`; every rule
that turns what they found into OK / WARN / FAIL is here, so it is tested without a
Postfix, a milter or a DNS server.

Verdicts: ``OK``; ``WARN`` works but is fragile or could not be checked fully;
``FAIL`` mail is lost, deferred or mis-tracked until fixed (doctor exits 1);
``SKIP`` not applicable or impossible here (e.g. not root).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from ..ops import postfix_wiring as wiring
from ..core.config import Config
from ..ops.install import default_pipe_client

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"


@dataclass(frozen=True)
class Result:
    name: str  # short check name, e.g. "postfix milters"
    verdict: str  # OK | WARN | FAIL | SKIP
    why: str  # what was found
    fix: str = ""  # how to fix it (WARN/FAIL)

    def line(self) -> str:
        text = f"{self.verdict:<4}  {self.name}: {self.why}"
        if self.fix and self.verdict in (WARN, FAIL):
            text += f" -- fix: {self.fix}"
        return text


def exit_code(results: Iterable[Result]) -> int:
    """1 when anything FAILed, else 0 (WARN does not fail the run)."""
    return 1 if any(r.verdict == FAIL for r in results) else 0


# ---------------------------------------------------------------------------
# Postfix wiring


#: What :data:`SocketProbe` says of a path: the milter's socket, no such file, another
#: file, or not known (no permission to look).
SOCKET_OURS, SOCKET_MISSING, SOCKET_OTHER, SOCKET_UNKNOWN = "ours", "missing", "other", "unknown"
#: path -> one of the SOCKET_* values (the I/O is in doctor/cli.py).
SocketProbe = Callable[[str], str]


def postfix_results(
    main: Mapping[str, str],
    master: str | None,
    *,
    bounce_domain: str,
    milter_socket: str,
    config_path: str,
    pipe_user: str,
    transport_lookup: str | None,
    config_dir: str,
    milter_address: str | None = None,
    services: Sequence[wiring.Service] = (),
    queue_directory: str = wiring.DEFAULT_QUEUE_DIRECTORY,
    probe: SocketProbe | None = None,
    wiring_error: str = "",
    overrides: Mapping[str, Mapping[str, str]] | None = None,
    transport_want: str | None = None,
) -> list[Result]:
    """Checks of the effective main.cf values and the ``bouncepipe`` master.cf entry.

    ``milter_socket``: the configured socket (a host path). ``milter_address``: the name
    ``bouncetrack install`` writes for it (relative to ``queue_directory`` when under it),
    None when no name reaches it through the chroot (``wiring_error`` says why). Our
    element of each milter list is found under either name. With ``probe``, each
    service that connects to it (``services``: master.cf) is checked to find the socket
    where *it* looks (:func:`reach_result`). ``overrides``: master.cf's ``-o`` settings
    per service (``postconf -P``); a service that replaces a milter list without our
    milter gets a WARN (its mail is not tracked).
    ``transport_lookup``: what Postfix's transport_maps return for the bounce domain
    (first hit, as ``postmap -q`` gives it), None for no hit; ``transport_want``: what it
    should be (default ``bouncepipe:``; the LMTP transport's nexthop, :func:`lmtp_results`).
    """
    install = f"bouncetrack install --postfix-dir {config_dir} --config {config_path}"
    fix_wiring = wiring_error or install
    out: list[Result] = []
    for param in ("smtpd_milters", "non_smtpd_milters"):
        name = milter_address or milter_socket
        item = wiring.find_milter(main.get(param, ""), name, also=[milter_socket])
        if item is None:
            out.append(Result(f"postfix {param}", FAIL, f"unix:{name} is not in {param}"
                              + (" (mail is not tracked)" if param == "smtpd_milters" else
                                 " (locally submitted mail is not tracked)"), fix_wiring))
            continue
        eff = wiring.effective_milter_settings(item, main)
        if eff["default_action"] != "tempfail":
            out.append(Result(f"postfix {param}", FAIL,
                              f"our milter's default_action is {eff['default_action']}: while it is down mail "
                              "passes untracked (or is refused)", install))
        elif eff["protocol"] != "6":
            out.append(Result(f"postfix {param}", FAIL, f"our milter speaks protocol {eff['protocol']}; "
                              "changing the envelope sender needs 6", install))
        else:
            out.append(Result(f"postfix {param}", OK, f"{item} (default_action=tempfail, protocol 6)"))
        if probe is not None:
            target = wiring.milter_target(item)[0]
            out.append(reach_result(param, target[5:] if target.startswith("unix:") else target, services,
                                    queue_directory=queue_directory, milter_socket=milter_socket, probe=probe,
                                    fix=fix_wiring))
        for key, settings in sorted((overrides or {}).items()):
            if param in settings and wiring.find_milter(settings[param], name, also=[milter_socket]) is None:
                out.append(Result(f"postfix {key} {param}", WARN,
                                  f"master.cf gives {key} its own {param} ({settings[param] or 'empty'}) without "
                                  "our milter: mail it receives is not tracked",
                                  f"add {{ unix:{name}, default_action=tempfail, protocol=6 }} to that -o {param}=, "
                                  "or drop the override"))
    drops = [h.lower() for h in wiring.split_list(main.get("message_drop_headers", ""))]
    if "return-path" in drops:
        out.append(Result("postfix message_drop_headers", WARN, "Postfix drops Return-Path before the milter "
                          "sees it (a Return-Path header cannot name the bounce address)", install))
    else:
        out.append(Result("postfix message_drop_headers", OK, "Return-Path reaches the milter"))
    want = transport_want or f"{wiring.SERVICE}:"
    if transport_lookup is None:
        out.append(Result("postfix transport", FAIL, f"transport_maps has no entry for {bounce_domain}: bounces "
                          "would be relayed by DNS instead of piped", install))
    elif transport_lookup.strip().lower() != want:
        out.append(Result("postfix transport", FAIL, f"{bounce_domain} is routed to {transport_lookup.strip()!r}, "
                          f"not {want}", f"{install} (our map goes first in transport_maps)"))
    else:
        out.append(Result("postfix transport", OK, f"{bounce_domain} -> {want}"))
    relay = [d.lower() for d in wiring.split_list(main.get("relay_domains", ""))]
    if bounce_domain.lower() in relay:
        out.append(Result("postfix relay_domains", OK, f"{bounce_domain} is accepted"))
    elif any(":" in d or d.startswith("$") for d in relay):
        out.append(Result("postfix relay_domains", WARN, f"{bounce_domain} is not listed literally; relay_domains "
                          f"uses maps or $parameters ({main.get('relay_domains')}) that doctor does not expand",
                          f"make sure {bounce_domain} is in one of them, or run: {install}"))
    else:
        out.append(Result("postfix relay_domains", FAIL, f"{bounce_domain} is not in relay_domains: Postfix "
                          "refuses bounces with 554 Relay access denied", install))
    if main.get("relay_recipient_maps", "").strip():
        out.append(Result("postfix relay_recipient_maps", WARN,
                          "relay_recipient_maps is set: VERP addresses must be listed in it or they are refused "
                          "(User unknown in relay recipient table)",
                          f"add '@{bounce_domain} x' to one of its maps (the milter verifies the tokens)"))
    limit = main.get(f"{wiring.SERVICE}_destination_recipient_limit", "")
    if limit != "1":
        out.append(Result(f"postfix {wiring.SERVICE}_destination_recipient_limit", FAIL,
                          f"is {limit or 'unset'}, not 1: the pipe would get several recipients at once", install))
    out.append(master_result(master, config_path=config_path, pipe_user=pipe_user, install=install))
    return out


def lmtp_results(
    main: Mapping[str, str],
    entry: str | None,
    *,
    socket_path: str,
    address: str | None,
    queue_directory: str,
    overrides: Mapping[str, Mapping[str, str]],
    probe: SocketProbe,
    answers: Callable[[str], str | None],
    workers: int,
    max_recipients: int,
    fix: str,
) -> list[Result]:
    """The LMTP transport (issue 21, ``pipe.transport: lmtp``): our lmtp(8) service in
    master.cf, whether it finds the pipe server's socket where *it* looks (chrooted or not:
    :func:`~bouncetrack.ops.postfix_wiring.seen_by`), whether the server answers LHLO there
    (``answers``: the path → None, or what went wrong), and the limits install sets.

    ``socket_path``: ``pipe.lmtp.socket``; ``address``: the name install writes for it
    (None: out of reach of a chrooted service, ``fix`` says why). A socket that does not
    answer FAILs: Postfix defers every bounce (nothing lost) until it does.
    """
    name = f"postfix master.cf {wiring.LMTP_SERVICE}"
    key = f"{wiring.LMTP_SERVICE}/unix"
    fields = entry.split() if entry else []
    if len(fields) < 8 or fields[7] != "lmtp":
        return [Result(name, FAIL, f"no {key} lmtp(8) service in master.cf" if not fields else
                       f"{key} is not an lmtp(8) service: {entry}", fix)]
    out: list[Result] = []
    chroot = fields[4].lower() in ("y", "yes")
    if (overrides.get(key) or {}).get("lmtp_send_xforward_command", "no").lower() != "yes":
        out.append(Result(name, WARN, "lmtp_send_xforward_command is not yes for it: the server does not learn "
                          "the client address, and no report from a multi-recipient message may suppress", fix))
    else:
        out.append(Result(name, OK, f"lmtp(8){' chrooted in ' + queue_directory if chroot else ''}, XFORWARD on"))
    if address is None:
        return [*out, Result("LMTP socket", FAIL, f"{socket_path} is out of reach of the lmtp service", fix)]
    path = wiring.seen_by(address, chroot=chroot, queue_directory=queue_directory)
    found = probe(path)
    if found == SOCKET_UNKNOWN:
        out.append(Result("LMTP socket", WARN, f"lmtp(8) looks for unix:{address} at {path}: cannot check it",
                          "run doctor as root"))
        return out
    if found != SOCKET_OURS and not (found == SOCKET_MISSING and path.rstrip("/") == socket_path.rstrip("/")):
        what = "no such socket" if found == SOCKET_MISSING else f"not the pipe server's socket {socket_path}"
        out.append(Result("LMTP socket", FAIL, f"lmtp(8) looks for unix:{address} at {path}: {what}, so every "
                          "bounce is deferred", fix))
        return out
    problem = answers(path)
    if problem is not None:
        out.append(Result("LMTP socket", FAIL, f"{path}: {problem}: every bounce is deferred (Postfix retries, "
                          "nothing is lost) until the pipe server answers",
                          "systemctl restart bouncetrack-pipe-server (it listens on LMTP with pipe.transport: lmtp)"))
    else:
        out.append(Result("LMTP socket", OK, f"lmtp(8) opens {path} and the pipe server answers LHLO there"))
    for param, most, why in (
        (f"{wiring.LMTP_SERVICE}_destination_concurrency_limit", wiring.lmtp_concurrency(workers),
         "idle connections in lmtp(8)'s cache hold workers and new ones wait for a free worker"),
        (f"{wiring.LMTP_SERVICE}_destination_recipient_limit", max_recipients,
         "recipients beyond pipe.lmtp.max_recipients get 452 and wait for another transaction"),
    ):
        value = main.get(param, "")
        if not value.isdigit() or int(value) > most:
            out.append(Result(f"postfix {param}", WARN, f"is {value or 'unset'}, above {most}: {why}", fix))
    return out


def reach_result(param: str, name: str, services: Sequence[wiring.Service], *, queue_directory: str,
                 milter_socket: str, probe: SocketProbe, fix: str) -> Result:
    """Does every service that runs ``param``'s milters find our socket where it looks?

    ``name``: our element's unix-socket name as written in main.cf. Each client service
    (smtpd for smtpd_milters, cleanup for non_smtpd_milters) opens it relative to the
    queue directory, or under it when chrooted (:func:`~bouncetrack.ops.postfix_wiring.seen_by`).
    FAIL when that path holds no socket or another one than ``milter_socket``: Postfix
    then answers every message 451 4.7.1 (milter_default_action tempfail). A path that
    *is* ``milter_socket`` passes even while the milter is down (the "milter socket"
    check reports that), so one outage gives one FAIL.
    """
    result_name = f"postfix {param} chroot"
    command = wiring.MILTER_CLIENTS[param]
    clients = [s for s in services if s.command == command]
    if not clients:
        return Result(result_name, SKIP, f"no {command} service in master.cf")
    views: dict[str, list[wiring.Service]] = {}
    for s in clients:
        views.setdefault(wiring.seen_by(name, chroot=s.chroot, queue_directory=queue_directory), []).append(s)
    ok: list[str] = []
    for path, svcs in views.items():
        who = ", ".join(f"{s.key}{' chrooted in ' + queue_directory if s.chroot else ''}" for s in svcs)
        found = probe(path)
        if found == SOCKET_OURS or (found == SOCKET_MISSING and path.rstrip("/") == milter_socket.rstrip("/")):
            # The very path the milter listens on; whether it listens: check "milter socket".
            ok.append(f"{command} ({who}) opens {path}")
            continue
        if found == SOCKET_UNKNOWN:
            return Result(result_name, WARN, f"{command} ({who}) looks for unix:{name} at {path}: cannot check it",
                          "run doctor as root")
        where = f"{command} ({who}) looks for unix:{name} at {path}"
        what = "no such socket" if found == SOCKET_MISSING else f"not the milter's socket {milter_socket}"
        return Result(result_name, FAIL, f"{where}: {what}, so Postfix answers every message 451 4.7.1 "
                      "(connect to Milter service ...: No such file or directory)", fix)
    return Result(result_name, OK, "; ".join(ok))


def master_result(master: str | None, *, config_path: str, pipe_user: str, install: str) -> Result:
    name = f"postfix master.cf {wiring.SERVICE}"
    if master is None:
        return Result(name, FAIL, f"no {wiring.SERVICE}/unix service in master.cf", install)
    fields = master.split()
    if len(fields) < 8 or fields[7] != "pipe":
        return Result(name, FAIL, f"{wiring.SERVICE} is not a pipe(8) service: {master}", install)
    if fields[4].lower() in ("y", "yes"):
        # Chrooted, pipe(8) would look for the interpreter, the pipe client and the pipe
        # server's socket under the queue directory.
        return Result(name, FAIL, f"{wiring.SERVICE} runs chrooted (chroot column {fields[4]}): its Python, the "
                      "pipe client and the pipe server's socket are outside the chroot", install)
    attrs = fields[8:]
    user = next((a.split("=", 1)[1] for a in attrs if a.startswith("user=")), None)
    if user is None or user.split(":", 1)[0] != pipe_user:
        return Result(name, FAIL, f"runs as user {user!r}, expected {pipe_user}", install)
    argv_at = next((i for i, a in enumerate(attrs) if a.startswith("argv=")), None)
    argv = [attrs[argv_at][5:], *attrs[argv_at + 1 :]] if argv_at is not None else []
    client = any(a.endswith("bounce_pipe/client.py") for a in argv)
    if not argv or not ("pipe" in argv or client) or "${recipient}" not in argv:
        return Result(name, FAIL, f"argv does not run `bouncetrack pipe ... ${{recipient}}` or the pipe client: "
                      f"{master}", install)
    if config_path not in argv:
        return Result(name, WARN, f"argv does not name this config file ({config_path})",
                      f"check that the pipe reads the same configuration, or run: {install}")
    if client:
        named = next(a for a in argv if a.endswith("bounce_pipe/client.py"))
        if named != default_pipe_client():
            return Result(name, WARN, f"master.cf starts the pipe client {named}, but this installation's is "
                          f"{default_pipe_client()} (moved by an upgrade?): if the file is gone, Python exits 2 "
                          "and pipe(8) bounces the bounce", install)
        socket_path = argv[argv.index("--socket") + 1] if "--socket" in argv[:-1] else None
        if socket_path is None:
            return Result(name, FAIL, f"the pipe client has no --socket: {master}", install)
        if not pipe_server_listening(socket_path):
            return Result(name, WARN, f"no pipe server listens on {socket_path}: every bounce runs the full pipe "
                          "(about 7 times a bare interpreter start)",
                          "systemctl enable --now bouncetrack-pipe-server")
    return Result(name, OK, f"pipe(8) as {pipe_user}: {' '.join(argv)}")


def pipe_server_listening(path: str) -> bool:
    """Whether ``bouncetrack pipe-server`` accepts connections on ``path``."""
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


# ---------------------------------------------------------------------------
# Organisational domains (DMARC relaxed alignment)

#: Public suffixes with two labels that are common for mail domains. A full Public
#: Suffix List would be exact; doctor only needs "is the bounce domain under the
#: sender's organisational domain", and a wrong answer here only changes a WARN.
MULTI_LABEL_SUFFIXES = frozenset({
    "co.uk", "org.uk", "ac.uk", "gov.uk", "ltd.uk", "plc.uk", "me.uk", "net.uk",
    "com.au", "net.au", "org.au", "edu.au", "gov.au", "asn.au", "id.au",
    "co.nz", "org.nz", "net.nz", "ac.nz", "govt.nz",
    "co.jp", "ne.jp", "or.jp", "ac.jp", "go.jp",
    "co.kr", "or.kr", "co.in", "net.in", "org.in", "firm.in", "gen.in", "ind.in",
    "com.br", "net.br", "org.br", "com.cn", "net.cn", "org.cn", "com.tw", "org.tw",
    "com.hk", "org.hk", "com.sg", "org.sg", "com.my", "com.mx", "org.mx", "com.ar",
    "com.tr", "org.tr", "co.za", "org.za", "co.il", "org.il", "co.id", "or.id",
    "com.pl", "net.pl", "org.pl", "co.at", "or.at", "com.es", "org.es", "com.pt",
    "com.ua", "org.ua", "com.ru", "org.ru", "co.th", "in.th", "com.vn", "com.ph",
})


def org_domain(name: str) -> str:
    """Organisational domain (RFC 7489 §3.2), approximated: the last two labels, or the
    last three when the last two are a known multi-label public suffix (co.uk, ...)."""
    labels = [x for x in name.lower().rstrip(".").split(".") if x]
    n = 3 if len(labels) >= 3 and ".".join(labels[-2:]) in MULTI_LABEL_SUFFIXES else 2
    return ".".join(labels[-n:])


def parse_dmarc(record: str) -> dict[str, str]:
    """Tags of a DMARC record (RFC 7489 §6.3), lower-case keys."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        k, sep, v = part.partition("=")
        if sep:
            tags[k.strip().lower()] = v.strip()
    return tags


def dmarc_result(sender_domain: str, bounce_domain: str, record: str | None, record_at: str | None) -> Result:
    """Would SPF on the VERP sender (at the bounce domain) align with the From domain?

    Relaxed SPF alignment (RFC 7489 §3.1.2) needs the same organisational domain;
    strict needs the very same domain, which a separate bounce domain never is.
    """
    name = f"dmarc {sender_domain}"
    policy = ""
    tags: dict[str, str] = {}
    if record is not None:
        tags = parse_dmarc(record)
        policy = f"p={tags.get('p', 'none')}"
        if record_at and record_at != f"_dmarc.{sender_domain}":
            policy += f" (from {record_at})"
    org_s, org_b = org_domain(sender_domain), org_domain(bounce_domain)
    where = f"DMARC {policy}" if record is not None else "no DMARC record"
    if org_s != org_b:
        return Result(
            name, WARN,
            f"bounce domain {bounce_domain} is not under {sender_domain}'s organisational domain {org_s} ({where}): "
            "SPF of the VERP sender never aligns, so mail passes DMARC only through an aligned DKIM signature",
            f"use a bounce domain under {org_s} (e.g. bounce.{org_s}), or sign all mail of {sender_domain} "
            f"with DKIM d={org_s}",
        )
    if tags.get("aspf", "r").lower() == "s" and bounce_domain.lower() != sender_domain.lower():
        return Result(
            name, WARN,
            f"{where} requires strict SPF alignment (aspf=s): {bounce_domain} != {sender_domain}, so SPF never aligns",
            f"set aspf=r in the DMARC record at {record_at}, or rely on DKIM d={sender_domain}",
        )
    return Result(name, OK, f"relaxed alignment holds: {bounce_domain} is under {org_s} ({where})")


# ---------------------------------------------------------------------------
# MX and SPF


def mx_result(
    bounce_domain: str,
    mx: Sequence[tuple[int, str]],
    addresses: Mapping[str, Sequence[str]],
    expected: Sequence[str],
    *,
    explicit_expected: bool,
    nxdomain: bool = False,
) -> Result:
    """Does mail for the bounce domain reach this host?

    ``mx``: (preference, host) records; empty means none (then the domain's own A/AAAA
    is the implicit MX, RFC 5321 §5.1, given as ``addresses[bounce_domain]``).
    ``addresses``: host -> its A/AAAA addresses. ``expected``: this host's addresses.
    """
    name = f"dns mx {bounce_domain}"
    fix_mx = f"publish '{bounce_domain}. MX 10 <this host's name>.' with that name's A/AAAA pointing here"
    if nxdomain:
        return Result(name, FAIL, f"{bounce_domain} does not exist in DNS (NXDOMAIN): bounces cannot reach us", fix_mx)
    if len(mx) == 1 and mx[0][1].rstrip(".") == "":
        return Result(name, FAIL, f"{bounce_domain} has a null MX (RFC 7505): it accepts no mail", fix_mx)
    hosts = [h.rstrip(".").lower() for _, h in sorted(mx)] if mx else [bounce_domain]
    kind = "MX" if mx else "no MX; A/AAAA (implicit MX)"
    want = {a.lower() for a in expected}
    found: list[str] = []
    for host in hosts:
        for addr in addresses.get(host, ()):
            found.append(f"{host}={addr}")
            if addr.lower() in want:
                verdict = OK if mx else WARN
                return Result(name, verdict, f"{kind} {host} -> {addr} is this host",
                              "" if mx else fix_mx)
    if not found:
        return Result(name, FAIL, f"{kind} {', '.join(hosts)} resolve(s) to no address", fix_mx)
    why = f"{kind} {', '.join(found)}: none is this host ({', '.join(expected) or 'no address known'})"
    if explicit_expected:
        return Result(name, FAIL, why, fix_mx)
    return Result(name, WARN, why, f"{fix_mx}; behind NAT pass --expect-ip <public address>")


def spf_result(bounce_domain: str, outcomes: Mapping[str, tuple[str, str]], *, explicit_expected: bool) -> Result:
    """SPF of the bounce domain (the VERP envelope sender) for each of this host's addresses.

    ``outcomes``: ip -> (RFC 7208 result, explanation).
    """
    name = f"dns spf {bounce_domain}"
    fix = f"publish '{bounce_domain}. TXT \"v=spf1 ip4:<this host> -all\"' (or a:/mx: naming this host)"
    if not outcomes:
        return Result(name, SKIP, "no address of this host to check (pass --expect-ip)")
    results = {r for r, _ in outcomes.values()}
    detail = "; ".join(f"{ip}: {r}" + (f" ({why})" if why else "") for ip, (r, why) in outcomes.items())
    passing = [ip for ip, (r, _) in outcomes.items() if r == "pass"]
    if passing and (len(passing) == len(outcomes) or not explicit_expected):
        return Result(name, OK, f"authorises {', '.join(passing)}"
                      + (f" ({detail})" if len(passing) != len(outcomes) else ""))
    if results & {"permerror"}:
        return Result(name, FAIL, f"SPF record is broken: {detail}", fix)
    if results == {"none"}:
        return Result(name, WARN, f"{bounce_domain} has no SPF record: receivers cannot authorise the VERP "
                      "sender", fix)
    if results & {"temperror"} and not results & {"fail"}:
        return Result(name, WARN, f"could not evaluate SPF: {detail}", "check the DNS servers")
    if results & {"fail"}:
        return Result(name, FAIL, f"SPF rejects this host: {detail}", fix)
    return Result(name, WARN, f"SPF does not authorise this host: {detail}", fix)


# ---------------------------------------------------------------------------
# Store file modes (issue 16)


def store_file_results(modes: Mapping[str, int]) -> list[Result]:
    """One verdict on the SQLite store's files (path → permission bits; missing files left out).

    The database and its ``-wal``/``-shm`` hold raw reports and recipient addresses:
    WARN when any of them is readable or writable by group or others (the store
    creates them 0600, but an older version or a copied file may not be).
    """
    if not modes:
        return []
    loose = {path: mode for path, mode in modes.items() if mode & 0o077}
    if not loose:
        return [Result("store file modes", OK, ", ".join(f"{p} {m:04o}" for p, m in modes.items()))]
    return [Result(
        "store file modes", WARN,
        "readable by group/others: " + ", ".join(f"{p} {m:04o}" for p, m in loose.items()),
        "chmod 600 " + " ".join(loose),
    )]


# ---------------------------------------------------------------------------
# Config file mode (issue 15)


def config_secrets(config: Config) -> list[str]:
    """What in ``config`` must not be world-readable: webhook secrets (anyone holding one
    can forge deliveries), API token hashes, a password in the store URL."""
    policies = [*config.domains.values(), config.default]
    found: list[str] = []
    if any(p.webhook is not None and p.webhook.secret for p in policies):
        found.append("webhook secrets")
    if any(p.api_token_hashes for p in policies):
        found.append("API token hashes")
    userinfo = config.store_url.partition("://")[2].rpartition("@")[0]
    if ":" in userinfo:
        found.append("a store URL password")
    return found


def config_mode_result(path: str, mode: int, secrets: Sequence[str]) -> Result:
    """The configuration file's permission bits (``mode``) against what it holds.

    WARN when it is writable by others (anyone could redirect webhooks), or holds
    ``secrets`` and is readable by others. The intended set-up is ``root:bouncetrack``
    ``0640``: the services (user bouncetrack, the pipe included) read it, nobody else.
    """
    name = "config file mode"
    fix = f"chown root:bouncetrack {path}; chmod 0640 {path}"
    if mode & 0o002:
        return Result(name, WARN, f"{path} is mode {mode & 0o7777:04o}: every user can change it", fix)
    if mode & 0o004 and secrets:
        return Result(name, WARN, f"{path} is mode {mode & 0o7777:04o}, readable by every user, and holds "
                      f"{', '.join(secrets)}", fix)
    held = f"holds {', '.join(secrets)}" if secrets else "holds no secret"
    return Result(name, OK, f"{path} is mode {mode & 0o7777:04o} ({held})")
