-- 0003: the lease one RMS holds while it is the active one (`Store::lead`), and whose holder
-- and epoch every write checks (fencing). One row, id 1, created free: no holder, epoch 0,
-- expired at the Unix epoch. `expires_at` is in milliseconds since the Unix epoch, by the
-- clock of the machine that writes the file (SQLite's `unixepoch('subsec')`).

CREATE TABLE leader (
    id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    holder     TEXT    NOT NULL,
    epoch      INTEGER NOT NULL CHECK (epoch >= 0),
    expires_at INTEGER NOT NULL
) STRICT;

INSERT INTO leader (id, holder, epoch, expires_at) VALUES (1, '', 0, 0);
