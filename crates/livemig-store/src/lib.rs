//! The RMS's durable state behind one store interface: every `Effect::Persist` of
//! `livemig-rms` is written here, in its own transaction, before the RMS acts on it, and read
//! back for recovery after a restart.
//!
//! Map of the crate:
//! - [`store`]: the [`Store`] trait, the [`Snapshot`] recovery loads.
//! - [`mod@open`]: [`open()`], a backend chosen by URL.
//! - [`url`]: [`StoreUrl`], the `--db` value (`sqlite:PATH`, `sqlite::memory:`, `postgres://…`).
//! - [`sqlite`]: [`SqliteStore`] (embedded, WAL, `synchronous=FULL`) and its versioned schema
//!   migrations (`migrations/NNNN_*.sql`, embedded in the binary).
//! - [`error`]: one error type for every backend, [`StoreError`].
//!
//! PostgreSQL URLs parse, but opening one returns [`StoreError::Unsupported`]: that backend
//! (with a lease and fencing so two RMS processes can share one database) follows.
//! `docs/store.md` describes the schema, the durability settings and backups.

pub mod error;
pub mod open;
pub mod sqlite;
pub mod store;
pub mod url;

pub use error::StoreError;
pub use open::open;
pub use sqlite::SqliteStore;
pub use store::{Snapshot, Store};
pub use url::{StoreUrl, UrlError};
