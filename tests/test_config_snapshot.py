"""The pipe's configuration snapshot: equal to the YAML it came from, never trusted blindly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bouncetrack.bounce_pipe import config_snapshot
from bouncetrack.core.config_loader import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cache(tmp_path: Path) -> str:
    d = tmp_path / "cache"
    d.mkdir(mode=0o700)
    return str(d)


def copy_example(tmp_path: Path) -> Path:
    target = tmp_path / "example.yaml"
    target.write_text((ROOT / "conf" / "example.yaml").read_text())
    return target


def test_round_trip_equals_the_yaml(tmp_path: Path, cache: str) -> None:
    path = copy_example(tmp_path)
    config = load_config(path)
    assert config_snapshot.save(config, cache)
    again = config_snapshot.load_cached(path, cache)
    assert again == config  # every field, nested dataclasses, tuples and paths included


def test_stale_after_the_yaml_changes(tmp_path: Path, cache: str) -> None:
    path = copy_example(tmp_path)
    assert config_snapshot.save(load_config(path), cache)
    time.sleep(0.01)
    path.write_text(path.read_text().replace("bounce.example.com", "bounces.example.com"))
    assert config_snapshot.load_cached(path, cache) is None


def test_untrusted_directory_or_file_is_ignored(tmp_path: Path, cache: str) -> None:
    path = copy_example(tmp_path)
    assert config_snapshot.save(load_config(path), cache)
    os.chmod(cache, 0o777)
    assert config_snapshot.load_cached(path, cache) is None
    assert not config_snapshot.save(load_config(path), cache)
    os.chmod(cache, 0o700)
    snap = config_snapshot.snapshot_path(path, cache)
    os.chmod(snap, 0o666)
    assert config_snapshot.load_cached(path, cache) is None


def test_garbage_snapshot_falls_back(tmp_path: Path, cache: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = copy_example(tmp_path)
    Path(config_snapshot.snapshot_path(path, cache)).write_text("{not json")
    monkeypatch.setenv("BOUNCETRACK_CACHE_DIR", cache)
    assert config_snapshot.load(path) == load_config(path)  # and it repaired the snapshot
    assert config_snapshot.load_cached(path, cache) == load_config(path)


def test_missing_cache_directory_just_loads_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = copy_example(tmp_path)
    monkeypatch.setenv("BOUNCETRACK_CACHE_DIR", str(tmp_path / "absent"))
    assert config_snapshot.load(path) == load_config(path)
