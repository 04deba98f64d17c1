//! [`SqliteStore`]: the store in one SQLite file, embedded in the RMS process.

mod lease;
mod rows;
pub mod schema;

use std::time::Duration;

use livemig_rms::{Change, Host, Migration, MigrationId, Vm};
use rusqlite::{Connection, TransactionBehavior};

use crate::error::StoreError;
use crate::lease::{self as leases, Leadership, Lease, Step};
use crate::store::{Snapshot, Store};
use crate::url::StoreUrl;

/// How long a write waits for another connection's lock before it fails (bounded, so a
/// stuck second process shows up as an error instead of a hung RMS).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The RMS's state in one SQLite database.
///
/// Opened with these settings on every connection:
/// - `journal_mode=WAL`: readers (the API) do not block the writer, and a crash mid-write
///   leaves the last committed transaction intact.
/// - `synchronous=FULL`: each commit is fsynced before it returns. The RMS acts on a
///   persisted change (asks a host, starts a migration, moves a VM's location) right after
///   [`Store::apply`] returns, so the change must survive a power loss from that moment on;
///   WAL's cheaper `NORMAL` may lose the last commits on power loss, after the RMS acted on
///   them.
/// - `foreign_keys=ON`: a VM's host, a migration's VM, source and destination must exist.
/// - `busy_timeout` = [`BUSY_TIMEOUT`].
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    /// For error messages.
    path: String,
    /// The lease this store last led with: once set, every write is fenced by it.
    ours: Option<Lease>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database a `sqlite:` URL names and brings its schema up
    /// to date. Refuses a database written by a newer schema ([`StoreError::SchemaTooNew`]).
    pub fn open(url: &StoreUrl) -> Result<SqliteStore, StoreError> {
        let (conn, path) = match url {
            StoreUrl::Sqlite(p) => {
                let path = p.display().to_string();
                let conn = Connection::open(p).map_err(|source| StoreError::Open {
                    path: path.clone(),
                    source: source.into(),
                })?;
                (conn, path)
            }
            StoreUrl::SqliteMemory => {
                let path = ":memory:".to_string();
                let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
                    path: path.clone(),
                    source: source.into(),
                })?;
                (conn, path)
            }
            StoreUrl::Postgres(_) => {
                return Err(StoreError::Unsupported(
                    "a postgres:// URL needs the PostgreSQL store, not SQLite",
                ))
            }
        };
        let mut store = SqliteStore {
            conn,
            path,
            ours: None,
        };
        store.configure(matches!(url, StoreUrl::SqliteMemory))?;
        schema::migrate(&mut store.conn)?;
        Ok(store)
    }

    fn configure(&self, in_memory: bool) -> Result<(), StoreError> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(StoreError::db("setting the busy timeout"))?;
        // An in-memory database has no file to log to: its journal mode stays `memory`.
        if !in_memory {
            self.pragma("journal_mode", "WAL", "wal")?;
        }
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(StoreError::db("setting synchronous=FULL"))?;
        self.check("synchronous", "2", "synchronous=FULL")?;
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(StoreError::db("turning foreign keys on"))?;
        self.check("foreign_keys", "1", "foreign_keys=ON")
    }

    /// Sets a pragma that answers with its new value, and checks the answer.
    fn pragma(&self, name: &str, value: &str, expect: &str) -> Result<(), StoreError> {
        let got: String = self
            .conn
            .pragma_update_and_check(None, name, value, |r| r.get(0))
            .map_err(StoreError::db("setting the journal mode"))?;
        if !got.eq_ignore_ascii_case(expect) {
            return Err(StoreError::Setting {
                path: self.path.clone(),
                setting: "journal_mode=WAL",
                got,
            });
        }
        Ok(())
    }

    fn check(&self, name: &str, expect: &str, setting: &'static str) -> Result<(), StoreError> {
        let got: i64 = self
            .conn
            .pragma_query_value(None, name, |r| r.get(0))
            .map_err(StoreError::db("reading a setting back"))?;
        if got.to_string() != expect {
            return Err(StoreError::Setting {
                path: self.path.clone(),
                setting,
                got: got.to_string(),
            });
        }
        Ok(())
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        schema::current(&self.conn)
    }

    /// The connection, for tests and maintenance (a checkpoint before a copy).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl Store for SqliteStore {
    fn apply(&mut self, change: &Change) -> Result<(), StoreError> {
        // IMMEDIATE: take the write lock now, not halfway through.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::db("starting a transaction"))?;
        leases::check(&lease::read(&tx)?, self.ours.as_ref())?;
        match change {
            Change::Host(h) => rows::put_host(&tx, h)?,
            Change::Vm(v) => rows::put_vm(&tx, v)?,
            Change::VmRemoved { name } => rows::delete_vm(&tx, name)?,
            Change::Migration(m) => rows::put_migration(&tx, m)?,
        }
        tx.commit().map_err(StoreError::db("committing a change"))
    }

    fn lead(&mut self, holder: &str, ttl: Duration) -> Result<Leadership, StoreError> {
        let ttl_ms = leases::validate(holder, ttl)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::db("starting a transaction"))?;
        match leases::decide(&lease::read(&tx)?, holder, self.ours.as_ref()) {
            Step::Follow(f) => Ok(f),
            Step::Write(l) => {
                lease::write(&tx, &l, ttl_ms)?;
                tx.commit()
                    .map_err(StoreError::db("committing the lease"))?;
                let epoch = l.epoch;
                self.ours = Some(l);
                Ok(Leadership::Leader { epoch })
            }
        }
    }

    fn resign(&mut self) -> Result<(), StoreError> {
        let Some(ours) = &self.ours else {
            return Ok(());
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::db("starting a transaction"))?;
        if lease::read(&tx)?.lease == *ours {
            lease::expire(&tx)?;
            tx.commit()
                .map_err(StoreError::db("committing the lease"))?;
        }
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        // One read transaction: the three tables as of one instant.
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(StoreError::db("starting a read"))?;
        let snapshot = Snapshot {
            hosts: rows::hosts(&tx, None)?,
            vms: rows::vms(&tx, None)?,
            migrations: rows::migrations(&tx, None)?,
        };
        tx.finish().map_err(StoreError::db("ending a read"))?;
        Ok(snapshot)
    }

    fn hosts(&self) -> Result<Vec<Host>, StoreError> {
        rows::hosts(&self.conn, None)
    }

    fn host(&self, name: &str) -> Result<Option<Host>, StoreError> {
        Ok(rows::hosts(&self.conn, Some(name))?.into_iter().next())
    }

    fn vms(&self) -> Result<Vec<Vm>, StoreError> {
        rows::vms(&self.conn, None)
    }

    fn vm(&self, name: &str) -> Result<Option<Vm>, StoreError> {
        Ok(rows::vms(&self.conn, Some(name))?.into_iter().next())
    }

    fn migrations(&self) -> Result<Vec<Migration>, StoreError> {
        rows::migrations(&self.conn, None)
    }

    fn migration(&self, id: MigrationId) -> Result<Option<Migration>, StoreError> {
        Ok(rows::migrations(&self.conn, Some(id))?.into_iter().next())
    }
}
