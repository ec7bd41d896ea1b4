"""``bouncetrack install`` / ``uninstall``: wire bouncetrack into an existing Postfix.

What changes is decided by :mod:`bouncetrack.ops.postfix_wiring` (pure); this module reads
the current values with ``postconf -c DIR`` and writes with ``postconf -c DIR -e`` /
``-M -e`` / ``-X`` / ``-M -X`` (Postfix's own editor: it keeps comments, order and the
operator's other lines), writes our transport map file and runs ``postmap`` for
indexed map types.

Safety and reversibility:

- Idempotent: the plan is computed from the effective values; when nothing differs,
  nothing is written (no backup either) and the command says so.
- Backup once: before the first change ``main.cf`` and ``master.cf`` are copied to
  ``main.cf.bouncetrack-backup-<UTC time>`` (same for master.cf). A state file
  ``bouncetrack-install.json`` in the config directory records the backups, the old
  explicit value of every parameter we changed (or that it was not set), the old
  ``bouncepipe`` entry, the files we created and the SHA-256 of main.cf/master.cf right
  after our last change.
- ``uninstall``: when a file is still exactly as install left it, the backup is copied
  back byte for byte. When the operator edited it since, the revert is semantic:
  parameters still holding our value get their old value back (or are removed when they
  were not set), and from values the operator changed since only our element is taken
  out (our milter, our transport map, the bounce domain); the ``bouncepipe`` entry is
  removed (or its old version restored). Then our map files and the state file go;
  the backups stay.
- ``--dry-run`` applies the same steps to a temporary copy and prints the unified diff.

Postfix is not reloaded: the command prints the ``postfix reload`` to run.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from . import postfix_wiring as wiring
from ..core.config import DEFAULT_CONFIG_PATH, TRANSPORT_LMTP, TRANSPORT_PIPE, Config

POSTCONF = "/usr/sbin/postconf"
POSTMAP = "/usr/sbin/postmap"
POSTFIX = "/usr/sbin/postfix"
SERVICE_KEY = f"{wiring.SERVICE}/unix"
LMTP_SERVICE_KEY = f"{wiring.LMTP_SERVICE}/unix"
STATE_VERSION = 1

Echo = Callable[[str], None]


class InstallError(RuntimeError):
    """Install/uninstall cannot proceed; the message says why and what to do."""


# ---------------------------------------------------------------------------
# postconf


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MAIL_CONFIG", None)  # -c DIR must win
    return env


def run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=_env(), check=False, timeout=60)
    if check and proc.returncode != 0:
        raise InstallError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _parse_postconf(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            out[name.strip()] = value.strip()
        elif line.rstrip().endswith(" ="):
            out[line.rstrip()[:-2].strip()] = ""
    return out


def main_values(config_dir: Path) -> dict[str, str]:
    """Effective main.cf values (defaults included, ``$name`` not expanded), except that
    ``relay_domains``' compatibility-level default is resolved to a plain value
    (:func:`~bouncetrack.ops.postfix_wiring.relay_domains_base`)."""
    values = _parse_postconf(run([POSTCONF, "-c", str(config_dir)]).stdout)
    explicit = explicit_values(config_dir)
    values.update(explicit)
    if "relay_domains" not in explicit:
        expanded = run([POSTCONF, "-c", str(config_dir), "-xh", "relay_domains"]).stdout.strip()
        values["relay_domains"] = wiring.relay_domains_base(None, expanded)
    return values


def queue_directory(config_dir: Path) -> str:
    """Postfix's queue directory (``postconf -xh queue_directory``): the chroot and the
    working directory of its daemons."""
    return run([POSTCONF, "-c", str(config_dir), "-xh", "queue_directory"]).stdout.strip()


def services(config_dir: Path) -> list[wiring.Service]:
    """Every master.cf service (``postconf -M``)."""
    return wiring.parse_services(run([POSTCONF, "-c", str(config_dir), "-M"]).stdout)


def service_overrides(config_dir: Path) -> dict[str, dict[str, str]]:
    """master.cf ``-o name=value`` overrides (``postconf -P``): service key -> {name: value}."""
    out: dict[str, dict[str, str]] = {}
    for key, value in _parse_postconf(run([POSTCONF, "-c", str(config_dir), "-P"]).stdout).items():
        service, _, name = key.rpartition("/")
        if service:
            out.setdefault(service, {})[name] = value
    return out


def explicit_values(config_dir: Path) -> dict[str, str]:
    """Only what main.cf sets explicitly (``postconf -n``)."""
    return _parse_postconf(run([POSTCONF, "-c", str(config_dir), "-n"]).stdout)


def master_entry(config_dir: Path, key: str = SERVICE_KEY) -> str | None:
    proc = run([POSTCONF, "-c", str(config_dir), "-M", key], check=False)
    line = proc.stdout.strip()
    return line or None


def postfix_check(config_dir: Path) -> tuple[bool, str]:
    proc = run([POSTFIX, "-c", str(config_dir), "check"], check=False)
    return proc.returncode == 0, (proc.stderr + proc.stdout).strip()


# ---------------------------------------------------------------------------
# What to install


def wanted_for(
    config: Config,
    config_dir: Path,
    *,
    bouncetrack_bin: str | None = None,
    map_type: str = "texthash",
    current: dict[str, str] | None = None,
    pipe_socket: str = wiring.PIPE_SOCKET,
    pipe_client: str | None = None,
    transport: str | None = None,
) -> wiring.Wanted:
    """What to wire for ``config`` into ``config_dir``; :class:`~bouncetrack.ops.postfix_wiring.WiringError`
    when the milter socket is out of reach of a chrooted smtpd or cleanup, or (``transport``
    lmtp; default: the config's ``pipe.transport``) the LMTP socket of our lmtp service."""
    current = current if current is not None else main_values(config_dir)
    try:
        size = int(current.get("message_size_limit", "0") or 0)
    except ValueError:
        size = 0
    queue = queue_directory(config_dir)
    all_services = services(config_dir)
    address = wiring.milter_address(str(config.milter_socket), queue, all_services)
    lmtp = config.pipe.lmtp
    transport = transport or config.pipe.transport
    chroot = lmtp_chroot(all_services)
    lmtp_socket = wiring.lmtp_address(str(lmtp.socket), queue, chroot) if transport == TRANSPORT_LMTP else ""
    return wiring.Wanted(
        bounce_domain=config.bounce_domain,
        milter_socket=address,
        config_path=str(Path(config.path).resolve()),
        bouncetrack_bin=bouncetrack_bin or default_bouncetrack_bin(),
        config_dir=str(config_dir.resolve()),
        map_type=map_type,
        size_limit=size or None,
        pipe_client=pipe_client or default_pipe_client(),
        pipe_socket=pipe_socket,
        transport=transport,
        lmtp_socket=lmtp_socket,
        lmtp_chroot=chroot,
        lmtp_workers=lmtp.workers,
        lmtp_max_recipients=lmtp.max_recipients,
    )


def lmtp_chroot(all_services: Sequence[wiring.Service]) -> bool:
    """Our lmtp service's chroot: as the operator's ``lmtp/unix`` (Debian: y), else n."""
    return next((s.chroot for s in all_services if s.key == "lmtp/unix"), False)


def default_pipe_client() -> str:
    """The pipe client of this installed package (the checkout, for an editable install)."""
    return str(Path(__file__).resolve().parents[1] / "bounce_pipe" / "client.py")


def default_bouncetrack_bin() -> str:
    """The ``bouncetrack`` script next to the running interpreter (the venv's)."""
    return str(Path(sys.executable).parent / "bouncetrack")


# ---------------------------------------------------------------------------
# State file


@dataclass
class State:
    backups: dict[str, str] = field(default_factory=dict)  # "main.cf" -> backup file name
    main: dict[str, dict[str, str | None]] = field(default_factory=dict)  # name -> {"old", "new"}
    master_old: str | None = None
    master_new: str | None = None
    master_changed: bool = False
    # The bouncelmtp entry (issue 21), as the bouncepipe one.
    lmtp_master_old: str | None = None
    lmtp_master_changed: bool = False
    files: list[str] = field(default_factory=list)  # created by us, relative to the config dir
    installed_sha256: dict[str, str] = field(default_factory=dict)
    restorable: dict[str, bool] = field(default_factory=dict)  # backup still byte-exact candidate
    wanted: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, config_dir: Path) -> "State | None":
        path = config_dir / wiring.STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InstallError(f"{path}: unreadable install state ({exc}); restore from the backups by hand") from None
        data.pop("version", None)
        return cls(**data)

    def save(self, config_dir: Path) -> None:
        path = config_dir / wiring.STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": STATE_VERSION, **self.__dict__}, indent=2, sort_keys=True) + "\n")
        tmp.chmod(0o644)
        os.replace(tmp, path)


def _sha(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return ""


def _stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# ---------------------------------------------------------------------------
# Applying (to the real directory, or to a temporary copy for --dry-run)


def _write_transport(target_dir: Path, w: wiring.Wanted, text: str, *, postmap: bool) -> list[str]:
    path = target_dir / wiring.TRANSPORT_FILE
    path.write_text(text)
    path.chmod(0o644)
    created = [wiring.TRANSPORT_FILE]
    if w.map_type != "texthash":
        if postmap:
            run([POSTMAP, "-c", str(target_dir), f"{w.map_type}:{path}"])
        suffix = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}.get(w.map_type)
        if suffix:
            created.append(wiring.TRANSPORT_FILE + suffix)
    return created


def _apply(target_dir: Path, w: wiring.Wanted, p: wiring.Plan, *, postmap: bool) -> list[str]:
    created = _write_transport(target_dir, w, p.transport_text, postmap=postmap)
    if p.main:
        run([POSTCONF, "-c", str(target_dir), "-e", *(f"{k}={v}" for k, v in p.main.items())])
    if p.master is not None:
        run([POSTCONF, "-c", str(target_dir), "-M", "-e", f"{SERVICE_KEY}={p.master}"])
    if p.lmtp_master is not None:
        run([POSTCONF, "-c", str(target_dir), "-M", "-e", f"{LMTP_SERVICE_KEY}={p.lmtp_master}"])
    return created


def _dry_run_diff(config_dir: Path, command: str, change: Callable[[Path], object]) -> str:
    """What ``change`` would do to the wired files, as a unified diff: it runs on copies
    of them in a temporary directory; ``config_dir`` is never written."""
    names = ("main.cf", "master.cf", wiring.TRANSPORT_FILE)
    with tempfile.TemporaryDirectory(prefix=f"bouncetrack-{command}-") as tmpname:
        tmp = Path(tmpname)
        for name in names:
            if (config_dir / name).exists():
                shutil.copy2(config_dir / name, tmp / name)
        change(tmp)
        out: list[str] = []
        for name in names:
            a = (config_dir / name).read_text().splitlines(keepends=True) if (config_dir / name).exists() else []
            b = (tmp / name).read_text().splitlines(keepends=True) if (tmp / name).exists() else []
            out.extend(difflib.unified_diff(a, b, f"{config_dir / name} (now)", f"{config_dir / name} (after)"))
    return "".join(out).rstrip("\n")


# ---------------------------------------------------------------------------
# install


def install(
    config: Config,
    config_dir: Path,
    *,
    dry_run: bool = False,
    bouncetrack_bin: str | None = None,
    map_type: str = "texthash",
    echo: Echo = print,
    pipe_socket: str = wiring.PIPE_SOCKET,
    pipe_client: str | None = None,
    transport: str | None = None,
) -> bool:
    """Wire bouncetrack in. Returns True when something changed (or would change).

    ``pipe_socket``: where the pipe server listens (the pipe client's ``--socket``);
    ``pipe_client``: the client script pipe(8) starts (default: this package's);
    ``transport``: ``pipe`` or ``lmtp`` (issue 21), by default the config's ``pipe.transport``,
    which it must equal (the pipe server opens its LMTP socket only for ``lmtp``).
    Raises :class:`~bouncetrack.ops.postfix_wiring.WiringError`, before writing anything,
    when a chrooted smtpd or cleanup could not reach the milter socket."""
    config_dir = config_dir.resolve()
    if not (config_dir / "main.cf").is_file() or not (config_dir / "master.cf").is_file():
        raise InstallError(f"{config_dir} has no main.cf and master.cf: not a Postfix config directory")
    if transport is not None and transport != config.pipe.transport:
        raise InstallError(
            f"--transport {transport}, but {config.path} has pipe.transport: {config.pipe.transport}, and the pipe "
            f"server opens its LMTP socket only with pipe.transport: lmtp. Set pipe.transport: {transport} there, "
            "restart bouncetrack-pipe-server, and run install again")
    current = main_values(config_dir)
    w = wanted_for(config, config_dir, bouncetrack_bin=bouncetrack_bin, map_type=map_type, current=current,
                   pipe_socket=pipe_socket, pipe_client=pipe_client, transport=transport)
    if not Path(w.bouncetrack_bin).exists():
        echo(f"warning: {w.bouncetrack_bin} does not exist (use --bouncetrack-bin); pipe(8) would fail")
    cur_master = master_entry(config_dir)
    cur_lmtp_master = master_entry(config_dir, LMTP_SERVICE_KEY)
    state = State.load(config_dir)
    # Other names of our milter, replaced in place: what an earlier install wrote, and the
    # configured path itself (written absolute by hand or by an install before issue 15,
    # which a chrooted smtpd cannot reach).
    earlier = str(state.wanted.get("milter_socket", "")) if state is not None else ""
    replaces = [n for n in dict.fromkeys((earlier, str(config.milter_socket))) if n and n != w.milter_socket]
    p = wiring.plan(current, cur_master, w, replaces=replaces, current_lmtp_master=cur_lmtp_master)
    transport_path = config_dir / wiring.TRANSPORT_FILE
    transport_ok = transport_path.exists() and transport_path.read_text() == p.transport_text
    if p.empty and transport_ok:
        echo(f"nothing to change: {config_dir} is already wired for bouncetrack")
        return False

    if dry_run:
        echo(_dry_run_diff(config_dir, "install", lambda tmp: _apply(tmp, w, p, postmap=False)))
        if w.map_type != "texthash":
            echo(f"(then: postmap {w.transport_map})")
        echo("dry run: nothing written")
        return True

    explicit = explicit_values(config_dir)
    if state is None:
        state = State()
        stamp = _stamp()
        for name in ("main.cf", "master.cf"):
            backup = f"{name}.bouncetrack-backup-{stamp}"
            shutil.copy2(config_dir / name, config_dir / backup)
            state.backups[name] = backup
            state.restorable[name] = True
            echo(f"backup: {config_dir / backup}")
    else:
        # Edited since our last change: a byte-exact restore would lose those edits.
        for name in ("main.cf", "master.cf"):
            if _sha(config_dir / name) != state.installed_sha256.get(name):
                state.restorable[name] = False
    for name, value in p.main.items():
        entry = state.main.setdefault(name, {"old": explicit.get(name)})
        entry["new"] = value
    if p.master is not None:
        if not state.master_changed:
            state.master_old = cur_master
            state.master_changed = True
        state.master_new = p.master
    if p.lmtp_master is not None and not state.lmtp_master_changed:
        state.lmtp_master_old = cur_lmtp_master
        state.lmtp_master_changed = True
    state.wanted = dict(w.__dict__)
    # Save first: an interrupted install can still be undone.
    state.save(config_dir)

    created = _apply(config_dir, w, p, postmap=True)
    for f in created:
        if f not in state.files:
            state.files.append(f)
    for name in ("main.cf", "master.cf"):
        state.installed_sha256[name] = _sha(config_dir / name)
    state.save(config_dir)

    for name, value in p.main.items():
        echo(f"main.cf: {name} = {value}")
    if p.master is not None:
        echo(f"master.cf: {p.master}")
    if p.lmtp_master is not None:
        echo(f"master.cf: {p.lmtp_master}")
    if not transport_ok:
        echo(f"transport map: {w.transport_map} ({w.bounce_domain} -> {wiring.transport_nexthop(w)})")
    ok, text = postfix_check(config_dir)
    if not ok:
        raise InstallError(f"postfix check failed after install:\n{text}\nundo with: bouncetrack uninstall --postfix-dir {config_dir}")
    if not config.milter_socket.exists():
        echo(f"note: {config.milter_socket} does not exist yet: start the milter (systemctl start "
             "bouncetrack-milter) before reloading Postfix, or it answers every message 451 4.7.1")
    if w.transport == TRANSPORT_LMTP and not config.pipe.lmtp.socket.exists():
        echo(f"note: {config.pipe.lmtp.socket} does not exist yet: (re)start the pipe server (systemctl restart "
             "bouncetrack-pipe-server; it opens the LMTP socket at start) before reloading Postfix, or every "
             "bounce is deferred until it listens")
    echo(f"postfix check: ok. Apply with: postfix{_c(config_dir)} reload")
    return True


def _c(config_dir: Path) -> str:
    return "" if str(config_dir) == "/etc/postfix" else f" -c {config_dir}"


# ---------------------------------------------------------------------------
# uninstall


def _revert_into(target: Path, state: State, real: Path, echo: Echo) -> None:
    """Undo our changes in ``target`` (the real directory or a dry-run copy of it)."""
    w = wiring.Wanted(**state.wanted) if state.wanted else None
    # main.cf
    if state.restorable.get("main.cf") and _sha(target / "main.cf") == state.installed_sha256.get("main.cf"):
        _restore_bytes(real / state.backups["main.cf"], target / "main.cf")
        echo(f"main.cf: restored byte for byte from {state.backups['main.cf']}")
    elif state.main:
        if w is None:
            raise InstallError("install state lacks the installed settings; restore from the backups by hand")
        current = main_values(target)
        set_args: list[str] = []
        remove: list[str] = []
        for name, entry in state.main.items():
            value = wiring.revert_value(name, current.get(name, ""), entry.get("new") or "", entry.get("old"), w)
            if value is None:
                remove.append(name)
            elif value != current.get(name, ""):
                set_args.append(f"{name}={value}")
        if set_args:
            run([POSTCONF, "-c", str(target), "-e", *set_args])
        if remove:
            run([POSTCONF, "-c", str(target), "-X", *remove])
        echo(f"main.cf: changed since install; reverted our settings ({', '.join(state.main)})")
    # master.cf
    if state.restorable.get("master.cf") and _sha(target / "master.cf") == state.installed_sha256.get("master.cf"):
        _restore_bytes(real / state.backups["master.cf"], target / "master.cf")
        echo(f"master.cf: restored byte for byte from {state.backups['master.cf']}")
    else:
        if state.master_changed:
            _revert_entry(target, SERVICE_KEY, state.master_old, echo)
        if state.lmtp_master_changed:
            _revert_entry(target, LMTP_SERVICE_KEY, state.lmtp_master_old, echo)


def _revert_entry(target: Path, key: str, old: str | None, echo: Echo) -> None:
    if old is None:
        if master_entry(target, key) is not None:
            run([POSTCONF, "-c", str(target), "-M", "-X", key])
        echo(f"master.cf: changed since install; removed the {key} entry")
    else:
        run([POSTCONF, "-c", str(target), "-M", "-e", f"{key}={old}"])
        echo(f"master.cf: changed since install; restored the old {key} entry")


def _restore_bytes(backup: Path, dest: Path) -> None:
    if not backup.is_file():
        raise InstallError(f"backup {backup} is missing; cannot restore {dest.name}")
    data = backup.read_bytes()
    with open(dest, "wb") as f:  # in place: keeps the file's owner, mode and inode
        f.write(data)


def uninstall(config_dir: Path, *, dry_run: bool = False, echo: Echo = print) -> bool:
    """Undo ``install``. Returns True when something changed (or would change)."""
    config_dir = config_dir.resolve()
    state = State.load(config_dir)
    if state is None:
        echo(f"nothing to undo: no {wiring.STATE_FILE} in {config_dir} (bouncetrack install was not run here)")
        return False
    if dry_run:
        def revert(tmp: Path) -> None:
            _revert_into(tmp, state, config_dir, lambda s: None)
            for f in state.files:
                (tmp / f).unlink(missing_ok=True)

        echo(_dry_run_diff(config_dir, "uninstall", revert))
        echo("dry run: nothing written")
        return True
    _revert_into(config_dir, state, config_dir, echo)
    for f in state.files:
        (config_dir / f).unlink(missing_ok=True)
        echo(f"removed {config_dir / f}")
    (config_dir / wiring.STATE_FILE).unlink()
    echo(f"kept the backups: {', '.join(state.backups.values())}")
    ok, text = postfix_check(config_dir)
    echo(f"postfix check: {'ok' if ok else 'FAILED: ' + text}. Apply with: postfix{_c(config_dir)} reload")
    return True


# ---------------------------------------------------------------------------
# click commands (registered in bouncetrack.cli.LAZY_COMMANDS)

def _load(path: str) -> Config:
    from ..core.config_loader import load_or_exit  # PyYAML: only for the command that runs

    return load_or_exit(path)


@click.command("install")
@click.option("--postfix-dir", default="/etc/postfix", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Postfix configuration directory (main.cf, master.cf).")
@click.option("--config", "config_file", default=DEFAULT_CONFIG_PATH, show_default=True,
              help="bouncetrack YAML configuration (bounce domain, milter socket).")
@click.option("--dry-run", is_flag=True, help="Print the diff, change nothing.")
@click.option("--bouncetrack-bin", default=None, help="The bouncetrack program pipe(8) runs [default: next to this Python].")
@click.option("--map-type", type=click.Choice(["texthash", "hash", "lmdb", "cdb"]), default="texthash", show_default=True,
              help="Type of the transport map file we manage (hash/lmdb/cdb: postmap is run).")
@click.option("--pipe-socket", default=wiring.PIPE_SOCKET, show_default=True,
              help="The pipe server's socket (bouncetrack pipe-server --socket), which the pipe client connects to.")
@click.option("--transport", type=click.Choice([TRANSPORT_PIPE, TRANSPORT_LMTP]), default=None,
              help="How Postfix hands bounces over: pipe(8) and the pipe client, or LMTP to the pipe server "
                   "[default: the config's pipe.transport, which it must equal].")
def install_command(postfix_dir: Path, config_file: str, dry_run: bool, bouncetrack_bin: str | None, map_type: str,
                    pipe_socket: str, transport: str | None) -> None:
    """Wire bouncetrack into Postfix (milter, bounce pipe, transport), with a backup.

    Refuses (exit 1, nothing written) when master.cf runs smtpd or cleanup chrooted and
    milter_socket lies outside Postfix's queue directory."""
    config = _load(config_file)
    try:
        install(config, postfix_dir, dry_run=dry_run, bouncetrack_bin=bouncetrack_bin, map_type=map_type,
                echo=click.echo, pipe_socket=pipe_socket, transport=transport)
    except (InstallError, wiring.WiringError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command("uninstall")
@click.option("--postfix-dir", default="/etc/postfix", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Postfix configuration directory.")
@click.option("--dry-run", is_flag=True, help="Print the diff, change nothing.")
def uninstall_command(postfix_dir: Path, dry_run: bool) -> None:
    """Undo `bouncetrack install` (restore main.cf and master.cf)."""
    try:
        uninstall(postfix_dir, dry_run=dry_run, echo=click.echo)
    except InstallError as exc:
        raise click.ClickException(str(exc)) from None
