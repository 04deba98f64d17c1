//! The hand-over as an operator meets it, with real processes: exit codes that say where the
//! guest is, a receiver that junk cannot knock over, output failures that never change a
//! migration's status, allocation failure answered with an error, bad input refused.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assert_cmd::cargo::cargo_bin;
use assert_cmd::Command;

fn write_key(dir: &Path, name: &str, byte: u8) -> PathBuf {
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

/// Starts `livemig receive` (optionally under `ulimit -v KiB`) on port 0; returns it, the
/// address it printed and its stderr lines as they come.
fn receiver(
    key: &Path,
    extra: &[&str],
    ulimit_kib: Option<u64>,
) -> (Guard, String, Arc<Mutex<Vec<String>>>) {
    let bin = cargo_bin("livemig");
    let mut args = vec![
        "receive".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--run-after".into(),
        "200ms".into(),
        "--accept-timeout".into(),
        "60s".into(),
        "--key".into(),
        key.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = match ulimit_kib {
        Some(kib) => {
            let mut c = Proc::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
                .arg(&bin)
                .args(&args);
            c
        }
        None => {
            let mut c = Proc::new(&bin);
            c.args(&args);
            c
        }
    };
    let mut child = cmd
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
        .unwrap_or_else(|| panic!("listening line: {first}"))
        .to_string();
    std::thread::spawn(move || lines.map_while(Result::ok).count());
    (Guard(child), addr, log)
}

fn migrate_args(addr: &str, key: &Path, memory: &str) -> Vec<String> {
    [
        "migrate",
        "--to",
        addr,
        "--memory",
        memory,
        "--stop-remaining",
        "2MiB",
        "--sample",
        "0s",
        "--workload",
        "uniform:rate=4MiB/s",
        "--key",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([key.display().to_string()])
    .collect()
}

/// [`migrate_args`] with a minimum bandwidth that makes small guests quick.
fn quick(addr: &str, key: &Path, memory: &str) -> Vec<String> {
    [
        migrate_args(addr, key, memory),
        vec!["--min-bandwidth".into(), "64MiB/s".into()],
    ]
    .concat()
}

#[test]
fn receive_survives_junk_and_still_serves_a_real_source() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = write_key(dir.path(), "k", 7);
    let (mut rx, addr, log) = receiver(&key, &[], None);
    // 50 silent connections, held open, then 100 that connect and close at once.
    let silent: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    for _ in 0..100 {
        drop(TcpStream::connect(&addr).expect("connect"));
    }
    Command::cargo_bin("livemig")
        .expect("binary")
        .args(quick(&addr, &key, "32MiB"))
        .timeout(Duration::from_secs(60))
        .assert()
        .code(0);
    let status = rx.0.wait().expect("receiver exits");
    assert_eq!(
        status.code(),
        Some(0),
        "the receiver ran the real source's guest"
    );
    drop(silent);
    let log = log.lock().expect("log").join("\n");
    assert!(log.contains("refused") || log.contains("closed"), "{log}");
    assert!(
        log.lines().count() < 120,
        "refusals are rate-bounded:\n{log}"
    );
}

#[test]
fn a_closed_or_full_stdout_never_changes_the_status_of_a_migration() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = write_key(dir.path(), "k", 7);
    // stdout on a full device.
    let (mut rx, addr, _) = receiver(&key, &[], None);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let st = Proc::new(cargo_bin("livemig"))
        .args(quick(&addr, &key, "32MiB"))
        .arg("--json")
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&st.stderr);
    assert_eq!(st.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(rx.0.wait().expect("exits").code(), Some(0));
    // stdout on a pipe whose reader is gone (`| head -c0`).
    let (mut rx, addr, _) = receiver(&key, &[], None);
    let mut child = Proc::new(cargo_bin("livemig"))
        .args(quick(&addr, &key, "32MiB"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("exits");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(rx.0.wait().expect("exits").code(), Some(0));
}

#[test]
fn exit_codes_say_where_the_guest_is() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = write_key(dir.path(), "k", 7);
    // Nobody listens: failed, the guest runs on the source (1), not a usage error (2).
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    let out = Command::cargo_bin("livemig")
        .expect("binary")
        .args(quick(&addr, &key, "8MiB"))
        .arg("--json")
        .timeout(Duration::from_secs(60))
        .assert()
        .code(1)
        .get_output()
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["outcome"], "failed_source_running");
    assert_eq!(v["handover"]["guest_runs_on"], "source");
    // A receiver nobody comes to: 1 (nothing here; wherever the guest is, it runs there).
    Command::cargo_bin("livemig")
        .expect("binary")
        .args([
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--accept-timeout",
            "300ms",
            "--key",
        ])
        .arg(&key)
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1);
    // A migration: 0, and the JSON says where the guest is and what was verified.
    let (mut rx, addr, _) = receiver(&key, &["--json"], None);
    let out = Command::cargo_bin("livemig")
        .expect("binary")
        .args(quick(&addr, &key, "16MiB"))
        .arg("--json")
        .timeout(Duration::from_secs(60))
        .assert()
        .code(0)
        .get_output()
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["outcome"], "migrated");
    assert_eq!(v["handover"]["guest_runs_on"], "destination");
    assert_eq!(v["handover"]["destination_running"], true);
    assert_eq!(v["executor"], "engine");
    assert_eq!(rx.0.wait().expect("exits").code(), Some(0));
}

#[test]
fn an_allocation_the_host_refuses_is_an_error_to_the_source_not_an_abort() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = write_key(dir.path(), "k", 7);
    // 1 GiB of address space for the receiver; the guest asks 2 GiB (allowed by the flag, so
    // the allocation itself is what fails).
    let (mut rx, addr, log) = receiver(&key, &["--max-memory", "4GiB"], Some(1 << 20));
    let out = Command::cargo_bin("livemig")
        .expect("binary")
        .args(quick(&addr, &key, "2GiB"))
        .args(["--content", "zero"])
        .timeout(Duration::from_secs(120))
        .assert()
        .code(1)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot hold") && err.contains("code 4"),
        "{err}"
    );
    assert!(err.contains("keeps running on the source"), "{err}");
    let status = rx.0.wait().expect("exits");
    assert_eq!(status.code(), Some(1), "a clean failure, not SIGABRT");
    let log = log.lock().expect("log").join("\n");
    assert!(
        log.contains("cannot hold") && !log.contains("panicked"),
        "{log}"
    );
}

#[test]
fn bad_input_gets_one_clear_line_and_status_2() {
    let dir = tempfile::tempdir().expect("tmp");
    let good = write_key(dir.path(), "k", 7);
    let plus = dir.path().join("plus");
    std::fs::write(&plus, format!("+{}", "f".repeat(63))).expect("key");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (migrate_args("127.0.0.1:9", &plus, "8MiB"), "64 hex digits"),
        (
            [
                migrate_args("127.0.0.1:9", &good, "8MiB"),
                vec!["--min-bandwidth".into(), "1bit/s".into()],
            ]
            .concat(),
            "cannot move one page frame",
        ),
        (
            [
                migrate_args("127.0.0.1:9", &good, "8MiB"),
                vec!["--max-pause".into(), "5s".into()],
            ]
            .concat(),
            "maximum pause",
        ),
        (
            vec![
                "receive".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--key".into(),
                plus.display().to_string(),
            ],
            "64 hex digits",
        ),
    ];
    for (args, want) in cases {
        let out = Command::cargo_bin("livemig")
            .expect("binary")
            .args(&args)
            .timeout(Duration::from_secs(30))
            .assert()
            .code(2)
            .get_output()
            .clone();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing started");
    }
}

/// A paused guest saved as a hold file, as a side with an unknown outcome leaves it.
fn hold_file(dir: &Path, role: &str) -> (PathBuf, u64) {
    use livemig_engine::hold::{self, HoldInfo};
    use livemig_engine::{Guest, InitialContent, SimGuest, SimGuestConfig};
    let g = SimGuest::start(
        &SimGuestConfig {
            memory_bytes: 4 << 20,
            workload: "uniform:rate=4MiB/s".into(),
            content: InitialContent::Random,
            seed: 5,
        },
        u64::MAX,
    )
    .expect("guest");
    std::thread::sleep(Duration::from_millis(50));
    g.pause();
    let n = g.self_check().0;
    let info = HoldInfo {
        role: role.into(),
        session: "00112233445566778899aabbccddeeff".into(),
        peer: None,
        memory_bytes: g.memory().bytes(),
        digest: g.memory().digest(),
        self_check: n,
        reason: "a test\u{1b}[31m".into(),
        saved_at_unix_s: 0,
    };
    let p = dir.join(format!("g.{role}.lmhold"));
    hold::save(&p, &g, &info).expect("save");
    (p, n)
}

#[test]
fn resolve_shows_resumes_discards_and_asks() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = write_key(dir.path(), "k", 7);
    let (file, n) = hold_file(dir.path(), "source");
    // Without an action: what it holds and what to do; nothing changes; peer-given text is
    // escaped.
    let out = Command::cargo_bin("livemig")
        .expect("binary")
        .args(["resolve"])
        .arg(&file)
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("source") && text.contains(&format!("counter {n}")),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "escaped: {text}");
    assert!(file.exists());
    // --ask a destination that does not know the session (a restarted receiver, say): its
    // `Unknown` proves nothing about its predecessor, so the outcome stays unknown (3) and the
    // copy is kept.
    let (_rx, addr, _) = receiver(&key, &[], None);
    let out = Command::cargo_bin("livemig")
        .expect("binary")
        .args(["resolve", "--timeout", "2s", "--ask", &addr, "--key"])
        .arg(&key)
        .arg(&file)
        .timeout(Duration::from_secs(60))
        .assert()
        .code(3)
        .get_output()
        .clone();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Unknown") && text.contains("is kept"),
        "{text}"
    );
    assert!(file.exists(), "the copy is kept");
    std::fs::remove_file(&file).expect("rm");
    // --ask nobody: still unknown (3), the file is kept.
    let (file, n) = hold_file(dir.path(), "source");
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let nobody = l.local_addr().expect("addr").to_string();
    drop(l);
    Command::cargo_bin("livemig")
        .expect("binary")
        .args(["resolve", "--timeout", "300ms", "--ask", &nobody, "--key"])
        .arg(&key)
        .arg(&file)
        .timeout(Duration::from_secs(60))
        .assert()
        .code(3);
    assert!(file.exists(), "an unknown outcome keeps the copy");
    // --resume by hand: the guest continues from its counter.
    let out = Command::cargo_bin("livemig")
        .expect("binary")
        .args(["resolve", "--resume", "--run-after", "200ms"])
        .arg(&file)
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8_lossy(&out);
    let after: u64 = text
        .split_once(&format!("self-check counter {n} when held, "))
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(after > n, "the resumed guest writes on: {text}");
    assert!(!file.exists());
    // --discard: a destination's copy when the source runs the guest.
    let (file, _) = hold_file(dir.path(), "destination");
    Command::cargo_bin("livemig")
        .expect("binary")
        .args(["resolve", "--discard"])
        .arg(&file)
        .assert()
        .code(0);
    assert!(!file.exists());
    // --ask on a destination's file is refused (usage).
    let (file, _) = hold_file(dir.path(), "destination");
    Command::cargo_bin("livemig")
        .expect("binary")
        .args(["resolve", "--ask", "127.0.0.1:9", "--key"])
        .arg(&key)
        .arg(&file)
        .assert()
        .code(2);
    assert!(file.exists());
}

fn sigterm(pid: u32) {
    let st = Proc::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
}

/// Starts a migration source and returns once it has connected (its handlers are installed
/// by then), with its stderr lines collected as they come.
fn source_connected(addr: &str, key: &Path) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut src = Proc::new(cargo_bin("livemig"))
        .args(migrate_args(addr, key, "64MiB"))
        .args(["--policy", "fixed", "--bandwidth", "8MiB/s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("source starts");
    let err = src.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if l.contains("connected") {
                let _ = tx.send(());
            }
            sink.lock().expect("log").push(l);
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the source connects");
    // Well into round 1 (64 MiB at 8 MiB/s takes 8 s).
    std::thread::sleep(Duration::from_millis(500));
    (src, log)
}

#[test]
fn sigterm_mid_round_leaves_the_guest_on_the_source_and_nothing_on_the_destination() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = write_key(dir.path(), "k", 7);
    // SIGTERM to the source: it cancels; the guest keeps running there (1); the destination
    // keeps nothing (1).
    let (mut rx, addr, log) = receiver(&key, &[], None);
    let (mut src, src_log) = source_connected(&addr, &key);
    sigterm(src.id());
    let status = src.wait().expect("source exits");
    std::thread::sleep(Duration::from_millis(100));
    let err = src_log.lock().expect("log").join("\n");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("SIGTERM")
            && err.contains("cancelled")
            && err.contains("keeps running on the source"),
        "{err}"
    );
    assert_eq!(rx.0.wait().expect("exits").code(), Some(1));
    let log = log.lock().expect("log").join("\n");
    assert!(log.contains("cancelled"), "{log}");

    // SIGTERM to the destination mid-round: it stops and keeps nothing (1); the source fails
    // and its guest keeps running (1).
    let (mut rx, addr, _) = receiver(&key, &[], None);
    let (mut src, src_log) = source_connected(&addr, &key);
    sigterm(rx.0.id());
    let status = rx.0.wait().expect("receiver exits");
    assert_eq!(status.code(), Some(1), "nothing kept on the destination");
    let st = src.wait().expect("source exits");
    std::thread::sleep(Duration::from_millis(100));
    let err = src_log.lock().expect("log").join("\n");
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("keeps running on the source"), "{err}");

    // SIGTERM to a receiver nobody came to: it stops at once (1). Its "listening" line is
    // printed after its handlers are installed.
    let (mut rx, _addr, _) = receiver(&key, &[], None);
    let t0 = std::time::Instant::now();
    sigterm(rx.0.id());
    assert_eq!(rx.0.wait().expect("exits").code(), Some(1));
    assert!(t0.elapsed() < Duration::from_secs(5));
}
