//! PostgreSQL's statements on the lease row (`migrations/postgres/0003_leader.sql`). The row
//! is read `FOR UPDATE`: a takeover and a write of the holder it fences wait for each other.
//! Times are the server's `clock_timestamp()` (the time of the statement, not of the
//! transaction's start, which may have waited for the lock).

use postgres::Transaction;

use crate::error::StoreError;
use crate::lease::{self, Lease, LeaseRow};

/// Locks the row until the transaction ends, then reads it.
///
/// Two statements: in one `SELECT … FOR UPDATE` the clock would be read before waiting for
/// the lock, and a wait would leave the remaining time stale.
pub fn read(tx: &mut Transaction<'_>) -> Result<LeaseRow, StoreError> {
    let what = "reading the lease";
    tx.execute("SELECT 1 FROM leader WHERE id = 1 FOR UPDATE", &[])
        .map_err(StoreError::db("locking the lease"))?;
    let row = tx
        .query_one(
            "SELECT holder, epoch,
                    (EXTRACT(EPOCH FROM (expires_at - clock_timestamp())) * 1000)::BIGINT
               FROM leader WHERE id = 1",
            &[],
        )
        .map_err(StoreError::db(what))?;
    let holder: String = row.try_get(0).map_err(StoreError::db(what))?;
    let epoch: i64 = row.try_get(1).map_err(StoreError::db(what))?;
    let remaining_ms: i64 = row.try_get(2).map_err(StoreError::db(what))?;
    Ok(LeaseRow {
        lease: Lease {
            holder,
            epoch: lease::epoch(epoch)?,
        },
        remaining_ms,
    })
}

/// Sets the holder and epoch, expiring `ttl_ms` from now.
pub fn write(tx: &mut Transaction<'_>, l: &Lease, ttl_ms: i64) -> Result<(), StoreError> {
    let epoch = i64::try_from(l.epoch).map_err(|_| StoreError::BadLease("the epoch overflows"))?;
    tx.execute(
        "UPDATE leader
            SET holder = $1, epoch = $2,
                expires_at = clock_timestamp() + $3::BIGINT * INTERVAL '1 millisecond'
          WHERE id = 1",
        &[&l.holder, &epoch, &ttl_ms],
    )
    .map_err(StoreError::db("writing the lease"))?;
    Ok(())
}

/// Makes the lease expire now (holder and epoch stay: the next taker counts on from it).
pub fn expire(tx: &mut Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE leader SET expires_at = clock_timestamp() WHERE id = 1",
        &[],
    )
    .map_err(StoreError::db("releasing the lease"))?;
    Ok(())
}
