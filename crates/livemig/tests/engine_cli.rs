//! `livemig receive` / `migrate` / `demo` as separate processes on 127.0.0.1: a migration, a
//! killed destination, a wrong key, stray peers, flags checked before any connection.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command as Proc, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assert_cmd::cargo::cargo_bin;
use assert_cmd::Command;

fn write_key(dir: &std::path::Path, name: &str, byte: u8) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{}\n", format!("{byte:02x}").repeat(32))).expect("key");
    p
}

/// A child process killed when the test ends, whatever happens.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `livemig receive` on port 0 (it gives up after 60 s without a source) and returns it
/// with the address it printed.
fn receiver(key: &std::path::Path) -> (Guard, String) {
    let (g, addr, _) = receiver_logged(key);
    (g, addr)
}

/// [`receiver`], also collecting its stderr lines.
fn receiver_logged(key: &std::path::Path) -> (Guard, String, Arc<Mutex<Vec<String>>>) {
    receiver_with(key, &[])
}

/// [`receiver_logged`] with `extra` flags.
fn receiver_with(
    key: &std::path::Path,
    extra: &[&str],
) -> (Guard, String, Arc<Mutex<Vec<String>>>) {
    let mut child = Proc::new(cargo_bin("livemig"))
        .args([
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--run-after",
            "300ms",
            "--accept-timeout",
            "60s",
            "--key",
        ])
        .arg(key)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("receiver starts");
    let err = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            sink.lock().expect("log").push(l);
        }
    });
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let first = lines.next().expect("a line").expect("text");
    let addr = first
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    // Keep reading the rest in the background so the pipe never fills.
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    std::mem::forget(rest);
    (Guard(child), addr, log)
}

fn migrate(addr: &str, key: &std::path::Path, extra: &[&str]) -> Command {
    let mut c = Command::cargo_bin("livemig").expect("binary");
    c.args([
        "migrate",
        "--to",
        addr,
        "--memory",
        "32MiB",
        "--stop-remaining",
        "2MiB",
        "--sample",
        "100ms",
        "--key",
    ])
    .arg(key)
    .args(extra)
    .timeout(Duration::from_secs(60));
    c
}

#[test]
fn migrate_to_a_receive_process() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = write_key(dir.path(), "k", 7);
    let (mut rx, addr) = receiver(&key);
    let out = migrate(
        &addr,
        &key,
        &[
            "--workload",
            "uniform:rate=4MiB/s",
            "--min-bandwidth",
            "64MiB/s",
            "--json",
        ],
    )
    .assert()
    .success()
    .get_output()
    .stdout
    .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["executor"], "engine");
    assert_eq!(v["memory_bytes"], 33554432.0);
    assert!(v["summary"]["total_bytes"].as_f64().expect("bytes") >= 33554432.0);
    assert!(!v["rounds"].as_array().expect("rounds").is_empty());
    let status = rx.0.wait().expect("receiver exits");
    assert!(status.success(), "the receiver succeeds");
}

#[test]
fn killed_destination_leaves_the_guest_on_the_source() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = write_key(dir.path(), "k", 7);
    let (mut rx, addr) = receiver(&key);
    let src = Proc::new(cargo_bin("livemig"))
        .args([
            "migrate",
            "--to",
            &addr,
            "--memory",
            "32MiB",
            "--stop-remaining",
            "2MiB",
            "--sample",
            "0s",
            "--policy",
            "fixed",
            "--bandwidth",
            "8MiB/s",
            "--key",
        ])
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("source starts");
    std::thread::sleep(Duration::from_millis(1500));
    rx.0.kill().expect("kill the destination");
    let _ = rx.0.wait();
    let out = src.wait_with_output().expect("source exits");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keeps running on the source") && err.contains("pre-copy"),
        "{err}"
    );
}

#[test]
fn wrong_key_is_refused_and_the_receiver_waits_for_the_real_source() {
    let dir = tempfile::tempdir().expect("tmp");
    let good = write_key(dir.path(), "a", 1);
    let (mut rx, addr, log) = receiver_logged(&good);
    let out = migrate(&addr, &write_key(dir.path(), "b", 2), &[])
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8_lossy(&out);
    assert!(err.contains("wrong key"), "{err}");
    // A port scan: connect and leave.
    drop(std::net::TcpStream::connect(&addr).expect("connect"));
    // The receiver logged both and still takes the real source.
    migrate(&addr, &good, &["--workload", "uniform:rate=4MiB/s"])
        .assert()
        .success();
    let status = rx.0.wait().expect("receiver exits");
    assert!(
        status.success(),
        "the receiver succeeds with the real source"
    );
    let log = log.lock().expect("log").join("\n");
    assert!(
        log.matches("refused 127.0.0.1:").count() >= 2 && log.contains("key"),
        "{log}"
    );
}

#[test]
fn receive_checks_every_flag_before_accepting() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = write_key(dir.path(), "k", 7);
    for (flag, value) in [
        ("--run-after", "soon"),
        ("--run-after", "1e30s"),
        ("--timeout", "1e30s"),
        ("--accept-timeout", "-1s"),
        ("--max-memory", "lots"),
    ] {
        let out = Command::cargo_bin("livemig")
            .expect("binary")
            .args([
                "receive",
                "--listen",
                "127.0.0.1:0",
                &format!("{flag}={value}"),
                "--key",
            ])
            .arg(&key)
            .timeout(Duration::from_secs(20))
            .assert()
            .failure()
            .get_output()
            .clone();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stdout.contains("listening"), "{flag} {value}: {stdout}");
        assert!(!stderr.contains("panicked"), "{flag} {value}: {stderr}");
        assert!(stderr.contains(&flag[2..]), "{flag} {value}: {stderr}");
    }
}

#[test]
fn huge_timeouts_are_refused_without_a_panic() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = write_key(dir.path(), "k", 7);
    for flag in ["--timeout", "--sample"] {
        let out = Command::cargo_bin("livemig")
            .expect("binary")
            .args([
                "migrate",
                "--to",
                "127.0.0.1:9",
                "--memory",
                "32MiB",
                "--stop-remaining",
                "2MiB",
                flag,
                "1e30s",
            ])
            .arg("--key")
            .arg(&key)
            .timeout(Duration::from_secs(20))
            .assert()
            .failure()
            .get_output()
            .stderr
            .clone();
        let err = String::from_utf8_lossy(&out);
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains("too long"), "{err}");
    }
}

#[test]
fn demo_runs_both_ends_and_reports_json() {
    let out = Command::cargo_bin("livemig")
        .expect("binary")
        .args([
            "demo",
            "--memory",
            "32MiB",
            "--workload",
            "hotcold:rate=16MiB/s,hot=5%,share=95%",
            "--sample",
            "100ms",
            "--stop-remaining",
            "2MiB",
            "--json",
        ])
        .timeout(Duration::from_secs(60))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["executor"], "engine");
    // Real migrations run `predictive` unless told otherwise.
    assert_eq!(v["policy"], "predictive");
    let s = &v["summary"];
    let downtime = s["downtime_s"].as_f64().expect("downtime");
    assert!(downtime > 0.0);
    // The pause's parts add up to it; the audit after the resume read every page.
    let b = &s["downtime_breakdown"];
    let parts: f64 = ["transfer_s", "state_s", "verify_s", "resume_s"]
        .iter()
        .map(|k| b[k].as_f64().unwrap_or_else(|| panic!("{k} in {b}")))
        .sum();
    assert!((parts - downtime).abs() < 1e-6, "{b} vs {downtime}");
    assert_eq!(s["audit"]["passed"], true, "{}", s["audit"]);
    assert_eq!(s["audit"]["pages"], 32 * 256);
    assert_eq!(v["outcome"], "migrated");
}

/// `--progress json`: both ends write one JSON event per line on stderr; the source's stream
/// holds every round's record exactly as the result has it, and the steps of a hand-over in
/// order; the destination's reports the claim, every round received and the verification.
#[test]
fn progress_json_streams_every_round_record_as_ndjson() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = write_key(dir.path(), "k", 7);
    let (mut rx, addr, rx_log) = receiver_with(&key, &["--progress", "json"]);
    let out = migrate(
        &addr,
        &key,
        &[
            "--workload",
            "uniform:rate=4MiB/s",
            "--min-bandwidth",
            "64MiB/s",
            "--json",
            "--progress",
            "json",
        ],
    )
    .assert()
    .success()
    .get_output()
    .clone();
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json result");
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| {
            assert!(e["t_s"].as_f64().is_some(), "{e}");
            e["event"].as_str().expect("tag")
        })
        .collect();
    let order = [
        "started",
        "connected",
        "round_started",
        "progress",
        "round_ended",
        "stop_and_copy",
        "verified",
        "committed",
        "handed_over",
        "audited",
    ];
    let mut at = 0;
    for k in order {
        let found = kinds[at..]
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k} after position {at} in {kinds:?}"));
        at += found;
    }
    let records: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "round_ended")
        .map(|e| &e["record"])
        .collect();
    let rounds = result["rounds"].as_array().expect("rounds");
    assert_eq!(records.len(), rounds.len());
    for (a, b) in records.iter().zip(rounds) {
        assert_eq!(*a, b, "the streamed record is the result's");
    }
    let status = rx.0.wait().expect("receiver exits");
    assert!(status.success());
    let log = rx_log.lock().expect("log").clone();
    let rx_events: Vec<serde_json::Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    let rx_kinds: Vec<&str> = rx_events
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    for k in ["listening", "accepted", "received", "verified", "resumed"] {
        assert!(rx_kinds.contains(&k), "{k} missing from {rx_kinds:?}");
    }
    let received = rx_events
        .iter()
        .filter(|e| e["event"] == "received" && e["round"] != 0)
        .count();
    assert_eq!(received, rounds.len(), "one report per pre-copy round");
}

/// `bench-oracle`: real loopback migrations at B_max then bisection steps; the oracle is the
/// lowest cap that converged, every probe under it failed, and the policy is scored against it
/// with its memory audit.
#[test]
fn bench_oracle_bisects_real_migrations_and_scores_the_policy() {
    let mib = 1024.0 * 1024.0;
    let out = Command::cargo_bin("livemig")
        .expect("binary")
        .args([
            "bench-oracle",
            "--memory",
            "32MiB",
            "--workload",
            "hot=hotcold:rate=32MiB/s,hot=10%,share=90%",
            "--runs",
            "2",
            "--stop-remaining",
            "1MiB",
            "--min-bandwidth",
            "8MiB/s",
            "--max-bandwidth",
            "128MiB/s",
            "--json",
        ])
        .timeout(Duration::from_secs(120))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    let r = &v[0];
    assert_eq!(r["workload"], "hot");
    let probes = r["probes"].as_array().expect("probes");
    assert_eq!(probes[0]["cap_bytes_per_s"].as_f64(), Some(128.0 * mib));
    assert_eq!(probes[0]["converged"], true, "{r}");
    assert_eq!(probes.len(), 3, "B_max and two steps: {r}");
    let oracle = r["oracle_bytes_per_s"].as_f64().expect("an oracle");
    for p in probes {
        let cap = p["cap_bytes_per_s"].as_f64().expect("cap");
        let ok = p["converged"].as_bool().expect("converged");
        assert!(cap >= 8.0 * mib && cap <= 128.0 * mib, "{p}");
        assert!(cap >= oracle || !ok, "{oracle} is not the lowest: {r}");
    }
    assert!(probes
        .iter()
        .any(|p| p["cap_bytes_per_s"].as_f64() == Some(oracle)));
    let s = &r["scored"][0];
    assert_eq!(s["policy"], "predictive");
    assert_eq!(s["converged"], true, "{s}");
    let ratio = s["cap_ratio"].as_f64().expect("a ratio");
    let peak = s["peak_cap_bytes_per_s"].as_f64().expect("peak");
    assert!((ratio - peak / oracle).abs() < 1e-9, "{s}");
    assert_eq!(s["check"], "ok (8192 pages)", "{s}");
}
