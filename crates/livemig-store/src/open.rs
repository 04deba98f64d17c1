//! Choosing a backend by URL.

use crate::error::StoreError;
use crate::pg::PgStore;
use crate::sqlite::SqliteStore;
use crate::store::Store;
use crate::url::StoreUrl;

/// Opens the store `url` names, creating and migrating its schema as needed.
pub fn open(url: &StoreUrl) -> Result<Box<dyn Store>, StoreError> {
    match url {
        StoreUrl::Sqlite(_) | StoreUrl::SqliteMemory => Ok(Box::new(SqliteStore::open(url)?)),
        StoreUrl::Postgres(_) => Ok(Box::new(PgStore::open(url)?)),
    }
}
