//! The data path: real memory between two processes over TCP under the policy's per-round caps.
//!
//! Map of the crate:
//! - [`wire`]: the protocol versions and their negotiation, frame header, messages, page
//!   batches (zero-page elision, lz4), hard caps, frame I/O under deadlines.
//! - [`auth`]: the shared key file, the handshake proofs over the transcript (the negotiated
//!   version included), the session [`auth::Channel`] that tags every control message.
//! - [`memory`]: guest memory in locked 2 MiB regions, the atomic dirty bitmap, page sets.
//! - [`pagehash`]: per-page hash tables kept as pages move and their combinable digest (the
//!   hand-over check and the source's audit after it).
//! - [`guest`]: the [`Guest`] trait and [`SimGuest`] (real memory, a real writer thread).
//! - [`limiter`]: the token bucket (time as a parameter).
//! - [`meter`]: wire bytes per 10 ms, the 100 ms peak, per-window rates.
//! - [`keepalive`]: `Wait` frames during long local work (prefault, digests).
//! - [`net`]: connect, accept and socket timeouts: every network wait is bounded; the
//!   [`net::Transport`] a migration runs over and the [`net::Upgrade`] hook (TLS) of `serve`.
//! - [`sender`]: the source's state machine: handshake, rounds driving a `Policy`,
//!   stop-and-copy, the commit protocol, settling a lost hand-over by reconnecting; produces
//!   the `MigrationReport` (executor `engine`).
//! - [`receiver`]: the destination's state machine for one connection: verification, the
//!   held copy, discard on failure.
//! - [`serve`]: the destination's accept loop: concurrent connections, one migration, held
//!   copies settled by a reconnecting source.
//! - [`hold`]: a paused copy saved to a file when a hand-over's outcome is unknown.
//! - [`hostmem`]: how much memory this host can hold (the destination's default limit).
//!
//! The protocol is described in `docs/protocol.md`.

pub mod auth;
pub mod guest;
pub mod hold;
pub mod hostmem;
pub mod keepalive;
pub mod limiter;
pub mod memory;
pub mod meter;
pub mod net;
pub mod pagehash;
pub mod receiver;
pub mod sender;
pub mod serve;
pub mod wire;

pub use auth::Key;
pub use guest::{Guest, InitialContent, SimGuest, SimGuestConfig};
pub use livemig_policy::Control;
pub use receiver::{receive, Held, Landing, Received, ReceiverConfig, RecvError};
pub use sender::{migrate, migrate_measured, Event, Redial, SendError, SenderConfig};
pub use serve::{serve, serve_with, ServeConfig, ServeError, ServeEvent, Served};
