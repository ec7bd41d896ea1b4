"""``bouncetrack verp``: the envelope the milter would use for a sender, from the
milter's own decision function."""

from __future__ import annotations

import secrets

import click

from ..core.config import DEFAULT_CONFIG_PATH, Config
from ..core.config_loader import load_or_exit
from ..core.tokens import KeyFileError, KeyRing, load_keyring, mint, new_token_id
from ..milter import policy


def verp_report(config: Config, sender: str, recipients: list[str], token: str) -> list[str]:
    """Lines describing what the milter would do with this envelope (pure).

    Uses the milter's own decision function so the output cannot drift from
    what the milter does.
    """
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


@click.command("verp")
@click.option("--config", "config_file", default=DEFAULT_CONFIG_PATH, show_default=True, help="YAML configuration.")
@click.option("--sender", "-s", required=True, help="Envelope sender (MAIL FROM) of the message.")
@click.option("--recipient", "-r", "recipients", required=True, multiple=True, help="Envelope recipient (repeatable).")
def verp(config_file: str, sender: str, recipients: tuple[str, ...]) -> None:
    """Show the envelope the milter would use for a sender.

    The token shown is an example minted now; the milter mints one per message.
    """
    config = load_or_exit(config_file)
    note = None
    try:
        # Never create the key file here: run as root it would be unreadable by the milter.
        keyring = load_keyring(config, create=False)
    except KeyFileError as exc:
        keyring = KeyRing(current=secrets.token_bytes(32))
        note = f"note: {exc}; the example token uses a throw-away key"
    token = mint(keyring, new_token_id())
    lines = verp_report(config, sender, list(recipients), token)
    for line in lines:
        click.echo(line)
    if note and any(token in line for line in lines):
        click.echo(note)
