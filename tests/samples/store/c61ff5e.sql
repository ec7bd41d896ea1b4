-- A SQLite store written by bouncetrack at c61ff5e (schema version 8: the release before
-- issue 15), dumped with sqlite3 .dump. Read by tests/test_upgrade.py; never edit.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE schema_migrations (
    version     INTEGER PRIMARY KEY,
    applied_at  REAL NOT NULL,
    description TEXT NOT NULL
);
INSERT INTO schema_migrations VALUES(1,1796648191.17973423,'messages, recipients, raw reports, events, outbox');
INSERT INTO schema_migrations VALUES(2,1796648191.1803824901,'index messages by Message-ID (send API looks up what the milter recorded)');
INSERT INTO schema_migrations VALUES(3,1796648191.1810250281,'metric counters: events, tracked messages, deliveries, pipe runs');
INSERT INTO schema_migrations VALUES(4,1796648191.1811931133,'index events by (domain, id, received_at) for the download API');
INSERT INTO schema_migrations VALUES(5,1796648191.1815395355,'suppression list per sender domain; soft-bounce index on events');
INSERT INTO schema_migrations VALUES(6,1796648191.181732416,'index messages and raw reports by age for retention purges');
INSERT INTO schema_migrations VALUES(7,1796648191.181890726,'replace NUL characters in stored event text with U+FFFD');
INSERT INTO schema_migrations VALUES(8,1796648191.1820375919,'daily sent counts for the dashboard, rolled up by the worker');
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
            );
INSERT INTO messages VALUES(1,1000,'aebagbafaydqqcikbmgq2dq0','4Xk9Qn1vZtz3J0','<m0@example.com>','example.com','news@example.com','b+aebagbafaydqqcikbmgq2dq0@bounce.example.com',NULL,NULL,1767225600.0);
INSERT INTO messages VALUES(2,1001,'aebagbafaydqqcikbmgq2dq1','4Xk9Qn1vZtz3J1','<m1@example.com>','example.com','news@example.com','b+aebagbafaydqqcikbmgq2dq1@bounce.example.com',NULL,NULL,1767225601.0);
INSERT INTO messages VALUES(3,1002,'aebagbafaydqqcikbmgq2dq2','4Xk9Qn1vZtz3J2','<m2@example.com>','example.com','news@example.com','b+aebagbafaydqqcikbmgq2dq2@bounce.example.com',NULL,NULL,1767225602.0);
CREATE TABLE recipients (
                id         INTEGER PRIMARY KEY,
                message_pk INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
                address    TEXT NOT NULL,
                orcpt      TEXT,
                notify     TEXT,
                position   INTEGER NOT NULL,
                UNIQUE (message_pk, position)
            );
INSERT INTO recipients VALUES(1,1,'r0@remote.test','rfc822;r0@remote.test',NULL,0);
INSERT INTO recipients VALUES(2,2,'r1@remote.test','rfc822;r1@remote.test',NULL,0);
INSERT INTO recipients VALUES(3,3,'r2@remote.test','rfc822;r2@remote.test',NULL,0);
CREATE TABLE raw_reports (
                id          INTEGER PRIMARY KEY,
                dedupe_key  TEXT NOT NULL UNIQUE,
                sha256      TEXT NOT NULL,
                size        INTEGER NOT NULL,
                compressed  BLOB,
                received_at REAL NOT NULL
            );
INSERT INTO raw_reports VALUES(1,'dk0','975ffee6126a7bd83c6395478fdb2d583078022cc5ae4db776c639207eef1e3c',12,X'789c2b4a2c57284a2dc82f2a513000001e070457',1767225660.0);
INSERT INTO raw_reports VALUES(2,'dk1','0840b389dba26d3a477e3c8387da87a32d5807be42405cde65f18eb778d61fd8',12,X'789c2b4a2c57284a2dc82f2a513004001e080458',1767225661.0);
INSERT INTO raw_reports VALUES(3,'dk9','ef875a1705a5fdac206be996f4dc1f726ea6b68861eb741c37def7277f179e37',4,X'789ccb2acdcb0600045201b9',1767225669.0);
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
            );
INSERT INTO events VALUES(1,'00000000000000000000000000000000',1,'bounce',1,'userunknown','5.1.1','550','smtp; 550 5.1.1 <r0@remote.test>: unknown','r0@remote.test','r0@remote.test','failed','dns; mx.remote.test','example.com','news@example.com','<m0@example.com>','aebagbafaydqqcikbmgq2dq0','valid',0,1,1767225660.0,'dk0',NULL,1767225600.0);
INSERT INTO events VALUES(2,'00000000000000000000000000000001',2,'bounce',1,'userunknown','5.1.1','550','smtp; 550 5.1.1 <r1@remote.test>: unknown','r1@remote.test','r1@remote.test','failed','dns; mx.remote.test','example.com','news@example.com','<m1@example.com>','aebagbafaydqqcikbmgq2dq1','valid',0,2,1767225661.0,'dk1',NULL,1767225601.0);
INSERT INTO events VALUES(3,'00000000000000000000000000000009',3,'unknown',0,'undefined','5.1.1','550','smtp; 550 5.1.1 <r9@remote.test>: unknown',NULL,'r9@remote.test','failed','dns; mx.remote.test',NULL,NULL,'<m9@example.com>',NULL,'missing',0,NULL,1767225669.0,'dk9',NULL,NULL);
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
            );
INSERT INTO outbox VALUES(1,'00000000000000000000000000000000','webhook','https://hooks.example.com/b','pending',0,0.0,NULL,NULL,1796648191.1826109886,1796648191.1826109886);
INSERT INTO outbox VALUES(2,'00000000000000000000000000000001','webhook','https://hooks.example.com/b','pending',0,0.0,NULL,NULL,1796648191.1844487189,1796648191.1844487189);
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
            ;
INSERT INTO metric_event_counts VALUES('','unknown','undefined',0,'missing','',1);
INSERT INTO metric_event_counts VALUES('example.com','bounce','userunknown',1,'valid','',2);
CREATE TABLE metric_message_counts (
                domain TEXT NOT NULL PRIMARY KEY,
                count  INTEGER NOT NULL
            ) WITHOUT ROWID
            ;
INSERT INTO metric_message_counts VALUES('example.com',3);
CREATE TABLE metric_delivery_counts (
                channel TEXT NOT NULL,
                outcome TEXT NOT NULL,
                count   INTEGER NOT NULL,
                PRIMARY KEY (channel, outcome)
            ) WITHOUT ROWID
            ;
CREATE TABLE metric_pipe_runs (
                outcome     TEXT NOT NULL,
                le          REAL NOT NULL,
                count       INTEGER NOT NULL,
                seconds_sum REAL NOT NULL,
                PRIMARY KEY (outcome, le)
            ) WITHOUT ROWID
            ;
INSERT INTO metric_pipe_runs VALUES('stored',1e999,3,88267554.553586006164);
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
            );
INSERT INTO suppressions VALUES(1,'example.com','r0@remote.test','hard_bounce','00000000000000000000000000000000',1767225660.0,NULL,NULL,1);
INSERT INTO suppressions VALUES(2,'example.com','r1@remote.test','hard_bounce','00000000000000000000000000000001',1767225661.0,NULL,NULL,2);
INSERT INTO suppressions VALUES(3,'example.com','manual@remote.test','manual',NULL,1767225800.0,NULL,NULL,3);
CREATE TABLE message_days (
                domain     TEXT NOT NULL,
                day        INTEGER NOT NULL,
                messages   INTEGER NOT NULL,
                recipients INTEGER NOT NULL,
                PRIMARY KEY (domain, day)
            ) WITHOUT ROWID
            ;
CREATE TABLE sent_rolled_until (
                id    INTEGER PRIMARY KEY CHECK (id = 1),
                until REAL NOT NULL
            );
INSERT INTO sent_rolled_until VALUES(1,0.0);
CREATE INDEX raw_reports_unpurged
                ON raw_reports (received_at) WHERE compressed IS NOT NULL
            ;
CREATE INDEX events_received_at ON events (received_at);
CREATE INDEX events_domain_received_at ON events (domain, received_at);
CREATE INDEX events_message_pk ON events (message_pk);
CREATE INDEX events_raw_pk ON events (raw_pk);
CREATE INDEX outbox_state_next ON outbox (state, next_attempt_at);
CREATE INDEX messages_message_id ON messages (message_id);
CREATE TRIGGER metric_events_insert AFTER INSERT ON events BEGIN
                INSERT INTO metric_event_counts
                    (domain, type, reason, hard, token_status, feedback_type, count)
                VALUES (coalesce(NEW.domain, ''), NEW.type, NEW.reason, NEW.hard,
                        NEW.token_status, coalesce(NEW.feedback_type, ''), 1)
                ON CONFLICT (domain, type, reason, hard, token_status, feedback_type)
                DO UPDATE SET count = count + 1;
            END;
CREATE TRIGGER metric_messages_insert AFTER INSERT ON messages BEGIN
                INSERT INTO metric_message_counts (domain, count) VALUES (NEW.sender_domain, 1)
                ON CONFLICT (domain) DO UPDATE SET count = count + 1;
            END;
CREATE TRIGGER metric_outbox_settled AFTER UPDATE OF state ON outbox
            WHEN NEW.state IN ('delivered', 'dead') AND NEW.state IS NOT OLD.state BEGIN
                INSERT INTO metric_delivery_counts (channel, outcome, count)
                VALUES (NEW.channel, NEW.state, 1)
                ON CONFLICT (channel, outcome) DO UPDATE SET count = count + 1;
            END;
CREATE TRIGGER metric_outbox_retry AFTER UPDATE OF attempts ON outbox
            WHEN NEW.attempts > OLD.attempts AND NEW.state = 'pending' BEGIN
                INSERT INTO metric_delivery_counts (channel, outcome, count)
                VALUES (NEW.channel, 'retry', 1)
                ON CONFLICT (channel, outcome) DO UPDATE SET count = count + 1;
            END;
CREATE INDEX events_domain_id ON events (domain, id, received_at);
CREATE INDEX suppressions_seq ON suppressions (seq);
CREATE INDEX suppressions_domain_id ON suppressions (domain, id);
CREATE INDEX suppressions_expires ON suppressions (expires_at)
                WHERE expires_at IS NOT NULL AND removed_at IS NULL
            ;
CREATE INDEX events_soft_bounces ON events (domain, lower(recipient), received_at)
                WHERE type = 'bounce' AND hard = 0 AND flagged = 0
            ;
CREATE INDEX messages_created_at ON messages (created_at);
CREATE INDEX raw_reports_received_at ON raw_reports (received_at);
COMMIT;
