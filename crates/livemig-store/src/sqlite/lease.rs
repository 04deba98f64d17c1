//! SQLite's statements on the lease row (`migrations/0003_leader.sql`). Every one runs inside
//! an `IMMEDIATE` transaction, which holds the database's write lock: the row cannot change
//! between reading and writing it. Times are the clock of the machine running SQLite.

use rusqlite::Connection;

use crate::error::StoreError;
use crate::lease::{self, Lease, LeaseRow};

/// Now, in milliseconds since the Unix epoch (fixed for the duration of one statement).
const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

pub fn read(conn: &Connection) -> Result<LeaseRow, StoreError> {
    let sql = format!("SELECT holder, epoch, expires_at - {NOW_MS} FROM leader WHERE id = 1");
    let (holder, epoch, remaining_ms): (String, i64, i64) = conn
        .prepare_cached(&sql)
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
        .map_err(StoreError::db("reading the lease"))?;
    Ok(LeaseRow {
        lease: Lease {
            holder,
            epoch: lease::epoch(epoch)?,
        },
        remaining_ms,
    })
}

/// Sets the holder and epoch, expiring `ttl_ms` from now.
pub fn write(conn: &Connection, l: &Lease, ttl_ms: i64) -> Result<(), StoreError> {
    let epoch = i64::try_from(l.epoch).map_err(|_| StoreError::BadLease("the epoch overflows"))?;
    let sql = format!(
        "UPDATE leader SET holder = ?1, epoch = ?2, expires_at = {NOW_MS} + ?3 WHERE id = 1"
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| s.execute(rusqlite::params![l.holder, epoch, ttl_ms]))
        .map_err(StoreError::db("writing the lease"))?;
    Ok(())
}

/// Makes the lease expire now (holder and epoch stay: the next taker counts on from it).
pub fn expire(conn: &Connection) -> Result<(), StoreError> {
    let sql = format!("UPDATE leader SET expires_at = {NOW_MS} WHERE id = 1");
    conn.execute(&sql, [])
        .map_err(StoreError::db("releasing the lease"))?;
    Ok(())
}
