//! rustls configurations over the ring provider, TLS 1.3 only: a server (the RMS's API, an
//! agent's API, a destination's data port) with or without client certificates, and a client
//! trusting one CA with or without its own certificate (mutual TLS).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::TlsError;
use crate::files::KeyPem;
use crate::identity::Identity;
pub use crate::pem::{parse_certs, parse_key};

/// The crypto provider every configuration here uses: ring (no C build beyond ring's own),
/// its TLS 1.3 suites with AES-128-GCM first (the fastest with AES instructions; both ends
/// are ours, so this order decides).
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

/// The trust anchors: every certificate of `ca_pem`.
fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem)? {
        roots.add(cert).map_err(TlsError::Config)?;
    }
    Ok(roots)
}

/// A server presenting `cert_chain_pem` (its certificate first) with `key`. With
/// `client_auth` (the CA's certificate), every client must present a certificate that CA
/// issued, or the handshake fails; without, any client may connect. No session tickets:
/// every connection makes a full handshake. Callers may still set ALPN (`alpn_protocols`).
pub fn server_config(
    cert_chain_pem: &str,
    key: &KeyPem,
    client_auth: Option<&str>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?;
    let builder = match client_auth {
        Some(ca_pem) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
                    .build()
                    .map_err(TlsError::Verifier)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(parse_certs(cert_chain_pem)?, parse_key(key)?)
        .map_err(TlsError::Config)?;
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// A client trusting the certificates of `ca_pem` only (not the system's roots), presenting
/// `identity` when the server asks for one (mutual TLS). No session resumption.
pub fn client_config(ca_pem: &str, identity: Option<&Identity>) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_root_certificates(roots(ca_pem)?);
    let mut cfg = match identity {
        Some(id) => builder
            .with_client_auth_cert(parse_certs(&id.cert_chain_pem)?, parse_key(&id.key)?)
            .map_err(TlsError::Config)?,
        None => builder.with_no_client_auth(),
    };
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

/// The TLS configuration of an HTTP client of the API (the RMS calling agents, agents and the
/// operator CLI calling the RMS): trusting `ca_pem` only, or nothing at all without one (an
/// `https://` URL then fails its handshake; plain `http://` never uses it). Every HTTP client
/// is built with one of these, so none falls back to a process-wide default provider.
pub fn https_client_config(ca_pem: Option<&str>) -> Result<ClientConfig, TlsError> {
    match ca_pem {
        Some(ca) => client_config(ca, None),
        None => {
            let mut cfg = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(TlsError::Config)?
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth();
            cfg.resumption = rustls::client::Resumption::disabled();
            Ok(cfg)
        }
    }
}
