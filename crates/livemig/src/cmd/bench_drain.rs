//! `livemig bench-drain`: a host of SimGuests of mixed dirtiness drained over the namespace
//! testbed (`scripts/testbed.sh`), once per sharing scheme of the RMS (`budget`, `sequential`,
//! `fixed-slots`, `unlimited`), side by side. What crosses the switch is measured on the
//! switch itself: the `rx_bytes` of every host's port on the bridge, read every 100 ms in the
//! switch's namespace, not from the agents' reports. Per scheme: the time to empty the host,
//! the highest 100 ms rate against the budget, every VM's downtime (max, median), and the
//! migrations that failed or did not converge.
//!
//! Needs root (namespaces, veths, tc); it makes its own testbed with a prefix of its own and
//! takes it down after each scheme, also on failure.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use livemig_rms::{MigrationState, MigrationView};
use livemig_workload::units::{self, fmt_bytes, fmt_rate};
use serde::Serialize;

use crate::{out, table};

/// Set by Ctrl-C or SIGTERM: the run stops at its next poll and takes its testbed down.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn stopped() -> Result<()> {
    if STOP.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("interrupted: the testbed is taken down");
    }
    Ok(())
}

const SCHEMES: [&str; 4] = ["budget", "sequential", "fixed-slots", "unlimited"];
const RMS: &str = "http://198.18.0.1:7700";

/// The drained host's guests: how fast each writes (uniform random pages), light to heavy;
/// the last needs most of the default budget to converge.
const MIX: [&str; 6] = [
    "uniform:rate=256KiB/s",
    "uniform:rate=2MiB/s",
    "uniform:rate=6MiB/s",
    "uniform:rate=12MiB/s",
    "uniform:rate=20MiB/s",
    "uniform:rate=40MiB/s",
];

/// `livemig bench-drain` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples (as root):
  livemig bench-drain
  livemig bench-drain --schemes budget,fixed-slots --budget 40MiB/s --json

Runs from the repository's root (it calls scripts/testbed.sh; --testbed to say where it is).
Needs root and iproute2. Each scheme takes about a minute: a testbed of 4 hosts is made, six
SimGuests with random memory are started on h1 (writing 256 KiB/s to 40 MiB/s), h1 is
drained, and the testbed is taken down.

Targets for `budget`: never above the budget by more than 5 % in a 100 ms window; every VM
converges; time to empty and max downtime no worse than the best baseline that also stays
within the budget.")]
pub struct Args {
    /// The schemes to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "budget,sequential,fixed-slots,unlimited"
    )]
    pub schemes: Vec<String>,
    /// The RMS's migration budget (the shared uplink's).
    #[arg(long, default_value = "60MiB/s", value_name = "RATE")]
    pub budget: String,
    /// Each host link's rate (tc syntax): what the uncapped schemes can reach.
    #[arg(long, default_value = "1gbit", value_name = "RATE")]
    pub link: String,
    /// The policy every migration runs under, whatever the scheme (the RMS's
    /// --default-policy): `fixed` runs at its cap (the grant, or the link), so the schemes
    /// differ only in what they admit and grant.
    #[arg(long, default_value = "fixed", value_name = "NAME")]
    pub policy: String,
    /// Memory of each of the six guests.
    #[arg(long, default_value = "256MiB", value_name = "SIZE")]
    pub memory: String,
    /// The testbed script.
    #[arg(long, default_value = "scripts/testbed.sh", value_name = "PATH")]
    pub testbed: PathBuf,
    /// Stop waiting for one drain after this long.
    #[arg(long, default_value = "10m", value_name = "TIME")]
    pub timeout: String,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One scheme's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub scheme: String,
    pub time_to_empty_s: f64,
    /// The highest rate over 100 ms on the switch (bytes/s), and over the budget.
    pub peak_bytes_per_s: f64,
    pub peak_over_budget: f64,
    pub downtime_max_s: f64,
    pub downtime_median_s: f64,
    pub completed: usize,
    pub failed: usize,
    pub not_converged: usize,
    /// Every byte that entered the switch during the drain.
    pub bridge_bytes: f64,
    pub samples: usize,
}

/// A testbed that is taken down when dropped.
struct Bed {
    script: PathBuf,
    prefix: String,
    state: tempfile::TempDir,
}

impl Bed {
    fn up(a: &Args, scheme: &str, budget: &str) -> Result<Bed> {
        let state = tempfile::tempdir().context("a state directory")?;
        let bed = Bed {
            script: a.testbed.clone(),
            prefix: format!("lmb{}", std::process::id() % 100_000),
            state,
        };
        let exe = std::env::current_exe().context("this binary's path")?;
        let o = bed
            .cmd(&["up", "4", "--system"])
            .env("LM_TESTBED_RATE", &a.link)
            .env("LM_TESTBED_CAPACITY", "4GiB")
            .env("LIVEMIG_BIN", exe)
            .env(
                "LM_TESTBED_RMS_ARGS",
                format!(
                    "--budget {budget} --scheme {scheme} --default-policy {}",
                    a.policy
                ),
            )
            .output()
            .context("run the testbed script")?;
        if !o.status.success() {
            bail!("the testbed did not come up: {}", text(&o));
        }
        Ok(bed)
    }

    fn cmd(&self, args: &[&str]) -> Proc {
        let mut c = Proc::new("bash");
        c.arg(&self.script)
            .args(args)
            .env("LM_TESTBED_PREFIX", &self.prefix)
            .env("LM_TESTBED_STATE", self.state.path());
        c
    }

    fn switch(&self) -> String {
        format!("{}-switch", self.prefix)
    }

    fn token(&self) -> PathBuf {
        self.state
            .path()
            .join(format!("{}.d", self.prefix))
            .join("token")
    }

    /// This binary's CLI, run beside the RMS, with `--json`.
    fn cli(&self, args: &[&str]) -> Result<serde_json::Value> {
        let exe = std::env::current_exe().context("this binary's path")?;
        let o = Proc::new("ip")
            .args(["netns", "exec", &self.switch()])
            .arg(exe)
            .args(args)
            .args(["--rms", RMS, "--json", "--token-file"])
            .arg(self.token())
            .output()
            .context("run the CLI in the switch's namespace")?;
        if !o.status.success() {
            bail!("livemig {}: {}", args.join(" "), text(&o));
        }
        serde_json::from_slice(&o.stdout)
            .with_context(|| format!("livemig {}: not JSON", args.join(" ")))
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = self.cmd(&["down"]).output();
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}: {}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What enters the switch, every 100 ms (`scripts/testbed.sh meter`).
struct Meter {
    child: Child,
    samples: Arc<Mutex<Vec<(f64, u64)>>>,
}

impl Meter {
    fn start(bed: &Bed) -> Result<Meter> {
        let mut child = bed
            .cmd(&["meter"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start the switch's meter")?;
        let stdout = child.stdout.take().context("the meter's output")?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&samples);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut it = line.split_whitespace();
                if let (Some(Ok(t)), Some(Ok(b))) = (
                    it.next().map(str::parse::<f64>),
                    it.next().map(str::parse::<u64>),
                ) {
                    into.lock().unwrap_or_else(|p| p.into_inner()).push((t, b));
                }
            }
        });
        Ok(Meter { child, samples })
    }

    /// (samples, the highest rate over any window of at least 100 ms, every byte).
    fn finish(mut self) -> (usize, f64, f64) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let total = match (s.first(), s.last()) {
            (Some(a), Some(b)) => b.1.saturating_sub(a.1) as f64,
            _ => 0.0,
        };
        (s.len(), livemig_sim::peak::counters(&s, 0.1), total)
    }
}

fn run_scheme(a: &Args, scheme: &str, budget: f64, timeout: Duration) -> Result<Figures> {
    out::note(&format!("{scheme}: bringing the testbed up"));
    let bed = Bed::up(a, scheme, &a.budget)?;
    for (i, w) in MIX.iter().enumerate() {
        let name = format!("g{}", i + 1);
        bed.cli(&[
            "vm",
            "create",
            &name,
            "--memory",
            &a.memory,
            "--workload",
            w,
            "--content",
            "random",
            "--host",
            "h1",
        ])?;
    }
    // The writers run a while first, as a host's guests would.
    std::thread::sleep(Duration::from_secs(2));
    stopped()?;
    let meter = Meter::start(&bed)?;
    std::thread::sleep(Duration::from_millis(300));
    out::note(&format!("{scheme}: draining h1"));
    let start = Instant::now();
    let drained = bed.cli(&["host", "drain", "h1"])?;
    let ids: Vec<u64> = drained["migrations"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    if ids.len() != MIX.len() {
        bail!(
            "{scheme}: the drain submitted {} migrations, not {}",
            ids.len(),
            MIX.len()
        );
    }
    let mut views: Vec<MigrationView> = Vec::new();
    loop {
        views.clear();
        for id in &ids {
            let v = bed.cli(&["migration", "show", &id.to_string()])?;
            views.push(serde_json::from_value(v).context("a migration's view")?);
        }
        if views
            .iter()
            .all(|v| v.state.is_terminal() || v.state == MigrationState::Unknown)
        {
            break;
        }
        stopped()?;
        if start.elapsed() > timeout {
            bail!("{scheme}: the drain did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let time_to_empty = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let (samples, peak, bytes) = meter.finish();
    let downtimes: Vec<f64> = views
        .iter()
        .filter_map(|v| v.report.as_ref().map(|r| r.summary.downtime_s))
        .collect();
    let completed = views
        .iter()
        .filter(|v| v.state == MigrationState::Completed)
        .count();
    let not_converged = views
        .iter()
        .filter(|v| v.report.as_ref().is_some_and(|r| !r.summary.converged))
        .count();
    Ok(Figures {
        scheme: scheme.to_string(),
        time_to_empty_s: time_to_empty,
        peak_bytes_per_s: peak,
        peak_over_budget: peak / budget,
        downtime_max_s: downtimes.iter().copied().fold(0.0, f64::max),
        downtime_median_s: livemig_fleet::median(downtimes),
        completed,
        failed: views.len() - completed,
        not_converged,
        bridge_bytes: bytes,
        samples,
    })
}

/// Runs `livemig bench-drain`.
pub fn run(a: Args) -> Result<()> {
    let budget = units::parse_rate_with_unit(&a.budget).context("--budget")?;
    if !(budget.is_finite() && budget > 0.0) {
        bail!("--budget must be a positive rate");
    }
    units::parse_size(&a.memory).context("--memory")?;
    if a.policy.parse::<livemig_policy::PolicyKind>().is_err() {
        bail!("--policy: unknown policy `{}`", a.policy);
    }
    let timeout = crate::args::positive_duration("timeout", &a.timeout)?;
    for s in &a.schemes {
        if !SCHEMES.contains(&s.as_str()) {
            bail!("--schemes: unknown scheme `{s}` ({})", SCHEMES.join(", "));
        }
    }
    if !Path::new(&a.testbed).is_file() {
        bail!(
            "--testbed {}: no such script (run from the repository's root)",
            a.testbed.display()
        );
    }
    crate::signals::on_interrupt(|| STOP.store(true, std::sync::atomic::Ordering::SeqCst))?;
    let mut all = Vec::new();
    for s in &a.schemes {
        stopped()?;
        all.push(run_scheme(&a, s, budget, timeout)?);
    }
    if a.json {
        out::emit_line(&serde_json::to_string_pretty(&all)?)?;
        return Ok(());
    }
    let mut t = table::new_table(&[
        "scheme",
        "time to empty",
        "peak 100 ms",
        "peak / budget",
        "downtime max",
        "downtime median",
        "completed",
        "failed",
        "not converged",
        "bytes on the switch",
    ]);
    for f in &all {
        t.add_row(vec![
            f.scheme.clone(),
            format!("{:.1} s", f.time_to_empty_s),
            fmt_rate(f.peak_bytes_per_s),
            format!("{:.3}", f.peak_over_budget),
            format!("{:.0} ms", f.downtime_max_s * 1e3),
            format!("{:.0} ms", f.downtime_median_s * 1e3),
            f.completed.to_string(),
            f.failed.to_string(),
            f.not_converged.to_string(),
            fmt_bytes(f.bridge_bytes),
        ]);
    }
    out::emit_line(&format!(
        "drain of 6 guests ({} each, random memory) over the testbed, budget {}\n{t}",
        a.memory,
        fmt_rate(budget)
    ))?;
    if let Some(b) = all.iter().find(|f| f.scheme == "budget") {
        let within: Vec<&Figures> = all
            .iter()
            .filter(|f| f.scheme != "budget" && f.peak_over_budget <= 1.05)
            .collect();
        let best = within
            .iter()
            .filter(|f| f.failed == 0)
            .min_by(|x, y| x.time_to_empty_s.total_cmp(&y.time_to_empty_s));
        let mut lines = vec![format!(
            "budget: peak {:.1} % of the budget; {} of {} converged",
            b.peak_over_budget * 100.0,
            b.completed - b.not_converged.min(b.completed),
            MIX.len()
        )];
        match best {
            Some(x) => lines.push(format!(
                "best baseline within the budget: {} ({:.1} s to empty, {:.0} ms max downtime); budget / it: time {:.2}, max downtime {:.2}",
                x.scheme,
                x.time_to_empty_s,
                x.downtime_max_s * 1e3,
                b.time_to_empty_s / x.time_to_empty_s,
                if x.downtime_max_s > 0.0 { b.downtime_max_s / x.downtime_max_s } else { f64::NAN }
            )),
            None => lines.push("no baseline stayed within the budget (+5 %) with every VM moved".into()),
        }
        out::emit_line(&lines.join("\n"))?;
    }
    Ok(())
}
