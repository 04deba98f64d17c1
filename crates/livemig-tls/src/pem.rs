//! PEM text into rustls's types: a certificate chain, a private key.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::TlsError;
use crate::files::KeyPem;

/// Every certificate in `pem`, in order (a chain: the leaf first).
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadPem {
            what: "certificate",
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The private key in `key`.
pub fn parse_key(key: &KeyPem) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(key.as_str().as_bytes()).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPem {
            what: "private key",
        },
        source => TlsError::BadPem {
            what: "private key",
            source,
        },
    })
}
