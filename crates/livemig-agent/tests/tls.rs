//! Migrations over mutual TLS: two agents register with a stand-in RMS that has a CA (each
//! gets a certificate naming its data IP), and a VM migrates with `tls: true`; an agent
//! without a certificate refuses a TLS migration clearly.

mod common;

use std::time::Duration;

use common::{wait_until, FakeRms, Harness, Options, MIB};
use serde_json::{json, Value};

const KEY: &str = "3333333333333333333333333333333333333333333333333333333333333333";
const WAIT: Duration = Duration::from_secs(60);

fn agent(name: &str, rms: &FakeRms) -> Harness {
    let mut o = Options::new(name, 128 * MIB);
    o.rms = Some((rms.url.clone(), 0.2));
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
    let rms = FakeRms::start_with_ca(0.2, ca);
    let a = agent("host-a", &rms);
    let b = agent("host-b", &rms);
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
    let b = agent("host-b", &rms);
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
