//! The crate's one error type.

use std::path::PathBuf;

/// Why a TLS operation (a file, a certificate, a configuration, a handshake) failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the private key file {path} can be read by group or others (mode {mode:o}): chmod 600 it"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path} is larger than {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("no {what} in the PEM text")]
    NoPem { what: &'static str },
    #[error("the PEM text holds no valid {what}")]
    BadPem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("`{0}` is not a valid DNS host name")]
    HostName(String),
    #[error("`{0}` is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName(String),
    #[error("a validity of {0:?} is out of range")]
    Validity(std::time::Duration),
    #[error("the certificate request is refused")]
    Csr(#[source] rcgen::Error),
    #[error("cannot make the certificate or key")]
    Cert(#[source] rcgen::Error),
    #[error("the CA's key does not match its certificate")]
    KeyMismatch,
    #[error("the TLS configuration is invalid")]
    Config(#[source] rustls::Error),
    #[error("the client certificate verifier cannot be built")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("the TLS handshake failed")]
    Handshake(#[source] rustls::Error),
    #[error("the TLS handshake did not finish within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("the peer closed the connection during the TLS handshake")]
    HandshakeEof,
    #[cfg(feature = "engine")]
    #[error("cannot connect")]
    Connect(#[source] livemig_engine::net::NetError),
    #[error("the socket failed")]
    Io(#[source] std::io::Error),
}
