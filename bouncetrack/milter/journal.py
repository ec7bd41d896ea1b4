"""The milter's journal: message records appended locally, moved into the store in batches.

Why (issue 20): a store transaction at every end of message cost the milter about
half its CPU (SQLite's commit, or a PostgreSQL round trip, plus the GIL hand-offs
between libmilter's threads while it waits). The milter now appends each record
with ONE ``write(2)`` to a file opened with ``O_APPEND`` and answers Postfix;
:class:`JournalWriter`, in another process (the milter's supervisor forks it),
moves the records into the store in batches, and deletes what it has moved.

Guarantees:

- Durable against a crash of any process, like SQLite's WAL with
  ``synchronous=NORMAL`` (what the store gives the milter): the record is in the
  kernel's page cache before Postfix hears the answer, so ``kill -9`` of the milter
  or of the writer loses nothing Postfix accepted. (A power loss may lose the last
  records, as it may lose SQLite's last WAL frames.)
- Moved exactly once: :meth:`Store.record_messages` skips a ``token_id`` already
  stored, so a segment replayed after a writer crash adds nothing twice.
- Attributable meanwhile: a bounce whose token is valid but not in the store yet is
  looked up here by the pipe (:func:`pending_record`); found, the pipe stores the
  record itself, or (a record it cannot read) waits for the writer and else exits 75
  so that Postfix retries.

Format (RFC 7464 JSON text sequences): each record is ``RS`` + JSON + ``LF``. JSON
written with ``ensure_ascii`` never contains RS or LF, so a record torn by a crash
in the middle of its ``write(2)`` (the milter never answered for it: Postfix
tempfailed that message) is told apart from the whole record appended after it.

Segments: ``<dir>/<time_ns>-<pid>.seg``. The milter child holds an exclusive
``flock`` on the segment it appends to (taken before the file gets its name, so no
one ever sees it unlocked while in use) and starts a new one past
:data:`SEGMENT_BYTES`. A segment the writer can lock is sealed: nobody will append
to it again (its milter rotated away or died: the kernel drops a dead process's
locks), so once moved it is deleted. A ``*.new`` file left by a milter that died
between creating and naming a segment (never written to) is swept after a minute.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import threading
import time
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Callable, Iterable

from ..core.logsetup import log_lines
from ..store.base import MessageRecord, RecipientRecord, StoreUnavailable
from ..store.interfaces import Store

log = logging.getLogger("bouncetrack.milter")

RS = b"\x1e"
LF = b"\n"
SUFFIX = ".seg"
SEGMENT_BYTES = 4 * 1024 * 1024  # the milter starts a new segment past this size
BATCH = 500  # records per store transaction at most
# The writer's pause once caught up (pause_after): records gather into batches meanwhile.
IDLE_SECONDS = 0.1  # light traffic: a record is in the store within about this
BUSY_SECONDS = 1.0  # under load (a step moved BUSY_RECORDS or more): bigger batches, fewer wake-ups
BUSY_RECORDS = 50  # (issue 20: ~800 msg/s into SQLite, the writer's CPU per record 41 -> 20 us, the
# milter child's own CPU 1.14 -> 1.05 x the reference's, its wake-ups no longer cutting in; a
# store transaction per record costs ~3 x one shared by 30)
RETRY_SECONDS = 1.0  # after a failed store write
STALE_NEW_SECONDS = 60.0  # a *.new file this old and unlocked is a dead milter's litter
SCAN_LIMIT = 64 * 1024 * 1024  # pending_record reads at most this much (else: assume held)


_RS_TEXT, _LF_TEXT = RS.decode("ascii"), LF.decode("ascii")


def line(
    token_id: int, token: str, queue_id: str | None, message_id: str | None, sender_domain: str,
    envelope_sender: str, verp_sender: str, dsn_ret: str | None, dsn_envid: str | None, created_at: float,
    recipients: Iterable[tuple[str, str | None, str | None]],
) -> bytes:
    """One record (the fields of a :class:`MessageRecord`; recipients as (address,
    orcpt, notify)): RS + compact JSON + LF, for one ``write(2)``.

    Built from the milter's own values at end of message, without a record object or
    the JSON encoder's set-up per call (issue 20: one format string, the escaper
    called directly). Strings are escaped by the JSON module's own ASCII escaper, so
    a record never holds an RS or an LF: :func:`decode` reads it as ``json.loads`` does."""
    if not math.isfinite(created_at):
        raise ValueError(f"created_at must be a finite time, not {created_at!r}")
    text = encode_basestring_ascii  # "…" with every non-ASCII and control character escaped
    people = []  # a loop, not a comprehension: no function object made per record (3.11)
    for a, o, n in recipients:
        people.append(f'[{text(a)},{"null" if o is None else text(o)},{"null" if n is None else text(n)}]')
    return (
        f'{_RS_TEXT}{{"i":{int(token_id)},"t":{text(token)},"q":{"null" if queue_id is None else text(queue_id)},'
        f'"m":{"null" if message_id is None else text(message_id)},"d":{text(sender_domain)},'
        f'"s":{text(envelope_sender)},"v":{text(verp_sender)},"r":{"null" if dsn_ret is None else text(dsn_ret)},'
        f'"e":{"null" if dsn_envid is None else text(dsn_envid)},"c":{float(created_at)!r},"p":[{",".join(people)}]}}{_LF_TEXT}'
    ).encode("ascii")


def encode(m: MessageRecord) -> bytes:
    """:func:`line` of a record."""
    return line(m.token_id, m.token, m.queue_id, m.message_id, m.sender_domain, m.envelope_sender, m.verp_sender,
                m.dsn_ret, m.dsn_envid, m.created_at, ((r.address, r.orcpt, r.notify) for r in m.recipients))


def decode(data: bytes) -> MessageRecord:
    """The record of one JSON text (without RS and LF); ValueError/KeyError/TypeError if malformed."""
    return _from_json(json.loads(data))


def decode_all(texts: list[bytes]) -> tuple[list[MessageRecord], list[str]]:
    """The records of ``texts`` (JSON texts without RS and LF), and why each unreadable
    one was skipped. The texts are parsed as one JSON array, a single ``json.loads``
    for the batch (issue 20: the journal writer's CPU per record); when that fails
    (a malformed record somewhere), one by one, so that only the bad ones are lost."""
    if not texts:
        return [], []
    try:
        parsed: list[Any] = json.loads(b"[" + b",".join(texts) + b"]")
        if len(parsed) == len(texts):  # one value per text: none held a stray comma
            return [_from_json(b) for b in parsed], []
    except (ValueError, KeyError, TypeError):
        pass
    records: list[MessageRecord] = []
    errors: list[str] = []
    for text in texts:
        try:
            records.append(decode(text))
        except (ValueError, KeyError, TypeError) as exc:
            errors.append(str(exc))
    return records, errors


def _from_json(b: dict[str, Any]) -> MessageRecord:
    """The record of one parsed JSON object; KeyError/TypeError/ValueError if malformed.
    Positional arguments, in the records' field order (a fifth cheaper than keywords: the
    writer decodes every record, issue 20); the round-trip tests hold the order."""
    return MessageRecord(
        int(b["i"]), str(b["t"]), b["q"], b["m"], str(b["d"]), str(b["s"]), str(b["v"]), b["r"], b["e"],
        tuple([RecipientRecord(str(a), o, n) for a, o, n in b["p"]]), float(b["c"]),
    )


def parse(chunk: bytes) -> tuple[list[bytes], int, int]:
    """Whole records of ``chunk`` (JSON texts), the bytes consumed, and how many
    pieces were skipped (torn by a crash). Bytes after the last LF are left for later."""
    end = chunk.rfind(LF)
    if end < 0:
        return [], 0, 0
    texts: list[bytes] = []
    torn = 0
    for line in chunk[:end].split(LF):
        pieces = line.split(RS)
        # A record starts at its RS; anything before the last RS of a line is a
        # record torn by a crash (it never got its LF).
        torn += sum(1 for p in pieces[:-1] if p)
        if len(pieces) > 1 and pieces[-1]:
            texts.append(pieces[-1])
        elif pieces[-1]:
            torn += 1  # no RS at all: garbage (a power loss's zeros)
    return texts, end + 1, torn


def segments(directory: Path) -> list[Path]:
    """The journal's segments, oldest first."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(SUFFIX))
    except FileNotFoundError:
        return []
    return [directory / n for n in names]


class JournalAppender:
    """The milter child's side: one ``write(2)`` per record, under a lock only to
    rotate segments. Thread-safe (libmilter calls from a thread per connection)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0

    def _open(self) -> None:
        """A new segment, locked before it gets its name (see the module docstring)."""
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}"
        tmp = self.directory / f"{name}.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(tmp, self.directory / f"{name}{SUFFIX}")
        except BaseException:
            os.close(fd)
            raise
        old, self._fd, self._size = self._fd, fd, 0
        if old >= 0:
            os.close(old)  # drops its lock: the writer may now seal it

    def append(self, data: bytes) -> None:
        """Append one record (:func:`line`); returns once it is in the kernel (survives
        our crash). OSError (disk full, directory gone) propagates: the caller tempfails."""
        with self._lock:
            if self._fd < 0 or self._size >= SEGMENT_BYTES:
                self._open()
            written = os.write(self._fd, data)
            self._size += written
        if written != len(data):  # a regular file short-writes only when full
            raise OSError(f"journal write short by {len(data) - written} bytes (disk full?)")

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def pending_record(directory: Path, token: str, limit: int = SCAN_LIMIT) -> tuple[bool, MessageRecord | None]:
    """Whether a record with ``token`` is in the journal (not yet deleted by the writer),
    and that record when it reads whole.

    The pipe asks this for a valid token that the store does not know: the answer is
    exact for this host's milter, and the record is the milter's own, written before it
    answered Postfix, so the pipe may store it itself (:meth:`Store.record_messages`
    skips it when the writer moves it later). Past ``limit`` bytes of journal (a writer
    down for long): (True, None), the caller waits or tempfails rather than guess.
    """
    needle = b'"t":"' + token.lower().encode("ascii", "replace") + b'"'
    read = 0
    for path in segments(directory):
        try:
            with open(path, "rb") as f:
                data = f.read(max(0, limit - read) + 1)
        except FileNotFoundError:
            continue  # moved and deleted meanwhile
        read += len(data)
        if read > limit:
            return True, None
        at = data.find(needle)
        if at >= 0:
            start, end = data.rfind(RS, 0, at) + 1, data.find(LF, at)
            if start == 0 or end < 0:
                return True, None  # torn, or cut by the read limit
            try:
                return True, decode(data[start:end])
            except (ValueError, KeyError, TypeError):
                return True, None  # unreadable: the writer will say so
    return False, None


def pause_after(moved: int) -> float:
    """The writer's pause after a step that moved ``moved`` records and caught up:
    :data:`BUSY_SECONDS` under load, else :data:`IDLE_SECONDS`. A record waits in the
    journal at most about the pause plus a step (a bounce that comes first has the pipe
    store its record, :func:`pending_record`; the pipe's wait for the writer,
    ``bounce_pipe.process.JOURNAL_WAIT_SECONDS``, covers the longer pause)."""
    return BUSY_SECONDS if moved >= BUSY_RECORDS else IDLE_SECONDS


class JournalWriter:
    """Moves the journal into the store, oldest segment first, in batches.

    Runs in its own process (:func:`run_writer`). Keeps each segment's offset in
    memory only: after a restart it replays what is left from the start, and the
    store skips what it already holds.
    """

    def __init__(self, directory: Path, store_factory: Callable[[], Store]) -> None:
        self.directory = directory
        self._store_factory = store_factory
        self._store: Store | None = None
        self._offsets: dict[Path, int] = {}
        self.moved = 0
        self.torn = 0
        self._next_sweep = 0.0

    def step(self) -> int:
        """One pass over the segments; returns the records moved. StoreUnavailable propagates."""
        moved = 0
        for path in segments(self.directory):
            moved += self._drain(path)
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + STALE_NEW_SECONDS
            self._sweep_new()
        return moved

    def _sweep_new(self) -> None:
        """Delete ``*.new`` files a milter died with between creating and naming a segment
        (never written to: it appends only once the segment has its name)."""
        try:
            names = [n for n in os.listdir(self.directory) if n.endswith(".new")]
        except FileNotFoundError:
            return
        for name in names:
            path = self.directory / name
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                if time.time() - os.fstat(fd).st_mtime < STALE_NEW_SECONDS:
                    continue
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: its milter is naming it
                os.unlink(path)
            except (BlockingIOError, FileNotFoundError):
                pass
            finally:
                os.close(fd)

    def _drain(self, path: Path) -> int:
        offset = self._offsets.get(path, 0)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._offsets.pop(path, None)
            return 0
        moved = 0
        try:
            moved += self._move(fd, path, offset)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return moved  # its milter still appends to it
            # Sealed: nothing more will come. Move the rest, then delete it.
            moved += self._move(fd, path, self._offsets.get(path, 0))
            rest = os.fstat(fd).st_size - self._offsets.get(path, 0)
            if rest:
                log.warning("journal %s: %d bytes of a torn last record dropped (never acknowledged)", path, rest)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass  # another writer (a restart's overlap) deleted it first
            self._offsets.pop(path, None)
        finally:
            os.close(fd)
        return moved

    def _move(self, fd: int, path: Path, offset: int) -> int:
        moved = 0
        while True:
            chunk = os.pread(fd, 1024 * 1024, offset)
            texts, used, torn = parse(chunk)
            if torn:
                self.torn += torn
                log.warning("journal %s: %d torn record(s) skipped (never acknowledged)", path, torn)
            for first in range(0, len(texts), BATCH):
                records, errors = decode_all(texts[first : first + BATCH])
                for error in errors:
                    self.torn += 1
                    log.error("journal %s: unreadable record skipped: %s", path, error)
                self._record(records)
                moved += len(records)
            offset += used
            self._offsets[path] = offset
            if not used or len(chunk) < 1024 * 1024:
                return moved

    def _record(self, records: list[MessageRecord]) -> None:
        if self._store is None:
            self._store = self._store_factory()
        try:
            self._store.record_messages(records)
        except StoreUnavailable:
            self._store.close()
            self._store = None
            raise
        self.moved += len(records)
        if log.isEnabledFor(logging.INFO):
            # The one line per tracked message (issue 15): ties Postfix's queue id to the
            # token a bounce will carry; logged here, once the store has it, not by the
            # milter at end of message (its hot path). A replay after a crash may repeat a
            # line. log_lines: a line each, a log record a few dozen (issue 20).
            log_lines(log, logging.INFO, [
                f"tracked queue_id={m.queue_id} token={m.token} sender_domain={m.sender_domain} "
                f"recipients={len(m.recipients)}" for m in records])

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: move what comes, pausing (:func:`pause_after`) whenever it is caught up.
        The store is opened at once (a fresh SQLite store is created by the milter's
        user, as when the milter itself wrote it), not at the first record."""
        while not stop.is_set():
            try:
                if self._store is None:
                    self._store = self._store_factory()
                moved = self.step()
            except StoreUnavailable as exc:
                log.warning("journal writer: store unavailable, retrying in %.0f s: %s", RETRY_SECONDS, exc)
                stop.wait(RETRY_SECONDS)
                continue
            except Exception:  # a bug: keep the journal, say so, try again (never drop records)
                log.exception("journal writer failed, retrying in %.0f s", RETRY_SECONDS)
                self.close()
                stop.wait(RETRY_SECONDS)
                continue
            if moved < BATCH:  # caught up: let records gather into the next batch
                stop.wait(pause_after(moved))
        self.close()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
