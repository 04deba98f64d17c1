//! A server certificate that can change while the server runs: an agent's HTTPS API starts
//! before the RMS has issued its certificate, and takes a renewed one without a restart.
//! Until a certificate is set, every handshake fails (the client sees an alert, the server
//! keeps serving).

use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{parse_certs, parse_key, provider};
use crate::error::TlsError;
use crate::identity::Identity;

/// The current certificate of a server, if any.
#[derive(Debug, Default)]
pub struct CertSlot {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertSlot {
    pub fn new() -> Arc<CertSlot> {
        Arc::new(CertSlot::default())
    }

    /// Serves `identity` from the next handshake on (checked first: its key must match its
    /// certificate).
    pub fn set(&self, identity: &Identity) -> Result<(), TlsError> {
        let key = CertifiedKey::from_der(
            parse_certs(&identity.cert_chain_pem)?,
            parse_key(&identity.key)?,
            &provider(),
        )
        .map_err(TlsError::Config)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(key));
        Ok(())
    }

    /// Whether a certificate is set.
    pub fn is_set(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A TLS 1.3 server (no client certificates) presenting whatever `slot` holds.
pub fn slot_server_config(slot: Arc<CertSlot>) -> Result<ServerConfig, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{Ca, HOST_VALIDITY};

    #[test]
    fn empty_until_set_and_refuses_a_key_of_another_certificate() {
        let ca = Ca::generate("test CA").expect("ca");
        let a = ca
            .issue_identity(&["a.test"], &[], HOST_VALIDITY)
            .expect("a");
        let b = ca
            .issue_identity(&["b.test"], &[], HOST_VALIDITY)
            .expect("b");
        let slot = CertSlot::new();
        assert!(!slot.is_set());
        let mixed = Identity {
            cert_chain_pem: a.cert_chain_pem.clone(),
            key: b.key.clone(),
        };
        assert!(slot.set(&mixed).is_err());
        assert!(!slot.is_set());
        slot.set(&a).expect("set");
        assert!(slot.is_set());
        slot_server_config(slot).expect("config");
    }
}
