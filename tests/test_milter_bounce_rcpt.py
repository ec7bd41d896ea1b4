"""Invalid VERP recipients at the bounce domain are refused at RCPT time (issue 6).

Three levels: the pure rule (bounce_rcpt.py), the pymilter callback (TestCtx), and the
real Postfix through the harness (550 5.1.1 before queueing; valid tokens, feedback
addresses and postmaster accepted; other recipients of the same transaction go on).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import Milter
import pytest
from Milter.testctx import TestCtx as _TestCtx

from tests.journal_helpers import drain, journal_shared
from bouncetrack.core import replies
from bouncetrack.core.config import Config
from bouncetrack.milter.app import Runtime, Shared, make_factory
from bouncetrack.milter.bounce_rcpt import accept_bounce_rcpt
from bouncetrack.store import open_store
from bouncetrack.core.tokens import KeyRing, load_keyring, mint, new_token_id, verp_address
from tests.test_milter_policy import make_config

KEY = b"k" * 32
OLD = b"o" * 32
CONFIG = make_config()


def test_valid_token_accepted_any_case_and_brackets() -> None:
    ring = KeyRing(KEY)
    verp = verp_address(CONFIG, mint(ring, new_token_id()))
    for form in (verp, f"<{verp}>", verp.upper(), verp + "."):
        assert accept_bounce_rcpt(CONFIG, ring, form, time.time()), form


@pytest.mark.parametrize("address", [
    "<b+aaaaaaaaaaaaaaaaaaaaaaaa@bounce.test>",  # right shape, wrong MAC
    "<b+short@bounce.test>",  # malformed
    "<b+@bounce.test>",
    "<someone@bounce.test>",  # not VERP, not a feedback address
    "<x+aaaaaaaaaaaaaaaaaaaaaaaa@BOUNCE.TEST.>",  # wrong prefix, domain in other case + dot
])
def test_invalid_bounce_domain_recipients_refused(address: str) -> None:
    assert not accept_bounce_rcpt(CONFIG, KeyRing(KEY), address, time.time())


@pytest.mark.parametrize("address", ["<fbl@bounce.test>", "<ABUSE@bounce.test>", "<postmaster@Bounce.Test>",
                                     "<anyone@remote.test>", "<b+forged@remote.test>", "<>",
                                     # the bounce domain's name elsewhere in the address: not at it
                                     "<b+forged@sub.bounce.test>", "<b+x@bounce.test.example>",
                                     "<bounce.test@remote.test>"])
def test_feedback_postmaster_and_other_domains_accepted(address: str) -> None:
    assert accept_bounce_rcpt(CONFIG, KeyRing(KEY), address, time.time())


def test_previous_key_accepted_in_grace_then_refused() -> None:
    token = mint(KeyRing(OLD), new_token_id())
    verp = verp_address(CONFIG, token)
    ring = KeyRing(KEY, previous=OLD, previous_valid_until=1000.0)
    assert accept_bounce_rcpt(CONFIG, ring, verp, 999.0)
    assert not accept_bounce_rcpt(CONFIG, ring, verp, 1001.0)  # expired: refused too


# --- the pymilter callback ----------------------------------------------------------


@pytest.fixture()
def shared(tmp_path: Path) -> Shared:
    config = Config(**{**make_config().__dict__, "secret_file": tmp_path / "verp.key",
                       "store_url": f"sqlite:///{tmp_path}/bt.db", "milter_journal": tmp_path / "journal"})
    s = journal_shared(config)
    Milter.factory = make_factory(s)
    return s


def test_envrcpt_rejects_forged_with_the_registry_reply(shared: Shared) -> None:
    ctx = _TestCtx()
    assert ctx._connect() == Milter.CONTINUE
    m: Any = ctx.getpriv()
    ctx._stage = Milter.M_ENVFROM
    m.envfrom("<>")
    ctx._stage = Milter.M_ENVRCPT
    good = f"<{verp_address(shared.runtime.config, mint(shared.runtime.keyring, new_token_id()))}>"
    assert m.envrcpt(good) == Milter.CONTINUE
    assert m.envrcpt("<b+aaaaaaaaaaaaaaaaaaaaaaaa@bounce.test>") == Milter.REJECT
    assert ctx._reply == (replies.INVALID_VERP.code, replies.INVALID_VERP.status, replies.INVALID_VERP.text)
    assert m.envrcpt("<fbl@bounce.test>") == Milter.CONTINUE
    # Only accepted recipients are part of the transaction.
    assert [r.path for r in m.recipients] == [good, "<fbl@bounce.test>"]
    assert shared.decisions["rejected-invalid-verp"] == 1


def test_envrcpt_is_not_noreply() -> None:
    # Postfix must wait for the answer, or the reject would be lost (P_NR_RCPT off).
    from bouncetrack.milter.app import TrackingMilter

    # protocol_mask() holds the steps turned *off* in the negotiation.
    assert TrackingMilter.protocol_mask() & Milter.P_NR_RCPT
    assert not TrackingMilter.protocol_mask() & Milter.P_NR_HDR  # header stays @noreply


# --- the real Postfix -----------------------------------------------------------------

STACK_OPTIONS = {"with_milter": True, "pipe": "files"}


@pytest.mark.postfix
def test_postfix_refuses_forged_verp_before_queueing(stack: Any) -> None:
    from bouncetrack.core.config_loader import load_config

    stack.reset()
    config = load_config(stack.config_path)
    good = verp_address(config, mint(load_keyring(config, create=False), new_token_id()))
    forged = good[:2] + ("a" if good[2] != "a" else "b") + good[3:]
    fbl = f"fbl@{config.bounce_domain}"
    result = stack.send("", [forged, good, fbl, f"nobody@{config.bounce_domain}"])
    assert result.rcpts[forged][0] == 550 and result.rcpts[forged][1].startswith("5.1.1")
    assert result.rcpts[f"nobody@{config.bounce_domain}"][0] == 550
    assert result.rcpts[good][0] == 250 and result.rcpts[fbl][0] == 250
    assert result.accepted
    items = stack.wait_for(lambda: [i for i in stack.bounces_in_spool()] if len(stack.bounces_in_spool()) >= 2
                           else None, 20)
    assert sorted(i.recipient.lower() for i in items) == sorted([good.lower(), fbl])
    assert "milter-reject: RCPT" in stack.postfix.log_text()
