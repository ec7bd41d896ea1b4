-- A SQLite store written by bouncetrack at 637e85b (main before issue 17's single store layer;
-- SQLite schema version 10), filled through that release's store API, dumped with sqlite3 .dump.
-- Read by tests/test_upgrade.py; never edit.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE schema_migrations (
    version     INTEGER PRIMARY KEY,
    applied_at  REAL NOT NULL,
    description TEXT NOT NULL
);
INSERT INTO schema_migrations VALUES(1,1796651989.8254756927,'messages, recipients, raw reports, events, outbox');
INSERT INTO schema_migrations VALUES(2,1796651989.8263823986,'index messages by Message-ID (send API looks up what the milter recorded)');
INSERT INTO schema_migrations VALUES(3,1796651989.8271121978,'metric counters: events, tracked messages, deliveries, pipe runs');
INSERT INTO schema_migrations VALUES(4,1796651989.8272857666,'index events by (domain, id, received_at) for the download API');
INSERT INTO schema_migrations VALUES(5,1796651989.8276002406,'suppression list per sender domain; soft-bounce index on events');
INSERT INTO schema_migrations VALUES(6,1796651989.8277869224,'index messages and raw reports by age for retention purges');
INSERT INTO schema_migrations VALUES(7,1796651989.8279585837,'replace NUL characters in stored event text with U+FFFD');
INSERT INTO schema_migrations VALUES(8,1796651989.8281087875,'daily sent counts for the dashboard, rolled up by the worker');
INSERT INTO schema_migrations VALUES(9,1796651989.8285472393,'the original message''s Postfix queue id on every event');
INSERT INTO schema_migrations VALUES(10,1796651989.8287601471,'pipe guard counters and the per-host daily count of untrusted reports');
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
INSERT INTO messages VALUES(1,100,'tok0','4Xk9Qn1vZtz3J0','<m0@example.com>','example.com','news@example.com','b+tok0@bounce.example.com','HDRS',NULL,1767225600.0);
INSERT INTO messages VALUES(2,101,'tok1','4Xk9Qn1vZtz3J1','<m1@example.com>','example.com','news@example.com','b+tok1@bounce.example.com','HDRS',NULL,1767225601.0);
INSERT INTO messages VALUES(3,102,'tok2','4Xk9Qn1vZtz3J2','<m2@example.com>','example.com','news@example.com','b+tok2@bounce.example.com','HDRS',NULL,1767225602.0);
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
INSERT INTO recipients VALUES(2,1,'s0@remote.test',NULL,'FAILURE',1);
INSERT INTO recipients VALUES(3,2,'r1@remote.test','rfc822;r1@remote.test',NULL,0);
INSERT INTO recipients VALUES(4,2,'s1@remote.test',NULL,'FAILURE',1);
INSERT INTO recipients VALUES(5,3,'r2@remote.test','rfc822;r2@remote.test',NULL,0);
INSERT INTO recipients VALUES(6,3,'s2@remote.test',NULL,'FAILURE',1);
CREATE TABLE raw_reports (
                id          INTEGER PRIMARY KEY,
                dedupe_key  TEXT NOT NULL UNIQUE,
                sha256      TEXT NOT NULL,
                size        INTEGER NOT NULL,
                compressed  BLOB,
                received_at REAL NOT NULL
            );
INSERT INTO raw_reports VALUES(1,'dk0','975ffee6126a7bd83c6395478fdb2d583078022cc5ae4db776c639207eef1e3c',12,X'789c2b4a2c57284a2dc82f2a513000001e070457',1767225700.0);
INSERT INTO raw_reports VALUES(2,'dk1','0840b389dba26d3a477e3c8387da87a32d5807be42405cde65f18eb778d61fd8',12,X'789c2b4a2c57284a2dc82f2a513004001e080458',1767225701.0);
INSERT INTO raw_reports VALUES(3,'dk9','1532a206699ec0791b5674079432d65537b4f911ad5051b533d9a28d716494d6',12,X'789c2bcd4b2c2929ca4c2a2d494d0100219c051c',1767225800.0);
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
            , queue_id TEXT);
INSERT INTO events VALUES(1,'00000000000000000000000000000000',1,'bounce',1,'userunknown','5.1.1','550','550 5.1.1 <r0@remote.test>: no such user�x','r0@remote.test','r0@remote.test','failed','mx.remote.test','example.com','news@example.com','<m0@example.com>','tok0','valid',0,1,1767225700.0,'dk0',NULL,1767225600.0,'4Xk9Qn1vZtz3J0');
INSERT INTO events VALUES(2,'00000000000000000000000000000001',2,'bounce',1,'userunknown','5.1.1','550','550 5.1.1 <r1@remote.test>: no such user�x','r1@remote.test','r1@remote.test','failed','mx.remote.test','example.com','news@example.com','<m1@example.com>','tok1','valid',0,2,1767225701.0,'dk1',NULL,1767225601.0,'4Xk9Qn1vZtz3J1');
INSERT INTO events VALUES(3,'00000000000000000000000000000009',3,'unknown',0,'undefined',NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,'missing',1,NULL,1767225800.0,'dk9',NULL,NULL,NULL);
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
INSERT INTO outbox VALUES(1,'00000000000000000000000000000000','webhook','https://hook.test/x','delivered',0,1767225700.0,NULL,NULL,1767225700.0,1767225901.0);
INSERT INTO outbox VALUES(2,'00000000000000000000000000000001','webhook','https://hook.test/x','pending',0,1767225700.0,NULL,NULL,1767225700.0,1796651989.8336853981);
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
INSERT INTO metric_delivery_counts VALUES('webhook','delivered',1);
CREATE TABLE metric_pipe_runs (
                outcome     TEXT NOT NULL,
                le          REAL NOT NULL,
                count       INTEGER NOT NULL,
                seconds_sum REAL NOT NULL,
                PRIMARY KEY (outcome, le)
            ) WITHOUT ROWID
            ;
INSERT INTO metric_pipe_runs VALUES('stored',1e999,2,58852581.667091846467);
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
INSERT INTO suppressions VALUES(1,'example.com','r0@remote.test','hard_bounce','00000000000000000000000000000000',1767225700.0,NULL,NULL,1);
INSERT INTO suppressions VALUES(2,'example.com','r1@remote.test','hard_bounce','00000000000000000000000000000001',1767225701.0,NULL,NULL,2);
INSERT INTO suppressions VALUES(3,'example.com','manual@remote.test','manual',NULL,1767225850.0,NULL,NULL,3);
CREATE TABLE message_days (
                domain     TEXT NOT NULL,
                day        INTEGER NOT NULL,
                messages   INTEGER NOT NULL,
                recipients INTEGER NOT NULL,
                PRIMARY KEY (domain, day)
            ) WITHOUT ROWID
            ;
INSERT INTO message_days VALUES('example.com',1767225600,3,6);
CREATE TABLE sent_rolled_until (
                id    INTEGER PRIMARY KEY CHECK (id = 1),
                until REAL NOT NULL
            );
INSERT INTO sent_rolled_until VALUES(1,1767398400.0);
CREATE TABLE metric_pipe_guards (
                guard TEXT PRIMARY KEY,
                count INTEGER NOT NULL
            ) WITHOUT ROWID
            ;
INSERT INTO metric_pipe_guards VALUES('events_capped',2);
CREATE TABLE untrusted_reports (
                host  TEXT NOT NULL,
                day   INTEGER NOT NULL,
                count INTEGER NOT NULL,
                PRIMARY KEY (host, day)
            ) WITHOUT ROWID
            ;
INSERT INTO untrusted_reports VALUES('198.51.100.7',20454,1);
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
