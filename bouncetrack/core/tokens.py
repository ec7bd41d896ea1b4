"""VERP tokens: mint and verify, the HMAC key ring with rotation, the secret file.

Format (HACKING.md "VERP token"): lower-case RFC 4648 base32 without padding of
15 bytes ``version (0x01) | token_id (8 bytes big-endian) | HMAC-SHA256(key,
version|token_id)[:6]`` → 24 characters of ``[a-z2-7]``. Base32 survives the
case folding many MTAs apply to local parts; 48 bits of MAC make a forged token
that verifies a 1 in 2^48 event. Address: ``{verp_prefix}+{token}@{bounce_domain}``.

Key files:

- ``secret_file``: the current key, 32 random bytes as 64 hex digits + newline,
  mode 0600. Created atomically (write a temp file, ``link()`` it into place so
  a concurrent creator is never overwritten) when missing; refused when group or
  others have any access.
- ``secret_file + ".previous"``: JSON ``{"key": hex, "rotated_at": epoch}``, the
  key that was current before the last :func:`rotate_key`. Its tokens verify
  until ``rotated_at + key_grace_period``, and are reported "expired" after.

Imports stay light: the bounce pipe imports this module once per bounce.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Literal

if TYPE_CHECKING:
    from bouncetrack.core.config import Config

__all__ = [
    "KeyRing",
    "KeyFileError",
    "TokenCheck",
    "load_keyring",
    "rotate_key",
    "mint",
    "verify",
    "new_token_id",
    "new_token",
    "verp_address",
    "token_from_address",
    "hash_api_token",
    "new_api_token",
    "TOKEN_LENGTH",
]

VERSION = 0x01
MAC_BYTES = 6
KEY_BYTES = 32
TOKEN_LENGTH = 24  # base32 of 15 bytes, no padding
_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
PREVIOUS_SUFFIX = ".previous"

TokenStatus = Literal["valid", "forged", "expired", "malformed"]


class KeyFileError(Exception):
    """The secret file cannot be used (missing directory, bad mode, bad content)."""


@dataclass(frozen=True)
class KeyRing:
    current: bytes
    previous: bytes | None = None
    # Tokens of the previous key verify while now <= previous_valid_until.
    previous_valid_until: float | None = None


@dataclass(frozen=True)
class TokenCheck:
    status: TokenStatus
    token_id: int | None = None  # set for "valid" and "expired", None otherwise

    @property
    def ok(self) -> bool:
        return self.status == "valid"


# ---------------------------------------------------------------------------
# Tokens


_ID_MASK = (1 << 63) - 1
_ID_POOL_BYTES = 8 * 256
# Random ids drawn from the kernel 256 at a time: one getrandom(2) per 256 messages
# instead of one per message (a system call releases the GIL, which the milter's
# other threads then take: issue 20). Each process has its own pool (emptied in a
# forked child, so two processes never hand out the same ids).
_id_pool: list[int] = []
os.register_at_fork(after_in_child=_id_pool.clear)


def new_token_id() -> int:
    """A random non-zero 63-bit id (fits a signed 64-bit SQL integer), from the
    kernel's CSPRNG (``os.urandom``, as :mod:`secrets` draws). Thread-safe: one
    list operation at a time."""
    while True:
        try:
            value = _id_pool.pop()
        except IndexError:
            _id_pool.extend(v & _ID_MASK for (v,) in struct.iter_unpack(">Q", os.urandom(_ID_POOL_BYTES)))
            continue
        if value:
            return value


_SHA256_BLOCK = 64  # bytes (RFC 2104's B for SHA-256)


@functools.lru_cache(maxsize=8)
def _pads(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256's inner and outer hash states after the padded key (RFC 2104 §2),
    made once per key: each MAC then copies them instead of setting up an HMAC anew
    (OpenSSL 3's one-shot HMAC fetches its algorithms under a lock every time)."""
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_SHA256_BLOCK, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in key)), hashlib.sha256(bytes(b ^ 0x5C for b in key)))


def _mac(key: bytes, body: bytes) -> bytes:
    """HMAC-SHA256(key, body), truncated to MAC_BYTES (the milter mints one per message)."""
    inner_pad, outer_pad = _pads(key)
    inner = inner_pad.copy()
    inner.update(body)
    outer = outer_pad.copy()
    outer.update(inner.digest())
    mac: bytes = outer.digest()[:MAC_BYTES]
    return mac


# RFC 4648 §6 base32, lower case, ten bits (two characters) at a time.
_B32_PAIRS = tuple(a + b for a in "abcdefghijklmnopqrstuvwxyz234567" for b in "abcdefghijklmnopqrstuvwxyz234567")
_LOW30 = (1 << 30) - 1
_pack_body = struct.Struct(">BQ").pack


def _b32_quarters(a: int, b: int, c: int, d: int) -> str:
    """``base64.b32encode(raw).decode().lower()`` of the token's 15 bytes (120 bits, no
    padding) given as four 30-bit integers, most significant first, without the base64
    module's Python loop: three pairs of characters each, shifted out of integers that
    fit one CPython digit (cheaper than shifting one 120-bit integer)."""
    p = _B32_PAIRS
    return "".join((p[a >> 20], p[(a >> 10) & 1023], p[a & 1023], p[b >> 20], p[(b >> 10) & 1023], p[b & 1023],
                    p[c >> 20], p[(c >> 10) & 1023], p[c & 1023], p[d >> 20], p[(d >> 10) & 1023], p[d & 1023]))


def _mint_each(key: bytes, token_ids: Iterable[int]) -> list[tuple[int, str]]:
    """(token_id, token) for each of ``token_ids`` under ``key``."""
    out = []
    for token_id in token_ids:
        if not 0 < token_id < 1 << 64:
            raise ValueError("token_id must be a positive 64-bit integer")
        mac = int.from_bytes(_mac(key, _pack_body(VERSION, token_id)), "big")
        # 8 bits of version, 64 of id, 48 of MAC, in four 30-bit quarters.
        out.append((token_id, _b32_quarters(
            (VERSION << 22) | (token_id >> 42), (token_id >> 12) & _LOW30,
            ((token_id & 0xFFF) << 18) | (mac >> 30), mac & _LOW30,
        )))
    return out


def mint(keyring: KeyRing, token_id: int) -> str:
    """The 24-character token for ``token_id`` under the current key."""
    return _mint_each(keyring.current, (token_id,))[0][1]


_TOKEN_BATCH = 256
# Tokens minted ahead, per key (the milter's key ring changes on reload only): a list
# of (token_id, token) per current key, emptied in a forked child like _id_pool.
_token_pools: dict[bytes, list[tuple[int, str]]] = {}
os.register_at_fork(after_in_child=_token_pools.clear)


def new_token(keyring: KeyRing) -> tuple[int, str]:
    """A new token id (:func:`new_token_id`) and its token (:func:`mint`) under
    ``keyring``'s current key: the milter's one per tracked message.

    Minted :data:`_TOKEN_BATCH` at a time (issue 20): a tight loop over a batch costs
    the milter's thread less than one mint between each of libmilter's thread
    hand-offs. Thread-safe (one list operation at a time; two threads refilling at
    once only mint more); each process has its own tokens, as its own ids."""
    pool = _token_pools.get(keyring.current)
    if pool:
        try:
            return pool.pop()
        except IndexError:  # another thread took the last one
            pass
    fresh = _mint_each(keyring.current, [new_token_id() for _ in range(_TOKEN_BATCH)])
    pool = _token_pools.get(keyring.current)
    if pool is None:
        if len(_token_pools) >= 4:
            _token_pools.clear()  # keys rotated away
        pool = _token_pools.setdefault(keyring.current, [])
    token = fresh.pop()
    pool.extend(fresh)
    return token


def verify(keyring: KeyRing, token: str, now: float) -> TokenCheck:
    """Check a token in any case: current key, then previous key while in its grace period."""
    t = token.strip().lower()
    if len(t) != TOKEN_LENGTH or not _ALPHABET.issuperset(t):
        return TokenCheck("malformed")
    raw = base64.b32decode(t.upper())  # cannot fail: 24 valid chars, no padding needed
    body, mac = raw[:9], raw[9:]
    version, token_id = struct.unpack(">BQ", body)
    if version != VERSION:
        return TokenCheck("malformed")
    if hmac.compare_digest(mac, _mac(keyring.current, body)):
        return TokenCheck("valid", token_id)
    if keyring.previous is not None and hmac.compare_digest(mac, _mac(keyring.previous, body)):
        until = keyring.previous_valid_until
        if until is None or now <= until:
            return TokenCheck("valid", token_id)
        return TokenCheck("expired", token_id)
    return TokenCheck("forged")


def verp_address(config: Config, token: str) -> str:
    return f"{config.verp_prefix}+{token.lower()}@{config.bounce_domain}"


def token_from_address(config: Config, address: str) -> str | None:
    """The lower-cased token of a VERP address at our bounce domain, or None.

    Tolerates ``<...>`` (also ``Name <...>``), any case, quotes around the
    address or its local part, and a trailing dot on the domain. The token is
    not verified here (see :func:`verify`).
    """
    a = address.strip()
    if "<" in a and a.endswith(">"):
        a = a[a.rindex("<") + 1 : -1]
    a = a.strip().strip("'\"").strip()
    local, at, domain = a.rpartition("@")
    if not at:
        return None
    local = local.strip().strip("\"'").lower()
    domain = domain.strip().rstrip(".").lower()
    if domain != config.bounce_domain.lower():
        return None
    prefix = config.verp_prefix.lower() + "+"
    if not local.startswith(prefix):
        return None
    token = local[len(prefix) :]
    return token or None


# ---------------------------------------------------------------------------
# API tokens (stored hashed in the config: "sha256:<hex>")


def hash_api_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.strip().encode("utf-8")).hexdigest()


def new_api_token() -> str:
    return "bt_" + secrets.token_urlsafe(32)


# ---------------------------------------------------------------------------
# Key files


def previous_key_path(secret_file: str) -> str:
    """The previous key's file beside ``secret_file`` (kept for the grace period after a rotation)."""
    return secret_file + PREVIOUS_SUFFIX


def _read_private(path: str) -> str | None:
    """Text of a key file, None if it does not exist; refuses group/world access."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"key file {path} is accessible by group/others (mode {st.st_mode & 0o777:04o}); "
                f"refusing to use it: run 'chmod 600 {path}' (and rotate the key if others may have read it)"
            )
        with os.fdopen(fd, "r", encoding="ascii", errors="replace") as f:
            fd = -1
            return f.read()
    finally:
        if fd >= 0:
            os.close(fd)


def _parse_key(text: str, path: str) -> bytes:
    s = text.strip()
    try:
        key = bytes.fromhex(s)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"key file {path} must hold {KEY_BYTES * 2} hex digits")
    return key


def _write_private(path: str, text: str, *, replace: bool, owner_of: str | None = None) -> bool:
    """Write ``text`` atomically with mode 0600.

    replace=False: never overwrite (``link`` fails if the file appeared meanwhile);
    returns False then. ``owner_of``: copy uid/gid from that file (so that root
    running rotate-key keeps the key readable by the ``bouncetrack`` user).
    """
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise KeyFileError(f"directory {directory} for key file {path} does not exist")
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot create key file in {directory}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # umask may have removed bits, never added: be explicit
            if owner_of is not None:
                try:
                    st = os.stat(owner_of)
                    if os.geteuid() == 0:
                        os.fchown(fd, st.st_uid, st.st_gid)
                except OSError:
                    pass
            os.write(fd, text.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _load_current(path: str, create: bool) -> bytes:
    text = _read_private(path)
    if text is None:
        if not create:
            raise KeyFileError(f"key file {path} does not exist")
        _write_private(path, secrets.token_bytes(KEY_BYTES).hex() + "\n", replace=False)
        text = _read_private(path)  # ours, or the one a concurrent process linked first
        if text is None:
            raise KeyFileError(f"key file {path} vanished after creation")
    return _parse_key(text, path)


def _load_previous(path: str) -> tuple[bytes, float] | None:
    text = _read_private(path)
    if text is None:
        return None
    try:
        data = json.loads(text)
        key = _parse_key(str(data["key"]), path)
        rotated_at = float(data["rotated_at"])
    except (ValueError, KeyError, TypeError):
        raise KeyFileError(f"{path} must hold JSON {{\"key\": <64 hex>, \"rotated_at\": <epoch>}}") from None
    return key, rotated_at


def load_keyring(config: Config, now: float | None = None, *, create: bool = True) -> KeyRing:
    """The key ring from ``config.secret_file`` (created 0600 if missing and ``create``).

    ``now`` is accepted for symmetry with :func:`rotate_key` and tests; it does
    not change the result: an elapsed grace period is decided by :func:`verify`
    so that it can report "expired" rather than "forged".
    """
    del now
    path = str(config.secret_file)
    current = _load_current(path, create)
    prev = _load_previous(previous_key_path(path))
    if prev is None:
        return KeyRing(current)
    key, rotated_at = prev
    return KeyRing(current, key, rotated_at + config.key_grace_period_seconds)


def rotate_key(config: Config, now: float) -> KeyRing:
    """Make the current key the previous one (rotated at ``now``) and create a new current key.

    Writes ``.previous`` first, then the new current key, each by atomic rename:
    a crash in between leaves previous == current, which is harmless. A key that
    was already "previous" is dropped: its tokens no longer verify. Running
    processes keep their key ring until they reload (milter: SIGHUP).
    """
    path = str(config.secret_file)
    current = _load_current(path, create=True)
    record = json.dumps({"key": current.hex(), "rotated_at": now}) + "\n"
    _write_private(previous_key_path(path), record, replace=True, owner_of=path)
    new = secrets.token_bytes(KEY_BYTES)
    _write_private(path, new.hex() + "\n", replace=True, owner_of=path)
    return KeyRing(new, current, now + config.key_grace_period_seconds)
