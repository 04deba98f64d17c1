-- 0003 (PostgreSQL): the lease one RMS holds while it is the active one (`Store::lead`), and
-- whose holder and epoch every write checks with the row locked (fencing). One row, id 1,
-- created free: no holder, epoch 0, expired at the Unix epoch. `expires_at` is set from the
-- server's clock (`clock_timestamp()`), never from a client's.

CREATE TABLE leader (
    id         SMALLINT    NOT NULL PRIMARY KEY CHECK (id = 1),
    holder     TEXT        NOT NULL,
    epoch      BIGINT      NOT NULL CHECK (epoch >= 0),
    expires_at TIMESTAMPTZ NOT NULL
);

INSERT INTO leader (id, holder, epoch, expires_at) VALUES (1, '', 0, 'epoch');
