"""What bouncetrack needs in an existing Postfix's main.cf and master.cf (pure).

:mod:`bouncetrack.ops.install` reads the current settings with ``postconf`` and applies
what :func:`plan` returns with ``postconf -e`` / ``postconf -M``; ``bouncetrack
doctor`` calls :func:`plan` too and reports every pending change as a problem. No
I/O here, so both agree on what "wired" means and the rules are unit-tested.

Decisions (see ``conf/postfix/README.md``):

- Milters: our socket is *appended* to ``smtpd_milters`` and ``non_smtpd_milters``;
  the operator's milters stay, in their order. Our entry uses Postfix's per-milter
  settings (Postfix >= 3.0, postconf(5) "smtpd_milters")::

      { unix:/run/bouncetrack/milter.sock, default_action=tempfail, protocol=6 }

  so that "milter down => 451, mail retried" and protocol 6 hold for *our* milter
  without changing the global ``milter_default_action`` / ``milter_protocol`` that the
  operator's other milters rely on (both are Postfix's defaults anyway). An entry for
  our socket already present in another form (plain ``unix:...``) is replaced in place.
- ``message_drop_headers``: the effective list without ``return-path`` (the milter
  must see Return-Path; it removes the header itself).
- Transport: a map file we own (``bouncetrack_transport`` in the config directory,
  one line ``<bounce domain> bouncepipe:``) is put *first* in ``transport_maps`` so no
  wildcard of the operator's maps can shadow it; it names only the bounce domain.
- Reaching the milter through a chroot: Debian's packaged ``master.cf`` runs ``smtpd``
  and ``cleanup`` chrooted in the queue directory (``smtp inet n - y``), where
  ``unix:/run/bouncetrack/milter.sock`` means ``<queue_directory>/run/bouncetrack/...``.
  A unix-socket name *without* a leading slash is relative to the queue directory,
  chrooted or not (every daemon runs with the queue directory as its working
  directory), which is how Debian's own milters are wired (opendkim under
  ``/var/spool/postfix/opendkim``). So when ``milter_socket`` lies under the queue
  directory, our element names it relative to it (``unix:bouncetrack/milter.sock``);
  otherwise it is written absolute, and only when none of the services that connect
  to it (:data:`MILTER_CLIENTS`) is chrooted: :func:`milter_address` refuses the rest.
- ``relay_domains``: the effective value plus the bounce domain (never replaced). When
  main.cf does not set it, Postfix's default is a compatibility-level expression
  (``${{$compatibility_level} <level {2} ? {$mydestination} : {}}``); it is resolved
  first (:func:`relay_domains_base`), so main.cf gets a plain list.
- ``bouncepipe_destination_recipient_limit = 1``: one recipient per pipe run.
- master.cf ``bouncepipe/unix``: pipe(8) as the unprivileged pipe user, flags ``Rq``
  (R: Return-Path header, q: quote the address), ``size=`` the message size limit.
  It starts the pipe client (``python -S …/bounce_pipe/client.py --socket …``), which
  hands each bounce to the warm ``bouncetrack pipe-server`` and runs the full pipe
  itself when no server listens: a bare interpreter start per bounce instead of ~7.
- LMTP (issue 21, ``pipe.transport: lmtp`` or ``install --transport lmtp``): the transport
  map names our own lmtp(8) service instead, ``<bounce domain> bouncelmtp:unix:NAME``,
  NAME being the pipe server's LMTP socket relative to the queue directory, as for the
  milter (lmtp(8): a chrooted client opens an absolute name under the queue directory;
  every daemon runs in the queue directory, so a relative name works chrooted or not).
  master.cf ``bouncelmtp/unix`` is an lmtp(8) service of its own (so that its settings
  leave the operator's ``lmtp`` alone): chroot as the operator's ``lmtp/unix`` service
  has it, process limit :func:`lmtp_concurrency`, ``-o lmtp_send_xforward_command=yes`` (the
  client address the trust rules read) and ``-o lmtp_connection_cache_on_demand=yes``
  (connections kept open across deliveries under load, Postfix's default, made explicit);
  main.cf ``bouncelmtp_destination_concurrency_limit`` = :func:`lmtp_concurrency` (half
  the workers: the other half serve the connections lmtp(8) opens while idle cached ones
  still hold a worker) and ``bouncelmtp_destination_recipient_limit`` = ``pipe.lmtp.max_recipients``.
  The ``bouncepipe`` entry stays: a switch back is one transport map line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..core.config import TRANSPORT_LMTP, TRANSPORT_PIPE

SERVICE = "bouncepipe"
#: Our lmtp(8) service (issue 21), for ``pipe.transport: lmtp``.
LMTP_SERVICE = "bouncelmtp"
TRANSPORT_FILE = "bouncetrack_transport"
STATE_FILE = "bouncetrack-install.json"
PIPE_USER = "bouncetrack"
PIPE_MAXPROC = 10
PIPE_FLAGS = "Rq"
#: Where ``bouncetrack pipe-server`` listens (systemd/bouncetrack-pipe-server.service).
#: pipe(8) is not chrooted (we write chroot ``n`` in its master.cf entry, and the pipe
#: client it starts opens this path itself), so a path outside the queue directory works.
PIPE_SOCKET = "/run/bouncetrack-pipe/pipe.sock"
#: Postfix's queue directory on Debian (``postconf -h queue_directory``).
DEFAULT_QUEUE_DIRECTORY = "/var/spool/postfix"
#: The master.cf commands (8th column) of the Postfix daemons that connect to our milter,
#: with the main.cf list each one uses: smtpd runs ``smtpd_milters``; cleanup runs
#: ``non_smtpd_milters`` for mail submitted with sendmail(1) (pickup -> cleanup).
#: A future client of another bouncetrack socket (an LMTP transport, say) adds its
#: command here and is checked the same way.
MILTER_CLIENTS: dict[str, str] = {"smtpd_milters": "smtpd", "non_smtpd_milters": "cleanup"}

#: main.cf parameters install may change (also what doctor looks at).
MAIN_PARAMS = (
    "smtpd_milters",
    "non_smtpd_milters",
    "message_drop_headers",
    "transport_maps",
    "relay_domains",
    f"{SERVICE}_destination_recipient_limit",
)
#: ... and with the LMTP transport (issue 21).
LMTP_MAIN_PARAMS = (f"{LMTP_SERVICE}_destination_concurrency_limit", f"{LMTP_SERVICE}_destination_recipient_limit")


class WiringError(ValueError):
    """The wanted configuration cannot be written (e.g. a path with white space)."""


@dataclass(frozen=True)
class Wanted:
    """What to wire, from the bouncetrack config and the install options."""

    bounce_domain: str
    # The milter socket as Postfix names it, without "unix:": relative to the queue
    # directory when it lies under it (bouncetrack/milter.sock), else absolute
    # (see milter_address).
    milter_socket: str
    config_path: str  # absolute path of the bouncetrack YAML file
    bouncetrack_bin: str  # absolute path of the venv's `bouncetrack` script
    config_dir: str  # Postfix config directory (holds our transport map)
    map_type: str = "texthash"  # texthash (no postmap needed), hash or lmdb (postmap)
    pipe_user: str = PIPE_USER
    size_limit: int | None = None  # bytes; None: no size= attribute
    # The pipe client (bouncetrack/bounce_pipe/client.py of the installed package):
    # pipe(8) starts it with the venv's python -S, and it hands each bounce to the warm
    # pipe server on pipe_socket (or runs the full pipe when no server listens).
    # None: pipe(8) runs `bouncetrack pipe` itself.
    pipe_client: str | None = None
    pipe_socket: str = PIPE_SOCKET
    # Issue 21: "lmtp" routes the bounce domain to LMTP_SERVICE at lmtp_socket (the name
    # Postfix opens, relative to the queue directory when under it: lmtp_address).
    transport: str = TRANSPORT_PIPE
    lmtp_socket: str = ""
    lmtp_chroot: bool = False  # the chroot column of our service: as the operator's lmtp/unix
    lmtp_workers: int = 8
    lmtp_max_recipients: int = 50

    @property
    def transport_path(self) -> str:
        return f"{self.config_dir.rstrip('/')}/{TRANSPORT_FILE}"

    @property
    def transport_map(self) -> str:
        return f"{self.map_type}:{self.transport_path}"


@dataclass(frozen=True)
class Plan:
    """Changes needed: main.cf values (name -> new value), the master.cf entry or None
    when it is already right, and the transport map file's text."""

    main: dict[str, str]
    master: str | None
    transport_text: str
    lmtp_master: str | None = None  # the bouncelmtp entry when it must be written (issue 21)

    @property
    def empty(self) -> bool:
        return not self.main and self.master is None and self.lmtp_master is None


# ---------------------------------------------------------------------------
# Postfix list values


def split_list(value: str) -> list[str]:
    """A Postfix list (comma and/or white space separated) into its elements.

    ``{ ... }`` groups stay one element (postconf(5): per-milter settings, Postfix >= 3.0).
    """
    items: list[str] = []
    buf: list[str] = []
    depth = 0
    for ch in value:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        if depth == 0 and (ch == "," or ch.isspace()):
            if buf:
                items.append("".join(buf))
                buf = []
            continue
        buf.append(ch)
    if buf:
        items.append("".join(buf))
    return [i.strip() for i in items if i.strip()]


def join_list(items: list[str]) -> str:
    return ", ".join(items)


def milter_entry(socket_path: str) -> str:
    """Our smtpd_milters element (per-milter settings: see the module docstring)."""
    return f"{{ unix:{socket_path}, default_action=tempfail, protocol=6 }}"


def milter_target(item: str) -> tuple[str, dict[str, str]]:
    """The address of one milter list element and its per-milter settings."""
    inner = item.strip()
    if inner.startswith("{") and inner.endswith("}"):
        parts = [p.strip() for p in inner[1:-1].split(",") if p.strip()]
        if not parts:
            return "", {}
        settings = {}
        for p in parts[1:]:
            k, _, v = p.partition("=")
            settings[k.strip()] = v.strip()
        return parts[0], settings
    return inner, {}


def _is_ours(item: str, socket_path: str, also: Sequence[str] = ()) -> bool:
    target, _ = milter_target(item)
    return any(target in (f"unix:{p}", p) for p in (socket_path, *also))


def with_milter(value: str, socket_path: str, replaces: Sequence[str] = ()) -> str:
    """``value`` with our milter appended (or an existing entry of it normalised in place).

    ``replaces``: other names of our milter (what an earlier install wrote, e.g. the old
    ``/run/bouncetrack/milter.sock``): such an element is replaced by ours in place, so a
    re-install never leaves an unreachable milter behind."""
    items = split_list(value)
    mine = milter_entry(socket_path)
    out: list[str] = []
    placed = False
    for item in items:
        if _is_ours(item, socket_path, replaces):
            if not placed:
                out.append(mine)
                placed = True
            continue
        out.append(item)
    if not placed:
        out.append(mine)
    return join_list(out)


def without_milter(value: str, socket_path: str) -> str:
    return join_list([i for i in split_list(value) if not _is_ours(i, socket_path)])


def find_milter(value: str, socket_path: str, also: Sequence[str] = ()) -> str | None:
    """Our element in a milter list (named ``socket_path`` or one of ``also``), or None."""
    for item in split_list(value):
        if _is_ours(item, socket_path, also):
            return item
    return None


def effective_milter_settings(item: str, main: Mapping[str, str]) -> dict[str, str]:
    """default_action and protocol that apply to one milter element (its own or global)."""
    _, own = milter_target(item)
    return {
        "default_action": own.get("default_action", main.get("milter_default_action", "tempfail")),
        "protocol": own.get("protocol", main.get("milter_protocol", "6")),
    }


def with_item(value: str, item: str, *, first: bool = False) -> str:
    items = split_list(value)
    if any(i.lower() == item.lower() for i in items):
        return join_list(items)
    return join_list([item, *items] if first else [*items, item])


def without_item(value: str, item: str) -> str:
    return join_list([i for i in split_list(value) if i.lower() != item.lower()])


def drop_headers_without_return_path(value: str) -> str:
    return without_item(value, "return-path")


# ---------------------------------------------------------------------------
# Chroot: what a Postfix daemon sees of a unix socket


@dataclass(frozen=True)
class Service:
    """One master.cf service, as ``postconf -M`` prints it (one logical line)."""

    name: str
    type: str
    chroot: bool  # the fifth column; "-" is n (Postfix >= 3.0, master(5))
    command: str  # the eighth column: the daemon (smtpd, cleanup, pipe, ...)

    @property
    def key(self) -> str:
        return f"{self.name}/{self.type}"


def parse_services(text: str) -> list[Service]:
    """Every service of ``postconf -M`` output (continuation lines, if any, skipped)."""
    out: list[Service] = []
    for line in text.splitlines():
        if not line.strip() or line[:1].isspace() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 8:
            continue
        out.append(Service(fields[0], fields[1], fields[4].lower() in ("y", "yes"), fields[7]))
    return out


def postfix_name(path: str, queue_directory: str) -> str:
    """The name to give Postfix for the unix socket ``path`` (absolute): relative to the
    queue directory when ``path`` lies under it, which every daemon resolves there,
    chrooted or not; else ``path`` itself."""
    q = queue_directory.rstrip("/")
    if q and path.startswith(q + "/") and len(path) > len(q) + 1:
        return path[len(q) + 1 :]
    return path


def seen_by(name: str, *, chroot: bool, queue_directory: str) -> str:
    """The host path a Postfix daemon opens for the unix-socket ``name`` (as written in
    main.cf, without ``unix:``). Daemons run in the queue directory, so a relative name
    is under it; a chrooted daemon's ``/`` is the queue directory, so an absolute name
    is under it too."""
    q = queue_directory.rstrip("/")
    if not name.startswith("/"):
        return f"{q}/{name}"
    return f"{q}{name}" if chroot else name


def chrooted_clients(services: Sequence[Service], param: str) -> list[Service]:
    """The chrooted services that run the milters of ``param`` (see :data:`MILTER_CLIENTS`)."""
    return [s for s in services if s.command == MILTER_CLIENTS[param] and s.chroot]


def milter_address(socket_path: str, queue_directory: str, services: Sequence[Service]) -> str:
    """What to write for our milter (without ``unix:``) so that every service that connects
    to it opens ``socket_path``, chrooted or not; :class:`WiringError` when no name can.

    Under the queue directory: the relative name (Debian's own milters' way). Elsewhere:
    the absolute path, only when no client is chrooted (a chrooted one would look for it
    under the queue directory)."""
    name = postfix_name(socket_path, queue_directory)
    if not name.startswith("/"):
        return name
    jailed = [s for param in MILTER_CLIENTS for s in chrooted_clients(services, param)]
    if jailed:
        q = queue_directory.rstrip("/")
        who = ", ".join(f"{s.command} ({s.key})" for s in jailed)
        raise WiringError(
            f"{who} run(s) chrooted in {q} (master.cf chroot column y) and would look for the milter "
            f"socket at {seen_by(socket_path, chroot=True, queue_directory=q)}: every message would get "
            f"451 4.7.1. Put the socket under the queue directory: milter_socket: {q}/bouncetrack/milter.sock "
            "in bouncetrack's config (directory bouncetrack:postfix 0750, as systemd/bouncetrack-milter.service "
            "creates it), restart the milter and run install again; or set the chroot column of those services to n"
        )
    return name


def lmtp_address(socket_path: str, queue_directory: str, chroot: bool) -> str:
    """What to write for the LMTP socket (without ``unix:``) so that our lmtp(8) service,
    chrooted or not, opens ``socket_path``: relative to the queue directory when under it
    (as :func:`milter_address`), else the absolute path when the service is not chrooted;
    :class:`WiringError` otherwise."""
    name = postfix_name(socket_path, queue_directory)
    if name.startswith("/") and chroot:
        q = queue_directory.rstrip("/")
        raise WiringError(
            f"the lmtp service runs chrooted in {q} and would look for the LMTP socket at "
            f"{seen_by(socket_path, chroot=True, queue_directory=q)}: every bounce would be deferred. Put it under "
            f"the queue directory: pipe.lmtp.socket: {q}/bouncetrack/lmtp.sock (directory bouncetrack:postfix 0750) "
            "and restart the pipe server, or set the chroot column of lmtp/unix to n")
    return name


def relay_domains_base(explicit: str | None, expanded: str) -> str:
    """The relay_domains value to append the bounce domain to, without Postfix's
    compatibility-level expression: main.cf's own value when it sets one (kept as
    written, ``$mydestination`` included), else ``$mydestination`` when the default
    resolves to it (compatibility_level < 2, ``postconf -xh`` non-empty), else empty."""
    if explicit is not None:
        return explicit
    return "$mydestination" if expanded.strip() else ""


# ---------------------------------------------------------------------------
# master.cf


def pipe_python(w: Wanted) -> str:
    """The venv's interpreter: the one next to the ``bouncetrack`` program."""
    return f"{w.bouncetrack_bin.rsplit('/', 1)[0]}/python"


def master_entry(w: Wanted) -> str:
    """The ``bouncepipe`` service line (one logical line, as ``postconf -M`` prints it)."""
    paths = [("config file", w.config_path), ("bouncetrack program", w.bouncetrack_bin)]
    if w.pipe_client is not None:
        paths += [("pipe client", w.pipe_client), ("pipe server socket", w.pipe_socket)]
    for what, path in paths:
        if re.search(r"\s", path) or "$" in path:
            raise WiringError(f"the {what} path {path!r} contains white space or '$'; pipe(8) argv cannot hold it")
    size = f" size={w.size_limit}" if w.size_limit else ""
    if w.pipe_client is None:
        command = f"{w.bouncetrack_bin} pipe"
    else:
        command = f"{pipe_python(w)} -S {w.pipe_client} --socket {w.pipe_socket}"
    return (
        f"{SERVICE} unix - n n - {PIPE_MAXPROC} pipe flags={PIPE_FLAGS} user={w.pipe_user}{size} "
        f"argv={command} --config {w.config_path} --client-address=${{client_address}} ${{recipient}} ${{sender}}"
    )


def same_master_entry(a: str | None, b: str | None) -> bool:
    """Equal up to white space (postconf -M folds and aligns the columns)."""
    if a is None or b is None:
        return a is b
    return a.split() == b.split()


def lmtp_nexthop(socket_name: str) -> str:
    """The transport map's answer for the LMTP socket ``socket_name`` (as Postfix names it)."""
    return f"{LMTP_SERVICE}:unix:{socket_name}"


def transport_nexthop(w: Wanted) -> str:
    """The transport map's answer for the bounce domain (``bouncepipe:`` or
    ``bouncelmtp:unix:bouncetrack/lmtp.sock``)."""
    return lmtp_nexthop(w.lmtp_socket) if w.transport == TRANSPORT_LMTP else f"{SERVICE}:"


def transport_text(w: Wanted) -> str:
    what = "the pipe server's LMTP socket" if w.transport == TRANSPORT_LMTP else "the bounce pipe"
    return (
        f"# Managed by `bouncetrack install`: mail for the bounce domain goes to {what}.\n"
        f"{w.bounce_domain} {transport_nexthop(w)}\n"
    )


def lmtp_concurrency(workers: int) -> int:
    """How many deliveries at once Postfix may make to ``workers`` LMTP workers: half of them.

    Each worker serves one connection at a time, and lmtp(8) parks a connection it has
    finished with in its connection cache (scache, up to ``lmtp_connection_cache_time_limit``,
    2 s) while the next delivery may open a new one: an idle cached connection holds a worker.
    With as many deliveries as workers, a new connection then waits in the listen queue until
    a cached one expires (measured by bench/capacity.py: p50 send -> stored 0.85 s at 40 msg/s,
    against 0.28 s with twice the workers)."""
    return max(1, workers // 2)


def lmtp_master_entry(chroot: bool, workers: int) -> str:
    """The ``bouncelmtp`` service line (one logical line, as ``postconf -M`` prints it)."""
    return (f"{LMTP_SERVICE} unix - - {'y' if chroot else 'n'} - {lmtp_concurrency(workers)} lmtp "
            "-o lmtp_send_xforward_command=yes -o lmtp_connection_cache_on_demand=yes")


def lmtp_main(workers: int, max_recipients: int) -> dict[str, str]:
    """main.cf for our lmtp service: :func:`lmtp_concurrency` deliveries at once, recipients
    per transaction as the server takes them (:data:`LMTP_MAIN_PARAMS`)."""
    return dict(zip(LMTP_MAIN_PARAMS, (str(lmtp_concurrency(workers)), str(max_recipients))))


# ---------------------------------------------------------------------------
# The plan


def desired_main(current: Mapping[str, str], w: Wanted, replaces: Sequence[str] = ()) -> dict[str, str]:
    """Every parameter of :data:`MAIN_PARAMS` (and :data:`LMTP_MAIN_PARAMS` for the LMTP
    transport) as it should be, from the effective values
    (``replaces``: see :func:`with_milter`)."""
    want = {
        "smtpd_milters": with_milter(current.get("smtpd_milters", ""), w.milter_socket, replaces),
        "non_smtpd_milters": with_milter(current.get("non_smtpd_milters", ""), w.milter_socket, replaces),
        "message_drop_headers": drop_headers_without_return_path(
            current.get("message_drop_headers", "bcc, content-length, resent-bcc, return-path")
        ),
        "transport_maps": with_item(current.get("transport_maps", ""), w.transport_map, first=True),
        "relay_domains": with_item(current.get("relay_domains", ""), w.bounce_domain),
        f"{SERVICE}_destination_recipient_limit": "1",
    }
    if w.transport == TRANSPORT_LMTP:
        want.update(lmtp_main(w.lmtp_workers, w.lmtp_max_recipients))
    return want


def plan(current: Mapping[str, str], current_master: str | None, w: Wanted, replaces: Sequence[str] = (),
         current_lmtp_master: str | None = None) -> Plan:
    """What to change, given the effective main.cf values and the current master.cf entries
    (``bouncepipe``, ``bouncelmtp``; ``replaces``: other names of our milter to replace, see
    :func:`with_milter`)."""
    want = desired_main(current, w, replaces)
    changes = {k: v for k, v in want.items() if split_list(current.get(k, "")) != split_list(v)}
    entry = master_entry(w)
    lmtp_entry = lmtp_master_entry(w.lmtp_chroot, w.lmtp_workers) if w.transport == TRANSPORT_LMTP else None
    return Plan(
        main=changes,
        master=None if same_master_entry(current_master, entry) else entry,
        transport_text=transport_text(w),
        lmtp_master=None if lmtp_entry is None or same_master_entry(current_lmtp_master, lmtp_entry) else lmtp_entry,
    )


def revert_value(name: str, current: str, installed: str, old: str | None, w: Wanted) -> str | None:
    """The value to put back on uninstall when main.cf changed since install.

    Returns the old explicit value (None: remove the parameter) when ``current`` is still
    what install wrote; otherwise only our element is taken out of the operator's newer
    value (milters, transport map, bounce domain), and ``current`` stays otherwise.
    """
    if split_list(current) == split_list(installed):
        return old
    if name in ("smtpd_milters", "non_smtpd_milters"):
        return without_milter(current, w.milter_socket)
    if name == "transport_maps":
        return without_item(current, w.transport_map)
    if name == "relay_domains":
        return without_item(current, w.bounce_domain)
    return current
