//! What a host's certificate names: its DNS name (checked as certificate verification reads
//! it) and its IP addresses.

use std::net::IpAddr;

use rcgen::SanType;

use crate::error::TlsError;

/// The subject alternative names of a host: its DNS name and its addresses.
pub(crate) fn host_names(host_name: &str, ips: &[IpAddr]) -> Result<Vec<SanType>, TlsError> {
    names(&[host_name], ips)
}

/// Subject alternative names: DNS names (at least one) and addresses.
pub(crate) fn names(dns_names: &[&str], ips: &[IpAddr]) -> Result<Vec<SanType>, TlsError> {
    if dns_names.is_empty() {
        return Err(TlsError::HostName(String::new()));
    }
    let mut names = Vec::with_capacity(dns_names.len() + ips.len());
    for host_name in dns_names {
        let bad = || TlsError::HostName(host_name.to_string());
        // A DNS name as certificate verification understands it (no IP literal, no junk).
        let dns = rustls::pki_types::DnsName::try_from(*host_name).map_err(|_| bad())?;
        if host_name.parse::<IpAddr>().is_ok() {
            return Err(bad());
        }
        names.push(SanType::DnsName(
            dns.as_ref().to_string().try_into().map_err(|_| bad())?,
        ));
    }
    names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    Ok(names)
}
