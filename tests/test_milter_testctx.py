"""The milter's callbacks driven by pymilter's TestCtx: no MTA, a real SQLite store.

The same milter is proven again inside the real Postfix in test_milter_postfix.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import Milter
import pytest
from Milter.testctx import TestCtx as _TestCtx

from tests.journal_helpers import drain, journal_shared
from bouncetrack.core.config import Config
from bouncetrack.milter.app import Runtime, Shared, make_factory
from bouncetrack.store import open_store
from bouncetrack.store.base import StoreUnavailable
from bouncetrack.core.tokens import load_keyring, token_from_address, verify
from tests.test_milter_policy import make_config


class RecordingCtx(_TestCtx):  # type: ignore[misc]
    """TestCtx that also records the ESMTP parameters of chgfrom/addrcpt and header deletes."""

    def __init__(self) -> None:
        super().__init__()
        self.from_params: str | None = None
        self.deleted_headers: list[tuple[str, int]] = []

    def chgfrom(self, sender: str, params: str | None = None) -> None:
        super().chgfrom(sender, params)
        self.from_params = params

    def chgheader(self, field: str, idx: int, value: str) -> None:
        assert value == ""
        self.deleted_headers.append((field, idx))


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    base = make_config()
    return Config(
        **{
            **base.__dict__,
            "secret_file": tmp_path / "verp.key",
            "store_url": f"sqlite:///{tmp_path}/bt.db",
            "milter_journal": tmp_path / "journal",
        }
    )


@pytest.fixture()
def shared(config: Config) -> Shared:
    s = journal_shared(config)
    Milter.factory = make_factory(s)
    return s


def feed(
    sender: str,
    rcpts: list[tuple[str, tuple[str, ...]]],
    headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    sender_params: tuple[str, ...] = (),
) -> tuple[RecordingCtx, int]:
    ctx = RecordingCtx()
    ctx._setsymval("i", "4QUEUEID")
    assert ctx._connect() == Milter.CONTINUE
    m: Any = ctx.getpriv()
    ctx._stage = Milter.M_ENVFROM
    assert m.envfrom(sender, *sender_params) in (Milter.CONTINUE, Milter.NOREPLY)
    ctx._stage = Milter.M_ENVRCPT
    for rcpt, params in rcpts:
        assert m.envrcpt(rcpt, *params) in (Milter.CONTINUE, Milter.NOREPLY)
    ctx._stage = None
    for name, value in headers:
        assert m.header(name, value) in (Milter.CONTINUE, Milter.NOREPLY)
    return ctx, ctx._eom()


def test_tracked_message_is_rewritten_and_recorded(shared: Shared, config: Config) -> None:
    ctx, rc = feed(
        "<info@tracked.test>",
        [("<a@remote.test>", ("NOTIFY=NEVER",)), ("<b@remote.test>", ("ORCPT=rfc822;B@remote.test",))],
        [("Message-ID", "<m1@tracked.test>"), ("Return-Path", "<x@elsewhere.test>"), ("Return-Path", "<y@e.test>")],
        ("RET=FULL", "ENVID=client"),
    )
    assert rc == Milter.CONTINUE
    token = token_from_address(config, ctx._sender.strip("<>"))
    assert token is not None
    assert ctx.from_params == f"RET=HDRS ENVID={token}"
    assert ctx._delrcpt == ["<a@remote.test>", "<b@remote.test>"]
    assert ctx._addrcpt == [
        ("<a@remote.test>", "NOTIFY=FAILURE,DELAY ORCPT=rfc822;a@remote.test"),
        ("<b@remote.test>", "NOTIFY=FAILURE,DELAY ORCPT=rfc822;B@remote.test"),
    ]
    assert ctx.deleted_headers == [("Return-Path", 2), ("Return-Path", 1)]

    check = verify(shared.runtime.keyring, token, 0)
    assert check.ok and check.token_id is not None
    assert drain(config) == 1  # what the journal writer does
    store = open_store(config.store_url)
    record = store.message_by_token_id(check.token_id)
    assert record is not None
    assert record.queue_id == "4QUEUEID" and record.message_id == "<m1@tracked.test>"
    assert record.envelope_sender == "info@tracked.test" and record.sender_domain == "tracked.test"
    assert (record.dsn_ret, record.dsn_envid) == ("FULL", "client")
    assert [(r.address, r.notify) for r in record.recipients] == [("a@remote.test", "NEVER"), ("b@remote.test", None)]
    assert shared.decisions["tracked"] == 1


def test_untracked_message_is_untouched(shared: Shared) -> None:
    ctx, rc = feed("<info@untracked.test>", [("<a@remote.test>", ("NOTIFY=NEVER",))], sender_params=("RET=FULL",))
    assert rc == Milter.CONTINUE
    assert not ctx._envfromchanged and ctx._delrcpt == [] and ctx._addrcpt == []


def test_untracked_return_path_moves_into_envelope(shared: Shared) -> None:
    ctx, rc = feed(
        "<info@untracked.test>",
        [("<a@remote.test>", ())],
        [("Return-Path", "<bounce@untracked.test>")],
        ("RET=FULL", "ENVID=e1"),
    )
    assert rc == Milter.CONTINUE
    assert ctx._sender == "<bounce@untracked.test>" and ctx.from_params == "RET=FULL ENVID=e1"
    assert ctx.deleted_headers == [("Return-Path", 1)]


@pytest.mark.parametrize("sender", ["<>", "<broken>", "<postmaster@bounce.test>", "<a@unknown.test>"])
def test_pass_untouched(shared: Shared, sender: str) -> None:
    ctx, rc = feed(sender, [("<a@remote.test>", ())])
    assert rc == Milter.CONTINUE and not ctx._envfromchanged and not ctx._addrcpt


def test_journal_write_failure_tempfails(config: Config, tmp_path: Path) -> None:
    # Issue 20: the journal is the milter's store; a directory it cannot create
    # (a file in its place: disk full and a read-only disk fail the same way) is a 451.
    (tmp_path / "journal").write_text("not a directory")
    shared = journal_shared(config)
    Milter.factory = make_factory(shared)
    ctx, rc = feed("<info@tracked.test>", [("<a@remote.test>", ())])
    assert rc == Milter.TEMPFAIL
    assert ctx._reply is not None and ctx._reply[0] == "451"
    assert not ctx._envfromchanged  # nothing half-done
    assert shared.decisions["tempfail-store"] == 1


def test_transactions_on_one_connection_do_not_leak_state(shared: Shared, config: Config) -> None:
    ctx, _ = feed("<info@tracked.test>", [("<a@remote.test>", ())])
    m: Any = ctx.getpriv()
    ctx._body = None
    m.envfrom("<info@untracked.test>")
    m.envrcpt("<b@remote.test>")
    assert m.recipients[0].path == "<b@remote.test>" and len(m.recipients) == 1


def test_negotiation_asks_for_the_queue_id_at_end_of_message_only(shared: Shared) -> None:
    # Every macro Postfix sends is decoded by libmilter and pymilter: the milter asks
    # for the one it reads (``i`` at eom) and for none at the other stages (issue 3).
    ctx = RecordingCtx()
    ctx._connect()
    assert ctx._symlist[Milter.M_EOM] == {b"i"}
    for stage in (Milter.M_ENVFROM, Milter.M_ENVRCPT, Milter.M_DATA, Milter.M_EOH):
        assert ctx._symlist[stage] == {b"{none}"}


def test_decision_counts_are_exact_across_threads(shared: Shared) -> None:
    # Issue 20: count() takes no lock per message; every decision is still counted once.
    import threading

    per_thread = 3 * shared._FOLD_AT + 7

    def work(why: str) -> None:
        for _ in range(per_thread):
            shared.count(why)

    threads = [threading.Thread(target=work, args=(why,)) for why in ("tracked", "untracked") * 4]
    for t in threads:
        t.start()
    seen = [shared.decision_counts() for _ in range(50)]  # read while they count
    for t in threads:
        t.join()
    assert shared.decision_counts() == {"tracked": 4 * per_thread, "untracked": 4 * per_thread}
    assert shared.decisions["tracked"] == 4 * per_thread and shared.decisions["nothing"] == 0
    for earlier, later in zip(seen, seen[1:]):  # counters never go down
        assert all(later.get(k, 0) >= v for k, v in earlier.items())
