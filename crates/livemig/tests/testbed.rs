//! The namespace testbed (`scripts/testbed.sh`) for real: three hosts reach each other over the
//! bridge, a migration between two of them is held to the shaped link rate, and `down` leaves
//! nothing behind (namespaces, links, processes, state). Needs root and iproute2; it fails,
//! never skips, without them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use assert_cmd::Command;

/// Link rate of the test, in the script's syntax and in bits per second.
const RATE: &str = "100mbit";
const RATE_BITS: f64 = 100e6;
const HOSTS: usize = 3;
const PORT: u16 = 7700;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/testbed.sh")
}

fn addr(host: usize) -> String {
    format!("198.18.0.{}", 10 + host)
}

/// Fails the test, with what to do, unless it runs as root with iproute2.
fn require_root_and_iproute2() {
    let uid = Proc::new("id").arg("-u").output().expect("run id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the testbed test needs root (network namespaces, veths, tc): run it as root, \
         as scripts/test.sh does"
    );
    for tool in ["ip", "tc"] {
        let ok = Proc::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "the testbed test needs `{tool}`: install iproute2");
    }
}

/// One testbed under a prefix of this test run's own; `down` when dropped, pass or fail.
struct Testbed {
    prefix: String,
    children: Vec<Child>,
}

impl Testbed {
    fn new() -> Self {
        Self::named("t")
    }

    /// A testbed whose prefix is `lm-<tag><pid>` (one per test of this binary).
    fn named(tag: &str) -> Self {
        Self {
            prefix: format!("lm-{tag}{}", std::process::id()),
            children: Vec::new(),
        }
    }

    fn ns(&self, host: usize) -> String {
        format!("{}-h{host}", self.prefix)
    }

    fn script(&self, args: &[&str]) -> Output {
        Proc::new("bash")
            .arg(script())
            .args(args)
            .env("LM_TESTBED_PREFIX", &self.prefix)
            .env("LM_TESTBED_RATE", RATE)
            .env("LIVEMIG_BIN", cargo_bin("livemig"))
            .output()
            .expect("run scripts/testbed.sh")
    }

    /// A command run inside the namespace of `host`.
    fn exec(&self, host: usize, program: impl AsRef<std::ffi::OsStr>) -> Proc {
        let mut c = Proc::new("ip");
        c.args(["netns", "exec", &self.ns(host)]).arg(program);
        c
    }

    fn namespaces(&self) -> Vec<String> {
        let out = Proc::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = self.script(&["down"]);
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Takes down testbeds left by earlier runs of this test that were killed before their guard
/// ran (their prefix names a process that is gone).
fn reap_stale_testbeds() {
    let out = Proc::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let mut stale: Vec<(char, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let rest = l.split_whitespace().next()?.strip_prefix("lm-")?;
            let tag = rest.chars().next().filter(|c| *c == 't' || *c == 'y')?;
            let (pid, _) = rest[1..].split_once('-')?;
            Some((tag, pid.to_string()))
        })
        .filter(|(_, pid)| pid.chars().all(|c| c.is_ascii_digit()))
        .filter(|(_, pid)| !Path::new("/proc").join(pid).exists())
        .collect();
    stale.sort();
    stale.dedup();
    for (tag, pid) in stale {
        let _ = Proc::new("bash")
            .arg(script())
            .arg("down")
            .env("LM_TESTBED_PREFIX", format!("lm-{tag}{pid}"))
            .output();
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn three_hosts_reach_each_other_shaping_holds_and_down_leaves_nothing() {
    require_root_and_iproute2();
    reap_stale_testbeds();
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).expect("key");

    let mut bed = Testbed::new();
    let up = bed.script(&["up", &HOSTS.to_string()]);
    assert!(up.status.success(), "up: {}", text(&up));
    // A second `up` is refused and leaves the first one standing.
    let again = bed.script(&["up", "2"]);
    assert!(!again.status.success(), "second up: {}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        text(&again)
    );
    assert_eq!(bed.namespaces().len(), HOSTS + 1, "{:?}", bed.namespaces());

    let status = bed.script(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let hosts = s["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), HOSTS, "{s}");
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h["address"], format!("{}/24", addr(i + 1)), "{s}");
        assert_eq!(h["egress"], "100Mbit", "{s}");
        assert_eq!(h["ingress"], "100Mbit", "{s}");
    }

    // A destination in every host (it exits after one migration or 60 s without one).
    for host in 1..=HOSTS {
        let mut rx = bed
            .exec(host, cargo_bin("livemig"))
            .args(["receive", "--listen", &format!("{}:{PORT}", addr(host))])
            .args(["--accept-timeout", "60s", "--run-after", "100ms", "--key"])
            .arg(&key)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("receiver starts");
        let out = rx.stdout.take().expect("stdout");
        bed.children.push(rx);
        let mut lines = BufReader::new(out).lines();
        let first = lines.next().expect("a line").expect("text");
        assert!(first.starts_with("listening on "), "{first}");
        // Keep reading so the pipe never fills.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    }

    // Every host reaches every other one over the bridge (a TCP connect; the receivers log the
    // peer that never proves the key and keep waiting).
    for from in 1..=HOSTS {
        for to in (1..=HOSTS).filter(|&t| t != from) {
            let o = bed
                .exec(from, "timeout")
                .args(["5", "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/{}/{PORT}", addr(to)))
                .output()
                .expect("connect");
            assert!(
                o.status.success(),
                "h{from} cannot reach h{to} at {}: {}",
                addr(to),
                text(&o)
            );
        }
    }

    // A migration h1 -> h2 whose policy cap (1 GiB/s) is far above the link: the link sets the rate.
    let out = Command::new("ip")
        .args(["netns", "exec", &bed.ns(1)])
        .arg(cargo_bin("livemig"))
        .args(["migrate", "--to", &format!("{}:{PORT}", addr(2))])
        .args([
            "--memory",
            "64MiB",
            "--stop-remaining",
            "2MiB",
            "--sample",
            "0s",
        ])
        .args(["--workload", "uniform:rate=1MiB/s"])
        .args([
            "--policy",
            "fixed",
            "--bandwidth",
            "1GiB/s",
            "--json",
            "--key",
        ])
        .arg(&key)
        .timeout(Duration::from_secs(40))
        .output()
        .expect("migrate");
    assert!(out.status.success(), "migrate: {}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("migrate json");
    let mean = v["summary"]["mean_bytes_per_s"].as_f64().expect("mean");
    let limit = RATE_BITS / 8.0 * 1.1;
    eprintln!("mean {:.1} Mbit/s over a {RATE} link", mean * 8.0 / 1e6);
    assert!(
        mean <= limit,
        "mean {mean} B/s is above the shaped rate + 10 % ({limit} B/s): {v}"
    );
    // And the data did cross the link (not a shaping far below the one asked).
    assert!(mean >= RATE_BITS / 8.0 * 0.3, "mean {mean} B/s: {v}");
    // Round 1 (the whole guest) too; smaller rounds fit in socket buffers and are not checked.
    let round1 = &v["rounds"][0];
    let r1 = round1["effective_bytes_per_s"]
        .as_f64()
        .expect("round 1 rate");
    assert!(r1 <= limit, "round 1 at {r1} B/s: {round1}");

    // `down` kills what runs in the namespaces (the receivers of h1 and h3 still wait).
    let down = bed.script(&["down"]);
    assert!(down.status.success(), "down: {}", text(&down));
    assert!(bed.namespaces().is_empty(), "left: {:?}", bed.namespaces());
    for (i, c) in bed.children.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "the process in h{} survived down",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Nothing in the root namespace refers to the testbed.
    let links = Proc::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains(&bed.prefix), "{links}");
    let after = bed.script(&["status"]);
    assert!(
        String::from_utf8_lossy(&after.stdout).contains("nothing up"),
        "{}",
        text(&after)
    );
    // No state file either (the script's default state directory).
    let state = Path::new("/run/livemig-testbed").join(format!("{}.state", bed.prefix));
    assert!(!state.exists(), "{} is left", state.display());
    // `down` again succeeds with nothing up.
    assert!(bed.script(&["down"]).status.success());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn up_with_the_system_starts_an_https_rms_and_an_agent_per_host_and_down_stops_them() {
    require_root_and_iproute2();
    reap_stale_testbeds();
    let bed = Testbed::named("y");
    let up = bed.script(&["up", "2", "--system", "--tls"]);
    assert!(up.status.success(), "up: {}", text(&up));
    let out = String::from_utf8_lossy(&up.stdout).to_string();
    assert!(out.contains("system up"), "{out}");
    // The CLI, pointed as `status` says, sees both agents alive over HTTPS.
    let status = bed.script(&["status"]);
    let said = String::from_utf8_lossy(&status.stdout).to_string();
    let line = said
        .lines()
        .find_map(|l| l.strip_prefix("system: "))
        .unwrap_or_else(|| panic!("no system line: {said}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &words[..4],
        ["ip", "netns", "exec", &format!("{}-switch", bed.prefix)]
    );
    assert!(line.contains("https://"), "{line}");
    let hosts = Proc::new("ip")
        .args(&words[1..4])
        .arg(cargo_bin("livemig"))
        .args(&words[5..])
        .arg("--json")
        .output()
        .expect("the CLI runs");
    assert!(hosts.status.success(), "{}", text(&hosts));
    let list: serde_json::Value = serde_json::from_slice(&hosts.stdout).expect("JSON");
    let alive = list
        .as_array()
        .map(|a| a.iter().filter(|h| h["state"] == "alive").count());
    assert_eq!(alive, Some(2), "{list}");
    // `down` stops the RMS and the agents and removes their files.
    let pids: Vec<String> = ["switch", "h1", "h2"]
        .iter()
        .flat_map(|n| {
            let o = Proc::new("ip")
                .args(["netns", "pids", &format!("{}-{n}", bed.prefix)])
                .output()
                .expect("ip netns pids");
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(pids.len() >= 3, "the RMS and two agents run: {pids:?}");
    let down = bed.script(&["down"]);
    assert!(down.status.success(), "down: {}", text(&down));
    // Gone, or a zombie waiting for init to reap it (it runs no more).
    let running = |pid: &String| {
        std::fs::read_to_string(Path::new("/proc").join(pid).join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
            .unwrap_or(false)
    };
    let until = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(running) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in &pids {
        assert!(!running(pid), "process {pid} survived down");
    }
    assert!(bed.namespaces().is_empty(), "{:?}", bed.namespaces());
    let dir = Path::new("/run/livemig-testbed").join(format!("{}.d", bed.prefix));
    assert!(!dir.exists(), "{} is left", dir.display());
}
