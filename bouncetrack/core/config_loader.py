"""Load and validate the YAML configuration into :class:`bouncetrack.core.config.Config`.

Why a node walker instead of ``yaml.safe_load`` + dict checks: the composer
keeps the line of every node, so each problem names ``file:line: key``, and we
see duplicate keys, which PyYAML's constructor silently collapses (last one
wins). All problems are collected and raised together as one
:class:`~bouncetrack.core.config.ConfigError` so the operator fixes them in one go.

Decisions:

- Only ``bounce_domain`` is required; every other key has a default (see
  ``conf/example.yaml``).
- Relative paths (``secret_file``, ``milter_socket``, the path in a
  ``sqlite:///`` URL) are resolved against the directory of the config file,
  never against the process's working directory (which differs between the
  milter, Postfix's pipe(8) and an operator's shell). ``~`` is not expanded and
  is reported as a mistake.
- ``store``: ``sqlite:///`` followed by a path (SQLAlchemy convention:
  ``sqlite:////var/lib/x.db`` is absolute, ``sqlite:///x.db`` relative to the
  config file). The loaded ``Config.store_url`` is always
  ``sqlite:///`` + absolute path, so ``store_url[len("sqlite:///"):]`` is the
  absolute file name. ``postgresql://…`` is passed through unchanged.
- ``milter_socket`` may be a path or ``unix:/path`` (the ``unix:`` is dropped).
- Durations (``key_grace_period``): a number of seconds, or ``<n><unit>``
  with unit ``s``, ``m``, ``h``, ``d``, ``w``, possibly combined (``1d12h``).
- Domain names (keys of ``domains:`` and ``bounce_domain``) and addresses (``forward``)
  are parsed by :mod:`bouncetrack.core.addresses`: lower-cased, a domain's trailing dot
  dropped, an internationalized name kept in its ``xn--`` A-label form.
- ``dsn.notify`` may be a string ``"FAILURE,DELAY"`` or a list.

PyYAML is imported only here so the model stays importable without it.
"""

from __future__ import annotations

import difflib
import os.path
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

import yaml

from bouncetrack.core import addresses, esmtp
from bouncetrack.core.config import (
    ApiConfig,
    Config,
    ConfigError,
    ConfigProblem,
    DEFAULT_MILTER_JOURNAL,
    DomainPolicy,
    DsnDefaults,
    LmtpConfig,
    OutboxConfig,
    PipeConfig,
    SUPPRESSION_POLICIES,
    RetentionConfig,
    SuppressionPolicy,
    TRANSPORTS,
    ValidationConfig,
    WebhookConfig,
)
from bouncetrack.core.resolver import parse_nameserver

try:  # libyaml is much faster; fall back to the pure-Python loader
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

__all__ = ["load_config", "load_config_text", "validate", "parse_duration"]

T = TypeVar("T")

# Tag names of the YAML 1.1 core schema as resolved by PyYAML.
_TAG_STR = "tag:yaml.org,2002:str"
_TAG_NULL = "tag:yaml.org,2002:null"
_TAG_MERGE = "tag:yaml.org,2002:merge"

DEFAULT_SECRET_FILE = "/var/lib/bouncetrack/verp.key"
DEFAULT_STORE = "sqlite:////var/lib/bouncetrack/bouncetrack.db"
# Under Postfix's queue directory, so that a chrooted smtpd/cleanup (Debian's packaged
# master.cf) reaches it: `bouncetrack install` names it unix:bouncetrack/milter.sock
# (bouncetrack/ops/postfix_wiring.py, HACKING.md "Socket locations").
DEFAULT_MILTER_SOCKET = "/var/spool/postfix/bouncetrack/milter.sock"
DEFAULT_GRACE_SECONDS = 7 * 86400.0
# The VERP token is 24 characters (HACKING.md); the local part is prefix + "+" + token
# and must stay within 64 octets (RFC 5321 §4.5.3.1.1).
_TOKEN_LEN = 24
_MAX_PREFIX_LEN = 64 - 1 - _TOKEN_LEN

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_PREFIX_RE = re.compile(r"^[a-z0-9]+$")
_TOKEN_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

TOP_KEYS = (
    "bounce_domain",
    "verp_prefix",
    "secret_file",
    "key_grace_period",
    "store",
    "milter_socket",
    "milter_journal",  # issue 20
    "api_listen",
    "log_level",
    "milter_metrics_listen",  # metrics (issue 5)
    "pipe",
    "outbox",
    "domains",
    "api",  # the HTTP API (issue 5)
    "retention",  # events and messages retention (issue 6)
    "validation",  # address validation (issue 19)
)
PIPE_KEYS = ("deadline_seconds", "raw_retention_days", "feedback_addresses", "untrusted_reports_per_host_per_day",
             "feedback_loop_senders", "transport", "lmtp")
LMTP_KEYS = ("socket", "workers", "max_message_bytes", "max_recipients", "command_timeout_seconds",
             "data_timeout_seconds", "messages_per_worker", "worker_max_rss_mb")  # issue 21
OUTBOX_KEYS = ("max_attempts", "base_delay_seconds", "max_delay_seconds", "smtp_host", "smtp_port")
DOMAIN_KEYS = ("tracking", "forward", "webhook", "api_tokens", "dsn", "suppression", "validate_recipients")
VALIDATION_KEYS = ("cache_size", "max_ttl", "max_negative_ttl", "dns_timeout", "nameserver", "max_batch",
                   "rate_per_minute")  # issue 19
WEBHOOK_KEYS = ("url", "secret", "timeout_seconds")
DSN_KEYS = ("notify", "ret")
API_KEYS = (  # issues 5, 16
    "max_range_days", "max_header_bytes", "max_body_bytes", "max_send_body_bytes", "allowed_hosts", "behind_proxy",
    "metrics_token", "failed_auth_per_minute",
)
SUPPRESSION_KEYS = ("policy", "soft_bounce_limit", "soft_bounce_days", "expire_days", "unverified")  # issues 6, 16
RETENTION_KEYS = ("events_days", "messages_days", "batch_size", "automatic")  # issue 6
# A bounce can arrive days after the message (Postfix keeps retrying for
# maximal_queue_lifetime, 5 days by default; other MTAs similar): a message
# purged before then would leave its late bounce unattributed.
MIN_MESSAGES_DAYS = 7


class _Invalid(Exception):
    """Internal: a value was wrong; the problem has already been recorded."""


@dataclass
class _Ctx:
    file: str
    base_dir: Path
    loader: Any
    problems: list[ConfigProblem] = field(default_factory=list)

    def add(self, node: yaml.Node | int | None, key: str, message: str) -> None:
        if isinstance(node, yaml.Node):
            line: int | None = node.start_mark.line + 1
        else:
            line = node
        self.problems.append(ConfigProblem(self.file, line, key, message))

    def fail(self, node: yaml.Node | int | None, key: str, message: str) -> _Invalid:
        self.add(node, key, message)
        return _Invalid()


# ---------------------------------------------------------------------------
# Public API


def load_config(path: str | Path) -> Config:
    """Read, validate and return the configuration; raise ConfigError listing every problem."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigProblem(str(path), None, "", f"cannot read the file: {reason}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError([ConfigProblem(str(path), line, "", "the file is not valid UTF-8")]) from None
    return load_config_text(text, p, display_name=str(path))


def load_or_exit(path: str | Path, status: int = 1) -> Config:
    """The commands' one way to load their configuration: the Config, or every
    problem on stderr (one ``file:line: key: message`` a line) and exit ``status``."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(status) from None


def load_config_text(text: str, path: str | Path, display_name: str | None = None) -> Config:
    """Validate YAML text as if read from ``path`` (relative paths resolve next to it)."""
    p = Path(path)
    name = display_name if display_name is not None else str(path)
    ctx = _Ctx(file=name, base_dir=p.absolute().parent, loader=None)
    root = _compose(ctx, text)
    config = _build(ctx, root, p.absolute()) if root is not None else None
    if ctx.problems or config is None:
        raise ConfigError(sorted(ctx.problems, key=lambda q: (q.line or 0)))
    return config


def validate(path: str | Path) -> list[ConfigProblem]:
    """All problems of a config file (empty list when it is valid); for check-config."""
    try:
        load_config(path)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"1d12h"`` or a number.

    Raises ValueError with a human message.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 7d, 12h, 30m, 45s or a number of seconds")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    s = value.strip().lower().replace(" ", "")
    try:
        seconds = float(s)
    except ValueError:
        pass
    else:
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        return seconds
    pos = 0
    total = 0.0
    for m in _DURATION_PART_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(
            f"invalid duration {value!r}: expected e.g. 7d, 12h, 30m, 45s, 1d12h or a number of seconds"
        )
    return total


# ---------------------------------------------------------------------------
# Composition


def _compose(ctx: _Ctx, text: str) -> yaml.MappingNode | None:
    try:
        loader = _Loader(text)
        ctx.loader = loader
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        detail = exc.problem or "invalid YAML"
        if exc.context:
            detail = f"{detail} ({exc.context})"
        ctx.add(line, "", f"YAML syntax error: {detail}")
        return None
    except yaml.YAMLError as exc:
        ctx.add(None, "", f"YAML error: {exc}")
        return None
    if node is None:
        ctx.add(1, "", "the file is empty; expected a mapping with at least 'bounce_domain'")
        return None
    if not isinstance(node, yaml.MappingNode):
        ctx.add(node, "", f"the top level must be a mapping of keys (bounce_domain: ...), not {_kind(node)}")
        return None
    return node


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    tag = node.tag.rsplit(":", 1)[-1]
    return {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "bool": "a boolean",
        "null": "empty (null)",
        "timestamp": "a date",
    }.get(tag, f"a {tag}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


Entries = dict[str, tuple[yaml.Node, yaml.Node]]


def _entries(ctx: _Ctx, node: yaml.Node, path: str, allowed: tuple[str, ...] | None) -> Entries:
    """The key → (key node, value node) entries of a mapping node, checking keys.

    Detects duplicate keys (PyYAML would silently keep the last) and unknown keys.
    """
    if not isinstance(node, yaml.MappingNode):
        raise ctx.fail(node, path, f"expected a mapping, got {_kind(node)}")
    out: Entries = {}
    for knode, vnode in node.value:
        if knode.tag == _TAG_MERGE:
            ctx.add(knode, path, "YAML merge keys ('<<') are not supported; write the keys out")
            continue
        if not isinstance(knode, yaml.ScalarNode) or knode.value == "":
            ctx.add(knode, path, "keys must be plain names")
            continue
        key = str(knode.value)
        if key in out:
            first = out[key][0].start_mark.line + 1
            ctx.add(
                knode,
                _join(path, key),
                f"duplicate key '{key}' (first at line {first}); YAML would silently keep only the last one",
            )
            continue
        if allowed is not None and key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else "allowed: " + ", ".join(allowed)
            ctx.add(knode, _join(path, key), f"unknown key '{key}' ({hint})")
            continue
        out[key] = (knode, vnode)
    return out


def _value(ctx: _Ctx, node: yaml.Node) -> Any:
    """The Python value of a scalar node (YAML 1.1 core schema, like safe_load)."""
    return ctx.loader.construct_object(node, deep=True)


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _TAG_NULL


def _field(
    ctx: _Ctx,
    entries: Entries,
    key: str,
    path: str,
    conv: Callable[[_Ctx, yaml.Node, str], T],
    default: T,
) -> T:
    """Convert one optional entry; on a problem, record it and return the default."""
    if key not in entries:
        return default
    vnode = entries[key][1]
    try:
        return conv(ctx, vnode, _join(path, key))
    except _Invalid:
        return default


# ---------------------------------------------------------------------------
# Scalar converters: (ctx, node, dotted key) -> value, raising _Invalid after ctx.add


def _str(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag != _TAG_STR:
        got = _kind(node)
        if isinstance(node, yaml.ScalarNode) and node.tag != _TAG_NULL:
            got += f" ({node.value}); quote it if you mean a string"
        raise ctx.fail(node, key, f"expected a string, got {got}")
    value = str(node.value).strip()
    if not value:
        raise ctx.fail(node, key, "must not be empty")
    return value


def _bool(ctx: _Ctx, node: yaml.Node, key: str) -> bool:
    value = _value(ctx, node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, bool):
        shown = f" {node.value!r}" if isinstance(node, yaml.ScalarNode) else ""
        raise ctx.fail(node, key, f"expected true or false, got {_kind(node)}{shown}")
    return value


def _int(ctx: _Ctx, node: yaml.Node, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _value(ctx, node) if isinstance(node, yaml.ScalarNode) else None
    if isinstance(value, bool) or not isinstance(value, int):
        shown = f" {node.value!r}" if isinstance(node, yaml.ScalarNode) else ""
        raise ctx.fail(node, key, f"expected a whole number, got {_kind(node)}{shown}")
    _range(ctx, node, key, value, minimum, maximum)
    return value


def _number(
    ctx: _Ctx, node: yaml.Node, key: str, minimum: float | None = None, maximum: float | None = None,
    exclusive_min: bool = False,
) -> float:
    value = _value(ctx, node) if isinstance(node, yaml.ScalarNode) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = f" {node.value!r}" if isinstance(node, yaml.ScalarNode) else ""
        raise ctx.fail(node, key, f"expected a number, got {_kind(node)}{shown}")
    if exclusive_min and minimum is not None and value <= minimum:
        raise ctx.fail(node, key, f"must be greater than {minimum:g}, got {value:g}")
    _range(ctx, node, key, value, minimum, maximum)
    return float(value)


def _range(
    ctx: _Ctx, node: yaml.Node, key: str, value: float, minimum: float | None, maximum: float | None
) -> None:
    if minimum is not None and value < minimum:
        raise ctx.fail(node, key, f"must be at least {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise ctx.fail(node, key, f"must be at most {maximum:g}, got {value:g}")


def _duration(ctx: _Ctx, node: yaml.Node, key: str) -> float:
    value = _value(ctx, node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ctx.fail(
            node, key, f"expected a duration such as 7d, 12h, 30m, 45s or a number of seconds, got {_kind(node)}"
        )
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ctx.fail(node, key, str(exc)) from None


def _str_list(ctx: _Ctx, node: yaml.Node, key: str) -> list[tuple[yaml.Node, str]]:
    """A list of strings; a single string is accepted as a one-element list."""
    if isinstance(node, yaml.ScalarNode) and node.tag == _TAG_STR:
        return [(node, _str(ctx, node, key))]
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.fail(node, key, f"expected a list of strings, got {_kind(node)}")
    out: list[tuple[yaml.Node, str]] = []
    bad = False
    for i, item in enumerate(node.value):
        try:
            out.append((item, _str(ctx, item, f"{key}[{i}]")))
        except _Invalid:
            bad = True
    if bad:
        raise _Invalid()
    return out


def _domain_problem(value: str, exc: addresses.AddressError) -> str:
    return f"invalid domain name {value[:100]!r}: {exc}"


def _domain(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    """Lower-cased ASCII domain (IDN as A-labels) without trailing dot
    (:func:`bouncetrack.core.addresses.parse_domain`)."""
    value = _str(ctx, node, key)
    try:
        return addresses.parse_domain(value)
    except addresses.AddressError as exc:
        raise ctx.fail(node, key, _domain_problem(value, exc)) from None


def _email(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    value = _str(ctx, node, key)
    try:
        return addresses.parse_address(value).addr_spec
    except addresses.AddressError as exc:
        raise ctx.fail(node, key, f"invalid email address {value[:100]!r}: {exc}") from None


def _path(ctx: _Ctx, node: yaml.Node, key: str) -> Path:
    value = _str(ctx, node, key)
    return _resolve(ctx, node, key, value)


def _resolve(ctx: _Ctx, node: yaml.Node, key: str, value: str) -> Path:
    if value.startswith("~"):
        raise ctx.fail(node, key, f"'~' is not expanded in {value!r}; give an absolute path")
    p = Path(value)
    if not p.is_absolute():
        p = ctx.base_dir / p  # documented: relative to the config file's directory
    return Path(os.path.normpath(p))


def _socket(ctx: _Ctx, node: yaml.Node, key: str) -> Path:
    value = _str(ctx, node, key)
    if value.startswith("unix:"):
        value = value[len("unix:"):]
    elif value.startswith(("inet:", "inet6:")):
        raise ctx.fail(node, key, "only a unix socket path is supported (e.g. /var/spool/postfix/bouncetrack/milter.sock)")
    return _resolve(ctx, node, key, value)


def _store(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    value = _str(ctx, node, key)
    if value.startswith("sqlite:///"):
        rest = value[len("sqlite:///"):]
        if not rest or rest.endswith("/"):
            raise ctx.fail(node, key, f"{value!r} names no database file (e.g. sqlite:////var/lib/bouncetrack/bouncetrack.db)")
        path = _resolve(ctx, node, key, rest)
        return "sqlite:///" + str(path)
    if value.startswith("postgresql://"):
        if len(value) == len("postgresql://"):
            raise ctx.fail(node, key, "postgresql:// URL names no server or database")
        return value
    hint = ""
    if value.startswith("sqlite:"):
        hint = " (sqlite needs three slashes then the path: sqlite:////abs/path.db)"
    elif value.startswith(("postgres://", "postgresql+")):
        hint = " (write it as postgresql://user@host/db)"
    raise ctx.fail(node, key, f"unsupported store URL {value!r}: expected sqlite:///<path> or postgresql://...{hint}")


def _listen(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    value = _str(ctx, node, key)
    host, sep, port = value.rpartition(":")
    ok = bool(sep and host and port.isdigit() and 1 <= int(port) <= 65535)
    if ok and host.startswith("[") != host.endswith("]"):
        ok = False
    if not ok:
        raise ctx.fail(node, key, f"expected host:port (e.g. 127.0.0.1:8025 or [::1]:8025), got {value!r}")
    return value


def _optional_listen(ctx: _Ctx, node: yaml.Node, key: str) -> str | None:
    """host:port, or null for "off" (metrics, issue 5)."""
    return None if _is_null(node) else _listen(ctx, node, key)


def _log_level(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    value = _str(ctx, node, key).upper()
    if value not in _LOG_LEVELS:
        raise ctx.fail(node, key, f"unknown log level {value!r} (one of {', '.join(_LOG_LEVELS)})")
    return value


def _prefix(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    value = _str(ctx, node, key)
    if not _PREFIX_RE.match(value):
        raise ctx.fail(node, key, f"invalid VERP prefix {value!r}: use lower-case letters and digits only ([a-z0-9]+)")
    if len(value) > _MAX_PREFIX_LEN:
        raise ctx.fail(
            node, key, f"VERP prefix too long ({len(value)}): the local part must stay within 64 octets (max {_MAX_PREFIX_LEN})"
        )
    return value


# ---------------------------------------------------------------------------
# Sections


def _build(ctx: _Ctx, root: yaml.MappingNode, path: Path) -> Config | None:
    top = _entries(ctx, root, "", TOP_KEYS)

    bounce_domain: str | None = None
    if "bounce_domain" not in top:
        ctx.add(root, "bounce_domain", "missing required key 'bounce_domain' (the VERP domain whose MX is this Postfix)")
    else:
        bounce_domain = _field(ctx, top, "bounce_domain", "", _domain, None)

    verp_prefix = _field(ctx, top, "verp_prefix", "", _prefix, "b")
    secret_file = _field(ctx, top, "secret_file", "", _path, Path(DEFAULT_SECRET_FILE))
    grace = _field(ctx, top, "key_grace_period", "", _duration, DEFAULT_GRACE_SECONDS)
    store = _field(ctx, top, "store", "", _store, DEFAULT_STORE)
    milter_socket = _field(ctx, top, "milter_socket", "", _socket, Path(DEFAULT_MILTER_SOCKET))
    milter_journal = _field(ctx, top, "milter_journal", "", _path, Path(DEFAULT_MILTER_JOURNAL))
    api_listen = _field(ctx, top, "api_listen", "", _listen, "127.0.0.1:8025")
    log_level = _field(ctx, top, "log_level", "", _log_level, "INFO")
    # metrics (issue 5): the milter's Prometheus port; absent or null = off.
    milter_metrics_listen = _field(ctx, top, "milter_metrics_listen", "", _optional_listen, None)
    pipe = _field(ctx, top, "pipe", "", lambda c, n, k: _pipe(c, n, k, verp_prefix), PipeConfig())
    outbox = _field(ctx, top, "outbox", "", _outbox, OutboxConfig())
    api = _field(ctx, top, "api", "", _api, ApiConfig())
    retention = _field(ctx, top, "retention", "", _retention, RetentionConfig())
    validation = _field(ctx, top, "validation", "", _validation, ValidationConfig())
    no_domains: tuple[dict[str, DomainPolicy], DomainPolicy] = ({}, DomainPolicy(name="default"))
    domains, default = _field(
        ctx, top, "domains", "", lambda c, n, k: _domains(c, n, k, bounce_domain), no_domains
    )

    if ctx.problems or bounce_domain is None:
        return None
    return Config(
        path=path,
        bounce_domain=bounce_domain,
        verp_prefix=verp_prefix,
        secret_file=secret_file,
        key_grace_period_seconds=grace,
        store_url=store,
        milter_socket=milter_socket,
        pipe=pipe,
        outbox=outbox,
        domains=domains,
        default=default,
        api_listen=api_listen,
        log_level=log_level,
        api=api,
        milter_metrics_listen=milter_metrics_listen,
        milter_journal=milter_journal,
        retention=retention,
        validation=validation,
    )


def _pipe(ctx: _Ctx, node: yaml.Node, key: str, verp_prefix: str) -> PipeConfig:
    if _is_null(node):
        return PipeConfig()
    e = _entries(ctx, node, key, PIPE_KEYS)
    d = PipeConfig()
    # pipe(8)'s command_time_limit defaults to 1000 s; Postfix kills the pipe after that.
    deadline = _field(ctx, e, "deadline_seconds", key, lambda c, n, k: _number(c, n, k, 0, 999, True), d.deadline_seconds)
    retention = _field(ctx, e, "raw_retention_days", key, lambda c, n, k: _int(c, n, k, 0), d.raw_retention_days)
    feedback = d.feedback_addresses
    if "feedback_addresses" in e:
        fkey = _join(key, "feedback_addresses")
        try:
            items = _str_list(ctx, e["feedback_addresses"][1], fkey)
        except _Invalid:
            items = []
        out: list[str] = []
        for i, (n, v) in enumerate(items):
            local = v.lower()
            try:
                addresses.parse_address(f"{local}@example.com")
                bad = "@" in local
            except addresses.AddressError:
                bad = True
            if bad:
                ctx.add(n, f"{fkey}[{i}]", f"invalid local part {v[:100]!r} (give only the part before '@')")
            elif local == verp_prefix or local.startswith(verp_prefix + "+"):
                ctx.add(n, f"{fkey}[{i}]", f"{v!r} collides with the VERP prefix '{verp_prefix}'")
            else:
                out.append(local)
        feedback = tuple(out)
    quota = _field(ctx, e, "untrusted_reports_per_host_per_day", key, lambda c, n, k: _int(c, n, k, 0, 10**9),
                   d.untrusted_reports_per_host_per_day)
    senders: list[str] = []
    if "feedback_loop_senders" in e:
        skey = _join(key, "feedback_loop_senders")
        try:
            listed = _str_list(ctx, e["feedback_loop_senders"][1], skey)
        except _Invalid:
            listed = []
        for i, (n, _) in enumerate(listed):  # DKIM d= domains (e.g. fbl.example.net), as A-labels
            try:
                senders.append(_domain(ctx, n, f"{skey}[{i}]"))
            except _Invalid:
                pass

    def transport(c: _Ctx, n: yaml.Node, k: str) -> str:
        value = _str(c, n, k).lower()
        if value not in TRANSPORTS:
            raise c.fail(n, k, f"expected one of {', '.join(TRANSPORTS)}, got {value[:40]!r}")
        return value

    return PipeConfig(deadline_seconds=deadline, raw_retention_days=retention, feedback_addresses=feedback,
                      untrusted_reports_per_host_per_day=quota, feedback_loop_senders=tuple(senders),
                      transport=_field(ctx, e, "transport", key, transport, d.transport),
                      lmtp=_field(ctx, e, "lmtp", key, _lmtp, d.lmtp))


def _lmtp(ctx: _Ctx, node: yaml.Node, key: str) -> LmtpConfig:
    """``pipe.lmtp`` (issue 21): the pipe server's LMTP listener and its bounds."""
    if _is_null(node):
        return LmtpConfig()
    e = _entries(ctx, node, key, LMTP_KEYS)
    d = LmtpConfig()

    def whole(name: str, default: int, low: int, high: int) -> int:
        return _field(ctx, e, name, key, lambda c, n, k: _int(c, n, k, low, high), default)

    def seconds(name: str, default: float) -> float:
        return _field(ctx, e, name, key, lambda c, n, k: _number(c, n, k, 0, 3600, True), default)

    return LmtpConfig(
        socket=_field(ctx, e, "socket", key, _socket, d.socket),
        workers=whole("workers", d.workers, 1, 256),
        max_message_bytes=whole("max_message_bytes", d.max_message_bytes, 1024, 1 << 30),
        max_recipients=whole("max_recipients", d.max_recipients, 1, 1000),
        command_timeout_seconds=seconds("command_timeout_seconds", d.command_timeout_seconds),
        data_timeout_seconds=seconds("data_timeout_seconds", d.data_timeout_seconds),
        messages_per_worker=whole("messages_per_worker", d.messages_per_worker, 1, 10**9),
        worker_max_rss_mb=whole("worker_max_rss_mb", d.worker_max_rss_mb, 32, 1 << 20),
    )


def _api(ctx: _Ctx, node: yaml.Node, key: str) -> ApiConfig:
    """The HTTP API section (issue 5; download section, owner: download API)."""
    if _is_null(node):
        return ApiConfig()
    e = _entries(ctx, node, key, API_KEYS)
    d = ApiConfig()
    days = _field(ctx, e, "max_range_days", key, lambda c, n, k: _int(c, n, k, 1, 3660), d.max_range_days)

    def size(name: str, default: int, minimum: int) -> int:
        return _field(ctx, e, name, key, lambda c, n, k: _int(c, n, k, minimum, 1 << 30), default)

    def hosts(c: _Ctx, n: yaml.Node, k: str) -> tuple[str, ...]:
        out = []
        for i, (item, value) in enumerate(_str_list(c, n, k)):
            host = value.lower().rstrip(".")
            if host != "*" and not re.fullmatch(r"[a-z0-9.-]+|\[?[0-9a-f:.]+\]?", host):
                raise c.fail(item, f"{k}[{i}]", f"{value!r} is not a host name or address (no port, no scheme)")
            out.append(host.strip("[]"))
        return tuple(out)

    def token_hash(c: _Ctx, n: yaml.Node, k: str) -> str:
        value = _str(c, n, k).lower()
        if not _TOKEN_HASH_RE.match(value):
            raise c.fail(n, k, "expected 'sha256:<64 hex digits>' (run 'bouncetrack hash-token --new')")
        return value

    return ApiConfig(
        max_range_days=days,
        max_header_bytes=size("max_header_bytes", d.max_header_bytes, 1024),
        max_body_bytes=size("max_body_bytes", d.max_body_bytes, 1024),
        max_send_body_bytes=size("max_send_body_bytes", d.max_send_body_bytes, 1024),
        allowed_hosts=_field(ctx, e, "allowed_hosts", key, hosts, d.allowed_hosts),
        behind_proxy=_field(ctx, e, "behind_proxy", key, _bool, d.behind_proxy),
        metrics_token_hash=_field(ctx, e, "metrics_token", key, token_hash, d.metrics_token_hash),
        failed_auth_per_minute=_field(ctx, e, "failed_auth_per_minute", key,
                                      lambda c, n, k: _int(c, n, k, 0, 100000), d.failed_auth_per_minute),
    )


def _validation(ctx: _Ctx, node: yaml.Node, key: str) -> ValidationConfig:
    """The ``validation:`` section (issue 19): the DNS cache and the endpoint's limits."""
    if _is_null(node):
        return ValidationConfig()
    e = _entries(ctx, node, key, VALIDATION_KEYS)
    d = ValidationConfig()

    def nameserver(c: _Ctx, n: yaml.Node, k: str) -> str | None:
        if _is_null(n):
            return None
        value = _str(c, n, k)
        try:
            parse_nameserver(value)  # what the resolver will be given
        except ValueError as exc:
            raise c.fail(n, k, str(exc)) from None
        return value

    return ValidationConfig(
        cache_size=_field(ctx, e, "cache_size", key, lambda c, n, k: _int(c, n, k, 1, 10_000_000), d.cache_size),
        max_ttl=_field(ctx, e, "max_ttl", key, lambda c, n, k: _number(c, n, k, 0, 7 * 86400, False), d.max_ttl),
        max_negative_ttl=_field(ctx, e, "max_negative_ttl", key,
                                lambda c, n, k: _number(c, n, k, 0, 86400, False), d.max_negative_ttl),
        dns_timeout=_field(ctx, e, "dns_timeout", key, lambda c, n, k: _number(c, n, k, 0, 60, True), d.dns_timeout),
        nameserver=_field(ctx, e, "nameserver", key, nameserver, d.nameserver),
        max_batch=_field(ctx, e, "max_batch", key, lambda c, n, k: _int(c, n, k, 1, 10_000), d.max_batch),
        rate_per_minute=_field(ctx, e, "rate_per_minute", key, lambda c, n, k: _int(c, n, k, 1, 10_000_000),
                               d.rate_per_minute),
    )


def _retention(ctx: _Ctx, node: yaml.Node, key: str) -> RetentionConfig:
    """The ``retention:`` section (issue 6): days to keep events and messages, null = forever."""
    if _is_null(node):
        return RetentionConfig()
    e = _entries(ctx, node, key, RETENTION_KEYS)
    d = RetentionConfig()

    def days(minimum: int) -> Callable[[_Ctx, yaml.Node, str], int | None]:
        def parse(c: _Ctx, n: yaml.Node, k: str) -> int | None:
            return None if _is_null(n) else _int(c, n, k, minimum, 36600)
        return parse

    events = _field(ctx, e, "events_days", key, days(1), d.events_days)
    messages = _field(ctx, e, "messages_days", key, days(MIN_MESSAGES_DAYS), d.messages_days)
    batch = _field(ctx, e, "batch_size", key, lambda c, n, k: _int(c, n, k, 1, 10000), d.batch_size)
    automatic = _field(ctx, e, "automatic", key, _bool, d.automatic)
    return RetentionConfig(events_days=events, messages_days=messages, batch_size=batch, automatic=automatic)


def _outbox(ctx: _Ctx, node: yaml.Node, key: str) -> OutboxConfig:
    if _is_null(node):
        return OutboxConfig()
    e = _entries(ctx, node, key, OUTBOX_KEYS)
    d = OutboxConfig()
    attempts = _field(ctx, e, "max_attempts", key, lambda c, n, k: _int(c, n, k, 1), d.max_attempts)
    base = _field(ctx, e, "base_delay_seconds", key, lambda c, n, k: _number(c, n, k, 0, None, True), d.base_delay_seconds)
    mx = _field(ctx, e, "max_delay_seconds", key, lambda c, n, k: _number(c, n, k, 0, None, True), d.max_delay_seconds)
    if "max_delay_seconds" in e and mx < base:
        ctx.add(e["max_delay_seconds"][1], _join(key, "max_delay_seconds"),
                f"must not be below base_delay_seconds ({base:g})")
    host = _field(ctx, e, "smtp_host", key, _str, d.smtp_host)
    port = _field(ctx, e, "smtp_port", key, lambda c, n, k: _int(c, n, k, 1, 65535), d.smtp_port)
    return OutboxConfig(max_attempts=attempts, base_delay_seconds=base, max_delay_seconds=mx, smtp_host=host, smtp_port=port)


def _domains(
    ctx: _Ctx, node: yaml.Node, key: str, bounce_domain: str | None
) -> tuple[dict[str, DomainPolicy], DomainPolicy]:
    default = DomainPolicy(name="default")
    if _is_null(node):
        return {}, default
    e = _entries(ctx, node, key, None)
    policies: dict[str, DomainPolicy] = {}
    seen: dict[str, tuple[str, yaml.Node]] = {}  # lower-case name -> (as written, key node)
    # "default" first: the other domains' suppression keys inherit from it (issue 6).
    for raw, (knode, vnode) in sorted(e.items(), key=lambda kv: kv[0].lower() != "default"):
        dkey = _join(key, raw)
        try:
            name = "default" if raw.lower() == "default" else addresses.parse_domain(raw)
        except addresses.AddressError as exc:
            ctx.add(knode, dkey, _domain_problem(raw, exc))
            continue
        if name in seen:
            first_raw, first_node = seen[name]
            ctx.add(
                knode,
                dkey,
                f"domain '{raw}' is listed twice with different case (first as '{first_raw}' at line "
                f"{first_node.start_mark.line + 1}); domain names are case-insensitive",
            )
            continue
        seen[name] = (raw, knode)
        try:
            policy = _policy(ctx, vnode, dkey, name, bounce_domain, default.suppression)
        except _Invalid:
            continue
        if name == "default":
            default = policy
            continue
        if bounce_domain is not None and name == bounce_domain and policy.tracking:
            ctx.add(
                knode,
                dkey,
                f"the bounce domain '{bounce_domain}' cannot be a tracked sender domain "
                "(its own mail would be rewritten to point at itself); set tracking: false or remove it",
            )
        policies[name] = policy
    return policies, default


def _policy(
    ctx: _Ctx,
    node: yaml.Node,
    key: str,
    name: str,
    bounce_domain: str | None,
    base_suppression: SuppressionPolicy = SuppressionPolicy(),
) -> DomainPolicy:
    if _is_null(node):
        return DomainPolicy(name=name, suppression=base_suppression)
    e = _entries(ctx, node, key, DOMAIN_KEYS)
    tracking = _field(ctx, e, "tracking", key, _bool, False)
    forward = _field(ctx, e, "forward", key, _email, None)
    if forward is not None and bounce_domain is not None and forward.rpartition("@")[2] == bounce_domain:
        ctx.add(e["forward"][1], _join(key, "forward"),
                f"forwarding to the bounce domain '{bounce_domain}' would loop; give an address elsewhere")
    webhook = _field(ctx, e, "webhook", key, _webhook, None)
    hashes: tuple[str, ...] = ()
    if "api_tokens" in e:
        tkey = _join(key, "api_tokens")
        try:
            items = _str_list(ctx, e["api_tokens"][1], tkey)
        except _Invalid:
            items = []
        out: list[str] = []
        for i, (n, v) in enumerate(items):
            h = v.strip()
            if _TOKEN_HASH_RE.match(h.lower()):
                out.append(h.lower())
            else:
                ctx.add(
                    n,
                    f"{tkey}[{i}]",
                    "API tokens are stored hashed: expected 'sha256:<64 hex digits>' "
                    "(run 'bouncetrack hash-token' and paste its sha256: line)",
                )
        hashes = tuple(out)
    dsn = _field(ctx, e, "dsn", key, _dsn, DsnDefaults())
    validate_recipients = _field(ctx, e, "validate_recipients", key, _bool, False)
    suppression = _field(
        ctx, e, "suppression", key, lambda c, n, k: _suppression(c, n, k, base_suppression), base_suppression
    )
    return DomainPolicy(
        name=name,
        tracking=tracking,
        forward=forward,
        webhook=webhook,
        api_token_hashes=hashes,
        dsn=dsn,
        suppression=suppression,
        validate_recipients=validate_recipients,
    )


def _suppression(ctx: _Ctx, node: yaml.Node, key: str, base: SuppressionPolicy) -> SuppressionPolicy:
    """A domain's ``suppression:`` block (issue 6); keys left out come from ``base``.

    ``base`` is the ``default`` entry's block (built-in defaults for ``default``
    itself), so ``default: {suppression: {...}}`` sets them for every domain.
    """
    if _is_null(node):
        return base
    e = _entries(ctx, node, key, SUPPRESSION_KEYS)
    policy = _field(ctx, e, "policy", key, _suppression_policy, base.policy)
    limit = _field(
        ctx, e, "soft_bounce_limit", key, lambda c, n, k: _int(c, n, k, 0, 1000), base.soft_bounce_limit
    )
    days = _field(
        ctx, e, "soft_bounce_days", key, lambda c, n, k: _number(c, n, k, 0, 3660, True), base.soft_bounce_days
    )
    expire = _field(ctx, e, "expire_days", key, _expire_days, base.expire_days)
    unverified = _field(ctx, e, "unverified", key, _bool, base.unverified)
    return SuppressionPolicy(policy=policy, soft_bounce_limit=limit, soft_bounce_days=days, expire_days=expire,
                             unverified=unverified)


def _suppression_policy(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    # YAML 1.1 reads a bare `off` as the boolean false: take it as the word meant.
    if isinstance(node, yaml.ScalarNode) and _value(ctx, node) is False:
        return "off"
    value = _str(ctx, node, key).lower()
    if value not in SUPPRESSION_POLICIES:
        raise ctx.fail(node, key, f"unknown suppression policy {value!r} (one of {', '.join(SUPPRESSION_POLICIES)})")
    return value


def _expire_days(ctx: _Ctx, node: yaml.Node, key: str) -> float | None:
    """Days until an entry the pipe adds expires; null = never."""
    if _is_null(node):
        return None
    return _number(ctx, node, key, 0, 36600, True)


def _webhook(ctx: _Ctx, node: yaml.Node, key: str) -> WebhookConfig:
    e = _entries(ctx, node, key, WEBHOOK_KEYS)
    url: str | None = None
    if "url" not in e:
        ctx.add(node, _join(key, "url"), "missing required key 'url' in webhook")
    else:
        url = _field(ctx, e, "url", key, _url, None)
    secret: str | None = None
    if "secret" not in e:
        ctx.add(node, _join(key, "secret"), "webhook without a secret: add 'secret' (each delivery is signed with it)")
    else:
        secret = _field(ctx, e, "secret", key, _str, None)
    timeout = _field(ctx, e, "timeout_seconds", key, lambda c, n, k: _number(c, n, k, 0, 300, True), 10.0)
    if url is None or secret is None:
        raise _Invalid()
    return WebhookConfig(url=url, secret=secret, timeout_seconds=timeout)


def _url(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    value = _str(ctx, node, key)
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme.lower() not in ("http", "https"):
        raise ctx.fail(node, key, f"webhook URL must start with http:// or https://, got {value!r}")
    if not host:
        raise ctx.fail(node, key, f"webhook URL {value!r} names no host")
    return value


def _dsn(ctx: _Ctx, node: yaml.Node, key: str) -> DsnDefaults:
    if _is_null(node):
        return DsnDefaults()
    e = _entries(ctx, node, key, DSN_KEYS)
    notify: tuple[str, ...] | None = None
    if "notify" in e:
        nkey = _join(key, "notify")
        vnode = e["notify"][1]
        try:
            items = _str_list(ctx, vnode, nkey)
        except _Invalid:
            items = []
        if items:
            try:
                notify = esmtp.parse_notify(",".join(v for _, v in items))
            except esmtp.DsnSyntaxError as exc:
                ctx.add(vnode, nkey, str(exc))
    ret: str | None = None
    if "ret" in e:
        rkey = _join(key, "ret")
        try:
            r: str | None = _str(ctx, e["ret"][1], rkey)
        except _Invalid:
            r = None
        if r is not None:
            try:
                ret = esmtp.parse_ret(r)
            except esmtp.DsnSyntaxError as exc:
                ctx.add(e["ret"][1], rkey, str(exc))
    return DsnDefaults(notify=notify, ret=ret)
