"""Versioned schema migrations for the SQLite store.

Every schema change is a new entry at the end of :data:`MIGRATIONS`; an entry
is never edited once released (databases in the field have applied it). Each
migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the
row that records it in ``schema_migrations``, so a crash leaves the database at
the previous version, never half-way.

Several processes may open a fresh database at the same moment (the milter,
many pipe processes, the worker): each takes the write lock first and only
then re-reads the version, so exactly one of them applies a given migration and
the others find it done.

Opening an up-to-date database costs one ``SELECT`` (:func:`migrate`).

Migrations run with ``foreign_keys=ON`` inside a transaction; a future one
that rebuilds a table (the SQLite "12-step" ALTER) must therefore keep the
rows' keys intact or be run by a dedicated path with foreign keys off.
"""

from __future__ import annotations

import sqlite3
import time

# (version, description, statements). Statements are run one by one with
# ``execute`` (``executescript`` would commit the surrounding transaction).
Migration = tuple[int, str, tuple[str, ...]]

_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    applied_at  REAL NOT NULL,
    description TEXT NOT NULL
)
"""

MIGRATIONS: tuple[Migration, ...] = (
    (
        1,
        "messages, recipients, raw reports, events, outbox",
        (
            # One row per message the milter rewrote; token_id is the id inside
            # the VERP token (random 63-bit, fits SQLite's signed 64-bit INTEGER).
            """
            CREATE TABLE messages (
                id              INTEGER PRIMARY KEY,
                token_id        INTEGER NOT NULL UNIQUE,
                token           TEXT NOT NULL,
                queue_id        TEXT,
                message_id      TEXT,
                sender_domain   TEXT NOT NULL,
                envelope_sender TEXT NOT NULL,
                verp_sender     TEXT NOT NULL,
                dsn_ret         TEXT,
                dsn_envid       TEXT,
                created_at      REAL NOT NULL
            )
            """,
            # position keeps the client's RCPT order; the UNIQUE index also
            # serves the foreign-key lookup on message_pk.
            """
            CREATE TABLE recipients (
                id         INTEGER PRIMARY KEY,
                message_pk INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
                address    TEXT NOT NULL,
                orcpt      TEXT,
                notify     TEXT,
                position   INTEGER NOT NULL,
                UNIQUE (message_pk, position)
            )
            """,
            # The raw report, zlib-compressed. Retention sets `compressed` to NULL
            # but keeps the row: its dedupe_key must keep deduplicating retries.
            """
            CREATE TABLE raw_reports (
                id          INTEGER PRIMARY KEY,
                dedupe_key  TEXT NOT NULL UNIQUE,
                sha256      TEXT NOT NULL,
                size        INTEGER NOT NULL,
                compressed  BLOB,
                received_at REAL NOT NULL
            )
            """,
            """
            CREATE INDEX raw_reports_unpurged
                ON raw_reports (received_at) WHERE compressed IS NOT NULL
            """,
            """
            CREATE TABLE events (
                id                  INTEGER PRIMARY KEY,
                event_id            TEXT NOT NULL UNIQUE,
                raw_pk              INTEGER REFERENCES raw_reports(id) ON DELETE SET NULL,
                type                TEXT NOT NULL,
                hard                INTEGER NOT NULL,
                reason              TEXT NOT NULL,
                status              TEXT,
                reply_code          TEXT,
                diagnostic          TEXT,
                recipient           TEXT,
                reported_recipient  TEXT,
                action              TEXT,
                remote_mta          TEXT,
                domain              TEXT,
                original_sender     TEXT,
                original_message_id TEXT,
                token               TEXT,
                token_status        TEXT NOT NULL,
                flagged             INTEGER NOT NULL,
                message_pk          INTEGER REFERENCES messages(id) ON DELETE SET NULL,
                received_at         REAL NOT NULL,
                dedupe_key          TEXT NOT NULL,
                feedback_type       TEXT,
                sent_at             REAL
            )
            """,
            "CREATE INDEX events_received_at ON events (received_at)",
            "CREATE INDEX events_domain_received_at ON events (domain, received_at)",
            "CREATE INDEX events_message_pk ON events (message_pk)",
            "CREATE INDEX events_raw_pk ON events (raw_pk)",
            # Durable outbox (at-least-once forwarding). lease_until: a worker
            # holds the job until then; an expired lease makes it claimable again.
            """
            CREATE TABLE outbox (
                id              INTEGER PRIMARY KEY,
                event_id        TEXT NOT NULL REFERENCES events(event_id) ON DELETE CASCADE,
                channel         TEXT NOT NULL,
                target          TEXT NOT NULL,
                state           TEXT NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'delivered', 'dead')),
                attempts        INTEGER NOT NULL DEFAULT 0,
                next_attempt_at REAL NOT NULL,
                last_error      TEXT,
                lease_until     REAL,
                created_at      REAL NOT NULL,
                updated_at      REAL NOT NULL,
                UNIQUE (event_id, channel, target)
            )
            """,
            "CREATE INDEX outbox_state_next ON outbox (state, next_attempt_at)",
        ),
    ),
    (
        2,
        "index messages by Message-ID (send API looks up what the milter recorded)",
        ("CREATE INDEX messages_message_id ON messages (message_id)",),
    ),
    # --- metrics (issue 5, Prometheus; owner: metrics) -------------------------
    # /metrics reads these small tables instead of a GROUP BY over events,
    # messages and outbox at every scrape. Triggers keep them up to date in the
    # writer's own transaction, whoever the writer is, so the counts are exactly
    # as durable as the rows (they survive restarts); each table is backfilled
    # from the rows already stored. NULLs become '' so that they fit a primary
    # key. The counts only grow: retention deleting rows leaves them alone.
    (
        3,
        "metric counters: events, tracked messages, deliveries, pipe runs",
        (
            """
            CREATE TABLE metric_event_counts (
                domain        TEXT NOT NULL,
                type          TEXT NOT NULL,
                reason        TEXT NOT NULL,
                hard          INTEGER NOT NULL,
                token_status  TEXT NOT NULL,
                feedback_type TEXT NOT NULL,
                count         INTEGER NOT NULL,
                PRIMARY KEY (domain, type, reason, hard, token_status, feedback_type)
            ) WITHOUT ROWID
            """,
            """
            CREATE TRIGGER metric_events_insert AFTER INSERT ON events BEGIN
                INSERT INTO metric_event_counts
                    (domain, type, reason, hard, token_status, feedback_type, count)
                VALUES (coalesce(NEW.domain, ''), NEW.type, NEW.reason, NEW.hard,
                        NEW.token_status, coalesce(NEW.feedback_type, ''), 1)
                ON CONFLICT (domain, type, reason, hard, token_status, feedback_type)
                DO UPDATE SET count = count + 1;
            END
            """,
            """
            INSERT INTO metric_event_counts
                (domain, type, reason, hard, token_status, feedback_type, count)
            SELECT coalesce(domain, ''), type, reason, hard, token_status,
                   coalesce(feedback_type, ''), count(*)
            FROM events GROUP BY 1, 2, 3, 4, 5, 6
            """,
            """
            CREATE TABLE metric_message_counts (
                domain TEXT NOT NULL PRIMARY KEY,
                count  INTEGER NOT NULL
            ) WITHOUT ROWID
            """,
            """
            CREATE TRIGGER metric_messages_insert AFTER INSERT ON messages BEGIN
                INSERT INTO metric_message_counts (domain, count) VALUES (NEW.sender_domain, 1)
                ON CONFLICT (domain) DO UPDATE SET count = count + 1;
            END
            """,
            """
            INSERT INTO metric_message_counts (domain, count)
            SELECT sender_domain, count(*) FROM messages GROUP BY sender_domain
            """,
            # Outbox outcomes: delivered / dead when a job enters that state,
            # retry when a failed attempt leaves it pending (WorkerStats'
            # delivered/dead/retried, but summed over every worker, durably).
            """
            CREATE TABLE metric_delivery_counts (
                channel TEXT NOT NULL,
                outcome TEXT NOT NULL,
                count   INTEGER NOT NULL,
                PRIMARY KEY (channel, outcome)
            ) WITHOUT ROWID
            """,
            """
            CREATE TRIGGER metric_outbox_settled AFTER UPDATE OF state ON outbox
            WHEN NEW.state IN ('delivered', 'dead') AND NEW.state IS NOT OLD.state BEGIN
                INSERT INTO metric_delivery_counts (channel, outcome, count)
                VALUES (NEW.channel, NEW.state, 1)
                ON CONFLICT (channel, outcome) DO UPDATE SET count = count + 1;
            END
            """,
            """
            CREATE TRIGGER metric_outbox_retry AFTER UPDATE OF attempts ON outbox
            WHEN NEW.attempts > OLD.attempts AND NEW.state = 'pending' BEGIN
                INSERT INTO metric_delivery_counts (channel, outcome, count)
                VALUES (NEW.channel, 'retry', 1)
                ON CONFLICT (channel, outcome) DO UPDATE SET count = count + 1;
            END
            """,
            """
            INSERT INTO metric_delivery_counts (channel, outcome, count)
            SELECT channel, outcome, n FROM (
                SELECT channel, state AS outcome, count(*) AS n FROM outbox
                WHERE state IN ('delivered', 'dead') GROUP BY channel, state
                UNION ALL
                SELECT channel, 'retry', sum(attempts) - count(*) FILTER (WHERE state = 'dead')
                FROM outbox WHERE attempts > 0 GROUP BY channel
            ) WHERE n > 0
            """,
            # The bounce pipe, one row per (outcome, duration bucket): `le` is
            # the bucket's upper bound (not cumulative), seconds_sum the total.
            # Upserted by store_report in the report's own transaction.
            """
            CREATE TABLE metric_pipe_runs (
                outcome     TEXT NOT NULL,
                le          REAL NOT NULL,
                count       INTEGER NOT NULL,
                seconds_sum REAL NOT NULL,
                PRIMARY KEY (outcome, le)
            ) WITHOUT ROWID
            """,
        ),
    ),
    # --- download API (issue 5; owner: download API) ---------------------------
    # Keyset pages and streamed exports walk one sender domain's events in id
    # order (ids only grow, so pages never shift while bounces arrive). With
    # received_at in the index the time range is checked without reading the
    # table, and no sort is needed: a million-event export streams in constant
    # memory. events_domain_received_at stays for range counts (dashboard).
    (
        4,
        "index events by (domain, id, received_at) for the download API",
        ("CREATE INDEX events_domain_id ON events (domain, id, received_at)",),
    ),
    # --- suppression list (issue 6; owner: suppression) ---------------------------
    # One row per (sender domain, lower-cased recipient). A removal keeps the row
    # (removed_at set) so that `seq`, bumped by every insert/update/removal, is a
    # change feed the milters follow incrementally; expiry needs no write (the
    # milters query suppressions_expires for entries that expired since their
    # last look). source_event_id is not a foreign key: retention may delete
    # events, and a cascade check per deleted event over a million rows is not
    # worth it. events_soft_bounces counts one recipient's recent soft bounces
    # (the pipe's N-within-D-days rule) without touching other events; it is
    # partial, so it costs nothing for hard bounces, complaints and the rest.
    (
        5,
        "suppression list per sender domain; soft-bounce index on events",
        (
            """
            CREATE TABLE suppressions (
                id              INTEGER PRIMARY KEY,
                domain          TEXT NOT NULL,
                address         TEXT NOT NULL,
                reason          TEXT NOT NULL,
                source_event_id TEXT,
                created_at      REAL NOT NULL,
                expires_at      REAL,
                removed_at      REAL,
                seq             INTEGER NOT NULL,
                UNIQUE (domain, address)
            )
            """,
            "CREATE INDEX suppressions_seq ON suppressions (seq)",
            "CREATE INDEX suppressions_domain_id ON suppressions (domain, id)",
            """
            CREATE INDEX suppressions_expires ON suppressions (expires_at)
                WHERE expires_at IS NOT NULL AND removed_at IS NULL
            """,
            """
            CREATE INDEX events_soft_bounces ON events (domain, lower(recipient), received_at)
                WHERE type = 'bounce' AND hard = 0 AND flagged = 0
            """,
        ),
    ),
    # --- retention (issue 6; owner: retention) ----------------------------------
    # `bouncetrack purge` walks old messages and raw reports in (time, id) order in
    # batches; without these indexes every batch would scan the table. Events already
    # have events_received_at. No delete triggers: the metric counters are
    # cumulative totals and a purge must not lower them.
    (
        6,
        "index messages and raw reports by age for retention purges",
        (
            "CREATE INDEX messages_created_at ON messages (created_at)",
            "CREATE INDEX raw_reports_received_at ON raw_reports (received_at)",
        ),
    ),
    # --- export (issue 5) ----------------------------------------------------------
    # From now on the store writes event text without NUL (rows.stored_text: U+FFFD
    # instead), so the CSV export renders a row with one printf and no NUL check per
    # cell (sqlite_download.py). Rows stored before get the same replacement here
    # (event_id and dedupe_key are our own hex: never a NUL). SQLite's replace()
    # cannot do it (it sees a NUL as the end of the string): bt_stored_text is
    # rows.stored_text, registered by migrate().
    (
        7,
        "replace NUL characters in stored event text with U+FFFD",
        (
            """
            UPDATE events SET
                type = bt_stored_text(type),
                reason = bt_stored_text(reason),
                status = bt_stored_text(status),
                reply_code = bt_stored_text(reply_code),
                diagnostic = bt_stored_text(diagnostic),
                recipient = bt_stored_text(recipient),
                reported_recipient = bt_stored_text(reported_recipient),
                action = bt_stored_text(action),
                remote_mta = bt_stored_text(remote_mta),
                domain = bt_stored_text(domain),
                original_sender = bt_stored_text(original_sender),
                original_message_id = bt_stored_text(original_message_id),
                token = bt_stored_text(token),
                token_status = bt_stored_text(token_status),
                feedback_type = bt_stored_text(feedback_type)
            WHERE instr(type, char(0))
               OR instr(reason, char(0))
               OR instr(status, char(0))
               OR instr(reply_code, char(0))
               OR instr(diagnostic, char(0))
               OR instr(recipient, char(0))
               OR instr(reported_recipient, char(0))
               OR instr(action, char(0))
               OR instr(remote_mta, char(0))
               OR instr(domain, char(0))
               OR instr(original_sender, char(0))
               OR instr(original_message_id, char(0))
               OR instr(token, char(0))
               OR instr(token_status, char(0))
               OR instr(feedback_type, char(0))
            """,
        ),
    ),
    # --- dashboard: sent counts per UTC day (issue 5; owner: dashboard) ---------
    # Counting a period's messages and recipients reads every message in it (about
    # 0.9 s per million here). The worker rolls completed days up into
    # message_days (Store.roll_up_sent), off the milter's path: no trigger taxes
    # record_message. sent_rolled_until says how far (always a UTC day start):
    # the dashboard adds the rolled days before it to a live count from it on, so
    # the result is the same before and after a roll-up. A rolled day never
    # changes again. Day rows outlive the messages' retention (aggregates, no
    # addresses).
    (
        8,
        "daily sent counts for the dashboard, rolled up by the worker",
        (
            """
            CREATE TABLE message_days (
                domain     TEXT NOT NULL,
                day        INTEGER NOT NULL,
                messages   INTEGER NOT NULL,
                recipients INTEGER NOT NULL,
                PRIMARY KEY (domain, day)
            ) WITHOUT ROWID
            """,
            """
            CREATE TABLE sent_rolled_until (
                id    INTEGER PRIMARY KEY CHECK (id = 1),
                until REAL NOT NULL
            )
            """,
            "INSERT INTO sent_rolled_until (id, until) VALUES (1, 0)",
        ),
    ),
    # --- logs an operator can follow (issue 15) -------------------------------------
    # Every event carries the original message's Postfix queue id (API, webhook, CSV,
    # dashboard), so a bounce can be found in the mail log. Copied from messages at
    # store time, as sent_at is: the download renders a row without a join.
    # ADD COLUMN of a nullable column without default rewrites nothing; the back-fill
    # touches only attributed events.
    (
        9,
        "the original message's Postfix queue id on every event",
        (
            "ALTER TABLE events ADD COLUMN queue_id TEXT",
            """
            UPDATE events SET queue_id = (SELECT m.queue_id FROM messages m WHERE m.id = events.message_pk)
            WHERE message_pk IS NOT NULL
            """,
        ),
    ),
    # --- pipe guards (issue 16; owner: bounce pipe) -----------------------------
    # metric_pipe_guards: how often the pipe's bounds on one report applied
    # (bounce_pipe/guard.py names them), upserted by store_report in the report's
    # transaction. untrusted_reports: reports stored without a valid token, per
    # sending host and UTC day (day = received_at // 86400), for the pipe's quota;
    # old days are deleted by the quota check itself.
    (
        10,
        "pipe guard counters and the per-host daily count of untrusted reports",
        (
            """
            CREATE TABLE metric_pipe_guards (
                guard TEXT PRIMARY KEY,
                count INTEGER NOT NULL
            ) WITHOUT ROWID
            """,
            """
            CREATE TABLE untrusted_reports (
                host  TEXT NOT NULL,
                day   INTEGER NOT NULL,
                count INTEGER NOT NULL,
                PRIMARY KEY (host, day)
            ) WITHOUT ROWID
            """,
        ),
    ),
)

LATEST_VERSION: int = MIGRATIONS[-1][0]


def current_version(conn: sqlite3.Connection) -> int:
    """The highest applied migration, 0 for a fresh database (one SELECT)."""
    try:
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    except sqlite3.OperationalError as exc:
        # SQLITE_ERROR has no finer code for a missing table; the text is stable.
        if "no such table" in str(exc):
            return 0
        raise
    return int(row[0]) if row and row[0] is not None else 0


def migrate(conn: sqlite3.Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply the pending migrations; return the versions this call applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no open
    transaction. A database newer than this code (a later release opened it)
    is left alone: migrations only add, so older code keeps working.
    """
    if not migrations or current_version(conn) >= migrations[-1][0]:
        return []
    from .rows import stored_text

    conn.create_function("bt_stored_text", 1, stored_text, deterministic=True)
    applied: list[int] = []
    for version, description, statements in migrations:
        # Write lock first, then re-check: another process may have just done it.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_SCHEMA_MIGRATIONS)
            if current_version(conn) >= version:
                conn.execute("COMMIT")
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at, description) VALUES (?, ?, ?)",
                (version, time.time(), description),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        applied.append(version)
    return applied
