//! The host's TLS identity: a key made here at start (it never leaves the host), the
//! certificate request sent at registration, the certificate the RMS's CA issued for it and
//! the CA certificate every peer must chain to.
//!
//! Trust bootstrap: with an operator-provided trust anchor (`--ca-file`), the CA certificate
//! the RMS returns must be that one, or the certificate is not used. Without one, the first
//! CA the RMS returns is trusted and pinned for the agent's life (trust on first
//! registration); a later registration returning another CA is refused.

use std::net::IpAddr;
use std::sync::Mutex;

use livemig_tls::{Identity, KeyPem, TlsError};

/// Why an issued certificate is not used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the RMS's CA is not the trust anchor given to this agent (--ca-file)")]
    NotAnchor,
    #[error("the RMS's CA differs from the one trusted at first registration")]
    CaChanged,
    #[error("the RMS returned a certificate without its CA")]
    NoCa,
    #[error("the issued certificate is unusable")]
    Unusable(#[source] TlsError),
    #[error("no certificate request was made")]
    NoRequest,
}

/// The issued identity and the CA it chains to.
#[derive(Debug, Clone)]
pub struct Issued {
    pub identity: Identity,
    pub ca_pem: String,
}

#[derive(Debug, Default)]
struct State {
    /// The key and the request made for it.
    request: Option<(KeyPem, String)>,
    /// The operator's anchor, or the CA pinned at first registration.
    anchor: Option<String>,
    /// Whether `anchor` is the operator's (a mismatch says so).
    operator_anchor: bool,
    issued: Option<Issued>,
}

/// The host's TLS state (shared by the link and the migrators).
#[derive(Debug, Default)]
pub struct HostTls {
    state: Mutex<State>,
}

impl HostTls {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The operator-provided CA certificate every issued certificate must chain to.
    pub fn set_anchor(&self, ca_pem: String) {
        let mut s = self.lock();
        s.anchor = Some(ca_pem);
        s.operator_anchor = true;
    }

    /// The certificate request for `name` and `ips` (made once; the key stays in memory).
    pub fn request(&self, name: &str, ips: &[IpAddr]) -> Result<String, TlsError> {
        let mut s = self.lock();
        if let Some((_, csr)) = &s.request {
            return Ok(csr.clone());
        }
        let (key, csr) = Identity::generate_csr(name, ips)?;
        s.request = Some((key, csr.clone()));
        Ok(csr)
    }

    /// Takes the certificate the RMS issued (and its CA), after checking the CA against the
    /// anchor (or pinning it) and that the certificate, key and CA make working configurations.
    pub fn accept(&self, cert_pem: String, ca_pem: Option<String>) -> Result<(), IdentityError> {
        let ca_pem = ca_pem.ok_or(IdentityError::NoCa)?;
        let mut s = self.lock();
        match &s.anchor {
            Some(a) if !same_cert(a, &ca_pem) => {
                return Err(if s.operator_anchor {
                    IdentityError::NotAnchor
                } else {
                    IdentityError::CaChanged
                });
            }
            _ => {}
        }
        let key = s
            .request
            .as_ref()
            .map(|(k, _)| k.clone())
            .ok_or(IdentityError::NoRequest)?;
        let identity = Identity {
            cert_chain_pem: cert_pem,
            key,
        };
        livemig_tls::server_config(&identity.cert_chain_pem, &identity.key, Some(&ca_pem))
            .map_err(IdentityError::Unusable)?;
        livemig_tls::client_config(&ca_pem, Some(&identity)).map_err(IdentityError::Unusable)?;
        if s.anchor.is_none() {
            s.anchor = Some(ca_pem.clone());
        }
        s.issued = Some(Issued { identity, ca_pem });
        Ok(())
    }

    /// The issued identity, if any.
    pub fn issued(&self) -> Option<Issued> {
        self.lock().issued.clone()
    }
}

/// Whether two PEM texts hold the same first certificate.
fn same_cert(a: &str, b: &str) -> bool {
    match (
        livemig_tls::config::parse_certs(a),
        livemig_tls::config::parse_certs(b),
    ) {
        (Ok(a), Ok(b)) => a.first() == b.first(),
        _ => false,
    }
}
