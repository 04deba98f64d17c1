//! The data path: real memory between two processes over TCP under the policy's per-round caps.
//!
//! Map of the crate:
//! - [`wire`]: frame header, messages, page batches (zero-page elision, lz4), hard caps.
//! - [`auth`]: the shared key file and the HMAC-SHA256 handshake proofs.
//! - [`memory`]: guest memory in locked 2 MiB regions, the atomic dirty bitmap, page sets.
//! - [`guest`]: the [`Guest`] trait and [`SimGuest`] (real memory, a real writer thread).
//! - [`limiter`]: the token bucket (time as a parameter) and the live external cap.
//! - [`meter`]: wire bytes per 10 ms, the 100 ms peak, per-window rates.
//! - [`keepalive`]: `Wait` frames during long local work (prefault, digests).
//! - [`net`]: connect, accept and socket timeouts: every network wait is bounded.
//! - [`sender`]: the source's state machine: handshake, rounds driving a `Policy`,
//!   stop-and-copy, hand-over; produces the `MigrationReport` (executor `engine`).
//! - [`receiver`]: the destination's state machine: verification, discard on failure.
//!
//! The protocol is described in `docs/protocol.md`.

pub mod auth;
pub mod guest;
pub mod keepalive;
pub mod limiter;
pub mod memory;
pub mod meter;
pub mod net;
pub mod receiver;
pub mod sender;
pub mod wire;

pub use auth::Key;
pub use guest::{Guest, InitialContent, SimGuest, SimGuestConfig};
pub use receiver::{receive, Received, ReceiverConfig, RecvError};
pub use sender::{migrate, migrate_measured, Event, SendError, SenderConfig};
