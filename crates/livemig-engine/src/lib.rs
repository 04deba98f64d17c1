//! The data path: real memory between two processes over TCP under the policy's per-round caps.
//!
//! Map of the crate:
//! - [`wire`]: frame header, messages, page batches (zero-page elision, lz4), hard caps.
//! - [`auth`]: the shared key file and the HMAC-SHA256 handshake proofs.
//! - [`memory`]: guest memory as atomic words, the atomic dirty bitmap, page sets.
//! - [`guest`]: the [`Guest`] trait and [`SimGuest`] (real memory, a real writer thread).

pub mod auth;
pub mod guest;
pub mod memory;
pub mod wire;

pub use guest::{Guest, SimGuest, SimGuestConfig};
