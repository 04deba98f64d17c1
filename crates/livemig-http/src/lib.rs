//! HTTP plumbing shared by the agent and the RMS, so both services refuse the same things the
//! same way.
//!
//! Map of the crate:
//! - [`token`]: the bearer token file (owner-only) and the constant-time check.
//! - [`body`]: JSON request bodies under a cap, decoded strictly.
//! - [`error`]: every error as `{"error": "..."}` with its status.
//! - [`guard`]: the layers every router wears: the token check (all but `/healthz` and the
//!   routes a router declares open), the per-request timeout, counters of refusals.
//! - [`server`]: the accept loop: bounded connections, header and request timeouts, a clean
//!   stop on a cancellation token.

pub mod body;
pub mod error;
pub mod guard;
pub mod server;
pub mod token;

pub use body::{BodyLimit, Json, DEFAULT_BODY_LIMIT};
pub use error::{json, ApiError};
pub use guard::{Counters, Guard};
pub use server::{serve, serve_tls, ServerConfig, TlsAcceptor};
pub use token::{Secret, Token, TokenError};
