//! The RMS's two steering calls on an agent, end to end with a stand-in RMS: a grant that
//! bounds a running outgoing migration's cap (`PUT /api/v1/outgoing/{migration}/grant`), and a
//! dirty-log sample of a VM that sends nothing and holds the VM like a migration
//! (`POST /api/v1/vms/{name}/sample`), with their refusals.

mod common;

use std::time::{Duration, Instant};

use common::{request, wait_until, FakeRms, Harness, Options, Reply, MIB, TOKEN};
use serde_json::{json, Value};

const KEY_1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const WAIT: Duration = Duration::from_secs(60);
/// Fills memory with data fast, so round 1 really moves it (zero pages cost nothing).
const HEAVY: &str = "uniform:rate=64MiB/s";
/// 2 MiB/s: round 1 of 32 MiB alone takes about 16 s.
fn slow() -> Value {
    json!({"bandwidth": "2MiB/s", "min_bandwidth": "1MiB/s", "max_bandwidth": "2MiB/s"})
}

fn agent(name: &str, rms: &FakeRms) -> Harness {
    let mut o = Options::new(name, 128 * MIB);
    o.rms = Some((rms.url.clone(), 0.2));
    Harness::start_with(o)
}

fn start_vm(h: &Harness, name: &str, memory: u64, workload: &str) {
    let r = h.post(
        "/api/v1/vms",
        &json!({"name": name, "memory_bytes": memory, "workload": workload}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

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

fn state(h: &Harness, migration: u64) -> Option<String> {
    let r = h.call("GET", "/api/v1/report", None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["migrations"][migration.to_string()]["state"]
        .as_str()
        .map(str::to_string)
}

/// Reserves room on `b` and prepares migration `id` of `vm` there; its data address.
fn prepare(b: &Harness, id: u64, vm: &str, memory: u64) -> String {
    let r = b.post("/api/v1/capacity", &json!({ "memory_bytes": memory }));
    assert_eq!(r.status, 200, "{}", r.body);
    let res = r.json()["reservation"]["id"]
        .as_str()
        .expect("reservation")
        .to_string();
    let r = b.post(
        "/api/v1/incoming",
        &json!({
            "migration": id, "reservation": res, "key": KEY_1,
            "vm": {"name": vm, "memory_bytes": memory, "workload": HEAVY, "kind": "sim"},
        }),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["data_address"]
        .as_str()
        .expect("data_address")
        .to_string()
}

fn outgoing(a: &Harness, id: u64, vm: &str, data: &str) -> Reply {
    a.post(
        "/api/v1/outgoing",
        &json!({
            "migration": id, "vm": vm, "target": "host-b", "data_address": data,
            "key": KEY_1, "policy": "fixed", "settings": slow(),
        }),
    )
}

fn grant(h: &Harness, migration: &str, body: &Value) -> Reply {
    h.call(
        "PUT",
        &format!("/api/v1/outgoing/{migration}/grant"),
        Some(&body.to_string()),
    )
}

fn sample(h: &Harness, vm: &str, seconds: f64) -> Reply {
    h.post(
        &format!("/api/v1/vms/{vm}/sample"),
        &json!({ "seconds": seconds }),
    )
}

/// The sample's points, checked: in increasing time, the bytes never falling.
fn points(r: &Reply, vm: &str) -> Vec<(f64, f64)> {
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["vm"], vm, "{v}");
    let pts: Vec<(f64, f64)> = v["sample"]["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| (p[0].as_f64().expect("t"), p[1].as_f64().expect("bytes")))
        .collect();
    assert!(
        pts.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{pts:?}"
    );
    assert!(pts.first().is_some_and(|p| p.0 > 0.0), "{pts:?}");
    pts
}

/// The metric `name{migration="id",role="source"}` of `h`.
fn source_metric(h: &Harness, name: &str, id: u64) -> Option<f64> {
    let text = h.call("GET", "/metrics", None).body;
    let key = format!("{name}{{migration=\"{id}\",role=\"source\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_grant_bounds_a_running_outgoing_migration_and_is_refused_otherwise() {
    let rms = FakeRms::start(0.2);
    let a = agent("host-a", &rms);
    let b = agent("host-b", &rms);
    let mem = 32 * MIB;
    start_vm(&a, "vm1", mem, HEAVY);
    wait_for_writes(&a, "vm1", mem);
    let data = prepare(&b, 21, "vm1", mem);
    // Unknown, not a number, no token.
    assert_eq!(grant(&a, "99", &json!({"bytes_per_s": 1e6})).status, 404);
    assert_eq!(grant(&a, "x", &json!({"bytes_per_s": 1e6})).status, 400);
    let r = request(a.addr, "PUT", "/api/v1/outgoing/21/grant", None, Some("{}"));
    assert_eq!(r.status, 401, "{}", r.body);
    // B's migration 21 comes in: no grant there.
    let r = grant(&b, "21", &json!({"bytes_per_s": 1e6}));
    assert_eq!(r.status, 409, "{}", r.body);
    let r = outgoing(&a, 21, "vm1", &data);
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        wait_until(WAIT, || rms.has_event("host-a", 21, "round_started")),
        "{:?}",
        rms.of("events")
    );
    // Not a rate an executor can run under (JSON has no NaN: a unit test covers it).
    for bad in [json!(0.0), json!(-1.0), json!(-1e300)] {
        let r = grant(&a, "21", &json!({ "bytes_per_s": bad }));
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    let r = grant(&a, "21", &json!({"bytes_per_s": "NaN"}));
    assert_eq!(r.status, 400, "{}", r.body);
    // 1 MiB/s, below the policy's 2 MiB/s: the cap in force follows.
    let limit = MIB as f64;
    let r = grant(&a, "21", &json!({ "bytes_per_s": limit }));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"migration": 21, "bytes_per_s": limit}));
    assert!(
        wait_until(WAIT, || {
            source_metric(&a, "livemig_agent_migration_cap_bytes_per_second", 21)
                .is_some_and(|c| c > 0.0 && c <= limit)
        }),
        "{:?}",
        source_metric(&a, "livemig_agent_migration_cap_bytes_per_second", 21)
    );
    assert!(
        wait_until(WAIT, || rms.of("events").iter().any(|e| {
            e["host"] == "host-a"
                && e["migration"] == 21
                && e["event"]["event"] == "cap_granted"
                && e["event"]["granted_bytes_per_s"].as_f64() == Some(limit)
                && e["event"]["cap_bytes_per_s"]
                    .as_f64()
                    .is_some_and(|c| c <= limit)
        })),
        "{:?}",
        rms.of("events")
    );
    // Lifted: the policy's cap again.
    let r = grant(&a, "21", &json!({ "bytes_per_s": null }));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"migration": 21, "bytes_per_s": null}));
    assert!(wait_until(WAIT, || {
        source_metric(&a, "livemig_agent_migration_cap_bytes_per_second", 21)
            .is_some_and(|c| c > limit)
    }));
    // Ended: no grant any more.
    assert_eq!(a.call("DELETE", "/api/v1/outgoing/21", None).status, 202);
    assert!(wait_until(WAIT, || state(&a, 21).as_deref() == Some("cancelled")));
    let r = grant(&a, "21", &json!({ "bytes_per_s": limit }));
    assert_eq!(r.status, 409, "{}", r.body);
}

#[test]
fn a_sample_shows_the_heavier_writer_and_is_checked() {
    let rms = FakeRms::start(0.2);
    let a = agent("host-a", &rms);
    let mem = 32 * MIB;
    start_vm(&a, "calm", mem, "uniform:rate=256KiB/s");
    start_vm(&a, "heavy", mem, "uniform:rate=32MiB/s");
    let calm = points(&sample(&a, "calm", 1.0), "calm");
    let heavy = points(&sample(&a, "heavy", 1.0), "heavy");
    for pts in [&calm, &heavy] {
        assert_eq!(pts.len(), 5, "{pts:?}");
        let last = pts[4].0;
        assert!((1.0..3.0).contains(&last), "{pts:?}");
    }
    let rate = |pts: &[(f64, f64)]| pts[4].1 / pts[4].0;
    assert!(
        rate(&heavy) > 4.0 * rate(&calm) && rate(&heavy) > 0.0,
        "heavy {heavy:?}, calm {calm:?}"
    );
    // The refusals.
    assert_eq!(sample(&a, "nope", 1.0).status, 404);
    for bad in [0.0, 0.19, 10.5, -1.0, 1e300] {
        let r = sample(&a, "calm", bad);
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
    }
    for body in ["{}", r#"{"seconds": "1"}"#, r#"{"seconds": 1, "x": 1}"#] {
        let r = a.call("POST", "/api/v1/vms/calm/sample", Some(body));
        assert_eq!(r.status, 400, "{body}: {}", r.body);
    }
    let r = request(
        a.addr,
        "POST",
        "/api/v1/vms/calm/sample",
        Some("wrong"),
        Some(r#"{"seconds": 1}"#),
    );
    assert_eq!(r.status, 401, "{}", r.body);
    // The VM is free again after all of them.
    points(&sample(&a, "calm", 0.2), "calm");
}

#[test]
fn a_sample_and_a_migration_of_one_vm_exclude_each_other() {
    let rms = FakeRms::start(0.2);
    let a = agent("host-a", &rms);
    let b = agent("host-b", &rms);
    let mem = 32 * MIB;
    start_vm(&a, "vm2", mem, HEAVY);
    wait_for_writes(&a, "vm2", mem);
    let data = prepare(&b, 31, "vm2", mem);
    let addr = a.addr;
    let started = Instant::now();
    let long = std::thread::spawn(move || {
        request(
            addr,
            "POST",
            "/api/v1/vms/vm2/sample",
            Some(TOKEN),
            Some(r#"{"seconds": 3}"#),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    // While it runs: no migration, no second sample, no delete of that VM.
    let r = outgoing(&a, 31, "vm2", &data);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(sample(&a, "vm2", 0.2).status, 409);
    assert_eq!(a.call("DELETE", "/api/v1/vms/vm2", None).status, 409);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the checks came too late to overlap the sample"
    );
    let r = long.join().expect("the sample's thread");
    let pts = points(&r, "vm2");
    assert!(pts[4].0 >= 3.0, "{pts:?}");
    // Refused migrations leave no trace; now it starts.
    assert_eq!(state(&a, 31), None);
    let r = outgoing(&a, 31, "vm2", &data);
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(wait_until(WAIT, || rms.has_event(
        "host-a",
        31,
        "round_started"
    )));
    // And while it runs, no sample.
    let r = sample(&a, "vm2", 0.2);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(a.call("DELETE", "/api/v1/outgoing/31", None).status, 202);
    assert!(wait_until(WAIT, || state(&a, 31).as_deref() == Some("cancelled")));
    points(&sample(&a, "vm2", 0.2), "vm2");
}

#[test]
fn stopping_the_agent_ends_a_sample_under_way() {
    let mut a = Harness::start_with(Options::new("host-a", 64 * MIB));
    start_vm(&a, "vm3", 4 * MIB, "uniform:rate=1MiB/s");
    let addr = a.addr;
    let started = Instant::now();
    let long = std::thread::spawn(move || {
        request(
            addr,
            "POST",
            "/api/v1/vms/vm3/sample",
            Some(TOKEN),
            Some(r#"{"seconds": 10}"#),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(a.stop(), "the agent stopped within its bounds");
    let r = long.join().expect("the sample's thread");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}
