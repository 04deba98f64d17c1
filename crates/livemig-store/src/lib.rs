//! The RMS's durable state behind one store interface: every `Effect::Persist` of
//! `livemig-rms` is written here, in its own transaction, before the RMS acts on it, and read
//! back for recovery after a restart. Two RMS processes may share one database: a lease with
//! fencing makes exactly one of them the writer.
//!
//! Map of the crate:
//! - [`store`]: the [`Store`] trait, the [`Snapshot`] recovery loads.
//! - [`mod@open`]: [`open()`], a backend chosen by URL.
//! - [`url`]: [`StoreUrl`], the `--db` value (`sqlite:PATH`, `sqlite::memory:`, `postgres://…`).
//! - [`lease`]: [`Leadership`], [`Lease`]: who leads, and the fencing rule every backend applies.
//! - `rows` (private): records to rows and back, shared by the backends.
//! - [`sqlite`]: [`SqliteStore`] (embedded, WAL, `synchronous=FULL`) and its versioned schema
//!   migrations (`migrations/NNNN_*.sql`, embedded in the binary).
//! - [`pg`]: [`PgStore`] (PostgreSQL, synchronous client, no TLS yet) and its migrations
//!   (`migrations/postgres/NNNN_*.sql`).
//! - [`error`]: one error type for every backend, [`StoreError`].
//!
//! `docs/store.md` describes the schema, the durability settings, leadership and backups.

pub mod error;
pub mod lease;
pub mod open;
pub mod pg;
mod rows;
pub mod sqlite;
pub mod store;
mod term;
pub mod url;

pub use error::{DbError, StoreError};
pub use lease::{Leadership, Lease};
pub use open::open;
pub use pg::PgStore;
pub use sqlite::SqliteStore;
pub use store::{Snapshot, Store};
pub use url::{StoreUrl, UrlError};
