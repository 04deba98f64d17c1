//! The whole system on the namespace testbed: `scripts/testbed.sh up N`, `livemig rms` in the
//! switch namespace at 198.18.0.1, one `livemig agent` per host namespace, the operator CLI run
//! beside the RMS. Everything is torn down when the guard drops, pass or fail.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use serde_json::Value;

pub const RMS_ADDR: &str = "198.18.0.1:7700";
pub const AGENT_PORT: u16 = 7800;
pub const TOKEN: &str = "system-test-token-0123456789abcdef";
pub const MIB: u64 = 1 << 20;

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

pub fn host_ip(i: usize) -> String {
    format!("198.18.0.{}", 10 + i)
}

/// Fails the test, with what to do, unless it runs as root with iproute2 and curl.
pub fn require_root() {
    let uid = Proc::new("id").arg("-u").output().expect("run id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the system tests need root (network namespaces, veths, tc): run them as root, as \
         scripts/test.sh does"
    );
    for tool in ["ip", "tc", "curl"] {
        let ok = Proc::new("which")
            .arg(tool)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "the system tests need `{tool}` (iproute2, curl)");
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// How the RMS runs.
#[derive(Debug, Clone)]
pub struct RmsOpts {
    pub host_timeout: &'static str,
    pub heartbeat: &'static str,
    /// `--db`; the default is a SQLite file in the test's directory.
    pub db: Option<String>,
    pub name: Option<String>,
    /// `--ca-dir` in the test's directory: migrations run over mutual TLS.
    pub ca_dir: bool,
    /// More flags of `livemig rms` (the budget's).
    pub extra: Vec<String>,
}

impl Default for RmsOpts {
    fn default() -> RmsOpts {
        RmsOpts {
            host_timeout: "3s",
            heartbeat: "500ms",
            db: None,
            name: None,
            ca_dir: false,
            extra: Vec::new(),
        }
    }
}

/// One system under test.
pub struct System {
    pub prefix: String,
    pub dir: tempfile::TempDir,
    pub hosts: usize,
    pub rms: Vec<Child>,
    pub agents: Vec<Option<Child>>,
    pub token: PathBuf,
    pub rms_opts: RmsOpts,
    /// A PostgreSQL cluster's directory, when one runs.
    postgres: Option<tempfile::TempDir>,
}

impl System {
    /// `hosts` hosts linked at `rate` (tc syntax), the RMS and no agents yet.
    pub fn up(hosts: usize, rate: &str, rms: RmsOpts) -> System {
        let mut sys = System::bed(hosts, rate, rms);
        sys.start_rms();
        sys
    }

    /// The testbed alone: no RMS, no agents.
    pub fn bed(hosts: usize, rate: &str, rms: RmsOpts) -> System {
        require_root();
        let prefix = format!(
            "lm-s{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::tempdir().expect("a temp dir");
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).expect("the token");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        let sys = System {
            prefix,
            dir,
            hosts,
            rms: Vec::new(),
            agents: (0..hosts).map(|_| None).collect(),
            token,
            rms_opts: rms,
            postgres: None,
        };
        let up = sys.testbed(&["up", &hosts.to_string()], rate);
        assert!(up.status.success(), "testbed up: {}", text(&up));
        sys
    }

    fn testbed(&self, args: &[&str], rate: &str) -> Output {
        Proc::new("bash")
            .arg(script("testbed.sh"))
            .args(args)
            .env("LM_TESTBED_PREFIX", &self.prefix)
            .env("LM_TESTBED_RATE", rate)
            .output()
            .expect("run scripts/testbed.sh")
    }

    pub fn switch_ns(&self) -> String {
        format!("{}-switch", self.prefix)
    }

    pub fn host_ns(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    pub fn host_name(i: usize) -> String {
        format!("h{i}")
    }

    /// `program` run inside namespace `ns`.
    pub fn exec(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Proc {
        let mut c = Proc::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Spawns a process whose first stdout line must say it listens; the rest is drained.
    fn spawn_listening(mut cmd: Proc, what: &str, log: &Path) -> Child {
        let err = std::fs::File::create(log).expect("a log file");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{what} starts: {e}"));
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            let _ = tx.send(lines.next());
            lines.map_while(Result::ok).for_each(drop);
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(Ok(line))) if line.contains("listening") => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("{what} did not start within 60 s: {other:?}\n{log}");
            }
        }
        child
    }

    /// Starts (another) RMS process in the switch namespace.
    pub fn start_rms(&mut self) {
        let db = self
            .rms_opts
            .db
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", self.dir.path().join("rms.db").display()));
        let mut cmd = System::exec(&self.switch_ns(), cargo_bin("livemig"));
        cmd.args(["rms", "--listen", RMS_ADDR, "--db", &db, "--token-file"])
            .arg(&self.token)
            .args(["--host-timeout", self.rms_opts.host_timeout])
            .args(["--heartbeat", self.rms_opts.heartbeat])
            .env("RUST_LOG", "livemig=info,livemig_rms_server=info");
        if let Some(n) = &self.rms_opts.name {
            cmd.args(["--name", n]);
        }
        if self.rms_opts.ca_dir {
            cmd.arg("--ca-dir").arg(self.dir.path().join("ca"));
        }
        cmd.args(&self.rms_opts.extra);
        let log = self.dir.path().join(format!("rms{}.log", self.rms.len()));
        let child = System::spawn_listening(cmd, "the RMS", &log);
        self.rms.push(child);
    }

    /// Starts an RMS that waits as a standby (it prints nothing until it leads).
    pub fn start_standby_rms(&mut self) -> Child {
        let db = self.rms_opts.db.clone().expect("a shared database");
        let log = self.dir.path().join("standby.log");
        let err = std::fs::File::create(&log).expect("a log file");
        let mut cmd = System::exec(&self.switch_ns(), cargo_bin("livemig"));
        cmd.args(["rms", "--listen", RMS_ADDR, "--db", &db, "--token-file"])
            .arg(&self.token)
            .args(["--host-timeout", self.rms_opts.host_timeout])
            .args(["--heartbeat", self.rms_opts.heartbeat, "--name", "standby"])
            .env("RUST_LOG", "livemig=info,livemig_rms_server=info")
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("the standby starts")
    }

    /// A throwaway PostgreSQL cluster in the switch namespace (beside the RMS), its URL; it
    /// is stopped when the system is dropped.
    pub fn start_postgres(&mut self) -> String {
        // Outside the test's private directory: the cluster runs as the `postgres` user.
        let dir = tempfile::tempdir().expect("a directory for the cluster");
        let o = System::exec(&self.switch_ns(), "bash")
            .arg(script("postgres.sh"))
            .arg("start")
            .arg(dir.path())
            .output()
            .expect("postgres.sh runs");
        assert!(o.status.success(), "postgres.sh start: {}", text(&o));
        let url = String::from_utf8_lossy(&o.stdout).trim().to_string();
        self.postgres = Some(dir);
        url
    }

    fn stop_postgres(&mut self) {
        if let Some(dir) = self.postgres.take() {
            let _ = System::exec(&self.switch_ns(), "bash")
                .arg(script("postgres.sh"))
                .arg("stop")
                .arg(dir.path())
                .output();
        }
    }

    pub fn kill_rms(&mut self) {
        for mut c in self.rms.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// With a CA: the RMS's API is HTTPS and every client gives its `ca.pem`.
    fn rms_url(&self) -> String {
        if self.rms_opts.ca_dir {
            format!("https://{RMS_ADDR}")
        } else {
            format!("http://{RMS_ADDR}")
        }
    }

    /// The CA certificate the RMS made in its `--ca-dir` (on its first start).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca").join("ca.pem")
    }

    /// Starts host `i`'s agent with `capacity` (e.g. "256MiB").
    pub fn start_agent(&mut self, i: usize, capacity: &str) {
        self.start_agent_with(i, capacity, &[]);
    }

    /// Starts host `i`'s agent able to run `qemu` VMs: its state directory is `h<i>` in the
    /// test's directory, its guest image in `guest`.
    pub fn start_qemu_agent(&mut self, i: usize, capacity: &str, guest: &Path) {
        let state = self.qemu_state_dir(i);
        let (state, guest) = (state.display().to_string(), guest.display().to_string());
        self.start_agent_with(i, capacity, &["--state-dir", &state, "--guest-dir", &guest]);
    }

    /// Where host `i`'s agent keeps its QEMU VMs.
    pub fn qemu_state_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("h{i}"))
    }

    /// Stops host `i`'s agent as an operator would (SIGTERM), waiting at most `limit`;
    /// whether it exited in time.
    pub fn stop_agent(&mut self, i: usize, limit: Duration) -> bool {
        let Some(mut c) = self.agents[i - 1].take() else {
            return true;
        };
        let _ = Proc::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    fn start_agent_with(&mut self, i: usize, capacity: &str, extra: &[&str]) {
        let ip = host_ip(i);
        let mut cmd = System::exec(&self.host_ns(i), cargo_bin("livemig"));
        cmd.args(["agent", "--listen", &format!("{ip}:{AGENT_PORT}")])
            .args(["--name", &System::host_name(i), "--token-file"])
            .arg(&self.token)
            .args(["--capacity-memory", capacity])
            .args(["--rms", &self.rms_url()])
            .args(extra)
            .env("RUST_LOG", "livemig=info,livemig_agent=info");
        if self.rms_opts.ca_dir {
            cmd.arg("--ca-file").arg(self.ca_file());
        }
        let log = self.dir.path().join(format!("agent{i}.log"));
        let child = System::spawn_listening(cmd, "an agent", &log);
        self.agents[i - 1] = Some(child);
    }

    /// SIGKILL, as a crash would.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn link(&self, i: usize, up: bool) {
        let o = Proc::new("ip")
            .args(["-n", &self.host_ns(i), "link", "set", "eth0"])
            .arg(if up { "up" } else { "down" })
            .output()
            .expect("ip link set");
        assert!(o.status.success(), "{}", text(&o));
    }

    /// The operator CLI, run beside the RMS.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = System::exec(&self.switch_ns(), cargo_bin("livemig"));
        cmd.args(args)
            .args(["--rms", &self.rms_url(), "--token-file"])
            .arg(&self.token);
        if self.rms_opts.ca_dir {
            cmd.arg("--ca-file").arg(self.ca_file());
        }
        cmd.output().expect("the CLI runs")
    }

    /// The CLI's `--json` answer; panics with its output unless it exits 0.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let o = self.cli(&all);
        assert!(o.status.success(), "livemig {args:?}: {}", text(&o));
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("livemig {args:?}: not JSON ({e}): {}", text(&o)))
    }

    /// `POST body` to `path` on host `i`'s agent (from the switch), its JSON; `None` when it
    /// does not answer 2xx within 3 s.
    pub fn agent_post(&self, i: usize, path: &str, body: &Value) -> Option<Value> {
        let body = body.to_string();
        self.agent_curl(
            i,
            path,
            &[
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body,
            ],
        )
    }

    /// `GET path` on host `i`'s agent (from the switch), its JSON; `None` when it does not
    /// answer 2xx within 3 s.
    pub fn agent_get(&self, i: usize, path: &str) -> Option<Value> {
        self.agent_curl(i, path, &[])
    }

    /// `GET path` on the RMS (from the switch), its JSON; `None` unless 2xx within 3 s.
    pub fn rms_get(&self, path: &str) -> Option<Value> {
        self.curl(&format!("{}{path}", self.rms_url()), &[])
    }

    /// curl with the token and `extra` to `path` on host `i`'s agent, its JSON answer.
    fn agent_curl(&self, i: usize, path: &str, extra: &[&str]) -> Option<Value> {
        let scheme = if self.rms_opts.ca_dir {
            "https"
        } else {
            "http"
        };
        self.curl(
            &format!("{scheme}://{}:{AGENT_PORT}{path}", host_ip(i)),
            extra,
        )
    }

    /// curl from the switch with the token and `extra` to `url` (checked against the CA when
    /// there is one), its JSON answer; `None` unless 2xx within 3 s.
    fn curl(&self, url: &str, extra: &[&str]) -> Option<Value> {
        let mut curl = System::exec(&self.switch_ns(), "curl");
        curl.args([
            "-sf",
            "-m",
            "3",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
        ])
        .args(extra)
        .arg(url);
        if self.rms_opts.ca_dir {
            // The agents' and the RMS's APIs present certificates the CA issued.
            curl.arg("--cacert").arg(self.ca_file());
        }
        let o = curl.output().expect("curl runs");
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    /// The names of the VMs host `i`'s agent runs.
    pub fn agent_vms(&self, i: usize) -> Vec<String> {
        self.agent_get(i, "/api/v1/vms")
            .and_then(|v| {
                v.as_array().map(|a| {
                    a.iter()
                        .filter_map(|x| x["name"].as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// Waits until `f` holds (polling every 100 ms), or panics with `what` after `limit`.
    pub fn wait_for(&self, limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < limit,
                "{what}: not within {limit:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the RMS lists `n` alive hosts.
    pub fn wait_alive(&self, n: usize) {
        self.wait_for(Duration::from_secs(20), "hosts alive", || {
            let o = self.cli(&["host", "list", "--json"]);
            o.status.success()
                && serde_json::from_slice::<Value>(&o.stdout).is_ok_and(|v| {
                    v.as_array()
                        .is_some_and(|a| a.iter().filter(|h| h["state"] == "alive").count() == n)
                })
        });
    }

    /// The migration's view, polled until it is terminal or `unknown`.
    pub fn wait_end(&self, id: u64, limit: Duration) -> Value {
        let mut last = Value::Null;
        self.wait_for(limit, &format!("migration {id} ends"), || {
            last = self.cli_json(&["migration", "show", &id.to_string()]);
            ["completed", "failed", "cancelled", "unknown"]
                .iter()
                .any(|s| last["state"] == *s)
        });
        last
    }

    /// The migration's view, polled until it is terminal (`unknown` is waited through).
    pub fn wait_terminal(&self, id: u64, limit: Duration) -> Value {
        let mut last = Value::Null;
        self.wait_for(limit, &format!("migration {id} finishes"), || {
            last = self.cli_json(&["migration", "show", &id.to_string()]);
            ["completed", "failed", "cancelled"]
                .iter()
                .any(|s| last["state"] == *s)
        });
        last
    }

    /// Where the RMS places `vm`.
    pub fn rms_host_of(&self, vm: &str) -> String {
        self.cli_json(&["vm", "show", vm])["host"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The logs of the RMS and the agents, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for p in paths
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
            {
                let t = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(25).collect();
                s.push_str(&format!("--- {} (last lines)\n", p.display()));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }
}

/// What enters the switch from the hosts, every 100 ms (`scripts/testbed.sh meter`: the sum
/// of the `rx_bytes` of every host's port on the bridge, each frame counted once).
pub struct BridgeMeter {
    child: Child,
    samples: std::sync::Arc<std::sync::Mutex<Vec<(f64, u64)>>>,
}

impl BridgeMeter {
    pub fn start(sys: &System) -> BridgeMeter {
        let mut child = Proc::new("bash")
            .arg(script("testbed.sh"))
            .arg("meter")
            .env("LM_TESTBED_PREFIX", &sys.prefix)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the bridge meter starts");
        let out = child.stdout.take().expect("stdout");
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = std::sync::Arc::clone(&samples);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut it = line.split_whitespace();
                let (Some(t), Some(b)) = (it.next(), it.next()) else {
                    continue;
                };
                if let (Ok(t), Ok(b)) = (t.parse::<f64>(), b.parse::<u64>()) {
                    into.lock().unwrap_or_else(|p| p.into_inner()).push((t, b));
                }
            }
        });
        BridgeMeter { child, samples }
    }

    /// The highest rate over any window of at least `span` seconds.
    pub fn peak(&self, span: f64) -> f64 {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        livemig_sim::peak::counters(&s, span)
    }

    /// How many samples were taken.
    pub fn len(&self) -> usize {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for BridgeMeter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for c in self.agents.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill_rms();
        self.stop_postgres();
        let _ = self.testbed(&["down"], "1gbit");
    }
}
