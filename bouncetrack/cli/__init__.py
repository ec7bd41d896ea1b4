"""The ``bouncetrack`` command.

Two constraints shape this module:

- ``bouncetrack pipe`` runs once per bounce under Postfix's pipe(8), so
  :func:`main` dispatches it *before* click is imported, and this module
  imports nothing but ``sys`` at load time. The click group is built on first
  use by :func:`build_cli`.
- ``bouncetrack --help`` must not import pymilter, httpx & co. Commands that
  live in other modules are registered by import path in :data:`LAZY_COMMANDS`
  and imported only when invoked (click's LazyGroup pattern); their one-line
  help is given here so that ``--help`` needs no import either.

Exit codes: 0 success; 1 for an invalid configuration or any other operational
error (a ``ClickException``); 2 for usage errors (click's convention). We chose
1 rather than sysexits' 78 (EX_CONFIG) for ``check-config`` because scripts and
systemd's ``ExecStartPre=`` only test for non-zero, and 1 is what operators
expect from a checker; the pipe alone follows sysexits (Postfix reads them).
"""

from __future__ import annotations

# Lazy imports: a command imports what it runs when it runs, so that every `bouncetrack` command
# starts without the others' dependencies (PyYAML, FastAPI, libmilter, psycopg, flanker).

import sys
from typing import TYPE_CHECKING, Any

from bouncetrack.core.redact import redact_url

if TYPE_CHECKING:  # pragma: no cover
    import click

    from bouncetrack.core.config import Config

__all__ = ["main", "build_cli", "LAZY_COMMANDS"]

# ---------------------------------------------------------------------------
# Commands implemented in other modules, imported only when run.
#   name -> ("package.module:attribute", one-line help shown by --help)
# The attribute must be a click.Command. OWNERS: add or fix your entry here.
# An entry whose module does not exist (yet) is hidden from --help.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    # milter: bouncetrack/milter/cli.py
    "milter": ("bouncetrack.milter.cli:milter_command", "Run the tracking milter on its unix socket."),
    # classify: the classifier's command (print the report of a bounce file)
    "classify": ("bouncetrack.classifier.cli:classify", "Classify a bounce message and print the report."),
    # worker: the outbox worker (webhook and SMTP forward deliveries)
    "worker": ("bouncetrack.forward.cli:worker", "Deliver processed bounces (webhooks, SMTP forward)."),
    # outbox: inspect / retry the outbox
    "outbox": ("bouncetrack.forward.cli:outbox", "Inspect and retry queued deliveries."),
    # demo: private Postfix + milter + fake MX, send and show bounces
    "demo": ("bouncetrack.harness.demo:demo_command", "Run the demo: a private Postfix, send mail, show bounces."),
    # api: the HTTP API
    "api": ("bouncetrack.api.cli:api_command", "Serve the HTTP API."),
    # doctor: DNS / Postfix wiring checks
    "doctor": ("bouncetrack.doctor.cli:doctor_command", "Check config, milter, Postfix wiring, pipe user, store and DNS."),
    # install / uninstall: wire bouncetrack into an existing Postfix (bouncetrack/ops/install.py)
    "install": ("bouncetrack.ops.install:install_command", "Wire bouncetrack into Postfix's main.cf/master.cf (backup, idempotent)."),
    "uninstall": ("bouncetrack.ops.install:uninstall_command", "Undo `bouncetrack install` (restore main.cf and master.cf)."),
    # suppression: the per-domain suppression lists by hand (bouncetrack/suppression/cli.py, issue 6)
    "suppression": ("bouncetrack.suppression.cli:suppression", "List, add and remove suppressed recipients."),
    # pipe-server: the warm bounce pipe behind bounce_pipe/client.py (bouncetrack/bounce_pipe/server.py)
    "pipe-server": ("bouncetrack.bounce_pipe.cli:pipe_server_command", "Serve the bounce pipe warm, for the pipe client in master.cf."),
    # purge: retention of raw reports, events and messages (bouncetrack/ops/purge.py, issue 6)
    "purge": ("bouncetrack.ops.purge:purge_command", "Delete raw reports, events and messages past retention (--dry-run: count)."),
    # check-address: pre-send address validation (bouncetrack/validation/cli.py, issue 19)
    "check-address": ("bouncetrack.validation.cli:check_address_command", "Can these addresses receive mail? (syntax, MX/A, provider rules, suppression)"),
    # backup: an online, consistent copy of a SQLite store (bouncetrack/ops/backup.py, issue 15)
    "backup": ("bouncetrack.ops.backup:backup_command", "Copy the SQLite store while bouncetrack runs (PostgreSQL: pg_dump)."),
    # forget: everything about one address, for privacy requests (bouncetrack/ops/forget.py, issue 16)
    "forget": ("bouncetrack.ops.forget:forget_command", "Delete everything the store holds about one address."),
}

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    ``pipe`` goes straight to the bounce pipe without importing click (it runs
    once per bounce); everything else goes through the click group.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["pipe"]:
        from bouncetrack.bounce_pipe.main import main as pipe_main

        raise SystemExit(pipe_main(args[1:]))
    build_cli().main(args=args, prog_name="bouncetrack")


_CLI: Any = None


def build_cli() -> "click.Group":
    """The ``bouncetrack`` click group (built once, on first use)."""
    global _CLI
    if _CLI is None:
        _CLI = _build()
    group: click.Group = _CLI
    return group


def __getattr__(name: str) -> Any:
    # ``from bouncetrack.cli import cli`` works without importing click at load time.
    if name == "cli":
        return build_cli()
    raise AttributeError(name)


# ---------------------------------------------------------------------------
# Plain helpers (no click), used by the commands below and testable on their own.


def config_summary(config: "Config") -> str:
    """One line: bounce domain, store, domains tracked/untracked, default tracking."""
    tracked = sorted(d for d, p in config.domains.items() if p.tracking)
    untracked = sorted(d for d, p in config.domains.items() if not p.tracking)
    n = len(config.domains)
    return (
        f"bounce domain {config.bounce_domain}, store {redact_url(config.store_url)}, "
        f"{n} domain{'s' if n != 1 else ''} (tracked: {', '.join(tracked) or 'none'}; "
        f"untracked: {', '.join(untracked) or 'none'}), "
        f"default tracking {'on' if config.default.tracking else 'off'}"
    )


def verp_report(config: "Config", sender: str, recipients: list[str], token: str) -> list[str]:
    """Lines describing what the milter would do with this envelope (pure).

    Uses the milter's own decision function so the output cannot drift from
    what the milter does.
    """
    from bouncetrack.milter import policy

    path = sender if sender.startswith("<") else f"<{sender}>"
    envelope = policy.Envelope(
        sender=path, recipients=tuple(policy.Recipient(r if r.startswith("<") else f"<{r}>") for r in recipients)
    )
    decision = policy.decide(config, envelope, token if policy.needs_token(config, envelope) else None)
    domain = decision.sender_domain
    lines: list[str] = []
    if domain is None:
        why = {"null-sender": "the null sender", "malformed-sender": "a malformed address"}.get(
            decision.why, decision.why
        )
        lines.append(f"sender {path} ({why}): not tracked, the envelope passes unchanged")
        return lines
    pol = config.policy_for(domain)
    if decision.why == "bounce-domain":
        lines.append(f"sender domain {domain} is the bounce domain: never rewritten, the envelope passes unchanged")
        return lines
    lines.append(f"sender domain {domain}: policy '{pol.name}', tracking {'on' if pol.tracking else 'off'}")
    changes = {c.path: c.new_params for c in decision.recipient_changes}
    new_sender = decision.new_sender if decision.new_sender is not None else envelope.sender.strip("<>")
    mail = f"MAIL FROM:<{new_sender}>" + (f" {decision.sender_params}" if decision.sender_params else "")
    rcpts = [f"RCPT TO:{r.path}" + (f" {changes[r.path]}" if r.path in changes else "") for r in envelope.recipients]
    if decision.kind == policy.TRACK:
        lines.append(mail)
        lines.extend(rcpts)
        lines.append(
            f"note: token {token} is an example, minted just now; the milter mints a new token for every message"
        )
    elif decision.kind == policy.PASS:
        lines.append("not tracked: the envelope passes unchanged (sender and the client's DSN parameters):")
        lines.append(mail)
        lines.extend(rcpts)
    else:
        lines.append(
            "not tracked: the envelope sender passes unchanged; the domain's DSN defaults fill in "
            "what the client leaves out (here: a client that gave none):"
        )
        lines.append(mail)
        lines.extend(rcpts)
    return lines


# ---------------------------------------------------------------------------
# The click group


def _build() -> "click.Group":
    import importlib
    import importlib.util
    import time

    import click

    from bouncetrack.core.config import DEFAULT_CONFIG_PATH

    def load(path: str) -> "Config":
        from bouncetrack.core.config_loader import load_or_exit  # PyYAML: only for the command that runs

        return load_or_exit(path)

    class LazyGroup(click.Group):
        """click.Group that imports subcommands from LAZY_COMMANDS on demand."""

        def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.lazy = lazy

        def _available(self, name: str) -> bool:
            module = self.lazy[name][0].partition(":")[0]
            try:
                return importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:  # a parent package does not exist yet
                return False

        def list_commands(self, ctx: click.Context) -> list[str]:
            lazy = [n for n in self.lazy if n not in self.commands and self._available(n)]
            return sorted([*super().list_commands(ctx), *lazy])

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            if cmd_name in self.lazy and cmd_name not in self.commands:
                return self._load(cmd_name)
            return super().get_command(ctx, cmd_name)

        def _load(self, name: str) -> click.Command:
            target = self.lazy[name][0]
            module_name, _, attr = target.partition(":")
            if not self._available(name):
                raise click.ClickException(f"'{name}' is not available in this installation ({module_name} is missing)")
            module = importlib.import_module(module_name)
            command = getattr(module, attr, None)
            if not isinstance(command, click.Command):
                raise click.ClickException(f"'{name}': {target} is not a click command")
            return command

        def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
            # Like click's, but lazy commands show their help from LAZY_COMMANDS (no import).
            rows = []
            for name in self.list_commands(ctx):
                if name in self.commands:
                    cmd = self.commands[name]
                    if cmd.hidden:
                        continue
                    rows.append((name, cmd.get_short_help_str(limit=formatter.width - 6 - len(name))))
                else:
                    rows.append((name, self.lazy[name][1]))
            if rows:
                with formatter.section("Commands"):
                    formatter.write_dl(rows)

    @click.group(cls=LazyGroup, lazy=LAZY_COMMANDS, context_settings=CONTEXT_SETTINGS)
    def bouncetrack() -> None:
        """Bounce and complaint tracking for Postfix."""

    @bouncetrack.command(
        "pipe",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, **CONTEXT_SETTINGS},
        add_help_option=False,
    )
    @click.pass_context
    def pipe(ctx: click.Context) -> None:
        """Process one bounce from Postfix pipe(8) (stdin).

        Reads the message on stdin. master.cf: argv=/opt/bouncetrack/venv/bin/bouncetrack pipe ... ; exit
        codes follow sysexits (75: Postfix retries later).
        """
        from bouncetrack.bounce_pipe.main import main as pipe_main

        raise SystemExit(pipe_main(list(ctx.args)))

    @bouncetrack.command("check-config")
    @click.argument("file", type=click.Path(dir_okay=True, path_type=str))
    def check_config(file: str) -> None:
        """Validate a config FILE (exit 1 on problems).

        Prints "ok" and a summary, or every problem, one per line, on stderr; API
        tokens and webhook secrets everybody knows (examples, "test") are problems.
        """
        from bouncetrack.core.known_secrets import known_secret_problems

        config = load(file)
        known = known_secret_problems(config)
        for line in known:  # issue 16: a secret everybody knows is refused
            click.echo(f"{file}: {line}", err=True)
        if known:
            raise SystemExit(1)
        click.echo(f"ok: {file}: {config_summary(config)}")

    @bouncetrack.command("verp")
    @click.option("--config", "config_file", default=DEFAULT_CONFIG_PATH, show_default=True, help="YAML configuration.")
    @click.option("--sender", "-s", required=True, help="Envelope sender (MAIL FROM) of the message.")
    @click.option("--recipient", "-r", "recipients", required=True, multiple=True, help="Envelope recipient (repeatable).")
    def verp(config_file: str, sender: str, recipients: tuple[str, ...]) -> None:
        """Show the envelope the milter would use for a sender.

        The token shown is an example minted now; the milter mints one per message.
        """
        from bouncetrack.core.tokens import KeyFileError, KeyRing, load_keyring, mint, new_token_id

        config = load(config_file)
        note = None
        try:
            # Never create the key file here: run as root it would be unreadable by the milter.
            keyring = load_keyring(config, create=False)
        except KeyFileError as exc:
            import secrets

            keyring = KeyRing(current=secrets.token_bytes(32))
            note = f"note: {exc}; the example token uses a throw-away key"
        token = mint(keyring, new_token_id())
        lines = verp_report(config, sender, list(recipients), token)
        for line in lines:
            click.echo(line)
        if note and any(token in line for line in lines):
            click.echo(note)

    @bouncetrack.command("rotate-key")
    @click.option("--config", "config_file", default=DEFAULT_CONFIG_PATH, show_default=True, help="YAML configuration.")
    @click.option("--force", is_flag=True, help="Rotate even if the previous key is still inside its grace period.")
    def rotate_key_cmd(config_file: str, force: bool) -> None:
        """Make a new VERP key (the old one verifies for a grace period).

        Reload the milter afterwards (SIGHUP) so that it mints with the new key.
        """
        from bouncetrack.core.tokens import KeyFileError, load_keyring, rotate_key

        config = load(config_file)
        now = time.time()
        try:
            if not config.secret_file.exists():
                load_keyring(config, create=True)
                click.echo(f"no key yet: created {config.secret_file} (mode 0600); nothing to rotate")
                return
            ring = load_keyring(config, create=False)
            until = ring.previous_valid_until
            if ring.previous is not None and until is not None and until > now and not force:
                raise click.ClickException(
                    f"the previous key still verifies until {_iso(until)}; rotating now drops it, and "
                    "bounces for mail sent with it would be rejected as forged. Use --force to rotate anyway."
                )
            new = rotate_key(config, now)
        except KeyFileError as exc:
            raise click.ClickException(str(exc)) from None
        assert new.previous_valid_until is not None
        click.echo(f"rotated: new key in {config.secret_file}")
        click.echo(
            f"previous key kept in {config.secret_file}.previous; its tokens verify until "
            f"{_iso(new.previous_valid_until)}"
        )
        click.echo("reload the milter (SIGHUP) so that it mints with the new key")

    @bouncetrack.command("hash-token")
    @click.option("--new", "generate", is_flag=True, help="Generate a new random API token.")
    def hash_token(generate: bool) -> None:
        """Hash an API token (stdin, or --new) for the config.

        Prints the "sha256:<hex>" line; with --new also the generated token.

        Paste the line into api_tokens: of a domain; the token itself is never stored.
        """
        from bouncetrack.core.tokens import hash_api_token, new_api_token

        if generate:
            token = new_api_token()
            click.echo(f"token: {token}")
            click.echo(hash_api_token(token))
            click.echo("keep the token secret, it is shown only now; paste the sha256: line into api_tokens:", err=True)
            return
        if sys.stdin.isatty():
            token = click.prompt("API token", hide_input=True)
        else:
            token = sys.stdin.read()
        token = token.strip()
        if not token:
            raise click.ClickException("no token given on stdin (or use --new)")
        click.echo(hash_api_token(token))

    return bouncetrack


def _iso(ts: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
