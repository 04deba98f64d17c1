//! Two agents and a stand-in RMS in one process: real migrations of small guests driven
//! through the HTTP API exactly as the RMS drives them (reserve, incoming, outgoing), and
//! the refusals around them.

mod common;

use std::time::Duration;

use common::{request, wait_until, FakeRms, Harness, Options, MIB};
use serde_json::{json, Value};

const KEY_1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEY_2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const WAIT: Duration = Duration::from_secs(60);

fn agent(name: &str, rms: &FakeRms) -> Harness {
    let mut o = Options::new(name, 128 * MIB);
    o.rms = Some((rms.url.clone(), 0.2));
    Harness::start_with(o)
}

fn info(h: &Harness) -> Value {
    let r = h.call("GET", "/api/v1/info", None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn vms(h: &Harness) -> Vec<String> {
    info(h)["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// The local state of `migration` in `h`'s run report.
fn state(h: &Harness, migration: u64) -> Option<String> {
    let r = h.call("GET", "/api/v1/report", None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["migrations"][migration.to_string()]["state"]
        .as_str()
        .map(str::to_string)
}

fn start_vm(h: &Harness, name: &str, memory: u64, workload: &str) {
    let r = h.post(
        "/api/v1/vms",
        &json!({"name": name, "memory_bytes": memory, "workload": workload}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

/// Waits until the guest has written as many pages as it has (most of them are then data).
fn wait_for_writes(h: &Harness, vm: &str, memory: u64) {
    let pages = memory / 4096;
    assert!(
        wait_until(WAIT, || {
            h.call("GET", &format!("/api/v1/vms/{vm}"), None).json()["writes"].as_u64()
                >= Some(2 * pages)
        }),
        "the guest does not write"
    );
}

fn reserve(h: &Harness, memory: u64) -> String {
    let r = h.post("/api/v1/capacity", &json!({ "memory_bytes": memory }));
    assert_eq!(r.status, 200, "{}", r.body);
    let a = r.json();
    assert_eq!(a["answer"], "accepted", "{a}");
    a["reservation"]["id"].as_str().expect("id").to_string()
}

fn incoming(
    h: &Harness,
    migration: u64,
    reservation: &str,
    vm: &str,
    memory: u64,
    workload: &str,
    key: &str,
) -> String {
    let r = h.post(
        "/api/v1/incoming",
        &json!({
            "migration": migration,
            "reservation": reservation,
            "vm": {"name": vm, "memory_bytes": memory, "workload": workload, "kind": "sim"},
            "key": key,
        }),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["data_address"]
        .as_str()
        .expect("data_address")
        .to_string()
}

fn outgoing(
    h: &Harness,
    migration: u64,
    vm: &str,
    data_address: &str,
    key: &str,
    settings: Value,
) -> common::Reply {
    h.post(
        "/api/v1/outgoing",
        &json!({
            "migration": migration,
            "vm": vm,
            "target": "host-b",
            "data_address": data_address,
            "key": key,
            "policy": "fixed",
            "settings": settings,
        }),
    )
}

#[test]
fn a_vm_migrates_from_a_to_b_and_the_rms_hears_every_step() {
    let rms = FakeRms::start(0.2);
    let a = agent("host-a", &rms);
    let b = agent("host-b", &rms);
    let mem = 16 * MIB;
    let workload = "uniform:rate=2MiB/s";
    start_vm(&a, "vm1", mem, workload);
    assert!(
        wait_until(WAIT, || {
            rms.of("register").len() >= 2 && rms.of("heartbeat").len() >= 2
        }),
        "registrations {:?}, heartbeats {}",
        rms.of("register"),
        rms.of("heartbeat").len()
    );
    let res = reserve(&b, mem);
    let data = incoming(&b, 1, &res, "vm1", mem, workload, KEY_1);
    let r = outgoing(&a, 1, "vm1", &data, KEY_1, json!({"bandwidth": "64MiB/s"}));
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        wait_until(WAIT, || state(&a, 1).as_deref() == Some("handed_over")
            && state(&b, 1).as_deref() == Some("handed_over")),
        "a: {:?}, b: {:?}, events {:?}",
        state(&a, 1),
        state(&b, 1),
        rms.of("events")
    );
    assert_eq!(vms(&a), Vec::<String>::new(), "the source's copy is gone");
    assert_eq!(vms(&b), vec!["vm1".to_string()]);
    let (ia, ib) = (info(&a), info(&b));
    assert_eq!(ia["memory_free_bytes"], 128 * MIB, "{ia}");
    assert_eq!(ib["memory_free_bytes"], 128 * MIB - mem, "{ib}");
    assert_eq!(ib["memory_reserved_bytes"], 0, "{ib}");
    // The guest runs on B: its writer keeps writing.
    let writes = |h: &Harness| h.call("GET", "/api/v1/vms/vm1", None).json()["writes"].as_u64();
    let first = writes(&b).expect("writes");
    assert!(wait_until(WAIT, || writes(&b) > Some(first)));
    // The RMS heard the steps from the right ends, and the report.
    assert!(
        wait_until(WAIT, || {
            [
                "connected",
                "round_ended",
                "stop_and_copy",
                "committed",
                "handed_over",
            ]
            .iter()
            .all(|e| rms.has_event("host-a", 1, e))
                && ["accepted", "resumed"]
                    .iter()
                    .all(|e| rms.has_event("host-b", 1, e))
                && !rms.of("reports").is_empty()
        }),
        "{:?}",
        rms.of("events")
            .iter()
            .map(|e| format!("{} {}", e["host"], e["event"]["event"]))
            .collect::<Vec<_>>()
    );
    let report = &rms.of("reports")[0];
    assert_eq!(
        (report["host"].as_str(), report["migration"].as_u64()),
        (Some("host-a"), Some(1))
    );
    assert!(
        report["report"]["summary"]["rounds"].as_u64() >= Some(1),
        "{report}"
    );
    // The registration says where A's API and data listeners are.
    let reg_a = rms
        .of("register")
        .into_iter()
        .find(|r| r["name"] == "host-a")
        .expect("A registered");
    assert_eq!(
        reg_a["address"].as_str(),
        Some(a.addr.to_string().as_str()),
        "{reg_a}"
    );
    assert_eq!(reg_a["data_host"], "127.0.0.1", "{reg_a}");
    assert_eq!(reg_a["memory_total_bytes"], 128 * MIB, "{reg_a}");
    assert!(reg_a["vms"].is_array(), "{reg_a}");
    let beat = rms.of("heartbeat");
    assert!(beat.iter().any(|h| h["name"] == "host-b"), "{beat:?}");
    // Per-migration metrics on both ends.
    let m = a.call("GET", "/metrics", None).body;
    assert!(
        m.contains("livemig_agent_migration_rounds{migration=\"1\",role=\"source\"}"),
        "{m}"
    );
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let src = "{migration=\"1\",role=\"source\"}";
    assert!(
        value(
            &m,
            &format!("livemig_agent_migration_cap_bytes_per_second{src}")
        ) > 0.0
    );
    assert!(value(&m, &format!("livemig_agent_migration_bytes{src}")) >= mem as f64);
    assert!(
        value(
            &m,
            &format!("livemig_agent_migration_downtime_seconds{src}")
        ) > 0.0
    );
    let m = b.call("GET", "/metrics", None).body;
    assert!(
        m.contains("livemig_agent_migration_bytes{migration=\"1\",role=\"destination\"}"),
        "{m}"
    );
    // The same migration cannot start twice.
    let again = outgoing(&b, 1, "vm1", &data, KEY_1, json!({}));
    assert_eq!(again.status, 409, "{}", again.body);
}

#[test]
fn a_cancel_before_the_commit_leaves_the_vm_on_a_and_frees_b() {
    let rms = FakeRms::start(0.2);
    let a = agent("host-a", &rms);
    let b = agent("host-b", &rms);
    let mem = 32 * MIB;
    // Guests start zeroed and zero pages cost next to nothing on the wire: a writer this fast
    // fills the memory with data first, so round 1 really moves 32 MiB.
    let workload = "uniform:rate=64MiB/s";
    start_vm(&a, "vm2", mem, workload);
    wait_for_writes(&a, "vm2", mem);
    let res = reserve(&b, mem);
    let data = incoming(&b, 7, &res, "vm2", mem, workload, KEY_1);
    // 2 MiB/s: round 1 alone takes about 16 s; the cancel comes long before the commit.
    let slow = json!({"bandwidth": "2MiB/s", "min_bandwidth": "1MiB/s", "max_bandwidth": "2MiB/s"});
    let r = outgoing(&a, 7, "vm2", &data, KEY_1, slow);
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        wait_until(WAIT, || rms.has_event("host-a", 7, "round_started")),
        "{:?}",
        rms.of("events")
    );
    // A second migration of a busy VM is refused.
    let busy = outgoing(&a, 8, "vm2", &data, KEY_1, json!({}));
    assert_eq!(busy.status, 409, "{}", busy.body);
    let r = a.call("DELETE", "/api/v1/outgoing/7", None);
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        wait_until(WAIT, || state(&a, 7).as_deref() == Some("cancelled")
            && state(&b, 7).as_deref() == Some("failed")),
        "a: {:?}, b: {:?}",
        state(&a, 7),
        state(&b, 7)
    );
    assert_eq!(vms(&a), vec!["vm2".to_string()]);
    assert!(a.call("GET", "/api/v1/vms/vm2", None).json()["running"] == true);
    assert_eq!(vms(&b), Vec::<String>::new());
    let ib = info(&b);
    assert_eq!(
        (
            ib["memory_free_bytes"].as_u64(),
            ib["memory_reserved_bytes"].as_u64()
        ),
        (Some(128 * MIB), Some(0)),
        "{ib}"
    );
    assert!(wait_until(WAIT, || rms.has_event("host-a", 7, "cancelled")));
    // Cancelling what has ended is a conflict; an unknown one is not found.
    assert_eq!(a.call("DELETE", "/api/v1/outgoing/7", None).status, 409);
    assert_eq!(a.call("DELETE", "/api/v1/outgoing/99", None).status, 404);
    assert_eq!(a.call("DELETE", "/api/v1/outgoing/x", None).status, 400);
}

#[test]
fn a_stream_keyed_for_another_migration_is_refused_and_the_vm_stays_on_a() {
    let rms = FakeRms::start(0.2);
    let a = agent("host-a", &rms);
    let mut o = Options::new("host-b", 128 * MIB);
    o.rms = Some((rms.url.clone(), 0.2));
    o.migrator.accept_timeout = Duration::from_secs(4);
    let b = Harness::start_with(o);
    let mem = 16 * MIB;
    let workload = "uniform:rate=1MiB/s";
    start_vm(&a, "vm3", mem, workload);
    // B waits for two migrations, each keyed by its own key.
    let r2 = reserve(&b, mem);
    let r3 = reserve(&b, mem);
    let data2 = incoming(&b, 2, &r2, "vm3", mem, workload, KEY_1);
    let _data3 = incoming(&b, 3, &r3, "vm4", mem, workload, KEY_2);
    // A sends to migration 2's listener with migration 3's key.
    let r = outgoing(&a, 2, "vm3", &data2, KEY_2, json!({"bandwidth": "64MiB/s"}));
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        wait_until(WAIT, || state(&a, 2).as_deref() == Some("failed")),
        "{:?}",
        state(&a, 2)
    );
    assert_eq!(vms(&a), vec!["vm3".to_string()]);
    assert!(a.call("GET", "/api/v1/vms/vm3", None).json()["running"] == true);
    assert_eq!(vms(&b), Vec::<String>::new());
    assert!(wait_until(WAIT, || rms.of("events").iter().any(|e| {
        e["host"] == "host-a"
            && e["event"]["event"] == "failed"
            && e["event"]["outcome"] == "failed_source_running"
    })));
    assert!(wait_until(WAIT, || rms.has_event("host-b", 2, "discarded")));
    // No source came with the right key: both listeners give up and free their memory.
    assert!(
        wait_until(WAIT, || state(&b, 2).as_deref() == Some("failed")
            && state(&b, 3).as_deref() == Some("failed")),
        "{:?} {:?}",
        state(&b, 2),
        state(&b, 3)
    );
    let ib = info(&b);
    assert_eq!(ib["memory_free_bytes"].as_u64(), Some(128 * MIB), "{ib}");
}

#[test]
fn incoming_requests_are_checked() {
    let rms = FakeRms::start(0.2);
    let b = agent("host-b", &rms);
    let mem = 16 * MIB;
    let res = reserve(&b, mem);
    let body = |migration: u64, reservation: &str, vm: &str, memory: u64, key: &str| {
        json!({
            "migration": migration,
            "reservation": reservation,
            "vm": {"name": vm, "memory_bytes": memory, "workload": "idle", "kind": "sim"},
            "key": key,
        })
    };
    let cases = [
        (body(1, "no-such", "vm1", mem, KEY_1), 404),
        (body(1, &res, "vm1", mem / 2, KEY_1), 422),
        (body(1, &res, "vm1", mem, "abc"), 422),
        (body(1, &res, "bad name!", mem, KEY_1), 422),
    ];
    for (req, status) in cases {
        let r = b.post("/api/v1/incoming", &req);
        assert_eq!(r.status, status, "{req}: {}", r.body);
    }
    start_vm(&b, "here", MIB, "idle");
    let r = b.post("/api/v1/incoming", &body(1, &res, "here", mem, KEY_1));
    assert_eq!(r.status, 409, "{}", r.body);
    // A good one, then the same migration again.
    let r = b.post("/api/v1/incoming", &body(1, &res, "vm1", mem, KEY_1));
    assert_eq!(r.status, 201, "{}", r.body);
    let r = b.post("/api/v1/incoming", &body(1, &res, "vm9", mem, KEY_1));
    assert_eq!(r.status, 409, "{}", r.body);
    // A VM of that name cannot be started while it is on its way.
    let r = b.post(
        "/api/v1/vms",
        &json!({"name": "vm1", "memory_bytes": MIB, "workload": "idle"}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    // The pinned reservation does not expire.
    b.advance(3600.0);
    assert_eq!(info(&b)["memory_reserved_bytes"].as_u64(), Some(mem));
}

#[test]
fn outgoing_requests_are_checked() {
    let rms = FakeRms::start(0.2);
    let a = agent("host-a", &rms);
    start_vm(&a, "vm1", 4 * MIB, "idle");
    let body = |vm: &str, addr: &str, key: &str, policy: &str, settings: Value| {
        json!({
            "migration": 5, "vm": vm, "target": "b", "data_address": addr,
            "key": key, "policy": policy, "settings": settings,
        })
    };
    let cases = [
        (body("nope", "127.0.0.1:9", KEY_1, "fixed", json!({})), 404),
        (
            body("vm1", "not-an-address", KEY_1, "fixed", json!({})),
            422,
        ),
        (body("vm1", "127.0.0.1:9", "zz", "fixed", json!({})), 422),
        (
            body("vm1", "127.0.0.1:9", KEY_1, "no-such-policy", json!({})),
            422,
        ),
        (
            body(
                "vm1",
                "127.0.0.1:9",
                KEY_1,
                "fixed",
                json!({"page_size": "8KiB"}),
            ),
            422,
        ),
        (
            body(
                "vm1",
                "127.0.0.1:9",
                KEY_1,
                "fixed",
                json!({"bandwidth": "fast"}),
            ),
            422,
        ),
    ];
    for (req, status) in cases {
        let r = a.post("/api/v1/outgoing", &req);
        assert_eq!(r.status, status, "{req}: {}", r.body);
    }
    // Nothing was started by the refusals.
    let r = a.call("GET", "/api/v1/report", None).json();
    assert_eq!(r["migrations"], json!({}), "{r}");
    // A destination that does not answer: the migration fails, the VM stays.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = dead.local_addr().expect("address").to_string();
    drop(dead);
    let r = a.post(
        "/api/v1/outgoing",
        &body("vm1", &addr, KEY_1, "fixed", json!({})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(wait_until(WAIT, || state(&a, 5).as_deref() == Some("failed")));
    assert_eq!(vms(&a), vec!["vm1".to_string()]);
    assert!(wait_until(WAIT, || rms.has_event("host-a", 5, "failed")));
}

#[test]
fn the_new_routes_need_the_token_and_well_formed_bodies() {
    let rms = FakeRms::start(0.2);
    let a = agent("host-a", &rms);
    for (method, path, body) in [
        ("POST", "/api/v1/incoming", Some("{}")),
        ("POST", "/api/v1/outgoing", Some("{}")),
        ("DELETE", "/api/v1/outgoing/1", None),
        ("GET", "/api/v1/report", None),
    ] {
        for token in [None, Some("wrong")] {
            let r = request(a.addr, method, path, token, body);
            assert_eq!(r.status, 401, "{method} {path}: {}", r.body);
        }
    }
    let big = format!(
        "{{\"migration\": 1, \"pad\": \"{}\"}}",
        "x".repeat(100 * 1024)
    );
    for path in ["/api/v1/incoming", "/api/v1/outgoing"] {
        for (body, status) in [
            ("{", 400),
            ("[]", 400),
            (r#"{"migration": 1}"#, 400),
            (r#"{"migration": -1, "vm": "a"}"#, 400),
            (big.as_str(), 413),
        ] {
            let r = a.call("POST", path, Some(body));
            assert_eq!(
                r.status,
                status,
                "{path} {}: {}",
                &body[..body.len().min(40)],
                r.body
            );
        }
        let r = a.post(
            path,
            &json!({"migration": 1, "vm": "a", "target": "b", "data_address": "1.2.3.4:5",
                    "key": KEY_1, "policy": "fixed", "reservation": "r", "extra": 1}),
        );
        assert_eq!(r.status, 400, "unknown fields are refused: {}", r.body);
    }
}

#[test]
fn stopping_the_agent_cancels_its_outgoing_migration_before_the_commit() {
    let rms = FakeRms::start(0.2);
    let mut a = agent("host-a", &rms);
    let b = agent("host-b", &rms);
    let mem = 32 * MIB;
    let workload = "uniform:rate=64MiB/s";
    start_vm(&a, "vm5", mem, workload);
    wait_for_writes(&a, "vm5", mem);
    let res = reserve(&b, mem);
    let data = incoming(&b, 11, &res, "vm5", mem, workload, KEY_1);
    let slow = json!({"bandwidth": "2MiB/s", "min_bandwidth": "1MiB/s", "max_bandwidth": "2MiB/s"});
    let r = outgoing(&a, 11, "vm5", &data, KEY_1, slow);
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(wait_until(WAIT, || rms.has_event(
        "host-a",
        11,
        "round_started"
    )));
    assert!(a.stop(), "the agent stopped within its bounds");
    // The cancel reached the RMS before the agent's link ended, and B gave the memory back.
    assert!(
        rms.has_event("host-a", 11, "cancelled"),
        "{:?}",
        rms.of("events")
    );
    assert!(
        wait_until(WAIT, || state(&b, 11).as_deref() == Some("failed")),
        "{:?}",
        state(&b, 11)
    );
    assert_eq!(info(&b)["memory_free_bytes"].as_u64(), Some(128 * MIB));
    assert_eq!(vms(&b), Vec::<String>::new());
}

#[test]
fn a_heartbeat_answered_404_registers_again() {
    let rms = FakeRms::start(0.1);
    let _a = agent("host-a", &rms);
    assert!(wait_until(WAIT, || rms.of("heartbeat").len() >= 2));
    assert_eq!(rms.of("register").len(), 1);
    rms.forget.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        wait_until(WAIT, || rms.of("register").len() == 2),
        "{}",
        rms.of("register").len()
    );
    let beats = rms.of("heartbeat").len();
    assert!(wait_until(WAIT, || rms.of("heartbeat").len() > beats));
}

#[test]
fn an_agent_started_before_its_rms_keeps_trying_until_it_registers() {
    // A port with nobody on it, then the RMS on that very port.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = probe.local_addr().expect("address").port();
    drop(probe);
    let mut o = Options::new("host-a", 64 * MIB);
    o.rms = Some((format!("http://127.0.0.1:{port}"), 0.2));
    let a = Harness::start_with(o);
    // It serves meanwhile.
    assert_eq!(info(&a)["name"], "host-a");
    std::thread::sleep(Duration::from_millis(600)); // let a few attempts fail
    let rms = FakeRms::start_on(port, 0.2);
    assert!(
        wait_until(WAIT, || !rms.of("register").is_empty()),
        "no registration once the RMS came up"
    );
}
