"""``bouncetrack rotate-key`` (the VERP key) and ``bouncetrack hash-token`` (API tokens)."""

from __future__ import annotations

import datetime
import sys
import time

import click

from ..core.config import DEFAULT_CONFIG_PATH
from ..core.config_loader import load_or_exit
from ..core.tokens import KeyFileError, hash_api_token, load_keyring, new_api_token, rotate_key


@click.command("rotate-key")
@click.option("--config", "config_file", default=DEFAULT_CONFIG_PATH, show_default=True, help="YAML configuration.")
@click.option("--force", is_flag=True, help="Rotate even if the previous key is still inside its grace period.")
def rotate_key_cmd(config_file: str, force: bool) -> None:
    """Make a new VERP key (the old one verifies for a grace period).

    Reload the milter afterwards (SIGHUP) so that it mints with the new key.
    """
    config = load_or_exit(config_file)
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

@click.command("hash-token")
@click.option("--new", "generate", is_flag=True, help="Generate a new random API token.")
def hash_token(generate: bool) -> None:
    """Hash an API token (stdin, or --new) for the config.

    Prints the "sha256:<hex>" line; with --new also the generated token.

    Paste the line into api_tokens: of a domain; the token itself is never stored.
    """
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


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
