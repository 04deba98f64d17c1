//! Migrations over mutual TLS: two agents register with a stand-in RMS that has a CA (each
//! gets a certificate naming its data IP), and a VM migrates with `tls: true`; an agent
//! without a certificate refuses a TLS migration clearly.

mod common;

use std::time::Duration;

use common::{wait_until, FakeRms, Harness, Options, MIB};
use serde_json::{json, Value};

const KEY: &str = "3333333333333333333333333333333333333333333333333333333333333333";
const WAIT: Duration = Duration::from_secs(60);

fn agent(name: &str, rms: &FakeRms, ca_pem: Option<&str>) -> Harness {
    let mut o = Options::new(name, 128 * MIB);
    o.rms = Some((rms.url.clone(), 0.2));
    o.ca_pem = ca_pem.map(str::to_string);
    Harness::start_with(o)
}

/// `migration` in `h`'s run report.
fn local(h: &Harness, migration: u64) -> Value {
    let r = h.call("GET", "/api/v1/report", None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["migrations"][migration.to_string()].clone()
}

fn reserve(h: &Harness, memory: u64) -> String {
    let r = h.post("/api/v1/capacity", &json!({ "memory_bytes": memory }));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["reservation"]["id"]
        .as_str()
        .expect("id")
        .to_string()
}

fn incoming(h: &Harness, migration: u64, reservation: &str, vm: &str, mem: u64) -> common::Reply {
    h.post(
        "/api/v1/incoming",
        &json!({
            "migration": migration,
            "reservation": reservation,
            "vm": {"name": vm, "memory_bytes": mem, "workload": "uniform:rate=2MiB/s", "kind": "sim"},
            "key": KEY,
            "tls": true,
        }),
    )
}

#[test]
fn a_vm_migrates_over_mutual_tls_with_certificates_issued_at_registration() {
    let ca = livemig_tls::Ca::generate("test CA").expect("a CA");
    let ca_pem = ca.cert_pem().to_string();
    let rms = FakeRms::start_with_ca(0.2, ca);
    let a = agent("host-a", &rms, Some(&ca_pem));
    let b = agent("host-b", &rms, Some(&ca_pem));
    let mem = 16 * MIB;
    let r = a.post(
        "/api/v1/vms",
        &json!({"name": "vm1", "memory_bytes": mem, "workload": "uniform:rate=2MiB/s"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    // Both registered with a certificate request (the key stayed on the host).
    assert!(
        wait_until(WAIT, || rms.of("register").len() >= 2
            && rms.of("heartbeat").len() >= 2),
        "{:?}",
        rms.of("register")
    );
    for reg in rms.of("register") {
        let csr = reg["csr_pem"].as_str().expect("a certificate request");
        assert!(csr.contains("CERTIFICATE REQUEST"), "{reg}");
        assert!(!reg.to_string().contains("PRIVATE KEY"), "{reg}");
    }
    let res = reserve(&b, mem);
    let r = incoming(&b, 1, &res, "vm1", mem);
    assert_eq!(r.status, 201, "{}", r.body);
    let data = r.json()["data_address"]
        .as_str()
        .expect("data_address")
        .to_string();
    let r = a.post(
        "/api/v1/outgoing",
        &json!({
            "migration": 1,
            "vm": "vm1",
            "target": "host-b",
            "data_address": data,
            "key": KEY,
            "policy": "fixed",
            "settings": {"bandwidth": "64MiB/s"},
            "tls": true,
        }),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        wait_until(WAIT, || local(&a, 1)["state"] == "handed_over"
            && local(&b, 1)["state"] == "handed_over"),
        "a: {}, b: {}, events {:?}",
        local(&a, 1),
        local(&b, 1),
        rms.of("events")
    );
    assert_eq!(local(&a, 1)["tls"], true, "{}", local(&a, 1));
    assert_eq!(local(&b, 1)["tls"], true, "{}", local(&b, 1));
}

#[test]
fn a_tls_migration_to_an_agent_without_a_certificate_is_refused() {
    // An RMS without a CA: the agents register but get no certificate.
    let rms = FakeRms::start(0.2);
    let b = agent("host-b", &rms, None);
    assert!(
        wait_until(WAIT, || !rms.of("register").is_empty()),
        "no registration"
    );
    let mem = 16 * MIB;
    let res = reserve(&b, mem);
    let r = incoming(&b, 1, &res, "vm1", mem);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.error().contains("no certificate"), "{}", r.body);
    // The source side refuses as clearly.
    let r = b.post(
        "/api/v1/outgoing",
        &json!({
            "migration": 2,
            "vm": "vm1",
            "target": "host-a",
            "data_address": "127.0.0.1:9",
            "key": KEY,
            "policy": "fixed",
            "tls": true,
        }),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.error().contains("no certificate"), "{}", r.body);
}

#[test]
fn a_certificate_from_a_ca_that_is_not_the_anchor_is_not_used() {
    // The RMS (or whoever answers in its place) has another CA than the operator's anchor.
    let theirs = livemig_tls::Ca::generate("someone else's CA").expect("a CA");
    let ours = livemig_tls::Ca::generate("the operator's CA").expect("a CA");
    let rms = FakeRms::start_with_ca(0.2, theirs);
    let b = agent("host-b", &rms, Some(ours.cert_pem()));
    assert!(
        wait_until(WAIT, || !rms.of("heartbeat").is_empty()),
        "no heartbeat"
    );
    let mem = 16 * MIB;
    let res = reserve(&b, mem);
    let r = incoming(&b, 1, &res, "vm1", mem);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.error().contains("no certificate"), "{}", r.body);
}

/// `GET /healthz` over HTTPS trusting `ca_pem`: the status, or the error text.
fn https_healthz(addr: std::net::SocketAddr, ca_pem: &str) -> Result<u16, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tls = livemig_tls::https_client_config(Some(ca_pem)).expect("TLS");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .tls_backend_preconfigured(tls)
            .build()
            .expect("client");
        client
            .get(format!("https://{addr}/healthz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("{e:?}"))
    })
}

#[test]
fn the_api_serves_https_with_the_issued_certificate_once_it_has_one() {
    let ca = livemig_tls::Ca::generate("test CA").expect("a CA");
    let ca_pem = ca.cert_pem().to_string();
    // No RMS yet to issue a certificate: the HTTPS API fails every handshake.
    let mut o = Options::new("host-a", 64 * MIB);
    o.server.https = true;
    o.ca_pem = Some(ca_pem.clone());
    let lonely = Harness::start_with(o);
    assert!(https_healthz(lonely.addr, &ca_pem).is_err());
    // Plain HTTP gets a TLS alert, not an HTTP answer.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(lonely.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(!out.starts_with(b"HTTP/"), "{out:?}");
    }
    drop(lonely);
    // Registered with an RMS that has the CA: the certificate it issued is served.
    let rms = FakeRms::start_with_ca(0.2, ca);
    let mut o = Options::new("host-a", 64 * MIB);
    o.server.https = true;
    o.ca_pem = Some(ca_pem.clone());
    o.rms = Some((rms.url.clone(), 0.2));
    let a = Harness::start_with(o);
    assert!(
        wait_until(WAIT, || https_healthz(a.addr, &ca_pem) == Ok(200)),
        "{:?}",
        https_healthz(a.addr, &ca_pem)
    );
    // A client trusting another CA does not get through.
    let other = livemig_tls::Ca::generate("other CA").expect("a CA");
    assert!(https_healthz(a.addr, other.cert_pem()).is_err());
}
