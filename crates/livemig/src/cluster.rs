//! A whole system on loopback for the demo and the RMS bench: `livemig rms` and N
//! `livemig agent` processes (this same binary) with a fresh token and a SQLite store in a
//! temporary directory. Everything it started is stopped (SIGTERM, then SIGKILL) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::rms_client::{Rms, RmsArgs};

/// A running system.
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    token: PathBuf,
    /// Where the RMS listens (`IP:PORT`).
    pub rms_addr: String,
    rms: Option<Child>,
    rms_args: Vec<String>,
    agents: Vec<Child>,
    /// Each agent's name and address.
    pub hosts: Vec<(String, String)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let children: Vec<&mut Child> = self.rms.iter_mut().chain(self.agents.iter_mut()).collect();
        for c in &children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        tracing::warn!(pid = c.id(), "did not stop within 5 s; killed");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// How long a process may take to say where it listens.
const START_LIMIT: Duration = Duration::from_secs(60);

/// Starts `livemig ARGS` logging to `log`; returns it and the address of its first line
/// (`{"listening": ...}`).
fn spawn(args: &[String], log: &Path, what: &str) -> Result<(Child, String)> {
    let exe = std::env::current_exe().context("cannot find this program to start")?;
    let err = std::fs::File::create(log)?;
    let mut child = Command::new(exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start the {what}"))?;
    let Some(out) = child.stdout.take() else {
        let _ = child.kill();
        anyhow::bail!("the {what} has no stdout");
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        let _ = tx.send(lines.next());
        lines.map_while(Result::ok).for_each(drop);
    });
    // A process that prints nothing is not waited for forever.
    let first = match rx.recv_timeout(START_LIMIT) {
        Ok(Some(Ok(line))) => line,
        _ => String::new(),
    };
    let address = serde_json::from_str::<serde_json::Value>(&first)
        .ok()
        .and_then(|v| v["listening"].as_str().map(str::to_string));
    match address {
        Some(a) => Ok((child, a)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!("the {what} did not start: {}", log.trim())
        }
    }
}

impl Cluster {
    /// The RMS (with `rms_flags` added) and one agent per capacity in `capacities` (named
    /// `host-1` …); returns once every process listens (not yet registered).
    pub fn start(capacities: &[String], rms_flags: &[&str]) -> Result<Cluster> {
        let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
        let token = dir.path().join("token");
        {
            use std::os::unix::fs::PermissionsExt;
            let key = livemig_engine::Key::generate()?;
            std::fs::write(&token, format!("{}\n", key.to_hex()))?;
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
        }
        let db = format!("sqlite:{}", dir.path().join("rms.db").display());
        // A fixed name: a restarted RMS takes its own lease over at once (as a service unit
        // with `--name` does) instead of waiting out its predecessor's.
        let mut rms_args: Vec<String> = ["rms", "--name", "rms-1", "--db", &db, "--token-file"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        rms_args.push(token.display().to_string());
        rms_args.extend(rms_flags.iter().map(|s| s.to_string()));
        rms_args.push("--json".into());
        let mut first = rms_args.clone();
        first.extend(["--listen".into(), "127.0.0.1:0".into()]);
        let (rms, rms_addr) = spawn(&first, &dir.path().join("rms.log"), "RMS")?;
        let mut cluster = Cluster {
            dir,
            token,
            rms_addr,
            rms: Some(rms),
            rms_args,
            agents: Vec::new(),
            hosts: Vec::new(),
        };
        let rms_url = format!("http://{}", cluster.rms_addr);
        for (i, capacity) in capacities.iter().enumerate() {
            let name = format!("host-{}", i + 1);
            let args: Vec<String> = [
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--name",
                &name,
                "--capacity-memory",
                capacity,
                "--rms",
                &rms_url,
                "--json",
                "--token-file",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([cluster.token.display().to_string()])
            .collect();
            let log = cluster.dir.path().join(format!("{name}.log"));
            let (child, addr) = spawn(&args, &log, &format!("agent {name}"))?;
            cluster.agents.push(child);
            cluster.hosts.push((name, addr));
        }
        Ok(cluster)
    }

    /// A client of the RMS.
    pub fn client(&self) -> Result<Rms> {
        Rms::new(&RmsArgs {
            rms: format!("http://{}", self.rms_addr),
            token_file: Some(self.token.clone()),
            ca_file: None,
            timeout: "10s".into(),
        })
    }

    /// SIGKILLs the RMS (a crash), then starts it again on the same address and store;
    /// returns once it listens (it answers once its recovery is done).
    pub fn crash_and_restart_rms(&mut self) -> Result<()> {
        if let Some(mut c) = self.rms.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut args = self.rms_args.clone();
        args.extend(["--listen".into(), self.rms_addr.clone()]);
        let n = std::fs::read_dir(self.dir.path()).map_or(0, |d| d.count());
        let log = self.dir.path().join(format!("rms-{n}.log"));
        let (child, _) = spawn(&args, &log, "RMS")?;
        self.rms = Some(child);
        Ok(())
    }
}
