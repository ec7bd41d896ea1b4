"""Dashboard sessions: a signed, expiring cookie that says which domains a login covers.

Design (stateless, no server-side session table):

* The cookie value is ``base64url(payload) "." base64url(HMAC-SHA256(key, base64url(payload)))``.
  The payload is JSON: ``v`` (format), ``d`` (the sender domains the token covered at
  login), ``th`` (the *hash* of the API token, ``sha256:<hex>``, exactly what the config
  holds; never the token itself), ``iat``/``exp`` (issued/expires, epoch seconds) and
  ``csrf`` (a random per-session token echoed by every POST form).
* Every request re-checks the session against the current configuration: the domains
  are intersected with those the token hash still covers, so removing a token from the
  config (and restarting/reloading the API) ends its sessions at once.
* The signing key is derived from the VERP secret file
  (``HMAC(load_keyring(config).current, "bouncetrack dashboard session v1")``), so
  sessions survive an API restart and a key rotation (``bouncetrack rotate-key``)
  logs everybody out at once: the manager stats the secret file on every use (a
  few microseconds) and derives the key again when its inode, size or mtime
  changed, so the running API needs no restart or signal (issue 16). ``BOUNCETRACK_SESSION_KEY`` (hex or any string) overrides it;
  when neither can be read (the API user may not read the secret file), a random
  per-process key is used: sessions then end when the process restarts.
* Cookie flags: ``HttpOnly``, ``SameSite=Lax``, ``Path=/``, ``Max-Age`` = the session
  lifetime (8 h, ``BOUNCETRACK_SESSION_HOURS``), ``Secure`` when the request came over
  https (behind a proxy: run uvicorn with ``--proxy-headers``) or when
  ``BOUNCETRACK_COOKIE_SECURE=1`` forces it.
* Logout deletes the cookie. A copied cookie stays valid until it expires (stateless
  design); rotate the VERP key or remove the token to revoke every session at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from ..core.config import Config
from ..core.tokens import KeyFileError, load_keyring

log = logging.getLogger(__name__)

SESSION_VERSION = 1
DEFAULT_LIFETIME_SECONDS = 8 * 3600
_KEY_LABEL = b"bouncetrack dashboard session v1"
_MAX_COOKIE_LEN = 4096


@dataclass(frozen=True)
class Session:
    """A logged-in dashboard user: the domains they may see and their CSRF token."""

    domains: tuple[str, ...]
    token_hash: str
    csrf: str
    issued_at: float
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def session_key(config: Config) -> bytes:
    """The HMAC key for session cookies (see the module docstring for the order)."""
    override = os.environ.get("BOUNCETRACK_SESSION_KEY", "").strip()
    if override:
        return hmac.new(override.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()
    try:
        ring = load_keyring(config, create=False)
    except (KeyFileError, OSError) as exc:
        log.warning(
            "dashboard sessions: cannot read the secret file (%s); using a random per-process "
            "key, so sessions end when the API restarts",
            exc,
        )
        return secrets.token_bytes(32)
    return hmac.new(ring.current, _KEY_LABEL, hashlib.sha256).digest()


class SessionManager:
    """Issues and verifies session cookies; one per app (holds the key)."""

    def __init__(
        self,
        key: bytes,
        *,
        lifetime_seconds: float = DEFAULT_LIFETIME_SECONDS,
        force_secure: bool = False,
        cookie_name: str = "bt_session",
        key_file: Path | None = None,
        derive: Callable[[], bytes] | None = None,
    ) -> None:
        """``key_file`` and ``derive``: when the file changes, ``derive()`` gives the new key."""
        if len(key) < 16:
            raise ValueError("session key too short")
        self._key = key
        self._key_file = key_file if derive is not None else None
        self._derive = derive
        self._stamp = _file_stamp(key_file) if key_file is not None else None
        self._rekey_lock = threading.Lock()
        self.lifetime_seconds = lifetime_seconds
        self.force_secure = force_secure
        self.cookie_name = cookie_name

    @classmethod
    def for_config(cls, config: Config, *, cookie_name: str = "bt_session") -> SessionManager:
        hours = os.environ.get("BOUNCETRACK_SESSION_HOURS", "").strip()
        try:
            lifetime = float(hours) * 3600 if hours else DEFAULT_LIFETIME_SECONDS
        except ValueError:
            lifetime = DEFAULT_LIFETIME_SECONDS
        overridden = bool(os.environ.get("BOUNCETRACK_SESSION_KEY", "").strip())
        return cls(
            session_key(config),
            lifetime_seconds=max(60.0, lifetime),
            force_secure=_env_flag("BOUNCETRACK_COOKIE_SECURE"),
            cookie_name=cookie_name,
            key_file=None if overridden else Path(config.secret_file),
            derive=None if overridden else lambda: session_key(config),
        )

    def _current_key(self) -> bytes:
        """The key, derived again when the secret file changed (rotate-key ends sessions)."""
        if self._key_file is None or self._derive is None:
            return self._key
        stamp = _file_stamp(self._key_file)
        if stamp != self._stamp:
            with self._rekey_lock:
                if stamp != self._stamp:
                    self._key = self._derive()
                    self._stamp = stamp
                    log.info("dashboard sessions: the secret file changed, existing sessions end")
        return self._key

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._current_key(), body.encode("ascii"), hashlib.sha256).digest())

    def issue(self, domains: tuple[str, ...], token_hash: str, now: float | None = None) -> tuple[str, Session]:
        """A new session for a token that covers ``domains``: (cookie value, session)."""
        now = time.time() if now is None else now
        session = Session(
            domains=tuple(domains),
            token_hash=token_hash,
            csrf=secrets.token_urlsafe(24),
            issued_at=now,
            expires_at=now + self.lifetime_seconds,
        )
        payload: dict[str, Any] = {
            "v": SESSION_VERSION,
            "d": list(session.domains),
            "th": session.token_hash,
            "iat": int(session.issued_at),
            "exp": int(session.expires_at),
            "csrf": session.csrf,
        }
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8"))
        return f"{body}.{self._sign(body)}", session

    def verify(self, cookie: str | None, config: Config, now: float | None = None) -> Session | None:
        """The session a cookie carries, checked against the config; None when invalid."""
        if not cookie or len(cookie) > _MAX_COOKIE_LEN or cookie.count(".") != 1:
            return None
        body, mac = cookie.split(".")
        try:
            expected = self._sign(body)
        except UnicodeEncodeError:
            return None
        if not hmac.compare_digest(expected.encode("ascii"), mac.encode("ascii", "replace")):
            return None
        try:
            data = json.loads(_unb64(body))
            version, domains, token_hash = data["v"], data["d"], data["th"]
            issued, expires, csrf = float(data["iat"]), float(data["exp"]), data["csrf"]
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if (
            version != SESSION_VERSION
            or not isinstance(domains, list)
            or not all(isinstance(d, str) for d in domains)
            or not isinstance(token_hash, str)
            or not isinstance(csrf, str)
        ):
            return None
        now = time.time() if now is None else now
        if now >= expires:
            return None
        # The token may have been removed (or narrowed) in the config since login.
        still = set(config.domain_for_token_hash(token_hash))
        current = tuple(d for d in domains if d in still)
        if not current:
            return None
        return Session(current, token_hash, csrf, issued, expires)

    def cookie_kwargs(self, secure_request: bool) -> dict[str, Any]:
        """Flags for ``Response.set_cookie``: HttpOnly, SameSite=Lax, Secure on https."""
        return {
            "max_age": int(self.lifetime_seconds),
            "path": "/",
            "httponly": True,
            "samesite": "lax",
            "secure": self.force_secure or secure_request,
        }


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def csrf_ok(session: Session, presented: str | None) -> bool:
    """Constant-time check of a form's CSRF field against the session's token."""
    if not presented:
        return False
    return hmac.compare_digest(session.csrf.encode("utf-8"), presented.encode("utf-8", "replace"))


def same_origin(headers: Mapping[str, str], *, behind_proxy: bool = False) -> bool:
    """Whether a dashboard POST comes from one of our own pages, by the browser's word.

    The CSRF field guards logout and replay, but login has no session yet: a page
    elsewhere could post an attacker's token and sign the victim into the
    attacker's dashboard (login CSRF). Browsers say where a request comes from:
    Fetch Metadata's ``Sec-Fetch-Site`` first, then ``Origin`` (compared with the
    host asked for, or the one a proxy forwarded; the scheme may differ behind a
    TLS-terminating proxy). A client sending neither (curl, scripts, an old browser)
    is not a victim's browser being driven, and passes. ``X-Forwarded-Host`` counts
    only with ``behind_proxy`` (``api.behind_proxy``): without a proxy, anybody can
    send it (issue 16).
    """
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site.strip().lower() in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return True
    netloc = urlsplit(origin.strip()).netloc.lower()
    if not netloc:  # "null": a sandboxed frame, a data: URL, a cross-origin redirect
        return False
    hosts = {headers.get("host", "").strip().lower()}
    forwarded = headers.get("x-forwarded-host") if behind_proxy else None
    if forwarded:
        hosts.add(forwarded.split(",")[0].strip().lower())
    return netloc in hosts


__all__ = ["Session", "SessionManager", "csrf_ok", "same_origin", "session_key"]
