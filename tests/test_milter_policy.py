"""The milter's decisions, as pure functions (no libmilter, no MTA)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bouncetrack.core import esmtp
from bouncetrack.core.config import Config, DomainPolicy, DsnDefaults, OutboxConfig, PipeConfig
from bouncetrack.milter import policy
from bouncetrack.milter.policy import Envelope, Recipient

TOKEN = "aaaaaaaaaaaaaaaaaaaaaaaa"


def make_config(**domains: DomainPolicy) -> Config:
    return Config(
        path=Path("/dev/null"),
        bounce_domain="bounce.test",
        verp_prefix="b",
        secret_file=Path("/nonexistent/verp.key"),
        key_grace_period_seconds=86400.0,
        store_url="sqlite:////nonexistent/db",
        milter_socket=Path("/nonexistent/milter.sock"),
        pipe=PipeConfig(),
        outbox=OutboxConfig(),
        domains={
            "tracked.test": DomainPolicy("tracked.test", tracking=True),
            "untracked.test": DomainPolicy("untracked.test", tracking=False),
            **domains,
        },
        default=DomainPolicy("default", tracking=False),
    )


CONFIG = make_config()


def env(sender: str, *rcpts: Recipient, params: tuple[str, ...] = (), return_paths: tuple[str, ...] = ()) -> Envelope:
    return Envelope(sender, params, tuple(rcpts) or (Recipient("<r@remote.test>"),), return_paths)


def test_tracked_rewrites_envelope_and_overrides_dsn() -> None:
    e = env(
        "<info@tracked.test>",
        Recipient("<a@remote.test>", ("NOTIFY=NEVER",)),
        Recipient("<b@remote.test>", ("NOTIFY=SUCCESS", "ORCPT=rfc822;orig+2Bb@remote.test")),
        params=("RET=FULL", "ENVID=client-id"),
        return_paths=("<x@elsewhere.test>",),
    )
    assert policy.needs_token(CONFIG, e)
    d = policy.decide(CONFIG, e, TOKEN)
    assert d.kind == policy.TRACK
    assert d.new_sender == f"b+{TOKEN}@bounce.test"
    assert d.sender_params == f"RET=HDRS ENVID={TOKEN}"
    assert [c.new_params for c in d.recipient_changes] == [
        "NOTIFY=FAILURE,DELAY ORCPT=rfc822;a@remote.test",  # ORCPT added
        "NOTIFY=FAILURE,DELAY ORCPT=rfc822;orig+2Bb@remote.test",  # ORCPT kept verbatim
    ]
    assert d.delete_return_path == 1


def test_tracked_domain_is_case_insensitive() -> None:
    d = policy.decide(CONFIG, env("<Info@TRACKED.Test>"), TOKEN)
    assert d.kind == policy.TRACK and d.sender_domain == "tracked.test"


def test_untracked_passes_every_dsn_parameter_untouched() -> None:
    e = env(
        "<info@untracked.test>",
        Recipient("<a@remote.test>", ("NOTIFY=NEVER",)),
        params=("RET=FULL", "ENVID=abc"),
    )
    assert not policy.needs_token(CONFIG, e)
    d = policy.decide(CONFIG, e)
    assert d.kind == policy.PASS and not d.changes_envelope


def test_untracked_return_path_header_moves_into_envelope() -> None:
    e = env(
        "<info@untracked.test>",
        Recipient("<a@remote.test>", ("NOTIFY=FAILURE",)),
        params=("RET=FULL", "ENVID=abc", "BODY=8BITMIME"),
        return_paths=(" <bounce@untracked.test>",),
    )
    d = policy.decide(CONFIG, e)
    assert d.kind == policy.RETURN_PATH
    assert d.new_sender == "bounce@untracked.test"
    assert d.sender_params == "RET=FULL ENVID=abc"  # DSN parameters kept
    assert d.recipient_changes == ()  # NOTIFY untouched
    assert d.delete_return_path == 1


def test_untracked_null_return_path_and_malformed_return_path() -> None:
    d = policy.decide(CONFIG, env("<info@untracked.test>", return_paths=("<>",)))
    assert d.new_sender == "" and d.delete_return_path == 1
    d = policy.decide(CONFIG, env("<info@untracked.test>", return_paths=("not an address", "<b@c.test>")))
    assert d.new_sender is None and d.delete_return_path == 2 and d.why == "return-path-malformed"


@pytest.mark.parametrize(
    "sender, why",
    [
        ("<>", "null-sender"),
        ("", "null-sender"),
        ("<no-at-sign>", "malformed-sender"),
        ("<@tracked.test>", "malformed-sender"),
        ("<a@bad_domain!>", "malformed-sender"),
        ("<a\r\n@tracked.test>", "malformed-sender"),
        ("<mailer@bounce.test>", "bounce-domain"),
        ("<x@unknown.test>", "untracked"),
    ],
)
def test_pass_untouched(sender: str, why: str) -> None:
    e = env(sender, params=("RET=FULL",))
    assert not policy.needs_token(CONFIG, e)
    d = policy.decide(CONFIG, e)
    assert (d.kind, d.why) == (policy.PASS, why)
    assert not d.changes_envelope


def test_default_policy_applies_to_unlisted_domains() -> None:
    config = make_config()
    config = Config(**{**config.__dict__, "default": DomainPolicy("default", tracking=True)})
    assert policy.decide(config, env("<a@anything.test>"), TOKEN).kind == policy.TRACK


def test_dsn_defaults_fill_only_what_the_client_left_out() -> None:
    config = make_config(
        **{"defaults.test": DomainPolicy("defaults.test", dsn=DsnDefaults(notify=("FAILURE",), ret="HDRS"))}
    )
    e = env(
        "<a@defaults.test>",
        Recipient("<x@remote.test>"),
        Recipient("<y@remote.test>", ("NOTIFY=NEVER",)),
        params=("ENVID=e1",),
    )
    d = policy.decide(config, e)
    assert d.kind == policy.DSN_DEFAULTS
    assert d.sender_params == "ENVID=e1 RET=HDRS"
    assert [(c.path, c.new_params) for c in d.recipient_changes] == [
        ("<x@remote.test>", "NOTIFY=FAILURE ORCPT=rfc822;x@remote.test")
    ]


def test_source_route_and_sender_domain_trailing_dot() -> None:
    d = policy.decide(CONFIG, env("<@relay.test:info@tracked.test.>"), TOKEN)
    assert d.kind == policy.TRACK


@pytest.mark.parametrize(
    "value, ok",
    [("NEVER", True), ("FAILURE,DELAY", True), ("success,failure", True), ("NEVER,FAILURE", False), ("", False), ("FAILURE,,DELAY", False), ("SOMETIMES", False)],
)
def test_notify_validation(value: str, ok: bool) -> None:
    if ok:
        esmtp.parse_notify(value)
    else:
        with pytest.raises(esmtp.DsnSyntaxError):
            esmtp.parse_notify(value)


def test_xtext_round_trip() -> None:
    for text in ["a@b.test", "a+b=c@d.test", "ünï@d.test", "sp ace@d.test"]:
        encoded = esmtp.xtext_encode(text)
        assert all(33 <= ord(c) <= 126 for c in encoded) and "=" not in encoded
        assert esmtp.xtext_decode(encoded) == text
    assert esmtp.orcpt_address(esmtp.orcpt_for("a+b@c.test")) == "a+b@c.test"
