//! An RMS with a CA issues host certificates at registration and refuses what it cannot
//! certify.

mod common;

use common::{call, Rms};
use reqwest::Method;
use serde_json::json;

fn register(name: &str, data_host: &str, csr: Option<&str>) -> serde_json::Value {
    let mut r = json!({"name": name, "address": "127.0.0.1:1", "data_host": data_host,
        "memory_total_bytes": 1u64 << 30, "memory_free_bytes": 1u64 << 30});
    if let Some(c) = csr {
        r["csr_pem"] = c.into();
    }
    r
}

#[tokio::test]
async fn registration_with_a_ca_issues_a_certificate_naming_the_host_and_its_data_ip() {
    let dir = tempfile::tempdir().expect("a directory");
    let ca = livemig_tls::Ca::generate("test CA").expect("a CA");
    let ca_pem = ca.cert_pem().to_string();
    let rms = Rms::start_with_ca(dir.path(), 30.0, ca).await;
    let url = format!("http://{}/api/v1/agents/register", rms.addr);
    let ip: std::net::IpAddr = "127.0.0.2".parse().expect("an IP");
    let (key, csr) = livemig_tls::Identity::generate_csr("host-a", &[ip]).expect("a CSR");
    let (status, body) = call(
        Method::POST,
        &url,
        Some(register("host-a", "127.0.0.2", Some(&csr))),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ca_pem"].as_str(), Some(ca_pem.as_str()));
    let cert = body["cert_pem"]
        .as_str()
        .expect("a certificate")
        .to_string();
    // The certificate works with the agent's key, as a server for its data IP.
    let identity = livemig_tls::Identity {
        cert_chain_pem: cert,
        key,
    };
    livemig_tls::server_config(&identity.cert_chain_pem, &identity.key, Some(&ca_pem))
        .expect("a server configuration");
    livemig_tls::client_config(&ca_pem, Some(&identity)).expect("a client configuration");
    // Without a request: the CA only.
    let (status, body) = call(
        Method::POST,
        &url,
        Some(register("host-b", "127.0.0.3", None)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("cert_pem").is_none(), "{body}");
    assert!(body["ca_pem"].is_string(), "{body}");
    // A request that is not one is a 422 with the reason.
    let (status, body) = call(
        Method::POST,
        &url,
        Some(register("host-c", "127.0.0.4", Some("not a request"))),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("no certificate for `host-c`"),
        "{body}"
    );
    rms.stop().await;
}
