//! What can go wrong in a store: one error type for every backend.

use crate::term::Lease;
use crate::url::UrlError;

/// The database library's own error, whichever backend raised it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] postgres::Error),
}

/// Why a store operation failed. A failed [`crate::Store::apply`] wrote nothing: the shell must
/// not carry out the effects that follow the `Persist`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A URL handed to the other backend's `open` (`crate::open` picks the right one).
    #[error("{0}")]
    Unsupported(&'static str),
    /// `path` is the file, or the PostgreSQL URL with its password hidden.
    #[error("cannot open the database `{path}`")]
    Open {
        path: String,
        #[source]
        source: DbError,
    },
    /// A durability setting did not take (e.g. the file system refuses WAL).
    #[error("the database `{path}` refused `{setting}`: it reports `{got}`")]
    Setting {
        path: String,
        setting: &'static str,
        got: String,
    },
    /// The database was written by a newer livemig: opening it could lose data.
    #[error(
        "the database is at schema version {found}, newer than this build knows ({supported}): \
         use a newer livemig"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("applying schema migration {version:04} failed")]
    Migrate {
        version: u32,
        #[source]
        source: DbError,
    },
    /// A statement failed while doing `what`.
    #[error("the database failed while {what}")]
    Db {
        what: &'static str,
        #[source]
        source: DbError,
    },
    /// A row cannot be read back as a record (edited by hand, or a bug wrote it).
    #[error("the row `{key}` of table `{table}` is corrupt: {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },
    /// A record cannot be written so that it reads back the same (a NaN, a size past i64).
    #[error("the {table} record `{key}` cannot be stored: {reason}")]
    Unrepresentable {
        table: &'static str,
        key: String,
        reason: String,
    },
    /// A [`crate::Store::lead`] call the store cannot carry out as asked (an empty holder, a
    /// ttl of zero or past a day).
    #[error("invalid lease request: {0}")]
    BadLease(&'static str),
    /// This store may not write: it led once and its lease is no longer the current one (or
    /// expired), or it never led and another process holds a live lease. Nothing was written;
    /// an RMS that gets this must stop acting as the leader.
    #[error("{}", fenced_message(ours.as_ref(), current, *expired))]
    Fenced {
        /// The lease this store last led with (`None`: it never led).
        ours: Option<Lease>,
        /// The lease as the database holds it.
        current: Lease,
        /// Whether `current` had expired, by the database's clock.
        expired: bool,
    },
}

fn fenced_message(ours: Option<&Lease>, current: &Lease, expired: bool) -> String {
    let state = if expired { "expired" } else { "live" };
    match ours {
        Some(o) if o == current => format!(
            "fenced: the lease of `{}` (epoch {}) has expired; nothing was written",
            o.holder, o.epoch
        ),
        Some(o) => format!(
            "fenced: `{}` led at epoch {}, but `{}` now holds the lease at epoch {} ({state}); \
             nothing was written",
            o.holder, o.epoch, current.holder, current.epoch
        ),
        None => format!(
            "fenced: `{}` holds a live lease (epoch {}) and this store never led; nothing was \
             written",
            current.holder, current.epoch
        ),
    }
}

impl StoreError {
    /// A closure for `map_err` naming what the database was doing.
    pub(crate) fn db<E: Into<DbError>>(what: &'static str) -> impl FnOnce(E) -> StoreError {
        move |source| StoreError::Db {
            what,
            source: source.into(),
        }
    }

    /// A closure for `map_err` naming the schema migration that failed.
    pub(crate) fn migrate<E: Into<DbError>>(version: u32) -> impl FnOnce(E) -> StoreError {
        move |source| StoreError::Migrate {
            version,
            source: source.into(),
        }
    }
}
