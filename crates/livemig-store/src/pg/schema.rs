//! The versioned PostgreSQL schema: `migrations/postgres/NNNN_*.sql`, embedded in the binary,
//! applied in order, each in its own transaction, and recorded in `schema_version`. Version
//! N is the same change as SQLite's version N, in PostgreSQL's SQL.

use postgres::GenericClient;

use crate::error::StoreError;

/// Every schema migration, in order: version `i + 1` is `MIGRATIONS[i]`. Append only.
pub const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_vm_delete.sql"),
    ),
    (3, include_str!("../../migrations/postgres/0003_leader.sql")),
    (4, include_str!("../../migrations/postgres/0004_budget.sql")),
];

/// The advisory lock that serialises migrations of one database (any value; fixed so every
/// livemig agrees on it): two processes opening one new database apply each migration once.
const MIGRATION_LOCK: i64 = 0x6c69_7665_6d69_6701;

/// The newest schema this build knows.
pub fn latest() -> u32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// The version recorded in the database (0 when it has none).
pub fn current<C: GenericClient>(client: &mut C) -> Result<u32, StoreError> {
    let row = client
        .query_one("SELECT max(version) FROM schema_version", &[])
        .map_err(StoreError::db("reading the schema version"))?;
    let v: Option<i64> = row
        .try_get(0)
        .map_err(StoreError::db("reading the schema version"))?;
    let v = v.unwrap_or(0);
    u32::try_from(v).map_err(|_| StoreError::Corrupt {
        table: "schema_version",
        key: v.to_string(),
        reason: "not a schema version".into(),
    })
}

/// Brings the schema up to [`latest`]. Refuses a database written by a newer schema; on an
/// up-to-date database it changes nothing.
pub fn migrate(client: &mut postgres::Client) -> Result<(), StoreError> {
    let supported = latest();
    for &(version, sql) in MIGRATIONS {
        let mut tx = client.transaction().map_err(StoreError::migrate(version))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(StoreError::migrate(version))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 version    BIGINT      NOT NULL PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .map_err(StoreError::db("creating schema_version"))?;
        let found = current(&mut tx)?;
        if found > supported {
            return Err(StoreError::SchemaTooNew { found, supported });
        }
        if found >= version {
            continue;
        }
        tx.batch_execute(sql)
            .map_err(StoreError::migrate(version))?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&i64::from(version)],
        )
        .map_err(StoreError::migrate(version))?;
        tx.commit().map_err(StoreError::migrate(version))?;
    }
    let found = current(client)?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one_as_in_sqlite() {
        for (i, (v, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v as usize, i + 1, "migration {i} is numbered {v}");
            assert!(!sql.trim().is_empty());
        }
        assert_eq!(latest(), crate::sqlite::schema::latest());
    }
}
