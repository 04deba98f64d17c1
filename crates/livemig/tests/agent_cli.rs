//! `livemig agent` as a process: flags and the token file checked first (exit 2, one line),
//! then serving on loopback until SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command as Proc, Stdio};
use std::time::Duration;

use assert_cmd::cargo::cargo_bin;
use assert_cmd::Command;

fn agent(token_file: &std::path::Path) -> Command {
    let mut c = Command::cargo_bin("livemig").expect("binary");
    c.args(["agent", "--listen", "127.0.0.1:0", "--name", "host-a"])
        .arg("--token-file")
        .arg(token_file)
        .args(["--capacity-memory", "64MiB"])
        .timeout(Duration::from_secs(20));
    c
}

fn one_error_line(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn a_missing_empty_or_exposed_token_file_is_exit_2_with_one_line() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("missing.token");
    let err = one_error_line(&agent(&missing).output().expect("run"));
    assert!(
        err.starts_with("livemig: error: cannot read the token file ")
            && err.contains("missing.token"),
        "{err}"
    );
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "\n").expect("write");
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(one_error_line(&agent(&empty).output().expect("run")).contains("is empty"));
    let open = dir.path().join("open.token");
    std::fs::write(&open, "secret\n").expect("write");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(one_error_line(&agent(&open).output().expect("run")).contains("chmod 600"));
    let mut rms = agent(&missing);
    rms.args(["--rms", "https://198.18.0.1:7900"]);
    assert!(one_error_line(&rms.output().expect("run")).contains("--rms"));
}

#[test]
fn serves_healthz_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let token = dir.path().join("agent.token");
    std::fs::write(&token, "secret\n").expect("write");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut child = Proc::new(cargo_bin("livemig"))
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "host-a",
            "--json",
        ])
        .arg("--token-file")
        .arg(&token)
        .args(["--capacity-memory", "64MiB"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    let addr = v["listening"].as_str().expect("address").to_string();
    let get = |path: &str, auth: &str| {
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{auth}\r\n"
        )
        .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    };
    assert!(get("/healthz", "").starts_with("HTTP/1.1 200"));
    assert!(get("/api/v1/info", "").starts_with("HTTP/1.1 401"));
    let info = get("/api/v1/info", "Authorization: Bearer secret\r\n");
    assert!(
        info.starts_with("HTTP/1.1 200") && info.contains("\"memory_total_bytes\":67108864"),
        "{info}"
    );
    let pid = child.id().to_string();
    let killed = Proc::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

/// What the stand-in RMS saw: `(request line, authorization, body)`.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

/// A stand-in RMS on a std listener: records what it is sent and answers registrations
/// `{"heartbeat_s": 0.1}`, everything else 204.
fn fake_rms() -> (String, Seen) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("address"));
    let seen: Seen = std::sync::Arc::default();
    let s = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut r = BufReader::new(conn);
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                continue;
            }
            let (mut len, mut auth) = (0usize, String::new());
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                let lower = h.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("authorization:") {
                    auth = h["authorization:".len()..].trim().to_string();
                }
            }
            let mut body = vec![0u8; len.min(1 << 20)];
            let _ = std::io::Read::read_exact(&mut r, &mut body);
            let line = first.trim().to_string();
            let answer = if line.contains("/register") {
                let b = r#"{"heartbeat_s":0.1}"#;
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                    b.len()
                )
            } else {
                "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_string()
            };
            s.lock()
                .expect("lock")
                .push((line, auth, String::from_utf8_lossy(&body).to_string()));
            let _ = r.get_mut().write_all(answer.as_bytes());
        }
    });
    (url, seen)
}

#[test]
fn with_rms_it_registers_and_heartbeats_with_its_token() {
    let dir = tempfile::tempdir().expect("dir");
    let token = dir.path().join("agent.token");
    std::fs::write(&token, "secret\n").expect("write");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (url, seen) = fake_rms();
    let mut child = Proc::new(cargo_bin("livemig"))
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "host-a",
            "--json",
        ])
        .arg("--token-file")
        .arg(&token)
        .args([
            "--capacity-memory",
            "64MiB",
            "--rms",
            &url,
            "--timeout",
            "9s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    let addr = v["listening"].as_str().expect("address").to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let got = loop {
        let s = seen.lock().expect("lock").clone();
        let reg = s
            .iter()
            .find(|(l, _, _)| l.contains("/api/v1/agents/register"));
        let beat = s
            .iter()
            .any(|(l, _, _)| l.contains("/api/v1/agents/heartbeat"));
        if let (Some(reg), true) = (reg, beat) {
            break Some(reg.clone());
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let pid = child.id().to_string();
    let _ = Proc::new("kill").args(["-TERM", &pid]).status();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (first, auth, body) = got.unwrap_or_else(|| {
        panic!(
            "no registration and heartbeat: {:?}",
            seen.lock().expect("lock")
        )
    });
    assert!(first.starts_with("POST "), "{first}");
    assert_eq!(auth, "Bearer secret");
    let reg: serde_json::Value = serde_json::from_str(&body).expect("register JSON");
    assert_eq!(reg["name"], "host-a", "{reg}");
    assert_eq!(reg["address"].as_str(), Some(addr.as_str()), "{reg}");
    assert_eq!(reg["data_host"], "127.0.0.1", "{reg}");
    assert_eq!(reg["timeout_s"], 9.0, "{reg}");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn rms_flags_are_checked_before_starting() {
    let dir = tempfile::tempdir().expect("dir");
    let token = dir.path().join("agent.token");
    std::fs::write(&token, "secret\n").expect("write");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut wildcard = Command::cargo_bin("livemig").expect("binary");
    wildcard
        .args(["agent", "--listen", "0.0.0.0:0", "--name", "host-a"])
        .arg("--token-file")
        .arg(&token)
        .args(["--capacity-memory", "64MiB", "--rms", "http://127.0.0.1:9"])
        .timeout(Duration::from_secs(20));
    assert!(one_error_line(&wildcard.output().expect("run")).contains("--data-host"));
    let mut bad = agent(&token);
    bad.args(["--heartbeat", "0s"]);
    assert!(one_error_line(&bad.output().expect("run")).contains("--heartbeat"));
    // QEMU VMs' directories: the state directory must not be a file, the guest's must exist.
    let mut bad = agent(&token);
    bad.arg("--state-dir").arg(&token);
    assert!(one_error_line(&bad.output().expect("run")).contains("--state-dir"));
    let mut bad = agent(&token);
    bad.arg("--guest-dir").arg(dir.path().join("nowhere"));
    assert!(one_error_line(&bad.output().expect("run")).contains("--guest-dir"));
}

/// A running `livemig agent` and its API address; killed when dropped.
struct Running {
    child: std::process::Child,
    addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_agent(name: &str, token: &std::path::Path, rms: &str) -> Running {
    let mut child = Proc::new(cargo_bin("livemig"))
        .args(["agent", "--listen", "127.0.0.1:0", "--name", name, "--json"])
        .arg("--token-file")
        .arg(token)
        .args(["--capacity-memory", "128MiB", "--rms", rms])
        .arg("--hold-dir")
        .arg(token.parent().expect("dir"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    let addr = v["listening"].as_str().expect("address").to_string();
    Running { child, addr }
}

/// One request with the token; the status and the JSON body.
fn call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAuthorization: Bearer secret\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let json = out
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[test]
fn two_agent_processes_migrate_a_vm_as_the_rms_asks() {
    let dir = tempfile::tempdir().expect("dir");
    let token = dir.path().join("agent.token");
    std::fs::write(&token, "secret\n").expect("write");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (url, seen) = fake_rms();
    let a = spawn_agent("host-a", &token, &url);
    let b = spawn_agent("host-b", &token, &url);
    let mem = 16u64 << 20;
    let vm =
        serde_json::json!({"name": "vm1", "memory_bytes": mem, "workload": "uniform:rate=4MiB/s"});
    assert_eq!(call(&a.addr, "POST", "/api/v1/vms", Some(vm)).0, 201);
    let (status, answer) = call(
        &b.addr,
        "POST",
        "/api/v1/capacity",
        Some(serde_json::json!({ "memory_bytes": mem })),
    );
    assert_eq!(status, 200);
    let reservation = answer["reservation"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let key = "ab".repeat(32);
    let (status, ready) = call(
        &b.addr,
        "POST",
        "/api/v1/incoming",
        Some(serde_json::json!({
            "migration": 4, "reservation": reservation, "key": key,
            "vm": {"name": "vm1", "memory_bytes": mem, "workload": "uniform:rate=4MiB/s", "kind": "sim"},
        })),
    );
    assert_eq!(status, 201, "{ready}");
    let (status, r) = call(
        &a.addr,
        "POST",
        "/api/v1/outgoing",
        Some(serde_json::json!({
            "migration": 4, "vm": "vm1", "target": "host-b",
            "data_address": ready["data_address"], "key": key, "policy": "predictive",
        })),
    );
    assert_eq!(status, 202, "{r}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let on_b =
            call(&b.addr, "GET", "/api/v1/info", None).1["vms"] == serde_json::json!(["vm1"]);
        let on_a = call(&a.addr, "GET", "/api/v1/info", None).1["vms"] == serde_json::json!([]);
        if on_a && on_b {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not migrated: {:?}",
            call(&a.addr, "GET", "/api/v1/report", None)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = seen.lock().expect("lock").clone();
        let events = |host: &str, event: &str| {
            s.iter().any(|(l, _, b)| {
                l.contains("/agents/events")
                    && b.contains(&format!("\"host\":\"{host}\""))
                    && b.contains(&format!("\"event\":\"{event}\""))
            })
        };
        if events("host-a", "handed_over")
            && events("host-b", "resumed")
            && s.iter().any(|(l, _, _)| l.contains("/agents/reports"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
