"""A validated configuration saved as JSON, so that the bounce pipe can skip PyYAML.

Why: Postfix starts the pipe once per bounce, and importing PyYAML and the
validating loader costs about as much as the interpreter's own start. The first
run after the YAML file changes validates it as usual and saves the result here;
later runs load the snapshot while the YAML file's ``stat`` (mtime, size, inode,
device) is unchanged. A snapshot is only a cache: when it is missing, stale,
unreadable, made by another version of the code, or not trustworthy, the YAML
file is loaded, so behaviour never depends on it.

Trust: snapshots live in ``/var/cache/bouncetrack`` (or ``$BOUNCETRACK_CACHE_DIR``),
a directory that must belong to root or to the current user and be writable by
no one else; a snapshot file must belong to root or the current user. Anyone who
could write there could equally change the configuration.

Only the standard library (json, os, hashlib) is imported here, and the pipe client (for
the cache directory: stdlib only itself).
"""

from __future__ import annotations

# Lazy imports: the pipe's lean path (HACKING): a bounce imports only what its case needs (PyYAML
# only for a stale config snapshot); the pipe server imports them once before it forks (warm()).

import hashlib
import json
import os
import stat
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from .. import __version__
# The pipe's cache directory: one definition, in the stdlib-only pipe client, so that the
# client, the pipe and /metrics all find the same directory.
from .client import cache_dir
from ..core.config import (
    ApiConfig,
    Config,
    DomainPolicy,
    DsnDefaults,
    LmtpConfig,
    OutboxConfig,
    PipeConfig,
    RetentionConfig,
    ValidationConfig,
    SuppressionPolicy,
    WebhookConfig,
)

FORMAT = 1

# How each field type (as written in bouncetrack/core/config.py) is rebuilt from JSON.
_NESTED: dict[str, type] = {
    "PipeConfig": PipeConfig,
    "OutboxConfig": OutboxConfig,
    "DomainPolicy": DomainPolicy,
    "DsnDefaults": DsnDefaults,
    "WebhookConfig": WebhookConfig,
    "ApiConfig": ApiConfig,
    "SuppressionPolicy": SuppressionPolicy,  # issue 6
    "RetentionConfig": RetentionConfig,  # issue 6, retention
    "ValidationConfig": ValidationConfig,  # issue 19
    "LmtpConfig": LmtpConfig,  # issue 21
}


def _schema() -> str:
    """Changes whenever the code or the shape of Config changes: old snapshots are ignored."""
    shape = []
    for cls in (Config, *_NESTED.values()):
        shape.append(cls.__name__ + ":" + ",".join(f"{f.name}={f.type}" for f in fields(cls)))
    return hashlib.sha256(f"{__version__}|{FORMAT}|{';'.join(shape)}".encode()).hexdigest()[:16]


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev]


def snapshot_path(config_path: str | Path, directory: str | None = None) -> str:
    key = hashlib.sha256(os.path.abspath(config_path).encode()).hexdigest()[:24]
    return os.path.join(directory or cache_dir(), f"config-{key}.json")


def _trusted(st: os.stat_result, *, directory: bool) -> bool:
    if st.st_uid not in (0, os.geteuid()):
        return False
    if directory and not stat.S_ISDIR(st.st_mode):
        return False
    return not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def load_cached(config_path: str | Path, directory: str | None = None) -> Config | None:
    """The snapshot of ``config_path`` if it is fresh and trustworthy, else None."""
    directory = directory or cache_dir()
    try:
        if not _trusted(os.stat(directory), directory=True):
            return None
        source = os.stat(config_path)
        path = snapshot_path(config_path, directory)
        with open(path, "rb") as fh:
            if not _trusted(os.fstat(fh.fileno()), directory=False):
                return None
            data = json.load(fh)
        if data.get("schema") != _schema() or data.get("stamp") != _stamp(source):
            return None
        if data.get("source") != os.path.abspath(config_path):
            return None
        config = _rebuild(Config, data["config"])
        return config if isinstance(config, Config) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(config: Config, directory: str | None = None) -> bool:
    """Write the snapshot (atomically); False when the cache directory cannot be used."""
    directory = directory or cache_dir()
    try:
        if not _trusted(os.stat(directory), directory=True):
            return False
        source = os.stat(config.path)
        data = {
            "schema": _schema(),
            "source": os.path.abspath(config.path),
            "stamp": _stamp(source),
            "config": _plain(config),
        }
        path = snapshot_path(config.path, directory)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
        _prune(directory, keep=path)
        return True
    except (OSError, TypeError, ValueError):
        return False


PRUNE_AFTER_SECONDS = 30 * 86400


def _prune(directory: str, keep: str) -> None:
    """Drop snapshots nobody refreshed for a month (configs that moved or were removed)."""
    import time

    cutoff = time.time() - PRUNE_AFTER_SECONDS
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("config-") and entry.path != keep and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
    except OSError:
        pass


def load(config_path: str | Path) -> Config:
    """The configuration, from a fresh snapshot when there is one; ConfigError if invalid."""
    cached = load_cached(config_path)
    if cached is not None:
        return cached
    from ..core.config_loader import load_config

    config = load_config(config_path)
    save(config)
    return config


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot snapshot {type(value).__name__}")


def _rebuild(cls: type, data: dict[str, Any]) -> Any:
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            raise KeyError(f.name)
        kwargs[f.name] = _value(str(f.type), data[f.name])
    return cls(**kwargs)


def _value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    base = kind.replace(" | None", "").strip()
    if base in _NESTED:
        return _rebuild(_NESTED[base], value)
    if base == "Path":
        return Path(value)
    if base.startswith("Mapping[str, "):
        inner = base[len("Mapping[str, ") : -1]
        return {k: _value(inner, v) for k, v in value.items()}
    if base.startswith("tuple["):
        return tuple(value)
    if base == "float":
        return float(value)
    return value
