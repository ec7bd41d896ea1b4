"""Real configuration files for tests: the common part once, each test's domains its own."""

from __future__ import annotations

import textwrap
from pathlib import Path

from bouncetrack.core.config import Config
from bouncetrack.core.config_loader import load_config


def write_config(tmp_path: Path, body: str, *, name: str = "bouncetrack.yaml") -> Config:
    """Write and load a config whose key file, SQLite store and milter socket sit in ``tmp_path``.

    ``body`` is the rest of the YAML (``domains:``, ``pipe:``, …), dedented here.
    """
    path = tmp_path / name
    path.write_text(
        f"bounce_domain: bounce.test\n"
        f"secret_file: {tmp_path}/verp.key\n"
        f"store: sqlite:///{tmp_path}/bt.db\n"
        f"milter_socket: {tmp_path}/milter.sock\n"
        f"milter_journal: {tmp_path}/journal\n" + textwrap.dedent(body)
    )
    return load_config(path)
