-- 0001: the RMS's first schema: hosts, VMs (the location table) and migrations.
-- Applied once, in a transaction, by `SqliteStore::open`; never edited after a release:
-- a change is a new file with the next number.
--
-- Scalars the RMS looks up or filters on are columns; lists and nested records that are only
-- ever read whole (attempts, candidates, rounds, the report, settings, the cancel cause) are
-- JSON text written by serde.

CREATE TABLE hosts (
    name               TEXT    NOT NULL PRIMARY KEY,
    address            TEXT    NOT NULL,
    state              TEXT    NOT NULL CHECK (state IN ('alive', 'lost')),
    memory_total_bytes INTEGER NOT NULL CHECK (memory_total_bytes >= 0),
    -- Soft state: as last persisted (heartbeats are not persisted).
    memory_free_bytes  INTEGER NOT NULL CHECK (memory_free_bytes >= 0),
    last_heard         REAL    NOT NULL,
    timeout_s          REAL    NOT NULL
) STRICT;

-- `host` is the location table: where the VM runs, changed only by a confirmed hand-over.
CREATE TABLE vms (
    name         TEXT    NOT NULL PRIMARY KEY,
    memory_bytes INTEGER NOT NULL CHECK (memory_bytes >= 0),
    workload     TEXT    NOT NULL,
    kind         TEXT    NOT NULL CHECK (kind IN ('sim', 'qemu')),
    host         TEXT    NOT NULL REFERENCES hosts (name)
) STRICT;

CREATE INDEX vms_by_host ON vms (host);

CREATE TABLE migrations (
    id                     INTEGER NOT NULL PRIMARY KEY CHECK (id >= 0),
    vm                     TEXT    NOT NULL REFERENCES vms (name),
    source                 TEXT    NOT NULL REFERENCES hosts (name),
    -- The host the request named: it may be one the RMS does not know (placement fails).
    requested_target       TEXT,
    target                 TEXT    REFERENCES hosts (name),
    policy                 TEXT    NOT NULL,
    settings               TEXT,            -- JSON PolicySpec
    state                  TEXT    NOT NULL CHECK (state IN ('queued', 'placing', 'running',
                               'switching_over', 'completed', 'failed', 'cancelled', 'unknown')),
    attempts               TEXT    NOT NULL, -- JSON [Attempt]
    candidates             TEXT    NOT NULL, -- JSON [host]
    pending_host           TEXT,
    pending_asked_at       REAL,
    -- The destination's reservation: it belongs to this migration alone and changes with it.
    reservation_id         TEXT,
    reservation_expires_at REAL,
    reservation_used       INTEGER NOT NULL CHECK (reservation_used IN (0, 1)),
    committed              INTEGER NOT NULL CHECK (committed IN (0, 1)),
    cancel                 TEXT,            -- JSON CancelCause
    rounds                 TEXT    NOT NULL, -- JSON [RoundRecord]
    report                 TEXT,            -- JSON MigrationReport
    error                  TEXT,
    -- A pending ask and a reservation are each all there or absent.
    CHECK ((pending_host IS NULL) = (pending_asked_at IS NULL)),
    CHECK ((reservation_id IS NULL) = (reservation_expires_at IS NULL))
) STRICT;

CREATE INDEX migrations_by_vm ON migrations (vm);
CREATE INDEX migrations_by_state ON migrations (state);
