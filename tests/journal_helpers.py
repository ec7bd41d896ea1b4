"""The milter's journal in unit tests (issue 20): a Shared that journals like the
real child, and a drain that moves the journal into the store like the writer."""

from __future__ import annotations

from bouncetrack.core.config import Config
from bouncetrack.milter.app import Runtime, Shared
from bouncetrack.milter.journal import JournalAppender, JournalWriter
from bouncetrack.store import open_store
from bouncetrack.core.tokens import load_keyring


def journal_shared(config: Config) -> Shared:
    return Shared(Runtime(config, load_keyring(config)), lambda c: JournalAppender(c.milter_journal))


def drain(config: Config) -> int:
    """Move everything journaled so far into the store (what the writer process does)."""
    writer = JournalWriter(config.milter_journal, lambda: open_store(config.store_url, timeout=2))
    try:
        return writer.step()
    finally:
        writer.close()
