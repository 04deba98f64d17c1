//! The versioned schema: `migrations/NNNN_*.sql`, embedded in the binary, applied in order,
//! each in its own transaction, and recorded in `schema_version`.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::error::StoreError;

/// Every schema migration, in order: version `i + 1` is `MIGRATIONS[i]`. Append only.
pub const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (2, include_str!("../../migrations/0002_vm_delete.sql")),
    (3, include_str!("../../migrations/0003_leader.sql")),
    (4, include_str!("../../migrations/0004_budget.sql")),
];

/// The newest schema this build knows.
pub fn latest() -> u32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// The version recorded in the database (0 when it has none).
pub fn current(conn: &Connection) -> Result<u32, StoreError> {
    let v: Option<i64> = conn
        .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
        .optional()
        .map_err(StoreError::db("reading the schema version"))?
        .flatten();
    let v = v.unwrap_or(0);
    u32::try_from(v).map_err(|_| StoreError::Corrupt {
        table: "schema_version",
        key: v.to_string(),
        reason: "not a schema version".into(),
    })
}

/// Brings the schema up to [`latest`]. Refuses a database written by a newer schema; on an
/// up-to-date database it changes nothing.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER NOT NULL PRIMARY KEY,
             applied_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
         ) STRICT;",
    )
    .map_err(StoreError::db("creating schema_version"))?;
    let supported = latest();
    for &(version, sql) in MIGRATIONS {
        // IMMEDIATE: the write lock is taken before the version is read, so two processes
        // opening one new database apply each migration once.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::migrate(version))?;
        let found = current(&tx)?;
        if found > supported {
            return Err(StoreError::SchemaTooNew { found, supported });
        }
        if found >= version {
            continue;
        }
        tx.execute_batch(sql)
            .map_err(StoreError::migrate(version))?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version],
        )
        .map_err(StoreError::migrate(version))?;
        tx.commit().map_err(StoreError::migrate(version))?;
    }
    let found = current(conn)?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one() {
        for (i, (v, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v as usize, i + 1, "migration {i} is numbered {v}");
            assert!(!sql.trim().is_empty());
        }
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let mut conn = Connection::open_in_memory().expect("opens");
        migrate(&mut conn).expect("migrates");
        migrate(&mut conn).expect("again");
        assert_eq!(current(&conn).expect("reads"), latest());
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM schema_version", [], |r| r.get(0))
            .expect("counts");
        assert_eq!(rows, MIGRATIONS.len() as i64);
    }
}
