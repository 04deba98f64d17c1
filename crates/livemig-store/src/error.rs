//! What can go wrong in a store: one error type for every backend.

use crate::url::UrlError;

/// Why a store operation failed. A failed [`crate::Store::apply`] wrote nothing: the shell must
/// not carry out the effects that follow the `Persist`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The backend is recognised but not built yet.
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("cannot open the database `{path}`")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
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
        source: rusqlite::Error,
    },
    /// A statement failed while doing `what`.
    #[error("the database failed while {what}")]
    Db {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
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
}

impl StoreError {
    /// A closure for `map_err` naming what the database was doing.
    pub(crate) fn db(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |source| StoreError::Db { what, source }
    }
}
