//! The host's TLS identity: a key made here at start (it never leaves the host), the
//! certificate request sent at registration, the certificate the RMS's CA issued for it and
//! the CA certificate every peer must chain to.
//!
//! Trust bootstrap: the operator copies the RMS's CA certificate to the host (`--ca-file`);
//! the RMS's API is checked against it, and a certificate the RMS issues is used only if it
//! chains to it. Without that anchor no issued certificate is used (there is no trust on first
//! use: the RMS's answer could come from anyone on the path).
//!
//! The certificate also serves the agent's own HTTPS API through a [`CertSlot`]: the server
//! starts before the first registration (handshakes fail until a certificate is there) and
//! takes a renewed certificate without a restart.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use livemig_http::TlsAcceptor;
use livemig_tls::{CertSlot, Identity, KeyPem, TlsError};

/// Why an issued certificate is not used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the RMS's CA is not the trust anchor given to this agent (--ca-file)")]
    NotAnchor,
    #[error("this agent has no trust anchor (--ca-file): it uses no certificate")]
    NoAnchor,
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
    /// The operator's anchor: the RMS's CA certificate.
    anchor: Option<String>,
    issued: Option<Issued>,
}

/// The host's TLS state (shared by the link, the migrators and the API server).
#[derive(Debug, Default)]
pub struct HostTls {
    state: Mutex<State>,
    slot: Arc<CertSlot>,
}

impl HostTls {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The operator-provided CA certificate every issued certificate must chain to.
    pub fn set_anchor(&self, ca_pem: String) {
        self.lock().anchor = Some(ca_pem);
    }

    /// The operator's anchor, if any.
    pub fn anchor(&self) -> Option<String> {
        self.lock().anchor.clone()
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
    /// anchor and that the certificate, key and CA make working configurations; from the next
    /// handshake on, the API serves it.
    pub fn accept(&self, cert_pem: String, ca_pem: Option<String>) -> Result<(), IdentityError> {
        let ca_pem = ca_pem.ok_or(IdentityError::NoCa)?;
        let mut s = self.lock();
        match &s.anchor {
            None => return Err(IdentityError::NoAnchor),
            Some(a) if !same_cert(a, &ca_pem) => return Err(IdentityError::NotAnchor),
            Some(_) => {}
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
        self.slot.set(&identity).map_err(IdentityError::Unusable)?;
        s.issued = Some(Issued { identity, ca_pem });
        Ok(())
    }

    /// The issued identity, if any.
    pub fn issued(&self) -> Option<Issued> {
        self.lock().issued.clone()
    }

    /// The API's TLS: presents the issued certificate (none yet: handshakes fail).
    pub fn api_acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let cfg = livemig_tls::slot_server_config(Arc::clone(&self.slot))?;
        Ok(TlsAcceptor::from(Arc::new(cfg)))
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
