//! A host's identity: a key generated on the host (it never leaves it), the certificate
//! request sent to the RMS, and the certificate the RMS's CA returns.

use std::net::IpAddr;
use std::path::Path;

use rcgen::{CertificateParams, DnType, KeyPair};

use crate::error::TlsError;
use crate::files::{self, KeyPem};
use crate::names::host_names;

/// A certificate (chain, the host's first) and its private key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_chain_pem: String,
    pub key: KeyPem,
}

impl Identity {
    /// A fresh ECDSA P-256 key and a certificate request signed by it naming `host_name` and
    /// `ips` (the CA decides what the certificate says). Returns the key (to keep, mode
    /// 600: [`files::write_key`]) and the request in PEM (to send to the RMS).
    pub fn generate_csr(host_name: &str, ips: &[IpAddr]) -> Result<(KeyPem, String), TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Cert)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, host_name);
        params.subject_alt_names = host_names(host_name, ips)?;
        let csr = params.serialize_request(&key).map_err(TlsError::Cert)?;
        let csr_pem = csr.pem().map_err(TlsError::Cert)?;
        Ok((KeyPem::new(key.serialize_pem()), csr_pem))
    }

    /// Loads a certificate file and its key file (refused when the key file can be read by
    /// the group or others). Both are parsed, so a broken file fails here, not at the first
    /// handshake.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
        let key = files::read_key(key_path)?;
        let cert_chain_pem = files::read_cert(cert_path)?;
        crate::pem::parse_certs(&cert_chain_pem)?;
        crate::pem::parse_key(&key)?;
        Ok(Identity {
            cert_chain_pem,
            key,
        })
    }

    /// Saves the certificate (mode 644) and the key (mode 600).
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
        files::write_key(key_path, &self.key)?;
        files::write_cert(cert_path, &self.cert_chain_pem)
    }
}
