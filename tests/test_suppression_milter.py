"""The milter and the suppression lists (issue 6): TestCtx callbacks, the index, its refresher.

The same policies are proven through the real Postfix in test_suppression_postfix.py.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import Milter
import pytest

from tests.journal_helpers import drain, journal_shared
from bouncetrack.core import replies
from bouncetrack.core.config import Config, DomainPolicy, SuppressionPolicy
from bouncetrack.milter.app import Runtime, Shared, make_factory
from bouncetrack.store import open_store
from bouncetrack.store.views import Suppression
from bouncetrack.suppression import key_hash, lookup_form, normalize_address, verdict
from bouncetrack.suppression.index import BUCKET_BITS, SuppressionIndex, SuppressionRefresher, _compact, _starts, enforced
from bouncetrack.core.tokens import load_keyring
from tests.test_milter_policy import make_config
from tests.test_milter_testctx import RecordingCtx

DAY = 86400.0


def policies(tracked: str, untracked: str, default: str = "off") -> Config:
    base = make_config()
    domains = dict(base.domains)
    for name, pol in (("tracked.test", tracked), ("untracked.test", untracked)):
        domains[name] = replace(domains[name], suppression=SuppressionPolicy(policy=pol))
    return replace(base, domains=domains, default=DomainPolicy("default", suppression=SuppressionPolicy(policy=default)))


@pytest.fixture()
def make_shared(tmp_path: Path) -> Any:
    made: list[tuple[Shared, SuppressionRefresher]] = []

    def factory(tracked: str = "reject", untracked: str = "reject", default: str = "off",
                entries: tuple[tuple[str, str], ...] = ()) -> tuple[Shared, SuppressionRefresher]:
        config = replace(policies(tracked, untracked, default), secret_file=tmp_path / "verp.key",
                         store_url=f"sqlite:///{tmp_path}/bt.db", milter_journal=tmp_path / "journal")
        store = open_store(config.store_url)
        now = time.time()
        store.add_suppressions([Suppression(d, a, "manual", None, now, None) for d, a in entries])
        store.close()
        shared = journal_shared(config)
        refresher = SuppressionRefresher(shared.suppression, lambda: shared.runtime.config,
                                         lambda c: open_store(c.store_url, timeout=2))
        refresher.step()
        Milter.factory = make_factory(shared)
        made.append((shared, refresher))
        return shared, refresher

    yield factory
    for shared, refresher in made:
        refresher.stop()
        shared.close()


def feed(sender: str, rcpts: list[str]) -> tuple[RecordingCtx, list[int], int | None]:
    ctx = RecordingCtx()
    ctx._setsymval("i", "4QUEUEID")
    assert ctx._connect() == Milter.CONTINUE
    m: Any = ctx.getpriv()
    ctx._stage = Milter.M_ENVFROM
    m.envfrom(sender)
    ctx._stage = Milter.M_ENVRCPT
    codes = []
    replies_seen = []
    for rcpt in rcpts:
        ctx._reply = None
        codes.append(m.envrcpt(rcpt))
        replies_seen.append(ctx._reply)
    ctx.rcpt_replies = replies_seen
    ctx._stage = None
    if not any(c == Milter.CONTINUE for c in codes):
        return ctx, codes, None  # the MTA never gets to DATA
    return ctx, codes, ctx._eom()


LISTED = (("tracked.test", "gone@remote.test"), ("untracked.test", "gone@remote.test"),
          ("unknown.test", "gone@remote.test"))


def test_reject_refuses_only_the_listed_recipient_tracked_and_untracked(make_shared: Any) -> None:
    shared, _ = make_shared(entries=LISTED)
    for sender in ("<info@tracked.test>", "<info@Untracked.TEST>"):
        ctx, codes, rc = feed(sender, ["<ok@remote.test>", "<Gone@Remote.Test>"])
        assert codes == [Milter.CONTINUE, Milter.REJECT]
        assert ctx.rcpt_replies[1] is not None and ctx.rcpt_replies[1][:2] == (
            replies.SUPPRESSED.code, replies.SUPPRESSED.status)
        assert rc == Milter.CONTINUE
        assert "<Gone@Remote.Test>" not in ctx._delrcpt
    assert shared.decisions["rejected-suppressed"] == 2
    # The tracked message was recorded without the refused recipient.
    drain(shared.runtime.config)
    store = open_store(shared.runtime.config.store_url)
    rows = store._conn.execute("SELECT address FROM recipients").fetchall()
    assert rows == [("ok@remote.test",)]
    store.close()


def test_lists_are_per_sender_domain(make_shared: Any) -> None:
    make_shared(entries=(("tracked.test", "gone@remote.test"),))
    ctx, codes, rc = feed("<info@untracked.test>", ["<gone@remote.test>"])
    assert codes == [Milter.CONTINUE] and rc == Milter.CONTINUE and ctx._delrcpt == []


def test_drop_removes_the_recipient_silently_at_eom(make_shared: Any) -> None:
    shared, _ = make_shared(tracked="drop", untracked="drop", entries=LISTED)
    ctx, codes, rc = feed("<info@untracked.test>", ["<ok@remote.test>", "<gone@remote.test>"])
    assert codes == [Milter.CONTINUE, Milter.CONTINUE] and rc == Milter.CONTINUE
    assert ctx._delrcpt == ["<gone@remote.test>"] and ctx._addrcpt == []
    ctx, codes, rc = feed("<info@tracked.test>", ["<ok@remote.test>", "<gone@remote.test>"])
    assert rc == Milter.CONTINUE
    # Tracked: ok@ is re-added with our DSN parameters, gone@ only deleted.
    assert sorted(ctx._delrcpt) == ["<gone@remote.test>", "<ok@remote.test>"]
    assert [a for a, _ in ctx._addrcpt] == ["<ok@remote.test>"]
    assert shared.decisions["dropped-suppressed"] == 2


def test_drop_of_every_recipient_discards_the_message(make_shared: Any) -> None:
    shared, _ = make_shared(tracked="drop", entries=LISTED)
    ctx, codes, rc = feed("<info@tracked.test>", ["<gone@remote.test>"])
    assert codes == [Milter.CONTINUE] and rc == Milter.DISCARD
    assert not ctx._envfromchanged and ctx._delrcpt == []
    assert shared.decisions["discarded-suppressed"] == 1 and shared.decisions["tracked"] == 0


def test_off_and_unlisted_domains_do_nothing(make_shared: Any) -> None:
    make_shared(tracked="off", untracked="off", default="off", entries=LISTED)
    for sender in ("<info@tracked.test>", "<info@untracked.test>", "<info@unknown.test>"):
        ctx, codes, rc = feed(sender, ["<gone@remote.test>"])
        assert codes == [Milter.CONTINUE] and rc == Milter.CONTINUE
        assert "<gone@remote.test>" not in ctx._delrcpt or ctx._addrcpt


def test_default_policy_covers_unlisted_domains(make_shared: Any) -> None:
    make_shared(tracked="off", untracked="off", default="reject", entries=LISTED)
    _, codes, _ = feed("<info@unknown.test>", ["<gone@remote.test>", "<ok@remote.test>"])
    assert codes == [Milter.REJECT, Milter.CONTINUE]


@pytest.mark.parametrize("sender", ["<>", "<broken>", "<postmaster@bounce.test>"])
def test_null_malformed_and_bounce_domain_senders_are_never_checked(make_shared: Any, sender: str) -> None:
    make_shared(default="reject", entries=LISTED + (("bounce.test", "gone@remote.test"),))
    _, codes, _ = feed(sender, ["<gone@remote.test>"])
    assert codes == [Milter.CONTINUE]


def test_refresher_follows_additions_removals_and_expiry(make_shared: Any) -> None:
    shared, refresher = make_shared(entries=(("tracked.test", "a@remote.test"),))
    index = shared.suppression
    assert index.contains("tracked.test", "a@remote.test")
    store = open_store(shared.runtime.config.store_url)
    now = time.time()
    store.add_suppressions([
        Suppression("tracked.test", "b@remote.test", "manual", None, now, None),
        Suppression("tracked.test", "soon@remote.test", "manual", None, now, now + 1.0),
    ])
    assert store.remove_suppressions(["tracked.test"], ["a@remote.test"], now) == [("tracked.test", "a@remote.test")]
    refresher.step()
    assert not index.contains("tracked.test", "a@remote.test")
    assert index.contains("tracked.test", "b@remote.test") and index.contains("tracked.test", "soon@remote.test")
    time.sleep(1.1)
    refresher.step()  # no write happened: expiry is found by time
    assert not index.contains("tracked.test", "soon@remote.test")
    assert index.contains("tracked.test", "b@remote.test")
    store.close()


def test_refresher_drops_the_index_when_every_policy_is_off(make_shared: Any) -> None:
    shared, refresher = make_shared(entries=(("tracked.test", "a@remote.test"),))
    assert shared.suppression.loaded
    shared.swap(Runtime(policies("off", "off"), shared.runtime.keyring))
    assert not enforced(shared.runtime.config)
    refresher.step()
    assert not shared.suppression.loaded and len(shared.suppression) == 0


def test_index_compaction_keeps_membership() -> None:
    index = SuppressionIndex()
    keys = [key_hash("d.test", f"u{i}@x.test") for i in range(1000)]
    base = sorted(keys[:600])
    from array import array

    overlay = {k: True for k in keys[600:]}
    overlay.update({k: False for k in keys[:100]})
    merged = _compact(array("Q", base), overlay)
    assert list(merged) == sorted(keys[100:])
    index.publish(merged, {})
    assert index.contains("d.test", "u500@x.test") and not index.contains("d.test", "u50@x.test")
    assert all(index.contains("d.test", f"u{i}@x.test") == (i >= 100) for i in range(1000))


def test_bucket_starts_bound_every_key_of_its_bucket() -> None:
    # contains() bisects only the keys of the key's top-bits bucket (issue 20): each
    # key, the bucket edges and the ends of the 64-bit range included, is inside it.
    from array import array

    shift = 64 - BUCKET_BITS
    edges = [0, 1, (1 << shift) - 1, 1 << shift, (1 << shift) + 1, (7 << shift), 2**63, 2**64 - 2, 2**64 - 1]
    base = array("Q", sorted(set(edges + [key_hash("d.test", f"u{i}@x.test") for i in range(3000)])))
    starts = _starts(base)
    assert len(starts) == (1 << BUCKET_BITS) + 1 and starts[0] == 0 and starts[-1] == len(base)
    for i, key in enumerate(base):
        assert starts[key >> shift] <= i < starts[(key >> shift) + 1]
    assert list(_starts(array("Q"))) == [0] * ((1 << BUCKET_BITS) + 1)


def test_verdict_and_normalisation() -> None:
    config = policies("reject", "drop")
    listed = {("tracked.test", "a.b@remote.test"), ("untracked.test", "a.b@remote.test")}

    def contains(d: str, a: str) -> bool:
        return (d, a) in listed

    assert normalize_address("<A.B@Remote.Test.>") == "a.b@remote.test"
    assert normalize_address("<>") is None and normalize_address("nobody") is None
    assert verdict(config, "tracked.test", "<A.B@REMOTE.test>", contains) == "reject"
    assert verdict(config, "untracked.test", "<a.b@remote.test>", contains) == "drop"
    assert verdict(config, "other.test", "<a.b@remote.test>", contains) is None
    assert verdict(config, None, "<a.b@remote.test>", contains) is None
    # The milter looks recipients up by lookup_form (no validation, issue 20): the same
    # form as normalize_address for every well-formed address; a malformed one is never
    # on a list, so it is not found either.
    for raw in ("<A.B@Remote.Test.>", "a@b.test", " <x+tag@Sub.Example.ORG> ", "<@relay.test:u@d.test>",
                '<"Q u"@d.test>', "<üser@Bücher.Example>", "<a@b@c.test>"):
        assert lookup_form(raw) == normalize_address(raw), raw
    assert lookup_form("<>") is None and lookup_form("nobody") is None
    for malformed in ("<bad@bad_domain!>", "<a.b\x01@remote.test>", "<@remote.test>", "<>", "no-at-sign"):
        assert normalize_address(malformed) is None
        assert verdict(config, "tracked.test", malformed, contains) is None
    assert verdict(config, "tracked.test", "<x@remote.test>", contains) is None
