"""The Return-Path rule (issue 16): for untracked mail a ``Return-Path:`` header moves
into the envelope only within MAIL FROM's own domain; naming another tenant's
domain refuses the message (replies.RETURN_PATH_FOREIGN). The same rule
(:func:`bouncetrack.core.esmtp.return_path_allowed`) makes the send endpoint's 403.
Here: the pure policy and the callbacks under pymilter's TestCtx; inside the real
Postfix in test_milter_postfix.py.
"""

from __future__ import annotations

import Milter
import pytest

from bouncetrack.core import esmtp, replies
from bouncetrack.milter import policy
from bouncetrack.milter.app import Shared
from tests.test_milter_policy import CONFIG, env
from tests.test_milter_testctx import config, feed, shared  # noqa: F401  (fixtures)


@pytest.mark.parametrize("mail_from,bounce,allowed", [
    ("info@untracked.test", "bounces@untracked.test", True),
    ("info@untracked.test", "Bounces@UNTRACKED.test.", True),
    ("info@untracked.test", "", True),  # <>: no bounces at all, no domain taken over
    ("info@untracked.test", "victim@tracked.test", False),
    ("info@untracked.test", "x@sub.untracked.test", False),
    ("info@untracked.test", "x@untracked.test.evil.test", False),
    ("", "x@untracked.test", False),
])
def test_the_rule(mail_from: str, bounce: str, allowed: bool) -> None:
    assert esmtp.return_path_allowed(mail_from, bounce) is allowed


def test_policy_refuses_another_tenants_domain() -> None:
    d = policy.decide(CONFIG, env("<news@untracked.test>", return_paths=("<victim@tracked.test>",)))
    assert (d.kind, d.why, d.new_sender) == (policy.REFUSE, "return-path-foreign-domain", None)
    d = policy.decide(CONFIG, env("<news@untracked.test>", return_paths=("<>",)))
    assert d.kind == policy.RETURN_PATH and d.new_sender == ""


def test_milter_rejects_the_message(shared: Shared) -> None:
    ctx, rc = feed("<news@untracked.test>", [("<a@remote.test>", ())], [("Return-Path", "<victim@tracked.test>")])
    assert rc == Milter.REJECT
    assert ctx._reply == (replies.RETURN_PATH_FOREIGN.code, replies.RETURN_PATH_FOREIGN.status,
                          replies.RETURN_PATH_FOREIGN.text)
    assert not ctx._envfromchanged
    assert shared.decision_counts()["return-path-foreign-domain"] == 1
    # the sender's own domain still moves into the envelope
    ctx, rc = feed("<news@untracked.test>", [("<a@remote.test>", ())], [("Return-Path", "<b@untracked.test>")])
    assert rc == Milter.CONTINUE and ctx._sender == "<b@untracked.test>"
