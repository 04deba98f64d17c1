//! `livemig receive` / `migrate` / `demo` as separate processes on 127.0.0.1: a migration, a
//! killed destination, a wrong key.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command as Proc, Stdio};
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
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("receiver starts");
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
    (Guard(child), addr)
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
fn wrong_key_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut rx, addr) = receiver(&write_key(dir.path(), "a", 1));
    let out = migrate(&addr, &write_key(dir.path(), "b", 2), &[])
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8_lossy(&out);
    assert!(err.contains("wrong key"), "{err}");
    let status = rx.0.wait().expect("receiver exits");
    assert!(!status.success(), "the receiver refuses too");
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
    assert_eq!(v["policy"], "dirty-factor");
    assert!(v["summary"]["downtime_s"].as_f64().expect("downtime") > 0.0);
}
