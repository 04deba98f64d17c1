-- 0001 (PostgreSQL): the RMS's first schema: hosts, VMs (the location table) and migrations.
-- The same tables, columns and constraints as the SQLite flavour (`migrations/0001_init.sql`),
-- in PostgreSQL's types: integers are BIGINT, reals DOUBLE PRECISION, flags BOOLEAN.
-- Applied once, in a transaction, by `PgStore::open`; never edited after a release: a change
-- is a new file with the next number (the same number as its SQLite counterpart).
--
-- JSON columns are TEXT written by serde, as in SQLite: they are only ever read whole.

CREATE TABLE hosts (
    name               TEXT             NOT NULL PRIMARY KEY,
    address            TEXT             NOT NULL,
    state              TEXT             NOT NULL CHECK (state IN ('alive', 'lost')),
    memory_total_bytes BIGINT           NOT NULL CHECK (memory_total_bytes >= 0),
    -- Soft state: as last persisted (heartbeats are not persisted).
    memory_free_bytes  BIGINT           NOT NULL CHECK (memory_free_bytes >= 0),
    last_heard         DOUBLE PRECISION NOT NULL,
    timeout_s          DOUBLE PRECISION NOT NULL
);

-- `host` is the location table: where the VM runs, changed only by a confirmed hand-over.
CREATE TABLE vms (
    name         TEXT   NOT NULL PRIMARY KEY,
    memory_bytes BIGINT NOT NULL CHECK (memory_bytes >= 0),
    workload     TEXT   NOT NULL,
    kind         TEXT   NOT NULL CHECK (kind IN ('sim', 'qemu')),
    host         TEXT   NOT NULL REFERENCES hosts (name)
);

CREATE INDEX vms_by_host ON vms (host);

CREATE TABLE migrations (
    id                     BIGINT           NOT NULL PRIMARY KEY CHECK (id >= 0),
    vm                     TEXT             NOT NULL REFERENCES vms (name),
    source                 TEXT             NOT NULL REFERENCES hosts (name),
    -- The host the request named: it may be one the RMS does not know (placement fails).
    requested_target       TEXT,
    target                 TEXT             REFERENCES hosts (name),
    policy                 TEXT             NOT NULL,
    settings               TEXT,            -- JSON PolicySpec
    state                  TEXT             NOT NULL CHECK (state IN ('queued', 'placing',
                               'running', 'switching_over', 'completed', 'failed', 'cancelled',
                               'unknown')),
    attempts               TEXT             NOT NULL, -- JSON [Attempt]
    candidates             TEXT             NOT NULL, -- JSON [host]
    pending_host           TEXT,
    pending_asked_at       DOUBLE PRECISION,
    -- The destination's reservation: it belongs to this migration alone and changes with it.
    reservation_id         TEXT,
    reservation_expires_at DOUBLE PRECISION,
    reservation_used       BOOLEAN          NOT NULL,
    committed              BOOLEAN          NOT NULL,
    cancel                 TEXT,            -- JSON CancelCause
    rounds                 TEXT             NOT NULL, -- JSON [RoundRecord]
    report                 TEXT,            -- JSON MigrationReport
    error                  TEXT,
    -- A pending ask and a reservation are each all there or absent.
    CHECK ((pending_host IS NULL) = (pending_asked_at IS NULL)),
    CHECK ((reservation_id IS NULL) = (reservation_expires_at IS NULL))
);

CREATE INDEX migrations_by_vm ON migrations (vm);
CREATE INDEX migrations_by_state ON migrations (state);
