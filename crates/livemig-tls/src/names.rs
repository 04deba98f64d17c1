//! What a host's certificate names: its DNS name (checked as certificate verification reads
//! it) and its IP addresses.

use std::net::IpAddr;

use rcgen::SanType;

use crate::error::TlsError;

/// The subject alternative names of a host: its DNS name and its addresses.
pub(crate) fn host_names(host_name: &str, ips: &[IpAddr]) -> Result<Vec<SanType>, TlsError> {
    let bad = || TlsError::HostName(host_name.to_string());
    // A DNS name as certificate verification understands it (no IP literal, no junk).
    let dns = rustls::pki_types::DnsName::try_from(host_name).map_err(|_| bad())?;
    if host_name.parse::<IpAddr>().is_ok() {
        return Err(bad());
    }
    let mut names = vec![SanType::DnsName(
        dns.as_ref().to_string().try_into().map_err(|_| bad())?,
    )];
    names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    Ok(names)
}
