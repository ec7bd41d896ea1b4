"""Issue 15: doctor warns when the configuration holds secrets and every user can read it."""

from __future__ import annotations

from pathlib import Path

from bouncetrack.core.config_loader import load_config
from bouncetrack.doctor.checks import OK, WARN, config_mode_result, config_secrets
from bouncetrack.doctor.cli import check_config_mode

HASH = "sha256:" + "ab" * 32


def _config(tmp_path: Path, body: str, mode: int) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"bounce_domain: bounce.test\nsecret_file: {tmp_path}/k\n" + body)
    path.chmod(mode)
    return path


def test_secrets_found_in_the_config(tmp_path: Path) -> None:
    plain = load_config(_config(tmp_path, "store: sqlite:////tmp/x.db\n", 0o644))
    assert config_secrets(plain) == []
    full = load_config(_config(tmp_path, (
        "store: postgresql://bt:s3cret@db.test/bt\n"
        "domains:\n"
        "  a.test:\n"
        "    webhook: {url: 'https://h.test/x', secret: whsec_abc}\n"
        f"    api_tokens: ['{HASH}']\n"), 0o644))
    assert config_secrets(full) == ["webhook secrets", "API token hashes", "a store URL password"]
    # a user without a password is no secret
    assert config_secrets(load_config(_config(tmp_path, "store: postgresql://bt@db.test/bt\n", 0o644))) == []


def test_verdicts_by_mode() -> None:
    secrets = ["webhook secrets"]
    r = config_mode_result("/etc/bouncetrack/config.yaml", 0o100644, secrets)
    assert r.verdict == WARN and "0644" in r.why and "webhook secrets" in r.why
    assert r.fix == "chown root:bouncetrack /etc/bouncetrack/config.yaml; chmod 0640 /etc/bouncetrack/config.yaml"
    assert config_mode_result("/c", 0o100640, secrets).verdict == OK
    assert config_mode_result("/c", 0o100644, []).verdict == OK  # nothing secret in it
    assert config_mode_result("/c", 0o100666, []).verdict == WARN  # anyone could redirect the webhooks


def test_doctor_reads_the_real_file_mode(tmp_path: Path) -> None:
    body = "domains:\n  a.test: {webhook: {url: 'https://h.test/x', secret: whsec_abc}}\n"
    path = _config(tmp_path, body, 0o644)
    [r] = check_config_mode(load_config(path))
    assert r.verdict == WARN and "readable by every user" in r.why and "chmod 0640" in r.fix
    path.chmod(0o640)
    [r] = check_config_mode(load_config(path))
    assert r.verdict == OK, r.line()
