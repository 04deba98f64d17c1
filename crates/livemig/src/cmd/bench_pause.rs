//! `livemig bench-pause`: where the engine's pause goes, per guest size: the stop-and-copy
//! transfer, the state, the verification, the resume, and the audit after it; with the same
//! migration in protocol 3 (whole-memory digests in the pause) beside it, and the time of one
//! full digest.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use livemig_engine::wire::{Versions, PAGE_SIZE};
use livemig_engine::{Guest, InitialContent, SenderConfig, SimGuest, SimGuestConfig};
use livemig_policy::report::{DowntimeBreakdown, MigrationReport};
use livemig_policy::{PolicyConfig, PolicyKind};
use livemig_workload::units::{self, fmt_bytes};
use serde::Serialize;

use crate::out;
use crate::table::fmt_pause;

/// `livemig bench-pause` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig bench-pause
  livemig bench-pause --sizes 256MiB,1GiB --repeat 5 --json
  livemig bench-pause --sizes 4GiB --no-v3

Each size runs a guest with the demo's workload (hot/cold, 128 MiB/s) on loopback under a
fixed cap until at most 8 MiB stays dirty, then stop-and-copy. The guest is filled once per
size and migrated --repeat times per protocol (resumed on the source in between). The target:
pause <= stop-and-copy transfer + 10 ms.")]
pub struct Args {
    /// Guest sizes, comma-separated (each between 16 MiB and 64 GiB; a run holds two copies).
    #[arg(long, default_value = "256MiB,1GiB,4GiB")]
    pub sizes: String,
    /// Migrations per size and protocol (1 to 20); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// The workload of the guest.
    #[arg(long, default_value = "hotcold:rate=128MiB/s,hot=5%,share=95%")]
    pub workload: String,
    /// The pre-copy cap.
    #[arg(long, default_value = "2GiB/s")]
    pub cap: String,
    /// Skip the comparison with protocol 3 (whole-memory digests in the pause).
    #[arg(long)]
    pub no_v3: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

const TIMEOUT: Duration = Duration::from_secs(30);
const MIN_SIZE: u64 = 16 << 20;
const MAX_SIZE: u64 = 64 << 30;
/// What pre-copy leaves for stop-and-copy at most (the demo's default).
const STOP_REMAINING: f64 = 8.0 * 1024.0 * 1024.0;
/// The target: the pause exceeds the stop-and-copy transfer by at most this.
pub const TARGET_OVER_TRANSFER_S: f64 = 0.010;

/// One migration's pause.
#[derive(Debug, Clone, Serialize)]
struct Run {
    downtime_s: f64,
    breakdown: DowntimeBreakdown,
    stop_copy_bytes: f64,
    audit_s: Option<f64>,
    audit_passed: Option<bool>,
}

/// The medians of one size under one protocol.
#[derive(Debug, Clone, Serialize)]
struct Row {
    memory_bytes: u64,
    protocol: u16,
    runs: Vec<Run>,
    downtime_s: f64,
    transfer_s: f64,
    state_s: f64,
    verify_s: f64,
    resume_s: f64,
    stop_copy_bytes: f64,
    /// The pause beyond the stop-and-copy transfer.
    over_transfer_s: f64,
    audit_s: Option<f64>,
    /// One full xxh3 digest of the guest's memory (the old way ran two in the pause).
    full_digest_s: f64,
    target_met: bool,
}

/// Runs `livemig bench-pause`.
pub fn run(args: Args) -> Result<()> {
    let sizes = sizes(&args.sizes)?;
    if !(1..=20).contains(&args.repeat) {
        bail!("--repeat must be between 1 and 20, got {}", args.repeat);
    }
    let cap = units::parse_rate_with_unit(&args.cap).context("--cap")?;
    if !(cap.is_finite() && cap >= 64.0 * 1024.0 * 1024.0) {
        bail!("--cap must be at least 64 MiB/s, got {}", args.cap);
    }
    let mut rows = Vec::new();
    for &memory in &sizes {
        let guest = SimGuest::start(
            &SimGuestConfig {
                memory_bytes: memory,
                workload: args.workload.clone(),
                content: InitialContent::Random,
                seed: 1,
            },
            u64::MAX,
        )?;
        let protocols: &[u16] = if args.no_v3 { &[4] } else { &[4, 3] };
        for &protocol in protocols {
            let mut runs = Vec::new();
            let mut digests = Vec::new();
            for _ in 0..args.repeat {
                if !args.json {
                    out::note(&format!(
                        "bench-pause: {} guest, protocol {protocol}, run {} of {}",
                        fmt_bytes(memory as f64),
                        runs.len() + 1,
                        args.repeat
                    ));
                }
                let report = migrate_once(&guest, memory, cap, protocol)?;
                // The paused source: one full digest, as the old way ran on each end.
                let t0 = Instant::now();
                std::hint::black_box(guest.memory().digest());
                digests.push(t0.elapsed().as_secs_f64());
                let s = &report.summary;
                runs.push(Run {
                    downtime_s: s.downtime_s,
                    breakdown: s.downtime_breakdown.unwrap_or_default(),
                    stop_copy_bytes: s.stop_copy_bytes,
                    audit_s: s.audit.as_ref().map(|a| a.time_s),
                    audit_passed: s.audit.as_ref().map(|a| a.passed),
                });
                guest.resume();
                std::thread::sleep(Duration::from_millis(200));
            }
            rows.push(row(memory, protocol, runs, digests));
        }
    }
    if args.json {
        out::emit_line(&serde_json::to_string_pretty(&rows)?)?;
    } else {
        out::emit(&render(&rows))?;
    }
    Ok(())
}

/// The sizes of `--sizes`, each checked, whole pages.
fn sizes(spec: &str) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let b = units::parse_size(part).with_context(|| format!("--sizes {part}"))?;
        if !(b >= MIN_SIZE as f64 && b <= MAX_SIZE as f64) {
            bail!("--sizes {part}: each size must be between 16 MiB and 64 GiB");
        }
        out.push(b as u64 / PAGE_SIZE as u64 * PAGE_SIZE as u64);
    }
    if out.is_empty() {
        bail!("--sizes: give at least one size");
    }
    Ok(out)
}

/// One migration of `guest` to a receiver thread on loopback, in `protocol`.
fn migrate_once(guest: &SimGuest, memory: u64, cap: f64, protocol: u16) -> Result<MigrationReport> {
    let cfg = PolicyConfig {
        memory_bytes: memory as f64,
        max_rounds: 30,
        stop_remaining: STOP_REMAINING,
        max_bandwidth: cap,
        fixed_bandwidth: Some(cap),
        ..PolicyConfig::default()
    };
    let mut policy = PolicyKind::Fixed.build(cfg)?;
    let send_cfg = SenderConfig {
        sample_s: 0.0,
        stop_remaining: STOP_REMAINING,
        timeout: TIMEOUT,
        max_pause: TIMEOUT * 2,
        resolve_timeout: TIMEOUT * 2,
        versions: Versions::new(protocol, protocol).context("a protocol version")?,
        ..SenderConfig::default()
    };
    crate::loopback::migrate(guest, policy.as_mut(), &send_cfg, TIMEOUT)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn row(memory: u64, protocol: u16, runs: Vec<Run>, digests: Vec<f64>) -> Row {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let over = m(&|r| r.downtime_s - r.breakdown.transfer_s);
    let audits: Vec<f64> = runs.iter().filter_map(|r| r.audit_s).collect();
    Row {
        memory_bytes: memory,
        protocol,
        downtime_s: m(&|r| r.downtime_s),
        transfer_s: m(&|r| r.breakdown.transfer_s),
        state_s: m(&|r| r.breakdown.state_s),
        verify_s: m(&|r| r.breakdown.verify_s),
        resume_s: m(&|r| r.breakdown.resume_s),
        stop_copy_bytes: m(&|r| r.stop_copy_bytes),
        over_transfer_s: over,
        audit_s: (!audits.is_empty()).then(|| median(audits)),
        full_digest_s: median(digests),
        target_met: over <= TARGET_OVER_TRANSFER_S,
        runs,
    }
}

fn render(rows: &[Row]) -> String {
    let mut t = crate::table::new_table(&[
        "guest",
        "protocol",
        "pause",
        "transfer",
        "state",
        "verify",
        "resume",
        "pause - transfer",
        "stop-and-copy",
        "audit (after)",
        "1 full digest",
        "target",
    ]);
    for r in rows {
        t.add_row(vec![
            fmt_bytes(r.memory_bytes as f64),
            r.protocol.to_string(),
            fmt_pause(r.downtime_s),
            fmt_pause(r.transfer_s),
            fmt_pause(r.state_s),
            fmt_pause(r.verify_s),
            fmt_pause(r.resume_s),
            fmt_pause(r.over_transfer_s),
            fmt_bytes(r.stop_copy_bytes),
            r.audit_s.map_or("-".into(), fmt_pause),
            fmt_pause(r.full_digest_s),
            if r.target_met { "met" } else { "missed" }.into(),
        ]);
    }
    format!(
        "{t}\nmedians, each column its own; in every run pause = transfer + state + verify + resume; target: pause - transfer <= {}; \
         protocol 3 digests all memory on both ends in the pause, protocol 4 hashes pages as \
         they move and audits the paused source after the resume\n",
        fmt_pause(TARGET_OVER_TRANSFER_S)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        assert_eq!(sizes("256MiB, 1GiB").expect("ok"), vec![256 << 20, 1 << 30]);
        assert!(sizes("1MiB").is_err());
        assert!(sizes("65GiB").is_err());
        assert!(sizes(",").is_err());
        assert!(sizes("lots").is_err());
    }

    #[test]
    fn medians_and_the_target() {
        let run = |d: f64, t: f64| Run {
            downtime_s: d,
            breakdown: DowntimeBreakdown {
                transfer_s: t,
                state_s: 0.0,
                verify_s: d - t,
                resume_s: 0.0,
            },
            stop_copy_bytes: 1.0,
            audit_s: Some(0.1),
            audit_passed: Some(true),
        };
        let r = row(
            1 << 30,
            4,
            vec![run(0.01, 0.005), run(0.02, 0.004), run(0.012, 0.006)],
            vec![0.3],
        );
        assert_eq!(r.downtime_s, 0.012);
        assert!((r.over_transfer_s - 0.006).abs() < 1e-12);
        assert!(r.target_met);
        let slow = row(1 << 30, 3, vec![run(0.1, 0.005)], vec![0.3]);
        assert!(!slow.target_met);
    }
}
