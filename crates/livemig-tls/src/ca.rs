//! The RMS's certificate authority: generated once, kept as two PEM files (the key owner-only),
//! signing the certificate requests agents send at registration.
//!
//! The CA decides what a certificate says: the request contributes its public key (its
//! signature proves the requester holds the private key) and nothing else; names, addresses,
//! usages and validity are the CA's.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};

use crate::config::provider;
use crate::error::TlsError;
use crate::files::{self, KeyPem};
use crate::identity::Identity;
use crate::names::names;

/// How long a CA certificate is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a host's certificate is valid (renewed at every registration).
pub const HOST_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates start this much before they are issued (clocks of hosts differ a little).
pub const BACKDATE: Duration = Duration::from_secs(300);

/// A certificate authority: its certificate (to distribute) and its signing key (to keep).
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA named `name` (its certificate's common name), ECDSA P-256, valid for
    /// [`CA_VALIDITY`]; it signs host certificates only (path length 0).
    pub fn generate(name: &str) -> Result<Ca, TlsError> {
        Ca::generate_for(name, CA_VALIDITY)
    }

    /// [`Ca::generate`] with a chosen validity.
    pub fn generate_for(name: &str, validity: Duration) -> Result<Ca, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Cert)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, validity)?;
        params.serial_number = Some(serial()?);
        let cert = params.self_signed(&key).map_err(TlsError::Cert)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A CA from its certificate and key; refused when the key is not the certificate's.
    pub fn from_pem(cert_pem: &str, key: &KeyPem) -> Result<Ca, TlsError> {
        let key = KeyPair::from_pem(key.as_str()).map_err(TlsError::Cert)?;
        let cert = crate::pem::parse_certs(cert_pem)?;
        let spki = spki_of(&cert[0])?;
        if spki != key.public_key_raw() {
            return Err(TlsError::KeyMismatch);
        }
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key,
        })
    }

    /// Loads the CA from its certificate file and its key file (refused when the key file
    /// can be read by the group or others).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Ca, TlsError> {
        let key = files::read_key(key_path)?;
        Ca::from_pem(&files::read_cert(cert_path)?, &key)
    }

    /// Saves the certificate (mode 644) and the key (mode 600).
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
        files::write_key(key_path, &self.key_pem())?;
        files::write_cert(cert_path, &self.cert_pem)
    }

    /// The CA's certificate: what every host trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key.
    pub fn key_pem(&self) -> KeyPem {
        KeyPem::new(self.key.serialize_pem())
    }

    /// Signs a host's certificate request: the certificate names `host_name` (common name
    /// and DNS name) and `ips`, serves as both a TLS server and a TLS client certificate, and
    /// is valid for `validity` (from [`BACKDATE`] ago). The request must be signed by its
    /// key; what else it asks for is ignored. Returns the certificate in PEM.
    pub fn issue(
        &self,
        csr_pem: &str,
        host_name: &str,
        ips: &[IpAddr],
        validity: Duration,
    ) -> Result<String, TlsError> {
        self.issue_names(csr_pem, &[host_name], ips, validity)
    }

    /// A key and a certificate for a service of the CA's own installation (the RMS's API):
    /// made here, named by `dns_names` (the first is the common name) and `ips`.
    pub fn issue_identity(
        &self,
        dns_names: &[&str],
        ips: &[IpAddr],
        validity: Duration,
    ) -> Result<Identity, TlsError> {
        let first = dns_names
            .first()
            .ok_or_else(|| TlsError::HostName(String::new()))?;
        let (key, csr) = Identity::generate_csr(first, ips)?;
        let cert = self.issue_names(&csr, dns_names, ips, validity)?;
        Ok(Identity {
            cert_chain_pem: cert,
            key,
        })
    }

    /// [`Ca::issue`] naming several DNS names (the first is the common name).
    pub fn issue_names(
        &self,
        csr_pem: &str,
        dns_names: &[&str],
        ips: &[IpAddr],
        validity: Duration,
    ) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(TlsError::Csr)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(dns_names.first().copied().unwrap_or_default());
        params.subject_alt_names = names(dns_names, ips)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity)?;
        params.serial_number = Some(serial()?);
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(TlsError::Cert)?;
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = request.signed_by(&issuer).map_err(TlsError::Cert)?;
        Ok(cert.pem())
    }
}

/// A distinguished name of just a common name.
fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Duration) -> Result<(), TlsError> {
    let span = |d: Duration| time::Duration::try_from(d).map_err(|_| TlsError::Validity(validity));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - span(BACKDATE)?;
    params.not_after = now
        .checked_add(span(validity)?)
        .filter(|t| t.year() < 9999)
        .ok_or(TlsError::Validity(validity))?;
    Ok(())
}

/// A random positive 128-bit serial number.
fn serial() -> Result<SerialNumber, TlsError> {
    let mut b = [0u8; 16];
    provider()
        .secure_random
        .fill(&mut b)
        .map_err(|e| TlsError::Config(rustls::Error::from(e)))?;
    b[0] &= 0x7f;
    b[0] |= 0x01;
    Ok(SerialNumber::from_slice(&b))
}

/// The subject public key (the bit string's content) of a DER certificate.
fn spki_of(cert: &[u8]) -> Result<Vec<u8>, TlsError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|_| TlsError::Cert(rcgen::Error::CouldNotParseCertificate))?;
    Ok(x509.public_key().subject_public_key.data.to_vec())
}
