//! The agent's HTTP API end to end over loopback: tokens, bodies, capacity, VMs, metrics, and
//! junk connections that must not take the service down.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{exchange, request, Harness, MIB, TOKEN};
use livemig_agent::ServerConfig;

fn harness() -> Harness {
    Harness::start(16 * MIB, ServerConfig::default())
}

fn info(h: &Harness) -> serde_json::Value {
    let r = h.call("GET", "/api/v1/info", None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[test]
fn healthz_needs_no_token_everything_else_does_and_refusals_change_nothing() {
    let h = harness();
    let r = request(h.addr, "GET", "/healthz", None, None);
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let before = info(&h);
    let attempts: [(&str, &str, Option<&str>); 7] = [
        ("GET", "/api/v1/info", None),
        (
            "POST",
            "/api/v1/capacity",
            Some(r#"{"memory_bytes": 1048576}"#),
        ),
        ("DELETE", "/api/v1/capacity/res-1", None),
        ("GET", "/api/v1/vms", None),
        (
            "POST",
            "/api/v1/vms",
            Some(r#"{"name": "vm1", "memory_bytes": 1048576, "workload": "uniform:rate=1MiB/s"}"#),
        ),
        ("GET", "/metrics", None),
        ("GET", "/no/such/route", None),
    ];
    for (method, path, body) in attempts {
        for token in [
            None,
            Some("wrong"),
            Some(""),
            Some(&TOKEN[..TOKEN.len() - 1]),
        ] {
            let r = request(h.addr, method, path, token, body);
            assert_eq!(r.status, 401, "{method} {path} with {token:?}: {}", r.body);
            assert!(r.error().contains("token"), "{}", r.body);
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
    // A token in the wrong scheme is no token.
    let raw = format!("GET /api/v1/info HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Basic {TOKEN}\r\n\r\n");
    assert_eq!(exchange(h.addr, raw.as_bytes()).status, 401);
    assert_eq!(info(&h), before, "refused requests changed nothing");
    let metrics = h.call("GET", "/metrics", None).body;
    assert!(
        metrics.contains("\nlivemig_agent_unauthorized_requests_total 29\n"),
        "{metrics}"
    );
}

#[test]
fn malformed_json_and_unknown_fields_are_400_with_the_reason() {
    let h = harness();
    let cases = [
        (r#"{"memory_bytes": "#, "EOF"),
        (
            r#"{"memory_bytes": 1, "extra": 2}"#,
            "unknown field `extra`",
        ),
        (r#"{"memory_bytes": -1}"#, "invalid value"),
        (r#"{"memory_bytes": "1MiB"}"#, "invalid type"),
        ("", "EOF"),
        ("\"a string\"", "invalid type"),
    ];
    for (body, reason) in cases {
        let r = h.call("POST", "/api/v1/capacity", Some(body));
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let e = r.error();
        assert!(
            e.starts_with("invalid JSON body: ") && e.contains(reason),
            "{body}: {e}"
        );
    }
    let r = h.call(
        "POST",
        "/api/v1/vms",
        Some(r#"{"name": "a", "memory_bytes": 4096, "workload": "idle", "cpu": 2}"#),
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("unknown field `cpu`"), "{}", r.body);
    assert_eq!(info(&h)["reservations"], 0);
}

#[test]
fn bodies_over_the_cap_are_413_declared_or_chunked() {
    let h = Harness::start(
        16 * MIB,
        ServerConfig {
            http: livemig_http::ServerConfig {
                body_limit: 1024,
                ..livemig_http::ServerConfig::default()
            },
            ..ServerConfig::default()
        },
    );
    let big = format!(r#"{{"memory_bytes": 1, "pad": "{}"}}"#, "x".repeat(4000));
    let r = h.call("POST", "/api/v1/capacity", Some(&big));
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.error(), "the request body is larger than 1024 bytes");
    // Without a Content-Length: chunked, counted as it arrives.
    let chunk = "x".repeat(900);
    let raw = format!(
        "POST /api/v1/capacity HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\r\n{chunk}\r\n{n:x}\r\n{chunk}\r\n0\r\n\r\n",
        n = chunk.len()
    );
    let r = exchange(h.addr, raw.as_bytes());
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.error().contains("larger than 1024"));
    assert_eq!(info(&h)["reservations"], 0);
}

#[test]
fn capacity_is_reserved_refused_when_full_and_freed_by_expiry_and_release() {
    let h = harness();
    let ask = |bytes: u64| {
        let r = h.call(
            "POST",
            "/api/v1/capacity",
            Some(&format!(r#"{{"memory_bytes": {bytes}}}"#)),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };
    let a = ask(12 * MIB);
    assert_eq!(a["answer"], "accepted", "{a}");
    assert_eq!(a["reservation"]["expires_at"], 1030.0);
    let id = a["reservation"]["id"].as_str().expect("id").to_string();
    assert_eq!(info(&h)["memory_free_bytes"], 4 * MIB);

    let refused = ask(8 * MIB);
    assert_eq!(refused["answer"], "refused");
    assert_eq!(
        refused["reason"],
        format!(
            "not enough memory: {} bytes asked, {} bytes free",
            8 * MIB,
            4 * MIB
        )
    );

    // Expiry frees it.
    h.advance(30.0);
    assert_eq!(info(&h)["memory_free_bytes"], 16 * MIB);
    let r = h.call("DELETE", &format!("/api/v1/capacity/{id}"), None);
    assert_eq!(r.status, 404, "an expired reservation is gone: {}", r.body);

    // Release frees it.
    let b = ask(8 * MIB);
    let id = b["reservation"]["id"].as_str().expect("id").to_string();
    assert_eq!(ask(8 * MIB)["answer"], "accepted");
    assert_eq!(ask(1)["answer"], "refused");
    let r = h.call("DELETE", &format!("/api/v1/capacity/{id}"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["memory_bytes"], 8 * MIB);
    assert_eq!(info(&h)["memory_free_bytes"], 8 * MIB);
    assert_eq!(ask(8 * MIB)["answer"], "accepted");
}

#[test]
fn vms_are_created_listed_and_deleted_within_capacity() {
    let h = harness();
    let create = |body: &str| h.call("POST", "/api/v1/vms", Some(body));
    let r =
        create(r#"{"name": "vm1", "memory_bytes": 4194304, "workload": "uniform:rate=1MiB/s"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["kind"], "sim");
    assert_eq!(r.json()["running"], true);

    let r = create(r#"{"name": "vm1", "memory_bytes": 4096, "workload": "idle"}"#);
    assert_eq!(r.status, 409, "{}", r.body);
    let r = create(r#"{"name": "big", "memory_bytes": 16777216, "workload": "idle"}"#);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.error().starts_with("not enough memory"), "{}", r.body);
    for bad in [
        r#"{"name": "../x", "memory_bytes": 4096, "workload": "idle"}"#,
        r#"{"name": "t", "memory_bytes": 4096, "workload": "trace:file=/etc/passwd"}"#,
        r#"{"name": "t", "memory_bytes": 4097, "workload": "idle"}"#,
        r#"{"name": "t", "memory_bytes": 0, "workload": "idle"}"#,
        r#"{"name": "t", "memory_bytes": 4096, "workload": "idle", "kind": "qemu"}"#,
    ] {
        let r = create(bad);
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    assert_eq!(
        info(&h)["memory_free_bytes"],
        12 * MIB,
        "failed creations gave memory back"
    );

    let list = h.call("GET", "/api/v1/vms", None).json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["name"], "vm1");
    let r = h.call("GET", "/api/v1/vms/vm1", None);
    assert_eq!(
        (r.status, r.json()["memory_bytes"].as_u64()),
        (200, Some(4 * MIB))
    );
    assert_eq!(h.call("GET", "/api/v1/vms/nope", None).status, 404);

    let r = h.call("DELETE", "/api/v1/vms/vm1", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(h.call("GET", "/api/v1/vms/vm1", None).status, 404);
    assert_eq!(h.call("DELETE", "/api/v1/vms/vm1", None).status, 404);
    let i = info(&h);
    assert_eq!(
        (
            i["memory_free_bytes"].as_u64(),
            i["vms"].as_array().map(Vec::len)
        ),
        (Some(16 * MIB), Some(0))
    );
}

#[test]
fn metrics_are_prometheus_text() {
    let h = harness();
    h.call(
        "POST",
        "/api/v1/capacity",
        Some(r#"{"memory_bytes": 1048576}"#),
    );
    let r = h.call("GET", "/metrics", None);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    let mut values = std::collections::BTreeMap::new();
    for line in r.body.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let kind = rest.split(' ').next();
            assert!(matches!(kind, Some("HELP" | "TYPE")), "{line}");
            continue;
        }
        let (name, value) = line.split_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "{line}"
        );
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        values.insert(name.to_string(), v);
    }
    assert_eq!(
        values["livemig_agent_memory_total_bytes"],
        (16 * MIB) as f64
    );
    assert_eq!(values["livemig_agent_memory_free_bytes"], (15 * MIB) as f64);
    assert_eq!(values["livemig_agent_reservations"], 1.0);
    assert_eq!(values["livemig_agent_vms"], 0.0);
}

#[test]
fn errors_are_json_everywhere() {
    let h = harness();
    let r = h.call("GET", "/nope", None);
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "no such route");
    let r = h.call("PUT", "/api/v1/info", None);
    assert_eq!(r.status, 405);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c == "application/json"));
}

/// A port scan, junk and slow clients: afterwards (and while idle ones still hang on) the
/// agent answers `/healthz` and a real request.
#[test]
fn junk_connections_leave_the_service_running() {
    let mut h = Harness::start(
        16 * MIB,
        ServerConfig {
            http: livemig_http::ServerConfig {
                header_read_timeout: Duration::from_millis(500),
                max_connections: 8,
                ..livemig_http::ServerConfig::default()
            },
            ..ServerConfig::default()
        },
    );
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), // a TLS ClientHello
        b"GET /healthz HTTP/1.1\r\nHost:".to_vec(),               // half a request
        b"\r\n\r\n\r\n".to_vec(),
        b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(),
        vec![0xff; 70_000], // bytes without a line end, past the buffer cap
        format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100_000)).into_bytes(),
        b"POST /api/v1/capacity HTTP/1.1\r\nContent-Length: 999999\r\n\r\n{".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
    ];
    // Connect-and-close, several rounds of every kind of junk.
    for _ in 0..4 {
        for bytes in &junk {
            if let Ok(mut s) = TcpStream::connect_timeout(&h.addr, Duration::from_secs(2)) {
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(bytes);
            }
        }
    }
    // More idle connections than the server serves at once, held open.
    let idle: Vec<TcpStream> = (0..20)
        .filter_map(|_| TcpStream::connect_timeout(&h.addr, Duration::from_secs(2)).ok())
        .collect();
    let t = Instant::now();
    let r = request(h.addr, "GET", "/healthz", None, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let r = h.call(
        "POST",
        "/api/v1/capacity",
        Some(r#"{"memory_bytes": 4096}"#),
    );
    assert_eq!(r.json()["answer"], "accepted", "{}", r.body);
    drop(idle);
    assert_eq!(request(h.addr, "GET", "/healthz", None, None).status, 200);
    assert!(h.stop(), "the server stopped within its grace");
}

#[test]
fn stop_ends_the_server_with_a_connection_open() {
    let mut h = harness();
    let _idle = TcpStream::connect(h.addr).expect("connect");
    assert_eq!(request(h.addr, "GET", "/healthz", None, None).status, 200);
    let t = Instant::now();
    assert!(h.stop());
    assert!(t.elapsed() < Duration::from_secs(7), "{:?}", t.elapsed());
}
