"""Typed configuration, validated once at load time.

The YAML file is turned into frozen dataclasses here and nowhere else, so the
milter, the pipe, the worker and the API never see raw dicts. Every validation
error names the file, the line and the key (see :class:`ConfigError`), and a
process refuses to start on an invalid file.

The loader itself lives in :mod:`bouncetrack.core.config_loader` so that the model
can be imported without PyYAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


#: Where every command looks for the configuration when ``--config`` is not given.
DEFAULT_CONFIG_PATH = "/etc/bouncetrack/config.yaml"
#: Where the milter journals message records (issue 20): beside the store.
DEFAULT_MILTER_JOURNAL = "/var/lib/bouncetrack/milter-journal"


class ConfigError(Exception):
    """One or more problems in a configuration file.

    ``problems`` holds one :class:`ConfigProblem` per mistake so that an
    operator fixes them all in one go instead of one per restart.
    """

    def __init__(self, problems: list["ConfigProblem"]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int | None  # 1-based; None when the file could not be read at all
    key: str  # dotted path, e.g. "domains.example.com.webhook.url"
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    # Standard Webhooks secret ("whsec_" + base64) or any string; used as HMAC key.
    secret: str
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class DsnDefaults:
    """DSN parameters applied to untracked mail whose client gave none."""

    notify: tuple[str, ...] | None = None  # e.g. ("FAILURE", "DELAY") or ("NEVER",)
    ret: str | None = None  # "HDRS" | "FULL"


# What the milter does with a suppressed recipient (``SuppressionPolicy.policy``): the one list,
# validated by the config loader and switched on by the milter and the suppression rules.
SUPPRESSION_REJECT = "reject"
SUPPRESSION_DROP = "drop"
SUPPRESSION_OFF = "off"
SUPPRESSION_POLICIES = (SUPPRESSION_REJECT, SUPPRESSION_DROP, SUPPRESSION_OFF)


@dataclass(frozen=True)
class SuppressionPolicy:
    """The suppression list of one sender domain (issue 6).

    The pipe always records hard bounces, complaints and repeated soft bounces
    on the list; ``policy`` says what the milter does with a listed recipient:
    ``reject`` (550 5.1.1 at RCPT time), ``drop`` (removed silently at the end of
    the message; a message left with no recipient is discarded) or ``off``.
    """

    policy: str = "off"  # "reject" | "drop" | "off"
    soft_bounce_limit: int = 3  # this many soft bounces ...
    soft_bounce_days: float = 7.0  # ... within this many days suppress; limit 0 = never
    expire_days: float | None = 365.0  # entries the pipe adds expire after this; None = never
    # Reports the pipe cannot verify (issue 16, README "What suppresses"): a DSN from
    # the Internet about a multi-recipient message, a complaint about one. Any
    # recipient of that message could have written it, so by default it suppresses nobody.
    unverified: bool = False


@dataclass(frozen=True)
class DomainPolicy:
    """What to do for mail whose envelope sender is in one domain."""

    name: str  # the sender domain, lower-case, or "default"
    tracking: bool = False
    forward: str | None = None  # SMTP forward address for processed bounces
    webhook: WebhookConfig | None = None
    api_token_hashes: tuple[str, ...] = ()  # "sha256:<hex>" of each API token
    dsn: DsnDefaults = field(default_factory=DsnDefaults)
    suppression: SuppressionPolicy = field(default_factory=SuppressionPolicy)  # issue 6
    # issue 19: the send API refuses recipients that cannot receive mail (bouncetrack.validation)
    validate_recipients: bool = False


#: How Postfix hands bounces to bouncetrack (``pipe.transport``, issue 21): pipe(8) starting
#: the pipe client per bounce (the default), or LMTP to the pipe server's warm workers.
TRANSPORT_PIPE = "pipe"
TRANSPORT_LMTP = "lmtp"
TRANSPORTS = (TRANSPORT_PIPE, TRANSPORT_LMTP)
#: Under Postfix's queue directory, like the milter's, so that a chrooted lmtp(8) reaches it:
#: `bouncetrack install` names it ``unix:bouncetrack/lmtp.sock`` (HACKING.md "Socket locations").
DEFAULT_LMTP_SOCKET = "/var/spool/postfix/bouncetrack/lmtp.sock"


@dataclass(frozen=True)
class LmtpConfig:
    """The pipe server's LMTP listener (issue 21; ``bouncetrack/bounce_pipe/lmtp.py``).

    Every bound is per connection or per message, on top of the pipe's own per report
    (bounce_pipe/guard.py, classifier/bounds.py).
    """

    socket: Path = Path(DEFAULT_LMTP_SOCKET)
    # Worker processes, each serving one connection at a time: the most connections
    # served at once (install sets the lmtp service's concurrency to half of it:
    # postfix_wiring.lmtp_concurrency, idle cached connections hold the other half).
    workers: int = 8
    # DATA beyond this is drained, not kept, and answered 552 5.3.4 (announced as SIZE).
    max_message_bytes: int = 10_240_000
    # RCPT beyond this in one transaction: 452 4.5.3 (Postfix sends them again later).
    max_recipients: int = 50
    # A command line must arrive within this, and no read may wait longer (RFC 5321
    # §4.5.3.2.7: a server waits 5 minutes for a command).
    command_timeout_seconds: float = 300.0
    # The whole of DATA must arrive within this.
    data_timeout_seconds: float = 600.0
    # A worker is replaced after this many messages, or once its peak RSS passes the limit.
    messages_per_worker: int = 1000
    worker_max_rss_mb: int = 512


@dataclass(frozen=True)
class PipeConfig:
    # The pipe gives up (exit 75, Postfix retries) after this long, store waits
    # included; far below pipe(8)'s command_time_limit of 1000 s.
    deadline_seconds: float = 60.0
    raw_retention_days: int = 90
    # Spam-complaint (feedback loop) local parts at the bounce domain, e.g. "fbl".
    feedback_addresses: tuple[str, ...] = ("fbl", "abuse")
    # Reports without a valid token stored per sending host and UTC day (issue 16);
    # beyond it they are counted (untrusted_over_quota) and not stored.
    untrusted_reports_per_host_per_day: int = 200
    # Feedback-loop providers whose DKIM-signed complaints are trusted (issue 16):
    # a complaint signed (d=) by one of these domains or a subdomain may suppress even
    # for a multi-recipient message. Keys are looked up through validation.nameserver.
    feedback_loop_senders: tuple[str, ...] = ()
    # Issue 21: "pipe" (pipe(8) and the pipe client) or "lmtp" (the pipe server's LMTP workers).
    transport: str = TRANSPORT_PIPE
    lmtp: LmtpConfig = field(default_factory=LmtpConfig)


@dataclass(frozen=True)
class OutboxConfig:
    max_attempts: int = 20
    base_delay_seconds: float = 30.0
    max_delay_seconds: float = 3600.0
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25


@dataclass(frozen=True)
class ApiConfig:
    """The HTTP API (issue 5; download section, owner: download API)."""

    # Longest start..end range one download request may cover (400 beyond).
    max_range_days: int = 366
    # Issue 16: the request line and header fields the server buffers (h11's
    # limit: 400 beyond, the connection closed), and the body any endpoint but
    # /v1/send reads (413 beyond, before reading it); /v1/send's own limit
    # covers two 10-million-character bodies.
    max_header_bytes: int = 16384
    max_body_bytes: int = 1 << 20
    max_send_body_bytes: int = 64 << 20
    # Host header values ``bouncetrack api`` answers (DNS rebinding: a page on
    # another name must not read /metrics); None: the loopback names and the host
    # of api_listen. "*" allows any.
    allowed_hosts: tuple[str, ...] | None = None
    # A reverse proxy in front: only then is X-Forwarded-Host believed (login's origin check).
    behind_proxy: bool = False
    # "sha256:<hex>" of a token /metrics then requires (Authorization: Bearer); None: open.
    metrics_token_hash: str | None = None
    # Failed tokens and logins per client address and minute before 429s (0: no limit).
    failed_auth_per_minute: int = 30


@dataclass(frozen=True)
class ValidationConfig:
    """Address validation (issue 19): ``check-address``, ``/v1/addresses/validate``, the send
    API's ``validate_recipients``. DNS answers are cached (LRU of ``cache_size`` domains) for
    their TTL, at most ``max_ttl`` seconds (negative answers ``max_negative_ttl``)."""

    cache_size: int = 10_000
    max_ttl: float = 86_400.0
    max_negative_ttl: float = 3_600.0
    dns_timeout: float = 5.0
    nameserver: str | None = None  # "ip" or "ip:port"; None: the system's resolvers
    max_batch: int = 100  # addresses per /v1/addresses/validate request
    rate_per_minute: int = 600  # addresses per API token per minute


@dataclass(frozen=True)
class RetentionConfig:
    """How long events and tracked messages are kept (issue 6, retention).

    ``bouncetrack purge`` (and the worker, once a day, with ``automatic``) deletes events older than
    ``events_days`` (with their delivered/dead outbox jobs; an event whose
    delivery is still pending stays) and messages older than ``messages_days``
    that no remaining event references (with their recipients). None keeps them
    forever. Raw report bodies follow ``pipe.raw_retention_days``.

    ``automatic`` lets the worker run that purge once a day; off by default, so
    that an upgrade never starts deleting stored events by itself (the same
    reasoning as the suppression policy's built-in ``off``).
    """

    events_days: int | None = 730
    messages_days: int | None = 730
    batch_size: int = 1000  # rows per short transaction
    automatic: bool = False  # the worker purges daily


@dataclass(frozen=True)
class Config:
    path: Path
    bounce_domain: str  # lower-case
    verp_prefix: str  # the local part before "+", default "b"
    secret_file: Path
    key_grace_period_seconds: float  # how long tokens of the previous key still verify
    store_url: str  # "sqlite:///abs/path" or "postgresql://..."
    milter_socket: Path
    pipe: PipeConfig
    outbox: OutboxConfig
    domains: Mapping[str, DomainPolicy]  # keyed by lower-case domain
    default: DomainPolicy
    api_listen: str = "127.0.0.1:8025"
    log_level: str = "INFO"
    api: ApiConfig = field(default_factory=ApiConfig)  # the HTTP API (issue 5)
    # metrics (issue 5): host:port of the milter's own Prometheus endpoint; None = off.
    milter_metrics_listen: str | None = None
    retention: RetentionConfig = field(default_factory=RetentionConfig)  # issue 6
    validation: ValidationConfig = field(default_factory=ValidationConfig)  # issue 19
    # issue 20: the milter appends message records here; its supervisor's journal
    # writer moves them into the store (bouncetrack/milter/journal.py).
    milter_journal: Path = Path(DEFAULT_MILTER_JOURNAL)

    def policy_for(self, domain: str) -> DomainPolicy:
        """The policy for a sender domain; the ``default`` entry when not listed."""
        return self.domains.get(domain.lower().rstrip("."), self.default)

    def domain_for_token_hash(self, token_hash: str) -> tuple[str, ...]:
        """Sender domains an API token (by its hash) may see."""
        return tuple(d for d, p in self.domains.items() if token_hash in p.api_token_hashes)
