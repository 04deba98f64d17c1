//! [`PgStore`]: the store in a PostgreSQL database, which several RMS processes may share
//! (one leads: see [`crate::lease`]).

mod lease;
mod rows;
pub mod schema;

use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use livemig_rms::{Change, Host, Migration, MigrationId, Vm};
use postgres::{Client, Config, IsolationLevel, NoTls};

use crate::error::StoreError;
use crate::lease::{self as leases, Leadership, Lease, Step};
use crate::store::{Snapshot, Store};
use crate::url::StoreUrl;

/// How long connecting may take when the URL sets no `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the connection waits for the server to acknowledge sent data before it is
/// declared dead (`TCP_USER_TIMEOUT`), when the URL sets none: a vanished server or network
/// shows up as an error, not a hung RMS.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a statement waits for a row lock (another process's write or lease change)
/// before it fails: bounded, like SQLite's busy timeout, so a stuck peer shows up as an
/// error instead of a hung RMS.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// The RMS's state in a PostgreSQL database, over one connection (synchronous client, no
/// TLS yet).
///
/// Every [`Store::apply`] is one transaction (PostgreSQL's default `READ COMMITTED`) that
/// first locks the lease row (`SELECT … FOR UPDATE`) to check the fencing rule; `load` reads
/// in one `REPEATABLE READ` read-only transaction, so the three tables are of one instant.
/// Durability is the server's: a commit returns once it is flushed, with the default
/// `synchronous_commit=on` (an RMS database must keep it on, and `fsync` too).
pub struct PgStore {
    /// `&self` reads need the client mutably: one statement at a time, as the trait is used.
    client: Mutex<Client>,
    /// To reconnect after the connection broke (a server restart, a network failure).
    config: Config,
    /// The URL with its password hidden, for errors and `Debug`.
    url: String,
    /// The lease this store last led with: once set, every write is fenced by it.
    ours: Option<Lease>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.url)
            .field("ours", &self.ours)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database a `postgres://` URL names (no TLS) and brings its schema up
    /// to date. Refuses a database written by a newer schema ([`StoreError::SchemaTooNew`]).
    /// The tables go to the first schema of the connection's `search_path` (settable in the
    /// URL: `?options=-csearch_path%3Dlivemig`).
    pub fn open(url: &StoreUrl) -> Result<PgStore, StoreError> {
        let StoreUrl::Postgres(text) = url else {
            return Err(StoreError::Unsupported(
                "an sqlite: URL needs the SQLite store, not PostgreSQL",
            ));
        };
        let shown = url.to_string();
        let open_err = |source: postgres::Error| StoreError::Open {
            path: shown.clone(),
            source: source.into(),
        };
        let mut config = Config::from_str(text).map_err(open_err)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        let mut client = connect(&config, &shown)?;
        schema::migrate(&mut client)?;
        Ok(PgStore {
            client: Mutex::new(client),
            config,
            url: shown,
            ours: None,
        })
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        schema::current(&mut *self.client()?)
    }

    /// The connection, for tests and maintenance; a new one if the last one broke (the
    /// lease this store led with stays: the database still fences its writes).
    pub fn client(&self) -> Result<MutexGuard<'_, Client>, StoreError> {
        // A panic while the lock was held left no transaction open (its drop rolled it back).
        let mut client = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        if client.is_closed() {
            *client = connect(&self.config, &self.url)?;
        }
        Ok(client)
    }

    /// Runs `f` in a `REPEATABLE READ` read-only transaction.
    fn read<T>(
        &self,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.client()?;
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(StoreError::db("starting a read"))?;
        let out = f(&mut tx)?;
        tx.commit().map_err(StoreError::db("ending a read"))?;
        Ok(out)
    }
}

impl Store for PgStore {
    fn apply(&mut self, change: &Change) -> Result<(), StoreError> {
        let mut client = self.client()?;
        let mut tx = client
            .transaction()
            .map_err(StoreError::db("starting a transaction"))?;
        // Locks the lease row to the end of the transaction: no takeover commits in between.
        leases::check(&lease::read(&mut tx)?, self.ours.as_ref())?;
        match change {
            Change::Host(h) => rows::put_host(&mut tx, h)?,
            Change::Vm(v) => rows::put_vm(&mut tx, v)?,
            Change::VmRemoved { name } => rows::delete_vm(&mut tx, name)?,
            Change::Migration(m) => rows::put_migration(&mut tx, m)?,
        }
        tx.commit().map_err(StoreError::db("committing a change"))
    }

    fn lead(&mut self, holder: &str, ttl: Duration) -> Result<Leadership, StoreError> {
        let ttl_ms = leases::validate(holder, ttl)?;
        let taken = {
            let mut client = self.client()?;
            let mut tx = client
                .transaction()
                .map_err(StoreError::db("starting a transaction"))?;
            match leases::decide(&lease::read(&mut tx)?, holder, self.ours.as_ref()) {
                Step::Follow(f) => return Ok(f),
                Step::Write(l) => {
                    lease::write(&mut tx, &l, ttl_ms)?;
                    tx.commit()
                        .map_err(StoreError::db("committing the lease"))?;
                    l
                }
            }
        };
        let epoch = taken.epoch;
        self.ours = Some(taken);
        Ok(Leadership::Leader { epoch })
    }

    fn resign(&mut self) -> Result<(), StoreError> {
        let Some(ours) = &self.ours else {
            return Ok(());
        };
        let mut client = self.client()?;
        let mut tx = client
            .transaction()
            .map_err(StoreError::db("starting a transaction"))?;
        if lease::read(&mut tx)?.lease == *ours {
            lease::expire(&mut tx)?;
            tx.commit()
                .map_err(StoreError::db("committing the lease"))?;
        }
        Ok(())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.read(|tx| {
            Ok(Snapshot {
                hosts: rows::hosts(tx, None)?,
                vms: rows::vms(tx, None)?,
                migrations: rows::migrations(tx, None)?,
            })
        })
    }

    fn hosts(&self) -> Result<Vec<Host>, StoreError> {
        rows::hosts(&mut *self.client()?, None)
    }

    fn host(&self, name: &str) -> Result<Option<Host>, StoreError> {
        Ok(rows::hosts(&mut *self.client()?, Some(name))?
            .into_iter()
            .next())
    }

    fn vms(&self) -> Result<Vec<Vm>, StoreError> {
        rows::vms(&mut *self.client()?, None)
    }

    fn vm(&self, name: &str) -> Result<Option<Vm>, StoreError> {
        Ok(rows::vms(&mut *self.client()?, Some(name))?
            .into_iter()
            .next())
    }

    fn migrations(&self) -> Result<Vec<Migration>, StoreError> {
        rows::migrations(&mut *self.client()?, None)
    }

    fn migration(&self, id: MigrationId) -> Result<Option<Migration>, StoreError> {
        Ok(rows::migrations(&mut *self.client()?, Some(id))?
            .into_iter()
            .next())
    }
}

/// A new connection with the session settings every store connection has.
/// The longest any statement (or an idle transaction) may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(config: &Config, shown: &str) -> Result<Client, StoreError> {
    let mut client = config.connect(NoTls).map_err(|source| StoreError::Open {
        path: shown.to_string(),
        source: source.into(),
    })?;
    client
        .batch_execute(&format!(
            // A stalled server must not hold the RMS (or the lease row) forever: every
            // statement, and every transaction left idle, ends within bounds.
            "SET lock_timeout = '{}ms'; SET statement_timeout = '{}ms'; \
             SET idle_in_transaction_session_timeout = '{}ms'; SET TIME ZONE 'UTC'",
            LOCK_TIMEOUT.as_millis(),
            STATEMENT_TIMEOUT.as_millis(),
            STATEMENT_TIMEOUT.as_millis()
        ))
        .map_err(StoreError::db("configuring the session"))?;
    Ok(client)
}
