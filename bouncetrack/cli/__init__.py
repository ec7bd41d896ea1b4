"""The ``bouncetrack`` command.

Two constraints shape this module:

- ``bouncetrack pipe`` runs once per bounce under Postfix's pipe(8), so
  :func:`main` dispatches it *before* click is imported, and this module
  imports nothing but ``sys`` at load time. The click group is built on first
  use by :func:`build_cli`.
- ``bouncetrack --help`` must not import pymilter, FastAPI & co. Every command
  but ``pipe`` lives in its own module, registered by import path in
  :data:`LAZY_COMMANDS` and imported only when invoked (click's LazyGroup
  pattern); their one-line help is given here so that ``--help`` needs no
  import either. A command group's module sits next to what it drives
  (``milter/cli.py``, ``forward/cli.py``, ``ops/install.py``…); the commands
  over the configuration and the keys are in this package (``config.py``,
  ``verp.py``, ``keys.py``).

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

if TYPE_CHECKING:  # pragma: no cover
    import click

__all__ = ["main", "build_cli", "LAZY_COMMANDS"]

# ---------------------------------------------------------------------------
# Commands implemented in other modules, imported only when run.
#   name -> ("package.module:attribute", one-line help shown by --help)
# The attribute must be a click.Command. OWNERS: add or fix your entry here.
# An entry whose module does not exist (yet) is hidden from --help.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    # check-config: bouncetrack/cli/config.py
    "check-config": ("bouncetrack.cli.config:check_config", "Validate a config FILE (exit 1 on problems)."),
    # verp: bouncetrack/cli/verp.py
    "verp": ("bouncetrack.cli.verp:verp", "Show the envelope the milter would use for a sender."),
    # rotate-key, hash-token: the VERP key and the API tokens (bouncetrack/cli/keys.py)
    "rotate-key": ("bouncetrack.cli.keys:rotate_key_cmd", "Make a new VERP key (the old one verifies for a grace period)."),
    "hash-token": ("bouncetrack.cli.keys:hash_token", "Hash an API token (stdin, or --new) for the config."),
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
# The click group


def _build() -> "click.Group":
    import importlib
    import importlib.util

    import click

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

    return bouncetrack
