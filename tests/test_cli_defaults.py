"""Issue 15 point 7: every command's --config defaults to /etc/bouncetrack/config.yaml, and
``bouncetrack pipe --help`` prints help instead of reading stdin as a bounce."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from bouncetrack.cli import build_cli
from bouncetrack.core.config import DEFAULT_CONFIG_PATH

CHECKOUT = Path(__file__).resolve().parent.parent


#: Commands that work without any configuration and read one only when given.
OPTIONAL_CONFIG = {("check-address",)}


def _commands_with_config() -> list[tuple[str, ...]]:
    """Every (sub)command path whose options include --config."""
    group = build_cli()
    ctx = click.Context(group)
    found: list[tuple[str, ...]] = []

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            sub_ctx = click.Context(cmd, parent=ctx)
            for name in cmd.list_commands(sub_ctx):
                sub = cmd.get_command(sub_ctx, name)
                if sub is not None:
                    walk(sub, (*path, name))
            return
        if any("--config" in p.opts for p in cmd.params):
            found.append(path)

    walk(group, ())
    return found


def test_every_config_option_defaults_to_etc_bouncetrack() -> None:
    paths = _commands_with_config()
    # the commands of the issue at least (demo and classify take no config)
    assert {("milter",), ("worker",), ("api",), ("pipe-server",), ("purge",), ("verp",), ("rotate-key",),
            ("install",), ("doctor",), ("suppression", "list"), ("outbox", "list")} <= set(paths), paths
    for path in paths:
        cmd: click.Command = build_cli()
        for name in path:
            assert isinstance(cmd, click.Group)
            got = cmd.get_command(click.Context(cmd), name)
            assert got is not None
            cmd = got
        option = next(p for p in cmd.params if "--config" in p.opts)
        assert not option.required, path
        if path in OPTIONAL_CONFIG:
            assert option.default is None, path
            continue
        assert option.default == DEFAULT_CONFIG_PATH, path
        out = CliRunner().invoke(build_cli(), [*path, "--help"]).output
        assert f"[default: {DEFAULT_CONFIG_PATH}]" in " ".join(out.split()), (path, out)


def test_pipe_help_prints_help_and_reads_no_bounce(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"bounce_domain: bounce.test\nsecret_file: {tmp_path}/k\nstore: sqlite:///{tmp_path}/bt.db\n")
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT), "BOUNCETRACK_CONFIG": str(config),
           "BOUNCETRACK_CACHE_DIR": str(tmp_path / "cache")}
    for flag in ("--help", "-h"):
        proc = subprocess.run([sys.executable, "-m", "bouncetrack", "pipe", flag], input=b"From: x\n\nnot a bounce\n",
                              capture_output=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(b"usage: bouncetrack pipe [--config FILE]") and b"RECIPIENT" in proc.stdout, proc.stdout
        assert DEFAULT_CONFIG_PATH.encode() in proc.stdout
    assert not (tmp_path / "bt.db").exists()  # nothing was stored
