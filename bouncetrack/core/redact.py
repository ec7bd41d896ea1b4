"""Secrets out of every line a process writes: the one redactor (issue 15).

Two layers, both applied by the log formatter of :mod:`bouncetrack.core.logsetup` to
every line of every process (uvicorn's access log included), and by the pipe to
what it says on stderr (which Postfix logs):

* **Shapes** that are secret wherever they appear: ``access_token=`` values (the
  API's documented query form), ``Authorization: Bearer`` values, API tokens
  (``bt_`` + 43 characters), Standard Webhooks secrets (``whsec_…``), the
  dashboard's session cookie, a password in a URL's userinfo or in
  ``password=``, and the value after ``secret:``/``password:`` (a YAML line
  quoted by a configuration error).
* **Known values**: the webhook secrets (any string, not only ``whsec_``) and
  the store URL's password of the running configuration, registered with
  :func:`register` at start and at every reload.

Only ``re`` is imported: the pipe may use this module.
"""

from __future__ import annotations

import re
from typing import Iterable

MASK = "***"

# (pattern, replacement); each keeps what names the secret and masks its value.
_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(\baccess_token=)[^\s&\"'#;,]+", re.IGNORECASE), r"\1" + MASK),
    (re.compile(r"(\bBearer\s+)[^\s\"',;]+", re.IGNORECASE), r"\1" + MASK),
    (re.compile(r"\bbt_[A-Za-z0-9_-]{20,}"), "bt_" + MASK),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]+"), "whsec_" + MASK),
    (re.compile(r"(\bbt_session=)[^\s;\"',]+"), r"\1" + MASK),
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*:)[^\s@/]*@"), r"\1" + MASK + "@"),
    (re.compile(r"(\bpassword=)[^\s&\"';,]+", re.IGNORECASE), r"\1" + MASK),
    # A YAML key (at a line's start, or in a flow mapping), not prose ("without a secret: add …").
    (re.compile(r"((?:^|[{,])[ \t-]*[\"']?(?:secret|password|passwd)[\"']?[ \t]*:[ \t]*)"
                r"(\"[^\"\n]*\"?|'[^'\n]*'?|[^\s,}]+)", re.IGNORECASE | re.MULTILINE),
     r"\1" + MASK),
)
# Cheap pre-check: a line holding none of these needs no regular expression.
_TRIGGERS = ("access_token", "earer", "bt_", "whsec_", "://", "assword", "asswd", "ecret")

_known: tuple[str, ...] = ()


def register(secrets: Iterable[str | None]) -> None:
    """Mask these exact values too (the running configuration's webhook secrets, store password).

    Replaces the previous set: a reload registers the new configuration's values.
    Values shorter than 6 characters are not registered (they would mask common words).
    """
    global _known
    _known = tuple(sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True))


def config_secrets(config: object) -> list[str]:
    """The secret values of a configuration: webhook secrets of every domain, the store password."""
    from urllib.parse import unquote, urlsplit

    found: list[str] = []
    policies = [getattr(config, "default", None), *getattr(config, "domains", {}).values()]
    for policy in policies:
        webhook = getattr(policy, "webhook", None)
        if webhook is not None:
            found.append(webhook.secret)
    url = getattr(config, "store_url", "") or ""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        found.extend((password, unquote(password)))
    return found


def redact_text(text: str) -> str:
    """``text`` with every secret shape and every registered value masked."""
    for value in _known:
        if value in text:
            text = text.replace(value, MASK)
    if not any(t in text for t in _TRIGGERS):
        return text
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return text


def redact_url(url: str) -> str:
    """A URL with the password of its userinfo (and any ``password=`` parameter) masked.

    ``postgresql://app:s3cret@db/bt`` -> ``postgresql://app:***@db/bt``. Used
    wherever a store URL is shown (``check-config``, ``doctor``, store errors).
    """
    scheme, sep, rest = url.partition("://")
    if sep:
        # The userinfo ends at the last "@" before the query: a password may hold
        # a raw "/" (an invalid URL, but one an operator may write).
        head, q, query = rest.partition("?")
        userinfo, at, host = head.rpartition("@")
        if at and ":" in userinfo:
            url = f"{scheme}://{userinfo.split(':', 1)[0]}:{MASK}@{host}{q}{query}"
    return re.sub(r"(\bpassword=)[^&#]*", r"\1" + MASK, url, flags=re.IGNORECASE)


__all__ = ["MASK", "config_secrets", "redact_text", "redact_url", "register"]
