//! TLS for livemig: the RMS's certificate authority, hosts' keys and certificates, rustls
//! configurations (ring, TLS 1.3), and the engine's data path over TLS (`docs/tls.md`).
//!
//! Map of the crate:
//! - [`ca`]: [`Ca`]: generate, save and load (key file mode 600), sign a host's request.
//! - [`identity`]: [`Identity`]: a host's key and request (the key never leaves the host),
//!   its certificate once issued.
//! - [`files`]: PEM files: keys written owner-only and refused when others can read them.
//! - [`config`]: [`server_config`] and [`client_config`] (mutual TLS when asked).
//! - [`slot`]: [`CertSlot`], a server certificate that can be set and replaced while the
//!   server runs (an agent's HTTPS API).
//! - [`stream`]: [`TlsStream`], the engine's `Transport` over TLS, waits bounded (feature
//!   `engine`).
//! - [`connect`]: [`Connector`] (the source: connect, redial) and [`Acceptor`] (the
//!   destination: the engine's `Upgrade` for `serve_with`) (feature `engine`).
//! - [`error`]: the one error type, [`TlsError`].
//! - `names`: what a host's certificate names (its DNS name, its IPs); `pem`: PEM text into
//!   rustls's types (re-exported by [`config`]).

pub mod ca;
pub mod config;
#[cfg(feature = "engine")]
pub mod connect;
pub mod error;
pub mod files;
pub mod identity;
mod names;
mod pem;
pub mod slot;
#[cfg(feature = "engine")]
pub mod stream;

pub use ca::{Ca, CA_VALIDITY, HOST_VALIDITY};
pub use config::{client_config, https_client_config, server_config};
#[cfg(feature = "engine")]
pub use connect::{Acceptor, Connector};
pub use error::TlsError;
pub use files::KeyPem;
pub use identity::Identity;
pub use rustls::{ClientConfig, ServerConfig};
pub use slot::{slot_server_config, CertSlot};
#[cfg(feature = "engine")]
pub use stream::TlsStream;
