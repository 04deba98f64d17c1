//! Every route but `/healthz` and the dashboard's files wants the token (401, nothing changes);
//! bodies are capped and decoded strictly (413, 400 with the reason); junk on the socket leaves
//! the RMS serving.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_nothing_changes() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rms = Rms::start(dir.path(), 30.0).await;
    let (status, _) = call_as(Method::GET, &rms.url("/healthz"), None, None).await;
    assert_eq!(status, 200);
    let register = json!({"name": "x", "address": "127.0.0.1:1", "data_host": "127.0.0.1",
        "memory_total_bytes": 1024, "memory_free_bytes": 1024});
    let routes = [
        (Method::GET, "/api/v1/hosts", None),
        (Method::GET, "/api/v1/vms", None),
        (
            Method::POST,
            "/api/v1/vms",
            Some(json!({"name": "v", "memory_bytes": 4096, "workload": "idle", "kind": "sim"})),
        ),
        (Method::DELETE, "/api/v1/vms/v", None),
        (Method::GET, "/api/v1/migrations", None),
        (Method::POST, "/api/v1/migrations", Some(json!({"vm": "v"}))),
        (Method::GET, "/api/v1/migrations/1", None),
        (Method::DELETE, "/api/v1/migrations/1", None),
        (
            Method::POST,
            "/api/v1/migrations/1/resolve",
            Some(json!({"host": "x"})),
        ),
        (Method::POST, "/api/v1/agents/register", Some(register)),
        (
            Method::POST,
            "/api/v1/agents/heartbeat",
            Some(json!({"name": "x", "memory_free_bytes": 1})),
        ),
        (
            Method::POST,
            "/api/v1/agents/events",
            Some(json!({"host": "x", "migration": 1, "event": {"event": "committed"}})),
        ),
        (Method::GET, "/metrics", None),
    ];
    for (method, path, body) in routes {
        for token in [None, Some("wrong-token")] {
            let (status, v) = call_as(method.clone(), &rms.url(path), body.clone(), token).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {v}");
            assert!(
                v["error"].as_str().is_some_and(|e| e.contains("token")),
                "{v}"
            );
        }
    }
    let (_, hosts) = call(Method::GET, &rms.url("/api/v1/hosts"), None).await;
    assert_eq!(hosts, json!([]), "a refused registration changed nothing");
    let (_, metrics) = call(Method::GET, &rms.url("/metrics"), None).await;
    assert!(
        metrics
            .as_str()
            .is_some_and(|m| m.contains("livemig_rms_unauthorized_total 26")),
        "{metrics}"
    );
    rms.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rms = Rms::start(dir.path(), 30.0).await;
    let client = http();
    let send = |body: Vec<u8>| {
        client
            .post(rms.url("/api/v1/migrations"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(body)
    };
    for (body, want) in [
        (b"{not json".to_vec(), "invalid JSON"),
        (br#"{"vm": 3}"#.to_vec(), "invalid JSON"),
        (br#"{"vm": "v", "surprise": 1}"#.to_vec(), "unknown field"),
        // What no store can hold is refused at the door (a store failure would stop the RMS).
        (br#"{"vm": "v\u0000"}"#.to_vec(), "NUL"),
        (
            br#"{"vm": "v", "settings": {"rounds": 18446744073709551615}}"#.to_vec(),
            "larger than",
        ),
    ] {
        let r = send(body).send().await.expect("an answer");
        assert_eq!(r.status().as_u16(), 400);
        let v: serde_json::Value = r.json_or_text().await;
        assert!(v["error"].as_str().is_some_and(|e| e.contains(want)), "{v}");
    }
    // A registration with an impossible size changes nothing either.
    let (status, v) = call(
        Method::POST,
        &rms.url("/api/v1/agents/register"),
        Some(
            json!({"name": "x", "address": "127.0.0.1:1", "data_host": "127.0.0.1",
            "memory_total_bytes": u64::MAX, "memory_free_bytes": 1}),
        ),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let (_, hosts) = call(Method::GET, &rms.url("/api/v1/hosts"), None).await;
    assert_eq!(hosts, json!([]));
    let big = vec![b' '; 65 * 1024];
    let r = send(big).send().await.expect("an answer");
    assert_eq!(r.status().as_u16(), 413);
    // A bad id is a 400 too; an unknown one a 404.
    let (status, _) = call(Method::GET, &rms.url("/api/v1/migrations/nope"), None).await;
    assert_eq!(status, 400);
    let (status, _) = call(Method::GET, &rms.url("/api/v1/migrations/77"), None).await;
    assert_eq!(status, 404);
    rms.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_the_socket_leaves_the_rms_serving() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rms = Rms::start(dir.path(), 30.0).await;
    let addr = rms.addr;
    tokio::task::spawn_blocking(move || {
        // A port scan: connect and close; random bytes; a silent socket; a huge header.
        for junk in [
            &b""[..],
            b"\x16\x03\x01\x00\xa5\x01\x00\x00",
            b"GET / HTTP/1.1\r\nX: ",
        ] {
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                let _ = s.write_all(junk);
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf);
            }
        }
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n");
            let _ = s.write_all(&vec![b'a'; 200 * 1024]);
        }
    })
    .await
    .expect("the junk thread");
    let (status, _) = call(Method::GET, &rms.url("/api/v1/hosts"), None).await;
    assert_eq!(status, 200);
    rms.stop().await;
}

trait JsonOrText {
    async fn json_or_text(self) -> serde_json::Value;
}

impl JsonOrText for reqwest::Response {
    async fn json_or_text(self) -> serde_json::Value {
        let b = self.bytes().await.expect("a body");
        serde_json::from_slice(&b).unwrap_or_else(|_| json!(String::from_utf8_lossy(&b)))
    }
}

/// The dashboard's page and assets answer without a token, with their strict headers; every
/// API route, and any other path, still wants it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_dashboard_files_are_open() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rms = Rms::start(dir.path(), 30.0).await;
    let client = http();
    for (method, path) in livemig_rms_server::routes::OPEN_ROUTES {
        assert_eq!(*method, "GET");
        let r = client
            .get(rms.url(path))
            .send()
            .await
            .expect("the RMS answers");
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let h = r.headers();
        let header = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(
            header("content-security-policy"),
            livemig_rms_server::dashboard::CSP,
            "{path}"
        );
        assert!(header("content-security-policy").contains("script-src 'self';"));
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("cache-control"), "no-store", "{path}");
        let kind = header("content-type");
        let wanted = match *path {
            "/" => "text/html",
            p if p.ends_with(".js") => "text/javascript",
            _ => "text/css",
        };
        assert!(kind.starts_with(wanted), "{path}: {kind}");
        assert!(!r.text().await.expect("a body").is_empty());
    }
    // Every API route, its parameters filled in, wants the token.
    for (method, path) in livemig_rms_server::routes::ROUTES {
        let path = path.replace("{name}", "v").replace("{id}", "1");
        let method = Method::from_bytes(method.as_bytes()).expect("a method");
        let (status, v) = call_as(method.clone(), &rms.url(&path), None, None).await;
        assert_eq!(status, 401, "{method} {path}: {v}");
    }
    // So does any path the dashboard does not serve.
    for path in [
        "/index.html",
        "/assets/",
        "/assets/other.js",
        "/assets/dashboard.js/x",
        "/api/v1/budget",
        "/favicon.ico",
    ] {
        let (status, v) = call_as(Method::GET, &rms.url(path), None, None).await;
        assert_eq!(status, 401, "GET {path}: {v}");
    }
    // The open routes are read-only.
    let (status, _) = call_as(Method::POST, &rms.url("/"), Some(json!({})), None).await;
    assert_eq!(status, 405);
    rms.stop().await;
}
