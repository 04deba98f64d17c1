//! The CA and hosts' identities: files and their modes, request → certificate → load round
//! trips, what a certificate says, and what is refused.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use livemig_tls::files::{read_key, write_key};
use livemig_tls::{client_config, server_config, Ca, Identity, KeyPem, TlsError, HOST_VALIDITY};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// The subject alternative names of a PEM certificate, as text.
fn names(cert_pem: &str) -> Vec<String> {
    let der = livemig_tls::config::parse_certs(cert_pem).expect("pem");
    let (_, x) = x509_parser::parse_x509_certificate(der[0].as_ref()).expect("x509");
    let san = x
        .subject_alternative_name()
        .expect("ext")
        .expect("has SANs");
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*b).expect("v4")).to_string(),
                _ => IpAddr::from(<[u8; 16]>::try_from(*b).expect("v6")).to_string(),
            },
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn csr_issue_save_load_round_trip() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca_crt, ca_key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    let ca = Ca::generate("livemig test CA").expect("ca");
    ca.save(&ca_crt, &ca_key).expect("save");
    assert_eq!(mode(&ca_key), 0o600, "the CA's key is the owner's only");
    assert_eq!(mode(&ca_crt), 0o644);
    let ca = Ca::load(&ca_crt, &ca_key).expect("load");

    // The host: key and request made locally; the key is written, only the request leaves.
    let ips = [ip("10.0.0.7"), ip("fd00::7")];
    let (key, csr) = Identity::generate_csr("node-7.example", &ips).expect("csr");
    assert!(
        csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{csr}"
    );
    assert!(!csr.contains("PRIVATE KEY"));
    let cert = ca
        .issue(&csr, "node-7.example", &ips, HOST_VALIDITY)
        .expect("issue");
    let id = Identity {
        cert_chain_pem: cert.clone(),
        key,
    };
    let (crt, keyf) = (dir.path().join("host.crt"), dir.path().join("host.key"));
    id.save(&crt, &keyf).expect("save");
    assert_eq!(mode(&keyf), 0o600);
    let back = Identity::load(&crt, &keyf).expect("load");
    assert_eq!(back.cert_chain_pem, cert);
    assert_eq!(back.key, id.key);
    assert_eq!(
        names(&cert),
        ["node-7.example", "10.0.0.7", "fd00::7"],
        "its name and its addresses"
    );
    // Usable on both sides of mutual TLS.
    server_config(&back.cert_chain_pem, &back.key, Some(ca.cert_pem())).expect("server");
    client_config(ca.cert_pem(), Some(&back)).expect("client");
}

#[test]
fn the_ca_decides_what_a_certificate_names() {
    let ca = Ca::generate("ca").expect("ca");
    // The request asks for another name and address; the CA ignores both.
    let (_, csr) = Identity::generate_csr("rms.example", &[ip("10.9.9.9")]).expect("csr");
    let cert = ca
        .issue(&csr, "node-1.example", &[ip("10.0.0.1")], HOST_VALIDITY)
        .expect("issue");
    assert_eq!(names(&cert), ["node-1.example", "10.0.0.1"]);
    let der = livemig_tls::config::parse_certs(&cert).expect("pem");
    let (_, x) = x509_parser::parse_x509_certificate(der[0].as_ref()).expect("x509");
    assert!(!x.is_ca(), "a host certificate cannot sign");
    let eku = x.extended_key_usage().expect("ext").expect("eku").value;
    assert!(eku.server_auth && eku.client_auth);
    let days = (x.validity().not_after.timestamp() - x.validity().not_before.timestamp()) / 86400;
    assert_eq!(days, 90, "HOST_VALIDITY plus the backdating");
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let (crt, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    Ca::generate("ca")
        .expect("ca")
        .save(&crt, &key)
        .expect("save");
    for m in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(m)).expect("chmod");
        let e = Ca::load(&crt, &key).expect_err("exposed");
        assert!(
            matches!(e, TlsError::Exposed { mode, .. } if mode == m),
            "{m:o}: {e}"
        );
        assert!(matches!(read_key(&key), Err(TlsError::Exposed { .. })));
        assert!(matches!(
            Identity::load(&crt, &key),
            Err(TlsError::Exposed { .. })
        ));
    }
    // Writing a key narrows a file that existed with a wider mode.
    write_key(&key, &KeyPem::new("x".into())).expect("write");
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn a_ca_key_that_is_not_the_certificates_is_refused() {
    let a = Ca::generate("a").expect("a");
    let b = Ca::generate("b").expect("b");
    let e = Ca::from_pem(a.cert_pem(), &b.key_pem()).expect_err("mismatch");
    assert!(matches!(e, TlsError::KeyMismatch), "{e}");
    Ca::from_pem(a.cert_pem(), &a.key_pem()).expect("its own key");
}

#[test]
fn bad_requests_and_names_are_refused() {
    let ca = Ca::generate("ca").expect("ca");
    let (_, csr) = Identity::generate_csr("node.example", &[]).expect("csr");
    for bad in ["", "not a name", "10.0.0.1", "a..b", "-x-.example"] {
        assert!(
            matches!(
                ca.issue(&csr, bad, &[], HOST_VALIDITY),
                Err(TlsError::HostName(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        ca.issue("junk", "node.example", &[], HOST_VALIDITY),
        Err(TlsError::Csr(_))
    ));
    // A request whose signature does not verify (one byte of its body altered).
    let der = {
        let body: String = csr.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut b = body.into_bytes();
        let i = b.len() / 2;
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).expect("ascii")
    };
    let tampered =
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{der}\n-----END CERTIFICATE REQUEST-----\n");
    assert!(matches!(
        ca.issue(&tampered, "node.example", &[], HOST_VALIDITY),
        Err(TlsError::Csr(_))
    ));
    assert!(matches!(
        ca.issue(&csr, "node.example", &[], Duration::from_secs(u64::MAX)),
        Err(TlsError::Validity(_))
    ));
    assert!(matches!(
        server_config("no pem here", &KeyPem::new(String::new()), None),
        Err(TlsError::NoPem { .. })
    ));
}
