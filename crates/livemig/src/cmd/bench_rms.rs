//! `livemig bench-rms`: what the system sustains on loopback. It starts the RMS and N agents
//! (processes of this binary), creates many small SimGuests, then measures
//! - **migrations per minute**: every VM moved once (the RMS choosing each destination), all
//!   submitted at once, from the first submission to the last end, per repetition;
//! - **recovery time**: the RMS killed (SIGKILL) and started again on the same store: from the
//!   start to its first answer (it asks every agent what it runs before serving), and until
//!   every host is alive again.
//!
//! Medians over the repetitions; every number is measured in the same run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use livemig_rms::api::{Created, HostState, HostView};
use livemig_rms::{
    MigrationId, MigrationRequest, MigrationState, MigrationView, VmKind, VmRequest,
};
use livemig_workload::units;

use crate::cluster::Cluster;
use crate::rms_client::Rms;
use crate::{out, table};

/// `livemig bench-rms` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig bench-rms
  livemig bench-rms --hosts 5 --vms 40 --max-active 8 --repeat 3 --json")]
pub struct Args {
    /// Hosts (agents), 2 to 8.
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Small SimGuests spread over the hosts, 1 to 500.
    #[arg(long, default_value_t = 24)]
    pub vms: usize,
    /// Memory of each VM.
    #[arg(long, default_value = "16MiB")]
    pub memory: String,
    /// What each guest does.
    #[arg(long, default_value = "uniform:rate=1MiB/s")]
    pub workload: String,
    /// Migrations the RMS runs at once (its --max-active).
    #[arg(long, default_value_t = 4)]
    pub max_active: usize,
    /// Repetitions of each measurement (1 to 20); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One measurement's repetitions and their median.
#[derive(Debug, Clone, serde::Serialize)]
struct Series {
    runs: Vec<f64>,
    median: f64,
}

fn series(mut runs: Vec<f64>) -> Series {
    let mut s = runs.clone();
    s.sort_by(f64::total_cmp);
    let median = if s.is_empty() {
        f64::NAN
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    runs.shrink_to_fit();
    Series { runs, median }
}

#[derive(Debug, serde::Serialize)]
struct Results {
    hosts: usize,
    vms: usize,
    memory_bytes: u64,
    workload: String,
    max_active: usize,
    migrations_per_minute: Series,
    completed: usize,
    not_completed: usize,
    /// From the restarted RMS's start to its first answer (recovery included), seconds.
    recovery_to_serving_s: Series,
    /// From the restart until every host is alive again, seconds.
    recovery_to_all_hosts_alive_s: Series,
}

/// Runs `livemig bench-rms`.
pub fn run(args: Args) -> Result<()> {
    if !(2..=8).contains(&args.hosts) {
        bail!("--hosts must be between 2 and 8");
    }
    if !(1..=500).contains(&args.vms) {
        bail!("--vms must be between 1 and 500");
    }
    if !(1..=20).contains(&args.repeat) {
        bail!("--repeat must be between 1 and 20");
    }
    if !(1..=64).contains(&args.max_active) {
        bail!("--max-active must be between 1 and 64");
    }
    let memory = units::parse_size(&args.memory).context("--memory")? as u64;
    if !(4096..=1 << 30).contains(&memory) {
        bail!("--memory must be between 4KiB and 1GiB");
    }
    livemig_workload::Workload::parse_self_contained(&args.workload).context("--workload")?;
    // Room for every VM on every host, twice over (a destination holds a copy while the
    // source still runs it).
    let capacity = (memory * args.vms as u64 * 2).to_string();
    let capacities = vec![capacity; args.hosts];
    let max_active = args.max_active.to_string();
    if !args.json {
        out::note(&format!(
            "bench-rms: {} hosts, {} VMs of {} ({}), {} migrations at once, {} repetitions",
            args.hosts,
            args.vms,
            units::fmt_bytes(memory as f64),
            args.workload,
            args.max_active,
            args.repeat
        ));
    }
    let mut cluster = Cluster::start(
        &capacities,
        &[
            "--heartbeat",
            "500ms",
            "--host-timeout",
            "5s",
            "--max-active",
            &max_active,
        ],
    )?;
    let rt = crate::rt::runtime()?;
    let rms = cluster.client()?;
    rt.block_on(wait_alive(&rms, args.hosts, Duration::from_secs(30)))?;
    rt.block_on(create_vms(&rms, &args, memory))?;
    let mut per_minute = Vec::new();
    let (mut completed, mut not_completed) = (0, 0);
    for rep in 0..args.repeat {
        let (rate, ok, bad) = rt.block_on(move_all(&rms, args.vms))?;
        if !args.json {
            out::note(&format!(
                "bench-rms: repetition {}: {ok} completed, {bad} not, {rate:.1} migrations/min",
                rep + 1
            ));
        }
        per_minute.push(rate);
        completed += ok;
        not_completed += bad;
    }
    let mut serving = Vec::new();
    let mut all_alive = Vec::new();
    for rep in 0..args.repeat {
        let started = Instant::now();
        cluster.crash_and_restart_rms()?;
        let rms = cluster.client()?;
        rt.block_on(first_answer(&rms, Duration::from_secs(60)))?;
        let to_serving = started.elapsed().as_secs_f64();
        rt.block_on(wait_alive(&rms, args.hosts, Duration::from_secs(60)))?;
        let to_alive = started.elapsed().as_secs_f64();
        if !args.json {
            out::note(&format!(
                "bench-rms: restart {}: serving after {:.3} s, every host alive after {:.3} s",
                rep + 1,
                to_serving,
                to_alive
            ));
        }
        serving.push(to_serving);
        all_alive.push(to_alive);
    }
    drop(cluster);
    let results = Results {
        hosts: args.hosts,
        vms: args.vms,
        memory_bytes: memory,
        workload: args.workload.clone(),
        max_active: args.max_active,
        migrations_per_minute: series(per_minute),
        completed,
        not_completed,
        recovery_to_serving_s: series(serving),
        recovery_to_all_hosts_alive_s: series(all_alive),
    };
    if args.json {
        out::emit_line(&serde_json::to_string_pretty(&results)?)?;
    } else {
        let mut t = table::new_table(&["measure", "median", "runs"]);
        let runs = |s: &Series, f: &dyn Fn(f64) -> String| {
            s.runs.iter().map(|x| f(*x)).collect::<Vec<_>>().join(", ")
        };
        let per_min = |x: f64| format!("{x:.1}");
        let secs = |x: f64| format!("{x:.3} s");
        t.add_row(vec![
            "migrations per minute".to_string(),
            per_min(results.migrations_per_minute.median),
            runs(&results.migrations_per_minute, &per_min),
        ]);
        t.add_row(vec![
            "RMS restart: serving".to_string(),
            secs(results.recovery_to_serving_s.median),
            runs(&results.recovery_to_serving_s, &secs),
        ]);
        t.add_row(vec![
            "RMS restart: every host alive".to_string(),
            secs(results.recovery_to_all_hosts_alive_s.median),
            runs(&results.recovery_to_all_hosts_alive_s, &secs),
        ]);
        out::emit_line(&t.to_string())?;
        out::emit_line(&format!(
            "{} migrations completed, {} did not",
            results.completed, results.not_completed
        ))?;
    }
    if not_completed > 0 {
        bail!("{not_completed} migrations did not complete (see above)");
    }
    Ok(())
}

async fn wait_alive(rms: &Rms, hosts: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(a) = rms.get::<Vec<HostView>>(&["api", "v1", "hosts"]).await {
            if a.value
                .iter()
                .filter(|h| h.state == HostState::Alive)
                .count()
                == hosts
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the hosts were not all alive within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn first_answer(rms: &Rms, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while rms
        .get::<Vec<HostView>>(&["api", "v1", "hosts"])
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("the restarted RMS did not answer within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn create_vms(rms: &Rms, args: &Args, memory: u64) -> Result<()> {
    for i in 0..args.vms {
        let vm = VmRequest {
            name: format!("vm{i}"),
            memory_bytes: memory,
            workload: args.workload.clone(),
            kind: VmKind::Sim,
            host: Some(format!("host-{}", i % args.hosts + 1)),
            content: None,
        };
        rms.post::<_, serde_json::Value>(&["api", "v1", "vms"], &vm)
            .await?;
    }
    Ok(())
}

/// Submits one migration of every VM at once and waits for them all; returns the rate
/// (migrations per minute) and how many completed and did not.
async fn move_all(rms: &Rms, vms: usize) -> Result<(f64, usize, usize)> {
    let started = Instant::now();
    let mut ids: Vec<MigrationId> = Vec::new();
    for i in 0..vms {
        let req = MigrationRequest {
            vm: format!("vm{i}"),
            target: None,
            policy: None,
            settings: None,
            priority: None,
        };
        let c = rms
            .post::<_, Created>(&["api", "v1", "migrations"], &req)
            .await?;
        ids.push(c.value.id);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // Only this repetition's migrations: the list grows with every repetition.
        let after = ids.iter().map(|i| i.0).min().unwrap_or(1).saturating_sub(1);
        let all = rms
            .get_all::<MigrationView>(
                &["api", "v1", "migrations"],
                &[("after", after.to_string())],
            )
            .await?
            .value;
        let ours: Vec<&MigrationView> = all.iter().filter(|m| ids.contains(&m.id)).collect();
        let done = ours
            .iter()
            .filter(|m| m.state.is_terminal() || m.state == MigrationState::Unknown)
            .count();
        if done == ids.len() {
            let took = started.elapsed().as_secs_f64();
            let ok = ours
                .iter()
                .filter(|m| m.state == MigrationState::Completed)
                .count();
            return Ok((ids.len() as f64 * 60.0 / took, ok, ids.len() - ok));
        }
        if Instant::now() > deadline {
            bail!("the migrations did not all end within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
