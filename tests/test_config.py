"""Config loading: one test per class of mistake, each checking file, line and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bouncetrack.core.config import Config, ConfigError, ConfigProblem, DomainPolicy
from bouncetrack.core.config_loader import load_config, parse_duration, validate

ROOT = Path(__file__).resolve().parent.parent

VALID = """\
bounce_domain: bounce.example.com
verp_prefix: b
secret_file: /var/lib/bouncetrack/verp.key
key_grace_period: 7d
store: sqlite:////var/lib/bouncetrack/bouncetrack.db
milter_socket: /run/bouncetrack/milter.sock
api_listen: 127.0.0.1:8025
log_level: INFO
pipe: {deadline_seconds: 60, raw_retention_days: 90, feedback_addresses: [fbl, abuse]}
outbox: {max_attempts: 20, base_delay_seconds: 30, max_delay_seconds: 3600, smtp_host: 127.0.0.1, smtp_port: 25}
domains:
  Example.COM:
    tracking: true
    forward: bounces@example.com
    webhook: {url: https://hooks.example.com/bounces, secret: whsec_abc, timeout_seconds: 10}
    api_tokens: ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    dsn: {notify: "FAILURE,DELAY", ret: HDRS}
  other.org:
    tracking: false
  default:
    tracking: false
"""


def write(tmp_path: Path, text: str, name: str = "bt.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(tmp_path: Path, text: str) -> list[ConfigProblem]:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    return info.value.problems


def one(tmp_path: Path, text: str, line: int | None, key: str, *fragments: str) -> ConfigProblem:
    """Exactly one problem, naming file, line and key, its message holding every fragment."""
    probs = problems(tmp_path, text)
    assert len(probs) == 1, [str(p) for p in probs]
    prob = probs[0]
    rendered = str(prob)
    assert "bt.yaml" in prob.file and "bt.yaml" in rendered
    assert prob.line == line, rendered
    assert prob.key == key, rendered
    if line is not None:
        assert f"bt.yaml:{line}:" in rendered
    assert key in rendered
    for f in fragments:
        assert f in prob.message, rendered
    return prob


# --- valid files --------------------------------------------------------------------


def test_valid_file_loads_into_typed_objects(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID))
    assert isinstance(cfg, Config)
    assert cfg.bounce_domain == "bounce.example.com"
    assert cfg.verp_prefix == "b"
    assert cfg.secret_file == Path("/var/lib/bouncetrack/verp.key")
    assert cfg.key_grace_period_seconds == 7 * 86400
    assert cfg.store_url == "sqlite:////var/lib/bouncetrack/bouncetrack.db"
    assert cfg.milter_socket == Path("/run/bouncetrack/milter.sock")
    assert cfg.pipe.feedback_addresses == ("fbl", "abuse")
    assert cfg.outbox.max_attempts == 20 and cfg.outbox.smtp_port == 25
    assert set(cfg.domains) == {"example.com", "other.org"}  # keys lower-cased
    pol = cfg.policy_for("EXAMPLE.com.")
    assert isinstance(pol, DomainPolicy) and pol.name == "example.com" and pol.tracking
    assert pol.forward == "bounces@example.com"
    assert pol.webhook is not None and pol.webhook.url == "https://hooks.example.com/bounces"
    assert pol.webhook.secret == "whsec_abc" and pol.webhook.timeout_seconds == 10.0
    assert pol.dsn.notify == ("FAILURE", "DELAY") and pol.dsn.ret == "HDRS"
    assert cfg.domain_for_token_hash(pol.api_token_hashes[0]) == ("example.com",)
    assert cfg.policy_for("unknown.net") is cfg.default
    assert cfg.default.name == "default" and not cfg.default.tracking


def test_minimal_file_uses_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "bounce_domain: Bounce.Example.com.\n"))
    assert cfg.bounce_domain == "bounce.example.com"
    assert cfg.verp_prefix == "b"
    assert cfg.domains == {}
    assert cfg.default == DomainPolicy(name="default", tracking=False)
    assert cfg.store_url.startswith("sqlite:////")


def test_example_yaml_in_repo_loads() -> None:
    cfg = load_config(ROOT / "conf" / "example.yaml")
    assert cfg.bounce_domain == "bounce.example.com"
    assert cfg.secret_file == Path("/var/lib/bouncetrack/verp.key")
    assert cfg.store_url == "sqlite:////var/lib/bouncetrack/bouncetrack.db"
    assert cfg.policy_for("example.com").tracking
    assert not cfg.policy_for("example.org").tracking
    assert validate(ROOT / "conf" / "example.yaml") == []


def test_relative_paths_resolve_next_to_the_config_file(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """\
            bounce_domain: bounce.example.com
            secret_file: keys/verp.key
            store: sqlite:///data/bt.db
            milter_socket: unix:run/milter.sock
            """,
        )
    )
    assert cfg.secret_file == tmp_path / "keys" / "verp.key"
    assert cfg.store_url == f"sqlite:///{tmp_path}/data/bt.db"
    assert cfg.milter_socket == tmp_path / "run" / "milter.sock"


@pytest.mark.parametrize(
    "text,seconds",
    [("7d", 604800), ("12h", 43200), ("30m", 1800), ("45s", 45), ("1d12h", 129600), (90, 90), ("90", 90), (1.5, 1.5)],
)
def test_durations(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_duration_in_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "bounce_domain: b.example.com\nkey_grace_period: 12h\n"))
    assert cfg.key_grace_period_seconds == 43200
    cfg = load_config(write(tmp_path, "bounce_domain: b.example.com\nkey_grace_period: 3600\n"))
    assert cfg.key_grace_period_seconds == 3600


# --- one test per class of mistake ---------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "bt.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(p)
    [prob] = info.value.problems
    assert prob.line is None and "bt.yaml" in str(prob) and "cannot read" in prob.message


def test_unreadable_file(tmp_path: Path) -> None:
    # a directory in place of the file: unreadable for root too
    (tmp_path / "bt.yaml").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "bt.yaml")
    [prob] = info.value.problems
    assert prob.line is None and "bt.yaml" in str(prob) and "cannot read" in prob.message


def test_yaml_syntax_error(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: b.example.com\ndomains:\n  example.com: {tracking: true\nlog_level: INFO\n",
        4, "", "YAML syntax error")


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    one(tmp_path, "- bounce_domain: b.example.com\n", 1, "", "top level must be a mapping")


def test_empty_file(tmp_path: Path) -> None:
    one(tmp_path, "# nothing\n", 1, "", "empty")


def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: b.example.com\ndomains:\n  example.com:\n    trackin: true\n",
        4, "domains.example.com.trackin", "unknown key 'trackin' (did you mean 'tracking'?)")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: b.example.com\nstorage: sqlite:////x.db\n", 2, "storage",
        "unknown key 'storage'", "did you mean 'store'?")


def test_missing_required_key(tmp_path: Path) -> None:
    one(tmp_path, "verp_prefix: b\nlog_level: INFO\n", 1, "bounce_domain", "missing required key 'bounce_domain'")


def test_wrong_type_bool(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: b.example.com\ndomains:\n  example.com:\n    tracking: yes please\n",
        4, "domains.example.com.tracking", "expected true or false", "yes please")


def test_wrong_type_int(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: b.example.com\noutbox:\n  smtp_port: twenty-five\n",
        3, "outbox.smtp_port", "expected a whole number")


def test_wrong_type_section(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: b.example.com\npipe: [1, 2]\n", 2, "pipe", "expected a mapping")


def test_invalid_domain_name(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: b.example.com\ndomains:\n  exa_mple..com:\n    tracking: true\n",
        3, "domains.exa_mple..com", "invalid domain name")


def test_invalid_bounce_domain(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: https://bounce.example.com/\n", 1, "bounce_domain",
        "invalid domain name", "without scheme")


def test_invalid_forward_address(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: b.example.com\ndomains:\n  example.com:\n    forward: bounces at example.com\n",
        4, "domains.example.com.forward", "invalid email address")


def test_webhook_url_not_http(tmp_path: Path) -> None:
    one(tmp_path,
        "bounce_domain: b.example.com\ndomains:\n  example.com:\n    webhook:\n      url: ftp://hooks.example.com/x\n"
        "      secret: s3cret\n",
        5, "domains.example.com.webhook.url", "http:// or https://")


def test_webhook_without_secret(tmp_path: Path) -> None:
    one(tmp_path,
        "bounce_domain: b.example.com\ndomains:\n  example.com:\n    webhook:\n      url: https://hooks.example.com/x\n",
        5, "domains.example.com.webhook.secret", "without a secret")


def test_api_token_not_hashed(tmp_path: Path) -> None:
    one(tmp_path,
        "bounce_domain: b.example.com\ndomains:\n  example.com:\n    api_tokens:\n      - plain-token-oops\n",
        5, "domains.example.com.api_tokens[0]", "sha256:<64 hex digits>")


def test_dsn_notify_never_combined(tmp_path: Path) -> None:
    one(tmp_path,
        "bounce_domain: b.example.com\ndomains:\n  example.com:\n    dsn:\n      notify: NEVER,FAILURE\n",
        5, "domains.example.com.dsn.notify", "NEVER cannot be combined", "RFC 3461")


def test_dsn_notify_unknown_value(tmp_path: Path) -> None:
    one(tmp_path,
        "bounce_domain: b.example.com\ndomains:\n  example.com:\n    dsn:\n      notify: [FAILURE, SOMETIMES]\n",
        5, "domains.example.com.dsn.notify", "unknown NOTIFY value", "SOMETIMES")


def test_dsn_ret_invalid(tmp_path: Path) -> None:
    one(tmp_path,
        "bounce_domain: b.example.com\ndomains:\n  example.com:\n    dsn:\n      ret: HEADERS\n",
        5, "domains.example.com.dsn.ret", "RET must be FULL or HDRS")


def test_store_url_invalid(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: b.example.com\nstore: mysql://db/bt\n", 2, "store",
        "unsupported store URL", "sqlite:///")


def test_home_relative_path_rejected(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: b.example.com\nsecret_file: ~/verp.key\n", 2, "secret_file", "'~' is not expanded")


def test_duplicate_key(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: b.example.com\nlog_level: INFO\nlog_level: DEBUG\n", 3, "log_level",
        "duplicate key 'log_level' (first at line 2)")


def test_duplicate_nested_key(tmp_path: Path) -> None:
    one(tmp_path,
        "bounce_domain: b.example.com\ndomains:\n  example.com:\n    tracking: true\n    tracking: false\n",
        5, "domains.example.com.tracking", "duplicate key")


def test_domain_listed_twice_with_different_case(tmp_path: Path) -> None:
    one(tmp_path,
        "bounce_domain: b.example.com\ndomains:\n  example.com:\n    tracking: true\n  Example.Com:\n"
        "    tracking: false\n",
        5, "domains.Example.Com", "listed twice with different case", "line 3")


def test_bounce_domain_is_tracked_sender_domain(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: bounce.example.com\ndomains:\n  Bounce.example.com:\n    tracking: true\n",
        3, "domains.Bounce.example.com", "bounce domain")


def test_bad_duration(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: b.example.com\nkey_grace_period: 7 days\n", 2, "key_grace_period",
        "invalid duration", "7d")


def test_negative_duration(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: b.example.com\nkey_grace_period: -5\n", 2, "key_grace_period", "negative")


def test_verp_prefix_invalid(tmp_path: Path) -> None:
    one(tmp_path, "bounce_domain: b.example.com\nverp_prefix: B_x\n", 2, "verp_prefix", "[a-z0-9]+")


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    probs = problems(
        tmp_path,
        "trackin: true\nlog_level: LOUD\ndomains:\n  example.com:\n    tracking: maybe\n"
        "    webhook: {url: 'mailto:x@y.z'}\n",
    )
    keys = {p.key for p in probs}
    assert {"bounce_domain", "trackin", "log_level", "domains.example.com.tracking",
            "domains.example.com.webhook.url", "domains.example.com.webhook.secret"} <= keys
    assert [p.line for p in probs] == sorted(p.line or 0 for p in probs)


MINIMAL = """\
bounce_domain: bounce.example.com
secret_file: /etc/bouncetrack/verp.key
store: sqlite:////var/lib/bouncetrack/bouncetrack.db
milter_socket: /run/bouncetrack/milter.sock
"""


@pytest.mark.parametrize("spec, parsed", [
    ("192.0.2.1", ("192.0.2.1", 53)), ("192.0.2.1:5353", ("192.0.2.1", 5353)), ("::1", ("::1", 53)),
    ("[::1]:5353", ("::1", 5353)), ("[2001:db8::1]", ("2001:db8::1", 53)),
])
def test_validation_nameserver_is_what_the_resolver_takes(tmp_path: Path, spec: str, parsed: tuple[str, int]) -> None:
    from bouncetrack.core.resolver import parse_nameserver

    config = load_config(write(tmp_path, MINIMAL + f'validation: {{nameserver: "{spec}"}}\n'))
    assert config.validation.nameserver == spec and parse_nameserver(spec) == parsed


@pytest.mark.parametrize("spec", ["dns.example", "192.0.2.1:0", "192.0.2.1:70000", "[::1]x", "192.0.2.1:53:1"])
def test_validation_nameserver_refused_as_the_resolver_would(tmp_path: Path, spec: str) -> None:
    from bouncetrack.core.resolver import parse_nameserver

    one(tmp_path, MINIMAL + f'validation: {{nameserver: "{spec}"}}\n', 5, "validation.nameserver", "IP address")
    with pytest.raises(ValueError):
        parse_nameserver(spec)


def test_feedback_loop_senders_are_domains_like_any_other(tmp_path: Path) -> None:
    """The shared domain rule: IDN as A-labels, a trailing dot dropped; an address refused."""
    config = load_config(write(tmp_path, MINIMAL + 'pipe: {feedback_loop_senders: ["FBL.Example.NET.", "bücher.example"]}\n'))
    assert config.pipe.feedback_loop_senders == ("fbl.example.net", "xn--bcher-kva.example")
    one(tmp_path, MINIMAL + 'pipe: {feedback_loop_senders: [isp.test, "abuse@isp.test"]}\n', 5,
        "pipe.feedback_loop_senders[1]", "not an address")
