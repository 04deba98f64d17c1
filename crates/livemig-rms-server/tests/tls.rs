//! An RMS with a CA serves its API over HTTPS, issues host certificates at registration and
//! refuses what it cannot certify.

mod common;

use common::{call_by, client, Rms, TOKEN};
use reqwest::Method;
use serde_json::json;

fn register(name: &str, data_host: &str, csr: Option<&str>) -> serde_json::Value {
    let mut r = json!({"name": name, "address": format!("{data_host}:1"), "data_host": data_host,
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
    let url = rms.url("/api/v1/agents/register");
    assert!(url.starts_with("https://"), "{url}");
    let https = client(Some(&ca_pem));
    let call = |m: Method, u: &str, b: Option<serde_json::Value>| {
        let https = https.clone();
        let u = u.to_string();
        async move { call_by(&https, m, &u, b, Some(TOKEN)).await }
    };
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
    // Without a request: refused (the RMS could not call that agent's HTTPS API).
    let (status, body) = call(
        Method::POST,
        &url,
        Some(register("host-b", "127.0.0.3", None)),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("needs a certificate request"),
        "{body}"
    );
    // A certificate is a claim: not on the RMS's own address or name, not on another host's.
    let (_key, csr) = livemig_tls::Identity::generate_csr("host-x", &[]).expect("a CSR");
    for (name, data_host, words) in [
        ("host-x", "127.0.0.1", "the RMS's own address"),
        ("localhost", "127.0.0.9", "a name of the RMS"),
        ("host-y", "127.0.0.2", "host `host-a` is registered"),
    ] {
        let (status, body) = call(
            Method::POST,
            &url,
            Some(register(name, data_host, Some(&csr))),
        )
        .await;
        assert_eq!(status, 409, "{name}: {body}");
        assert!(body.to_string().contains(words), "{name}: {body}");
    }
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

#[tokio::test]
async fn the_api_is_https_only_and_trusts_nobody_else() {
    let dir = tempfile::tempdir().expect("a directory");
    let ca = livemig_tls::Ca::generate("test CA").expect("a CA");
    let ca_pem = ca.cert_pem().to_string();
    let rms = Rms::start_with_ca(dir.path(), 30.0, ca).await;
    let https = client(Some(&ca_pem));
    let hosts = rms.url("/api/v1/hosts");
    let (status, body) = call_by(&https, Method::GET, &hosts, None, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    // Still the token: TLS is not authentication.
    let (status, _) = call_by(&https, Method::GET, &hosts, None, Some("wrong")).await;
    assert_eq!(status, 401);
    // Plain HTTP to the HTTPS port gets no answer.
    let plain = format!("http://{}/healthz", rms.addr);
    assert!(common::http().get(&plain).send().await.is_err());
    // A client trusting another CA (a man in the middle's view of it) fails its handshake.
    let other = livemig_tls::Ca::generate("other CA").expect("a CA");
    let wrong = client(Some(other.cert_pem()));
    assert!(wrong.get(rms.url("/healthz")).send().await.is_err());
    // A client trusting nothing fails too.
    assert!(client(None).get(rms.url("/healthz")).send().await.is_err());
    // A connection that says nothing (a port scan) and one sending junk for a handshake do
    // not stop the RMS from serving.
    let idle = tokio::net::TcpStream::connect(rms.addr)
        .await
        .expect("connect");
    {
        use tokio::io::AsyncWriteExt;
        let mut junk = tokio::net::TcpStream::connect(rms.addr)
            .await
            .expect("connect");
        let _ = junk
            .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0])
            .await;
    }
    let (status, _) = call_by(&https, Method::GET, &rms.url("/healthz"), None, None).await;
    assert_eq!(status, 200);
    drop(idle);
    rms.stop().await;
}
