//! `livemig demo --hosts N`: the whole system on loopback. It starts `livemig rms` and N
//! `livemig agent` processes (this same binary) with a fresh token in a temporary directory,
//! creates a VM on the first host, asks the RMS to migrate it where it sees fit, follows the
//! migration round by round, checks where the guest runs, and stops everything it started.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use livemig_rms::api::{Created, HostView};
use livemig_rms::{MigrationId, MigrationRequest, MigrationView, VmKind, VmRequest};
use livemig_workload::units;

use crate::cluster::Cluster;
use crate::outcome;
use crate::rms_client::Rms;
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
    // The first host is the smallest, so the RMS moves the VM to one of the others.
    let capacities: Vec<String> = (1..=plan.hosts)
        .map(|i| format!("{}", memory * if i == 1 { 2 } else { 3 }))
        .collect();
    let cluster = Cluster::start(
        &capacities,
        &[
            "--heartbeat",
            "500ms",
            "--host-timeout",
            "5s",
            "--default-policy",
            &plan.policy,
        ],
    )?;
    say(
        plan.json,
        &format!("demo: the RMS listens on {}", cluster.rms_addr),
    );
    for ((name, addr), capacity) in cluster.hosts.iter().zip(&capacities) {
        let cap = units::fmt_bytes(capacity.parse::<f64>().unwrap_or(0.0));
        say(
            plan.json,
            &format!("demo: agent {name} listens on {addr} ({cap})"),
        );
    }
    let rms = cluster.client()?;
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
        content: None,
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
        priority: None,
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
