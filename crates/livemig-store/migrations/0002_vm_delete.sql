-- 0002: an operator may delete a VM while its finished migrations keep their records, so a
-- migration's `vm` names a VM that may no longer exist (no foreign key on it any more).
-- SQLite cannot drop a constraint: the table is rebuilt with the same columns and checks.

CREATE TABLE migrations_0002 (
    id                     INTEGER NOT NULL PRIMARY KEY CHECK (id >= 0),
    vm                     TEXT    NOT NULL,
    source                 TEXT    NOT NULL REFERENCES hosts (name),
    requested_target       TEXT,
    target                 TEXT    REFERENCES hosts (name),
    policy                 TEXT    NOT NULL,
    settings               TEXT,
    state                  TEXT    NOT NULL CHECK (state IN ('queued', 'placing', 'running',
                               'switching_over', 'completed', 'failed', 'cancelled', 'unknown')),
    attempts               TEXT    NOT NULL,
    candidates             TEXT    NOT NULL,
    pending_host           TEXT,
    pending_asked_at       REAL,
    reservation_id         TEXT,
    reservation_expires_at REAL,
    reservation_used       INTEGER NOT NULL CHECK (reservation_used IN (0, 1)),
    committed              INTEGER NOT NULL CHECK (committed IN (0, 1)),
    cancel                 TEXT,
    rounds                 TEXT    NOT NULL,
    report                 TEXT,
    error                  TEXT,
    CHECK ((pending_host IS NULL) = (pending_asked_at IS NULL)),
    CHECK ((reservation_id IS NULL) = (reservation_expires_at IS NULL))
) STRICT;

INSERT INTO migrations_0002 SELECT * FROM migrations;
DROP TABLE migrations;
ALTER TABLE migrations_0002 RENAME TO migrations;
CREATE INDEX migrations_by_vm ON migrations (vm);
CREATE INDEX migrations_by_state ON migrations (state);
