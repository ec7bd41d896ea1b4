"""Secrets everybody knows (issue 16): values copied from examples and docs.

``conf/example.yaml`` once shipped a working API token (the hash of ``test``) and a
fixed webhook secret; a configuration copied from it let anyone read the domain's
bounces and forge its webhooks. :func:`known_secret_problems` names every such
value in a configuration: ``check-config`` refuses it (exit 1), and the API and the
worker log each one as an error at start (they still start: an upgrade must not
stop mail flow).
"""

from __future__ import annotations

from .config import Config
from .tokens import hash_api_token

# Tokens people type when trying things out; their hashes are no secret.
KNOWN_API_TOKENS = ("test", "testing", "token", "secret", "password", "changeme", "change-me", "example", "admin", "")
# Webhook secrets published in this repository's examples and docs.
KNOWN_WEBHOOK_SECRETS = frozenset({"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_abc"})
MIN_WEBHOOK_SECRET = 16


def known_secret_problems(config: Config) -> list[str]:
    """One line per well-known or too short secret in ``config`` (empty: none)."""
    known = {hash_api_token(t): t for t in KNOWN_API_TOKENS}
    out: list[str] = []
    policies = dict(sorted(config.domains.items()))
    if all(p is not config.default for p in policies.values()):
        policies = {"default": config.default, **policies}
    for name, policy in policies.items():
        where = f"domains.{name}"
        for h in policy.api_token_hashes:
            if h in known:
                out.append(f"{where}.api_tokens: the hash of the well-known token {known[h]!r}: anyone can use it; "
                           "make a token with 'bouncetrack hash-token --new'")
        if policy.webhook is not None:
            secret = policy.webhook.secret
            if secret in KNOWN_WEBHOOK_SECRETS:
                out.append(f"{where}.webhook.secret: the example's secret: anyone can sign webhooks for this "
                           "domain; use a long random one (e.g. openssl rand -base64 32)")
            elif len(secret) < MIN_WEBHOOK_SECRET:
                out.append(f"{where}.webhook.secret: {len(secret)} characters; use at least {MIN_WEBHOOK_SECRET} "
                           "random ones (e.g. openssl rand -base64 32)")
    return out
