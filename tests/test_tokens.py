"""VERP tokens: format, verification, key files and rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import stat
import struct
from pathlib import Path

import pytest

from bouncetrack.core.config import Config
from bouncetrack.core import tokens
from bouncetrack.core.config_loader import load_config
from bouncetrack.core.tokens import (
    KeyFileError,
    KeyRing,
    hash_api_token,
    load_keyring,
    mint,
    new_token,
    new_token_id,
    rotate_key,
    token_from_address,
    verify,
    verp_address,
)

NOW = 1_700_000_000.0
DAY = 86400.0


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    p = tmp_path / "bt.yaml"
    p.write_text("bounce_domain: bounce.example.com\nsecret_file: keys/verp.key\nkey_grace_period: 7d\n")
    (tmp_path / "keys").mkdir()
    return load_config(p)


def ring() -> KeyRing:
    return KeyRing(current=bytes(range(32)))


def test_round_trip() -> None:
    kr = ring()
    for _ in range(50):
        tid = new_token_id()
        tok = mint(kr, tid)
        assert verify(kr, tok, NOW).status == "valid"
        assert verify(kr, tok, NOW).token_id == tid


def test_format_alphabet_and_length(config: Config) -> None:
    kr = ring()
    for _ in range(200):
        tok = mint(kr, new_token_id())
        assert re.fullmatch(r"[a-z2-7]{24}", tok)
        local = verp_address(config, tok).split("@")[0]
        assert len(local) <= 64
        assert local == f"b+{tok}"


def test_token_is_lower_case_rfc4648_base32_of_its_15_bytes() -> None:
    kr = ring()
    for _ in range(200):
        tid = new_token_id()
        body = struct.pack(">BQ", 1, tid)
        raw = body + hmac.new(kr.current, body, hashlib.sha256).digest()[:6]
        assert mint(kr, tid) == base64.b32encode(raw).decode("ascii").lower()
    ones = (1 << 30) - 1  # the 120 bits of b"\xff" * 15, in quarters
    assert tokens._b32_quarters(0, 0, 0, 0) == "a" * 24 and tokens._b32_quarters(ones, ones, ones, ones) == "7" * 24


def test_new_token_id_is_nonzero_63_bit() -> None:
    ids = {new_token_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(0 < i < 2**63 for i in ids)


def test_new_token_is_minted_under_the_current_key() -> None:
    # The milter's token per message (issue 20): minted ahead in batches, per key.
    a, b = KeyRing(current=bytes(range(32))), KeyRing(current=bytes(32))
    seen = set()
    for _ in range(3 * tokens._TOKEN_BATCH):
        for kr in (a, b):
            token_id, token = new_token(kr)
            assert 0 < token_id < 2**63 and mint(kr, token_id) == token
            assert verify(kr, token, NOW).token_id == token_id
            seen.add(token_id)
    assert len(seen) == 6 * tokens._TOKEN_BATCH


def test_new_token_differs_in_a_forked_child() -> None:
    kr = ring()
    new_token(kr)  # the pool now holds tokens the child must not hand out again
    held = {t for _, t in tokens._token_pools[kr.current]}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write, new_token(kr)[1].encode())
        finally:
            os._exit(0)
    os.close(write)
    child_token = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child_token) == 24 and child_token not in held


def test_case_insensitive() -> None:
    kr = ring()
    tok = mint(kr, 12345)
    assert verify(kr, tok.upper(), NOW) == verify(kr, tok, NOW)
    assert verify(kr, tok.title(), NOW).status == "valid"


def test_flipped_char_is_forged() -> None:
    kr = ring()
    tok = mint(kr, 987654321)
    for i in range(2, len(tok)):  # keep the version byte's first 8 bits mostly intact
        flipped = tok[:i] + ("a" if tok[i] != "a" else "b") + tok[i + 1 :]
        assert verify(kr, flipped, NOW).status in ("forged", "malformed")
    last = tok[:-1] + ("a" if tok[-1] != "a" else "b")
    check = verify(kr, last, NOW)
    assert check.status == "forged" and check.token_id is None


def test_other_key_is_forged() -> None:
    tok = mint(ring(), 42)
    assert verify(KeyRing(current=b"\x01" * 32), tok, NOW).status == "forged"


@pytest.mark.parametrize("bad", ["", "abc", "x" * 23, "x" * 25, "a" * 23 + "1", "a" * 23 + "!"])
def test_truncated_or_bad_alphabet_is_malformed(bad: str) -> None:
    assert verify(ring(), bad, NOW).status == "malformed"


def test_truncated_token_is_malformed() -> None:
    tok = mint(ring(), 7)
    assert verify(ring(), tok[:-1], NOW).status == "malformed"


def test_rotation_with_grace(config: Config) -> None:
    before = load_keyring(config)
    old_tok = mint(before, 111)
    after = rotate_key(config, NOW)
    assert after.previous == before.current and after.current != before.current
    reloaded = load_keyring(config)
    assert reloaded == after
    assert verify(reloaded, old_tok, NOW + DAY).status == "valid"
    assert verify(reloaded, old_tok, NOW + 7 * DAY).status == "valid"
    expired = verify(reloaded, old_tok, NOW + 7 * DAY + 1)
    assert expired.status == "expired" and expired.token_id == 111
    new_tok = mint(reloaded, 222)
    assert verify(reloaded, new_tok, NOW + 30 * DAY).status == "valid"
    prev = Path(str(config.secret_file) + ".previous")
    assert json.loads(prev.read_text())["rotated_at"] == NOW
    assert stat.S_IMODE(prev.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.secret_file.stat().st_mode) == 0o600


def test_key_file_created_0600(config: Config) -> None:
    assert not config.secret_file.exists()
    old = os.umask(0)
    try:
        kr = load_keyring(config)
    finally:
        os.umask(old)
    assert stat.S_IMODE(config.secret_file.stat().st_mode) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}\n", config.secret_file.read_text())
    assert len(kr.current) == 32 and kr.previous is None
    assert load_keyring(config) == kr  # stable across loads
    assert [p.name for p in config.secret_file.parent.iterdir()] == ["verp.key"]  # no temp files left


def test_refuses_world_readable_key_file(config: Config) -> None:
    config.secret_file.write_text("00" * 32 + "\n")
    config.secret_file.chmod(0o644)
    with pytest.raises(KeyFileError, match="group/others.*0644"):
        load_keyring(config)


def test_refuses_bad_key_content(config: Config) -> None:
    config.secret_file.write_text("not hex\n")
    config.secret_file.chmod(0o600)
    with pytest.raises(KeyFileError, match="64 hex digits"):
        load_keyring(config)


def test_no_create_when_asked(config: Config) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_keyring(config, create=False)
    assert not config.secret_file.exists()


def test_verp_address_and_back(config: Config) -> None:
    tok = mint(ring(), 5)
    addr = verp_address(config, tok)
    assert addr == f"b+{tok}@bounce.example.com"
    for form in (addr, f"<{addr}>", addr.upper(), f"<{addr.upper()}.>", f'"b+{tok}"@bounce.example.com',
                 f"'{addr}'", f"Bounce <{addr}>", f"{addr}."):
        assert token_from_address(config, form) == tok, form
    assert token_from_address(config, f"b+{tok}@other.example.com") is None
    assert token_from_address(config, f"x+{tok}@bounce.example.com") is None
    assert token_from_address(config, "b+@bounce.example.com") is None
    assert token_from_address(config, "no-at-sign") is None
    assert token_from_address(config, "<>") is None


def test_hash_api_token() -> None:
    h = hash_api_token("test")
    assert h == "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.mark.parametrize("key_length", [1, 32, 64, 65, 200])
def test_mac_is_hmac_sha256_truncated(key_length: int) -> None:
    # tokens._mac precomputes RFC 2104's padded-key states (issue 20): same bytes as hmac.
    import hmac as hmac_module
    import os

    from bouncetrack.core.tokens import MAC_BYTES, _mac

    key, body = os.urandom(key_length), os.urandom(9)
    assert _mac(key, body) == hmac_module.digest(key, body, "sha256")[:MAC_BYTES]
