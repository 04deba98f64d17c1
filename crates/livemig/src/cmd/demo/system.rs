//! `livemig demo --hosts N`: the whole system on loopback. It starts `livemig rms` and N
//! `livemig agent` processes (this same binary) with a fresh token in a temporary directory,
//! creates a VM on the first host, asks the RMS to migrate it where it sees fit, follows the
//! migration round by round, checks where the guest runs, and stops everything it started.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use livemig_rms::api::{Created, HostView};
use livemig_rms::{MigrationId, MigrationRequest, MigrationView, VmKind, VmRequest};
use livemig_workload::units;

use crate::outcome;
use crate::rms_client::{Rms, RmsArgs};
use crate::{ops_view, watch};

/// What the system demo runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub hosts: usize,
    pub memory: String,
    pub workload: String,
    pub policy: String,
    pub json: bool,
}

/// The processes the demo started; stopped (SIGTERM, then SIGKILL) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (what, c) in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        tracing::warn!(%what, "did not stop within 5 s; killed");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}

impl Cluster {
    /// Starts `livemig ARGS`; returns the address from its first line (`{"listening": ...}`).
    fn spawn(&mut self, what: &str, args: &[&str]) -> Result<String> {
        let exe = std::env::current_exe().context("cannot find this program to start")?;
        let log = self.dir.path().join(format!("{what}.log"));
        let err = std::fs::File::create(&log)?;
        let mut child = Command::new(exe)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start the {what}"))?;
        let out = child.stdout.take().context("no stdout")?;
        self.children.push((what.to_string(), child));
        let mut lines = BufReader::new(out).lines();
        let first = lines.next().transpose()?.unwrap_or_default();
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        let v: serde_json::Value = serde_json::from_str(&first).with_context(|| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            format!("the {what} did not start: {}", log.trim())
        })?;
        v["listening"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("the {what} printed no address: {first}"))
    }
}

fn token(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let key = livemig_engine::Key::generate()?;
    let path = dir.join("token");
    std::fs::write(&path, format!("{}\n", key.to_hex()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

fn say(json: bool, line: &str) {
    if !json {
        outcome::note(line);
    }
}

/// Runs the system demo.
pub fn run(plan: Plan) -> Result<()> {
    if !(2..=8).contains(&plan.hosts) {
        bail!("--hosts must be between 2 and 8");
    }
    let memory = units::parse_size(&plan.memory).context("--memory")? as u64;
    livemig_workload::Workload::parse_self_contained(&plan.workload).context("--workload")?;
    let mut cluster = Cluster {
        dir: tempfile::tempdir().context("cannot make a temporary directory")?,
        children: Vec::new(),
    };
    let token = token(cluster.dir.path())?;
    let token_s = token.display().to_string();
    let db = format!("sqlite:{}", cluster.dir.path().join("rms.db").display());
    let rms_addr = cluster.spawn(
        "rms",
        &[
            "rms",
            "--listen",
            "127.0.0.1:0",
            "--db",
            &db,
            "--token-file",
            &token_s,
            "--heartbeat",
            "500ms",
            "--host-timeout",
            "5s",
            "--default-policy",
            &plan.policy,
            "--json",
        ],
    )?;
    say(plan.json, &format!("demo: the RMS listens on {rms_addr}"));
    let rms_url = format!("http://{rms_addr}");
    // The first host is the smallest, so the RMS moves the VM to one of the others.
    for i in 1..=plan.hosts {
        let capacity =
            units::fmt_bytes((memory * if i == 1 { 2 } else { 3 }) as f64).replace(' ', "");
        let name = format!("host-{i}");
        let addr = cluster.spawn(
            &name,
            &[
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--name",
                &name,
                "--token-file",
                &token_s,
                "--capacity-memory",
                &capacity,
                "--rms",
                &rms_url,
                "--json",
            ],
        )?;
        say(
            plan.json,
            &format!("demo: agent {name} listens on {addr} ({capacity})"),
        );
    }
    let rms = Rms::new(&RmsArgs {
        rms: rms_url,
        token_file: Some(token),
        timeout: "10s".into(),
    })?;
    let rt = crate::rt::runtime()?;
    let view = rt.block_on(drive(&rms, &plan, memory))?;
    drop(cluster);
    watch::finish(&view)
}

async fn drive(rms: &Rms, plan: &Plan, memory: u64) -> Result<MigrationView> {
    // Every agent registers, then heartbeats.
    let deadline = Instant::now() + Duration::from_secs(20);
    let hosts = loop {
        let h = rms.get::<Vec<HostView>>(&["api", "v1", "hosts"]).await;
        if let Ok(a) = h {
            if a.value.len() == plan.hosts {
                break a.value;
            }
        }
        if Instant::now() > deadline {
            bail!("the agents did not register with the RMS within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    say(
        plan.json,
        &format!(
            "demo: {} hosts registered\n{}",
            hosts.len(),
            ops_view::hosts(&hosts)
        ),
    );
    let vm = VmRequest {
        name: "vm1".into(),
        memory_bytes: memory,
        workload: plan.workload.clone(),
        kind: VmKind::Sim,
        host: Some("host-1".into()),
    };
    rms.post::<_, serde_json::Value>(&["api", "v1", "vms"], &vm)
        .await?;
    say(
        plan.json,
        &format!(
            "demo: vm1 ({}, workload {}) runs on host-1; asking the RMS to move it (policy {})",
            units::fmt_bytes(memory as f64),
            plan.workload,
            plan.policy
        ),
    );
    let req = MigrationRequest {
        vm: "vm1".into(),
        target: None,
        policy: Some(plan.policy.clone()),
        settings: None,
    };
    let created = rms
        .post::<_, Created>(&["api", "v1", "migrations"], &req)
        .await?;
    let id: MigrationId = created.value.id;
    let w = watch::Watch {
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(600),
        json: plan.json,
    };
    let view = watch::watch(rms, id, w).await?;
    // Free memory is what the agents last reported: wait for a heartbeat or two.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let hosts = rms
        .get::<Vec<HostView>>(&["api", "v1", "hosts"])
        .await?
        .value;
    say(
        plan.json,
        &format!("demo: where the VMs run now\n{}", ops_view::hosts(&hosts)),
    );
    Ok(view)
}
