"""The bouncetrack command: check-config, verp, rotate-key, hash-token, lazy loading."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bouncetrack.cli import build_cli
from bouncetrack.core.config_loader import load_config
from bouncetrack.core.tokens import load_keyring, verify

CONFIG = """\
bounce_domain: bounce.example.com
secret_file: verp.key
store: sqlite:///bt.db
domains:
  example.com:
    tracking: true
  shop.example.com:
    tracking: true
  example.org:
    tracking: false
  default:
    tracking: false
"""


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture()
def cfg(tmp_path: Path) -> Path:
    p = tmp_path / "bt.yaml"
    p.write_text(CONFIG)
    return p


def test_check_config_ok(runner: CliRunner, cfg: Path) -> None:
    res = runner.invoke(build_cli(), ["check-config", str(cfg)])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert out.startswith("ok: ")
    assert "bounce domain bounce.example.com" in out
    assert f"store sqlite:///{cfg.parent}/bt.db" in out
    assert "3 domains (tracked: example.com, shop.example.com; untracked: example.org)" in out
    assert "default tracking off" in out


def test_check_config_errors(runner: CliRunner, tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("bounce_domain: bounce.example.com\ndomains:\n  example.com:\n    trackin: true\n"
                 "    webhook: {url: ftp://x.example}\n")
    res = runner.invoke(build_cli(), ["check-config", str(p)])
    assert res.exit_code == 1
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{p}:4: domains.example.com.trackin: unknown key 'trackin' (did you mean 'tracking'?)")
    assert any("domains.example.com.webhook.url" in ln and ":5:" in ln for ln in lines)
    assert any("domains.example.com.webhook.secret" in ln for ln in lines)


def test_check_config_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(build_cli(), ["check-config", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 1
    assert "nope.yaml" in res.stderr and "cannot read" in res.stderr


def test_verp_tracked(runner: CliRunner, cfg: Path) -> None:
    res = runner.invoke(
        build_cli(), ["verp", "--config", str(cfg), "--sender", "Alice@Example.COM", "--recipient", "bob+x@remote.test"]
    )
    assert res.exit_code == 0, res.output
    out = res.stdout
    m = re.search(r"^MAIL FROM:<b\+([a-z2-7]{24})@bounce\.example\.com> RET=HDRS ENVID=([a-z2-7]{24})$", out, re.M)
    assert m, out
    assert m.group(1) == m.group(2)
    assert "RCPT TO:<bob+x@remote.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob+2Bx@remote.test" in out
    assert "is an example" in out and "every message" in out
    assert "tracking on" in out
    # the key file is not created by this debugging command
    assert not (cfg.parent / "verp.key").exists()


def test_verp_uses_existing_key(runner: CliRunner, cfg: Path) -> None:
    config = load_config(cfg)
    ring = load_keyring(config)  # creates the key
    res = runner.invoke(build_cli(), ["verp", "--config", str(cfg), "-s", "a@example.com", "-r", "b@remote.test"])
    token = re.search(r"ENVID=([a-z2-7]+)", res.stdout)
    assert token is not None
    assert verify(ring, token.group(1), 0).status == "valid"
    assert "throw-away" not in res.output


def test_verp_untracked(runner: CliRunner, cfg: Path) -> None:
    for sender in ("alice@example.org", "alice@unlisted.net"):
        res = runner.invoke(build_cli(), ["verp", "--config", str(cfg), "--sender", sender, "--recipient", "bob@remote.test"])
        assert res.exit_code == 0, res.output
        out = res.stdout
        assert "tracking off" in out
        assert "passes unchanged" in out
        assert f"MAIL FROM:<{sender}>\n" in out
        assert "RCPT TO:<bob@remote.test>\n" in out
        assert "b+" not in out and "ENVID" not in out


def test_verp_bounce_domain_and_null_sender(runner: CliRunner, cfg: Path) -> None:
    for sender in ("<>", "x@bounce.example.com"):
        res = runner.invoke(build_cli(), ["verp", "--config", str(cfg), "-s", sender, "-r", "bob@remote.test"])
        assert res.exit_code == 0, res.output
        assert "passes unchanged" in res.stdout


def test_rotate_key(runner: CliRunner, cfg: Path) -> None:
    cli = build_cli()
    res = runner.invoke(cli, ["rotate-key", "--config", str(cfg)])
    assert res.exit_code == 0 and "created" in res.stdout
    key = cfg.parent / "verp.key"
    first = key.read_text()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    res = runner.invoke(cli, ["rotate-key", "--config", str(cfg)])
    assert res.exit_code == 0 and "rotated" in res.stdout
    assert key.read_text() != first
    assert first.strip() in (cfg.parent / "verp.key.previous").read_text()
    # a second rotation inside the grace period would drop the previous key: refused
    res = runner.invoke(cli, ["rotate-key", "--config", str(cfg)])
    assert res.exit_code == 1 and "--force" in res.output
    res = runner.invoke(cli, ["rotate-key", "--config", str(cfg), "--force"])
    assert res.exit_code == 0


def test_hash_token_stdin(runner: CliRunner) -> None:
    res = runner.invoke(build_cli(), ["hash-token"], input="test\n")
    assert res.exit_code == 0
    assert res.stdout.strip() == "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def test_hash_token_new(runner: CliRunner) -> None:
    res = runner.invoke(build_cli(), ["hash-token", "--new"])
    assert res.exit_code == 0
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("token: ")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", lines[1])


def test_hash_token_empty(runner: CliRunner) -> None:
    res = runner.invoke(build_cli(), ["hash-token"], input="")
    assert res.exit_code == 1


def test_help_is_lazy() -> None:
    """--help lists every command without importing click-less heavy modules."""
    code = (
        "import sys\n"
        "from bouncetrack.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('milter', 'httpx', 'fastapi', 'bouncetrack.milter.app', 'yaml', 'aiosmtpd') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "check-config" in out and "verp" in out and "pipe" in out
    assert "HEAVY []" in out


def test_module_import_does_not_import_click() -> None:
    code = "import sys, bouncetrack.cli; print('click' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_pipe_fast_path_skips_click() -> None:
    code = (
        "import sys, types\n"
        "fake = types.ModuleType('bouncetrack.bounce_pipe.main')\n"
        "def main(argv):\n    print('ARGS', argv, 'click' in sys.modules)\n    return 75\n"
        "fake.main = main\n"
        "sys.modules['bouncetrack.bounce_pipe.main'] = fake\n"
        "sys.argv = ['bouncetrack', 'pipe', 'rcpt@b.test', 'sender@x.test']\n"
        "from bouncetrack.cli import main as cli_main\n"
        "cli_main()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 75, res.stderr
    assert res.stdout.strip() == "ARGS ['rcpt@b.test', 'sender@x.test'] False"
