//! Agents hosting and migrating `qemu` VMs with real QEMU processes (TCG) and the test guest:
//! refusals (memory size, missing image), a stop that quits QEMU, a stream keyed for another
//! migration refused without harm, a grant that reaches QEMU's cap, a migration A → B through
//! the keyed relay whose guest beats on at B while A's QEMU is gone, and a dirty-rate sample
//! over QMP that holds the VM meanwhile. Never skipped: without QEMU or the guest image they
//! fail with the reason (scripts/test.sh installs both).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;

use common::{wait_until, FakeRms, Harness, Options, MIB};
use livemig_agent::migrator::relay::{self, Verdict};
use livemig_agent::QemuConfig;
use livemig_engine::Key;
use livemig_qemu::vm::GuestImage;
use serde_json::{json, Value};

const KEY_1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEY_2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
/// 256 MiB less 8 KiB: not a multiple of 256 KiB (see `livemig_agent::qemu`).
const MEM: u64 = 268_427_264;
const LOAD: &str = "uniform:rate=2MiB/s,buffer=32MiB";
const WAIT: Duration = Duration::from_secs(90);

fn image() -> GuestImage {
    let qemu = std::env::var("LIVEMIG_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    let found = std::process::Command::new(&qemu)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{qemu} is not installed: these tests need QEMU (scripts/test.sh installs qemu-system-x86)"
    );
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    GuestImage::build(&repo).unwrap_or_else(|e| panic!("cannot build the test guest: {e}"))
}

fn agent(name: &str, rms: Option<&FakeRms>, state: &Path, guest: &Path) -> Harness {
    let mut o = Options::new(name, 1024 * MIB);
    o.rms = rms.map(|r| (r.url.clone(), 0.2));
    o.ca_pem = rms.and_then(|r| r.ca_pem.clone());
    o.migrator.accept_timeout = Duration::from_secs(8);
    o.qemu = Some(QemuConfig {
        state_dir: state.to_path_buf(),
        guest_dir: Some(guest.to_path_buf()),
    });
    Harness::start_with(o)
}

/// QEMU processes (a `-qmp` argument) whose command line names `dir` (live ones: a
/// zombie's is empty).
fn qemus_under(dir: &Path) -> usize {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).into_owned())
                .filter(|c| c.split('\0').any(|a| a == "-qmp") && c.contains(&needle))
                .count()
        })
        .unwrap_or(0)
}

fn vm(h: &Harness, name: &str) -> Value {
    let r = h.call("GET", &format!("/api/v1/vms/{name}"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn writes(h: &Harness, name: &str) -> u64 {
    vm(h, name)["writes"].as_u64().unwrap_or(0)
}

fn state(h: &Harness, migration: u64) -> Option<String> {
    let r = h.call("GET", "/api/v1/report", None);
    r.json()["migrations"][migration.to_string()]["state"]
        .as_str()
        .map(str::to_string)
}

fn free(h: &Harness) -> u64 {
    h.call("GET", "/api/v1/info", None).json()["memory_free_bytes"]
        .as_u64()
        .expect("free")
}

fn reserve(h: &Harness) -> String {
    let r = h.post("/api/v1/capacity", &json!({ "memory_bytes": MEM }));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["reservation"]["id"]
        .as_str()
        .expect("id")
        .to_string()
}

fn incoming(h: &Harness, migration: u64, reservation: &str, key: &str) -> String {
    let r = h.post(
        "/api/v1/incoming",
        &json!({
            "migration": migration,
            "reservation": reservation,
            "vm": {"name": "q1", "memory_bytes": MEM, "workload": LOAD, "kind": "qemu"},
            "key": key,
            "tls": true,
        }),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["data_address"]
        .as_str()
        .expect("data_address")
        .to_string()
}

fn outgoing(h: &Harness, migration: u64, data: &str, key: &str, bandwidth: &str) {
    send(h, migration, "q1", data, key, bandwidth, true);
}

fn send(h: &Harness, migration: u64, vm: &str, data: &str, key: &str, bw: &str, tls: bool) {
    let r = h.post(
        "/api/v1/outgoing",
        &json!({
            "migration": migration,
            "vm": vm,
            "target": "host-b",
            "data_address": data,
            "key": key,
            "policy": "fixed",
            "settings": {"bandwidth": bw, "stop_remaining": "8MiB"},
            "tls": tls,
        }),
    );
    assert_eq!(r.status, 202, "{}", r.body);
}

/// A stand-in destination on plain TCP: proves `key`, swallows QEMU's stream, then answers
/// `verdict` (or closes without one). Returns its address and the bytes it got.
fn fake_destination(key: &str, verdict: Option<Verdict>) -> (String, JoinHandle<u64>) {
    let key = Key::from_hex(key).expect("key");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("address").to_string();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("the source connects");
        s.set_read_timeout(Some(Duration::from_millis(250)))
            .expect("timeout");
        let limit = Duration::from_secs(10);
        let session = relay::accept(&mut s, &key, limit).expect("the source proves the key");
        let n = relay::copy(&mut s, &mut std::io::sink(), WAIT, &AtomicBool::new(false))
            .expect("QEMU's stream");
        if let Some(v) = verdict {
            relay::write_full(&mut s, &session.verdict(&key, v), limit).expect("verdict");
        }
        n
    });
    (addr, t)
}

#[test]
fn qemu_vms_are_refused_cleanly_and_quit_when_the_agent_stops() {
    let img = image();
    let guest = img.kernel.parent().expect("guest dir").to_path_buf();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = agent("host-a", None, dir.path(), &guest);
    let create = |h: &Harness, mem: u64, load: &str| {
        h.post(
            "/api/v1/vms",
            &json!({"name": "q0", "memory_bytes": mem, "workload": load, "kind": "qemu"}),
        )
    };
    let r = create(&a, 256 * MIB, "idle");
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.error().contains("268427264"), "{}", r.body);
    let r = create(&a, MEM, "idle init=/bin/sh");
    assert_eq!(r.status, 422, "{}", r.body);
    let nowhere = tempfile::tempdir().expect("tempdir");
    let c = agent("host-c", None, dir.path(), nowhere.path());
    let r = create(&c, MEM, "idle");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.error().contains("vmlinuz"), "{}", r.body);
    assert_eq!(free(&c), 1024 * MIB, "the memory is given back");
    drop(c);
    // A QEMU VM counts in the book and quits when its agent stops.
    let r = create(&a, MEM, "idle");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["kind"], "qemu");
    assert_eq!(free(&a), 1024 * MIB - MEM);
    assert_eq!(qemus_under(dir.path()), 1);
    // A destination that takes the whole stream but never says whether its QEMU runs: the
    // outcome is unknown, so the source's QEMU stays paused and the VM cannot be deleted.
    assert!(
        wait_until(WAIT, || writes(&a, "q0") >= 3),
        "the guest does not boot: {}",
        vm(&a, "q0")
    );
    let (data, dest) = fake_destination(KEY_1, None);
    send(&a, 7, "q0", &data, KEY_1, "100MiB/s", false);
    let got = dest.join().expect("the stand-in destination");
    assert!(got > 8 << 20, "QEMU's stream: {got} bytes");
    assert!(
        wait_until(WAIT, || state(&a, 7).as_deref() == Some("held")),
        "{:?}",
        state(&a, 7)
    );
    assert_eq!(vm(&a, "q0")["running"], false, "paused in doubt");
    let r = a.call("DELETE", "/api/v1/vms/q0", None);
    assert_eq!(r.status, 409, "{}", r.body);
    // Another QEMU VM, settled: it quits with its agent.
    let r = a.post(
        "/api/v1/vms",
        &json!({"name": "q1", "memory_bytes": MEM, "workload": "idle", "kind": "qemu"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(qemus_under(dir.path()), 2);
    assert!(a.stop(), "the agent stops in time");
    // The paused source may hold the only copy of the guest: the stop leaves it alone.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(qemus_under(dir.path()), 1, "the QEMU in doubt was killed");
    kill_qemus_under(dir.path());
}

/// Kills the QEMU processes whose command line names `dir` (the test's own leftovers).
fn kill_qemus_under(dir: &Path) {
    let needle = dir.display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.split('\0').any(|a| a == "-qmp") && cmd.contains(&needle) {
            if let Some(pid) = e.file_name().to_str() {
                let _ = std::process::Command::new("kill")
                    .args(["-9", pid])
                    .status();
            }
        }
    }
    assert!(
        wait_until(Duration::from_secs(5), || qemus_under(dir) == 0),
        "the leftover QEMU did not die"
    );
}

/// Over mutual TLS (the stand-in RMS has a CA): a stream with the wrong key, a cancelled
/// migration, then one that completes.
#[test]
fn a_qemu_vm_migrates_between_agents_through_the_keyed_relay() {
    let img = image();
    let guest = img.kernel.parent().expect("guest dir").to_path_buf();
    let ca = livemig_tls::Ca::generate("test CA").expect("a CA");
    let rms = FakeRms::start_with_ca(0.2, ca);
    let (da, db) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = agent("host-a", Some(&rms), da.path(), &guest);
    let b = agent("host-b", Some(&rms), db.path(), &guest);
    let r = a.post(
        "/api/v1/vms",
        &json!({"name": "q1", "memory_bytes": MEM, "workload": LOAD, "kind": "qemu"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        wait_until(WAIT, || writes(&a, "q1") >= 5),
        "the guest does not boot: {}",
        vm(&a, "q1")
    );

    // A stream keyed for another migration never reaches B's QEMU; A's guest runs on.
    let res = reserve(&b);
    let data = incoming(&b, 1, &res, KEY_1);
    assert_eq!(qemus_under(db.path()), 1, "B's destination QEMU waits");
    outgoing(&a, 1, &data, KEY_2, "100MiB/s");
    assert!(
        wait_until(WAIT, || state(&a, 1).as_deref() == Some("failed")),
        "{:?}",
        state(&a, 1)
    );
    assert!(
        wait_until(WAIT, || state(&b, 1).as_deref() == Some("failed")),
        "B gives up after its accept timeout: {:?}",
        state(&b, 1)
    );
    assert!(rms.has_event("host-b", 1, "discarded"));
    assert!(wait_until(Duration::from_secs(10), || qemus_under(
        db.path()
    ) == 0));
    assert_eq!(free(&b), 1024 * MIB, "B's reservation is released");
    let before = writes(&a, "q1");
    assert!(wait_until(WAIT, || writes(&a, "q1") > before + 5));
    assert_eq!(vm(&a, "q1")["running"], true);

    // Cancelled in round 1 (4 MiB/s: a minute for the first pass): QEMU's migration is
    // cancelled, the guest runs on at A, B's QEMU is killed and its reservation released.
    let res = reserve(&b);
    let data = incoming(&b, 2, &res, KEY_1);
    outgoing(&a, 2, &data, KEY_1, "4MiB/s");
    assert!(
        wait_until(WAIT, || rms.has_event("host-a", 2, "round_started")
            && rms.has_event("host-b", 2, "accepted")),
        "{:?}",
        rms.of("events")
    );
    // A grant reaches the governor through the same control handle: QEMU's cap follows.
    let limit = 2.0 * MIB as f64;
    let r = a.call(
        "PUT",
        "/api/v1/outgoing/2/grant",
        Some(&json!({ "bytes_per_s": limit }).to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        wait_until(WAIT, || rms.of("events").iter().any(|e| {
            e["host"] == "host-a"
                && e["migration"] == 2
                && e["event"]["event"] == "cap_granted"
                && e["event"]["cap_bytes_per_s"]
                    .as_f64()
                    .is_some_and(|c| c <= limit)
        })),
        "{:?}",
        rms.of("events")
    );
    let r = b.call(
        "PUT",
        "/api/v1/outgoing/2/grant",
        Some(&json!({ "bytes_per_s": limit }).to_string()),
    );
    assert_eq!(r.status, 409, "B's migration 2 comes in: {}", r.body);
    std::thread::sleep(Duration::from_secs(1));
    let r = a.call("DELETE", "/api/v1/outgoing/2", None);
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        wait_until(WAIT, || state(&a, 2).as_deref() == Some("cancelled")
            && state(&b, 2).as_deref() == Some("failed")),
        "a: {:?}, b: {:?}",
        state(&a, 2),
        state(&b, 2)
    );
    assert!(wait_until(Duration::from_secs(10), || qemus_under(
        db.path()
    ) == 0));
    assert_eq!(free(&b), 1024 * MIB);
    let before = writes(&a, "q1");
    assert!(wait_until(WAIT, || writes(&a, "q1") > before + 5));
    assert_eq!(vm(&a, "q1")["running"], true);

    // A destination whose QEMU did not run (a proven `F`): QEMU completed, so the source was
    // paused; it runs again, and the migration failed.
    let (data, dest) = fake_destination(KEY_2, Some(Verdict::Failed));
    send(&a, 10, "q1", &data, KEY_2, "100MiB/s", false);
    let got = dest.join().expect("the stand-in destination");
    assert!(got > 8 << 20, "QEMU's stream: {got} bytes");
    assert!(
        wait_until(WAIT, || state(&a, 10).as_deref() == Some("failed")),
        "{:?}",
        state(&a, 10)
    );
    assert_eq!(vm(&a, "q1")["running"], true);
    let before = writes(&a, "q1");
    assert!(
        wait_until(WAIT, || writes(&a, "q1") > before + 5),
        "the guest runs again at A"
    );
    assert!(rms.of("events").iter().any(|e| e["migration"] == 10
        && e["event"]["event"] == "failed"
        && e["event"]["outcome"] == "failed_source_running"));

    // The real one.
    let res = reserve(&b);
    let data = incoming(&b, 3, &res, KEY_1);
    outgoing(&a, 3, &data, KEY_1, "100MiB/s");
    assert!(
        wait_until(WAIT, || state(&a, 3).as_deref() == Some("handed_over")
            && state(&b, 3).as_deref() == Some("handed_over")),
        "a: {:?}, b: {:?}, events {:?}",
        state(&a, 3),
        state(&b, 3),
        rms.of("events")
    );
    let local = |h: &Harness| {
        h.call("GET", "/api/v1/report", None).json()["migrations"]["3"]["tls"].clone()
    };
    assert_eq!((local(&a), local(&b)), (json!(true), json!(true)));
    let r = a.call("GET", "/api/v1/vms/q1", None);
    assert_eq!(r.status, 404, "the source's VM is gone: {}", r.body);
    assert!(
        wait_until(Duration::from_secs(10), || qemus_under(da.path()) == 0),
        "the source QEMU quit"
    );
    assert_eq!(free(&a), 1024 * MIB);
    assert_eq!(free(&b), 1024 * MIB - MEM);
    let v = vm(&b, "q1");
    assert_eq!(
        (v["kind"].as_str(), v["running"].as_bool()),
        (Some("qemu"), Some(true)),
        "{v}"
    );
    // The counter lives in guest memory: it continues on B from where A left it (B's console
    // starts empty, so its first line comes a beat after the switch-over).
    assert!(
        wait_until(WAIT, || writes(&b, "q1") > before),
        "no heartbeat on B beyond A's {before}"
    );
    let landed = writes(&b, "q1");
    assert!(
        wait_until(WAIT, || writes(&b, "q1") > landed + 10),
        "the guest beats on at B"
    );
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
            .all(|e| rms.has_event("host-a", 3, e))
                && ["accepted", "resumed"]
                    .iter()
                    .all(|e| rms.has_event("host-b", 3, e))
                && rms.of("reports").iter().any(|r| r["migration"] == 3)
        }),
        "{:?}\nreports: {:?}",
        rms.of("events")
            .iter()
            .map(|e| format!("{} {} {}", e["host"], e["migration"], e["event"]["event"]))
            .collect::<Vec<_>>(),
        rms.of("reports")
    );
    // DELETE quits QEMU.
    let r = b.call("DELETE", "/api/v1/vms/q1", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        qemus_under(db.path()),
        0,
        "QEMU is gone when DELETE answers"
    );
    assert_eq!(free(&b), 1024 * MIB);
}

#[test]
fn a_qemu_vm_is_sampled_over_qmp_and_held_meanwhile() {
    let img = image();
    let guest = img.kernel.parent().expect("guest dir").to_path_buf();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = agent("host-a", None, dir.path(), &guest);
    let r = a.post(
        "/api/v1/vms",
        &json!({"name": "qs", "memory_bytes": MEM, "workload": "uniform:rate=8MiB/s,buffer=32MiB", "kind": "qemu"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        wait_until(WAIT, || writes(&a, "qs") >= 3),
        "the guest does not boot: {}",
        vm(&a, "qs")
    );
    // 1.5 s: QEMU measures 2 whole seconds, one point; meanwhile the VM is held.
    let addr = a.addr;
    let long = std::thread::spawn(move || {
        common::request(
            addr,
            "POST",
            "/api/v1/vms/qs/sample",
            Some(common::TOKEN),
            Some(r#"{"seconds": 1.5}"#),
        )
    });
    std::thread::sleep(Duration::from_millis(400));
    let r = a.post("/api/v1/vms/qs/sample", &json!({"seconds": 1}));
    assert_eq!(r.status, 409, "{}", r.body);
    let r = a.post(
        "/api/v1/outgoing",
        &json!({"migration": 1, "vm": "qs", "target": "b", "data_address": "127.0.0.1:9",
                "key": KEY_1, "policy": "fixed"}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let r = long.join().expect("the sample's thread");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["vm"], "qs", "{v}");
    let points = v["sample"]["points"].as_array().expect("points");
    assert_eq!(points.len(), 1, "{v}");
    assert!((points[0][0].as_f64().expect("t") - 2.0).abs() < 0.5, "{v}");
    assert!(
        points[0][1].as_f64().expect("bytes") > 0.0,
        "the guest writes: {v}"
    );
    // Released: QMP is free for the next one.
    let r = a.post("/api/v1/vms/qs/sample", &json!({"seconds": 0.2}));
    assert_eq!(r.status, 200, "{}", r.body);
}
