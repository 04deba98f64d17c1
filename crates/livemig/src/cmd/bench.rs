//! `livemig bench`: every policy over a scenario suite, with the oracle.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use livemig_policy::PolicyKind;
use livemig_sim::bench::{run_suite, PolicyResult, ScenarioResult, DEFAULT_SUITE};
use livemig_sim::scenario::{load_suite, parse_suite};
use livemig_workload::units::{fmt_bytes, fmt_duration, fmt_rate};

use crate::args::PolicyName;
use crate::{out, plot, table};

/// `livemig bench` flags.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  livemig bench                                   # the built-in suite, every policy
  livemig bench --policies dirty-factor,predictive --report bench-report
  livemig bench --suite scenarios/holdout.toml --json > holdout.json")]
pub struct Args {
    /// Scenario file ([[scenario]] tables); default: the built-in suite (scenarios/suite.toml).
    #[arg(long)]
    pub suite: Option<PathBuf>,
    /// Only these policies (comma-separated); default: all.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub policies: Vec<PolicyName>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write a Markdown report with one plot per scenario into this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// Runs `livemig bench`.
pub fn run(args: Args) -> Result<()> {
    let suite = match &args.suite {
        Some(p) => load_suite(p)?,
        None => parse_suite(Path::new("scenarios/suite.toml (built in)"), DEFAULT_SUITE)?,
    };
    let policies = if args.policies.is_empty() {
        PolicyKind::ALL.to_vec()
    } else {
        args.policies.iter().map(|p| p.0).collect()
    };
    if let Some(dir) = &args.report {
        check_report_dir(dir)?;
    }
    let started = Instant::now();
    let n = suite.len();
    let results = run_suite(&suite, &policies, |i, r| {
        out::note(&format!("[{}/{n}] {} done", i + 1, r.scenario));
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(dir) = &args.report {
        write_report(dir, &results)?;
    }
    if args.json {
        out::emit_line(&serde_json::to_string_pretty(&results)?)?;
        return Ok(());
    }
    let mut text = String::new();
    for r in &results {
        let _ = writeln!(text, "\n## {} — {}", r.scenario, r.description);
        let _ = writeln!(text, "   {} | {}", fmt_bytes(r.memory_bytes), r.workload);
        let _ = writeln!(text, "{}", table::bench_scenario(r));
        if r.oracle.is_none() {
            let _ = writeln!(text, "   oracle: no constant bandwidth <= B_max converges");
        }
    }
    let _ = writeln!(text, "\n## Summary over {n} scenarios ({elapsed:.2} s)");
    let _ = writeln!(text, "{}", table::bench_summary(&results));
    let _ = writeln!(
        text,
        "\n## Targets (scenarios where some constant bandwidth <= B_max converges)"
    );
    let _ = writeln!(text, "{}", table::bench_targets(&results));
    if let Some(dir) = &args.report {
        let _ = writeln!(
            text,
            "report written to {}",
            dir.join("report.md").display()
        );
    }
    out::emit(&text)?;
    Ok(())
}

/// Makes sure the report can be written before the suite runs: `dir` exists (or is created)
/// and a file can be created in it.
fn check_report_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the report directory {}", dir.display()))?;
    let probe = Staged::new(dir, "probe");
    std::fs::write(&probe.temp, "")
        .with_context(|| format!("cannot write in the report directory {}", dir.display()))?;
    Ok(())
}

/// A report file written under a temporary name in its final directory; [`Staged::commit`]
/// renames it into place. Dropped uncommitted, the temporary file is removed.
///
/// The temporary file is created like any other (mode 0666 less the umask, not the 0600 of a
/// `tempfile`), so the renamed report keeps the permissions it always had.
struct Staged {
    temp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    /// A temporary name beside `dir/name`, ending in `name`'s extension (the plots pick
    /// their format by it): `.report.<pid>-<n>.tmp.md` for `report.md`.
    fn new(dir: &Path, name: &str) -> Staged {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(name);
        let stem = path
            .file_stem()
            .map_or("report".into(), |s| s.to_string_lossy());
        let ext = path
            .extension()
            .map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
        let temp = path.with_file_name(format!(".{stem}.{}-{n}.tmp{ext}", std::process::id()));
        Staged {
            temp,
            path,
            committed: false,
        }
    }

    fn write(dir: &Path, name: &str, contents: &str) -> Result<Staged> {
        let staged = Staged::new(dir, name);
        std::fs::write(&staged.temp, contents)
            .with_context(|| format!("cannot write {}", staged.path.display()))?;
        Ok(staged)
    }

    fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.temp, &self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes report.md, bench.json and one plot per scenario into `dir`. Every file is first
/// written whole under a temporary name; only when all are written are they renamed into
/// place, so a failure leaves no partial file (and no new file at all if it comes before the
/// renames).
fn write_report(dir: &Path, results: &[ScenarioResult]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut staged = Vec::new();
    let mut md = String::from("# livemig bench report\n\n");
    md.push_str(
        "Every policy on every scenario of the suite, simulated. Ratios are to the oracle: the \
         lowest constant bandwidth that meets the same N and h. Cap ratios use the highest \
         pre-copy round cap; stop-and-copy runs at B_max for every policy.\n\n",
    );
    md.push_str(&format!(
        "## Summary\n\n```\n{}\n```\n\n",
        table::bench_summary(results)
    ));
    for r in results {
        let file = format!("{}.svg", r.scenario);
        let plot = Staged::new(dir, &file);
        plot::bench_caps(&plot.temp, r)
            .with_context(|| format!("cannot write {}", plot.path.display()))?;
        staged.push(plot);
        let _ = write!(
            md,
            "## {}\n\n{} — `{}`, {}\n\n",
            r.scenario,
            r.description,
            r.workload,
            fmt_bytes(r.memory_bytes)
        );
        match &r.oracle {
            Some(o) => {
                let _ = writeln!(
                    md,
                    "Oracle: {} constant, total time {}, downtime {}.\n",
                    fmt_rate(o.bandwidth_bytes_per_s),
                    fmt_duration(o.report.summary.total_time_s),
                    fmt_duration(o.report.summary.downtime_s)
                );
            }
            None => md.push_str("Oracle: no constant bandwidth up to B_max converges.\n\n"),
        }
        let _ = write!(md, "```\n{}\n```\n\n", table::bench_scenario(r));
        if let Some(text) = compare(r, "predictive", "dirty-factor") {
            let _ = write!(md, "{text}\n\n");
        }
        let _ = write!(md, "![caps]({file})\n\n");
    }
    staged.push(Staged::write(
        dir,
        "bench.json",
        &serde_json::to_string_pretty(results)?,
    )?);
    staged.push(Staged::write(dir, "report.md", &md)?);
    staged.into_iter().try_for_each(Staged::commit)
}

fn describe(p: &PolicyResult) -> String {
    let s = &p.report.summary;
    let r1 = p.report.rounds.first();
    let first = r1.map_or(String::new(), |x| {
        format!(
            "round 1 at {} took {}; ",
            fmt_rate(x.cap_bytes_per_s),
            fmt_duration(x.duration_s)
        )
    });
    let left = p.report.rounds.last().map_or(0.0, |x| x.dirty_bytes);
    let infeasible = s.infeasible_from_round.map_or(String::new(), |k| {
        format!(", flagged infeasible after round {k}")
    });
    format!(
        "{first}{} after {} rounds ({}) with {} left{infeasible}; peak cap {}{}, total time {}, downtime {}",
        if s.converged { "converged" } else { "not converged" },
        s.rounds,
        s.stop_reason.label(),
        fmt_bytes(left),
        fmt_rate(s.peak_cap_bytes_per_s),
        p.peak_cap_ratio.map_or(String::new(), |x| format!(" ({x:.2}x oracle)")),
        fmt_duration(s.total_time_s),
        fmt_duration(s.downtime_s),
    )
}

/// A factual paragraph on where policy `a` differs from policy `b` on one scenario.
fn compare(r: &ScenarioResult, a: &str, b: &str) -> Option<String> {
    let pa = r.results.iter().find(|p| p.policy == a)?;
    let pb = r.results.iter().find(|p| p.policy == b)?;
    let mut text = format!("**{a}**: {}.  \n**{b}**: {}.", describe(pa), describe(pb));
    let why = match (
        pa.report.summary.converged,
        pb.report.summary.converged,
        r.oracle.is_some(),
    ) {
        (true, false, _) => format!(
            " {b} assumes the next round dirties at the mean past rate and steers the arithmetic \
             mean of the factors to T; distinct dirty pages saturate, so its factors look healthy \
             while the remainder stays above h. {a} plans on the measured growth curve instead."
        ),
        (false, false, false) => format!(
            " No constant bandwidth up to B_max converges here; {a} says so in its audit as soon \
             as its estimate shows it."
        ),
        _ => String::new(),
    };
    if pa.peak_cap_ratio.is_some_and(|x| x > 1.2) {
        text.push_str(&format!(
            " {a} misses the 1.2x cap target here: its estimate is causal (it sees the sample and \
             the rounds so far), while the oracle's constant bandwidth is chosen knowing the whole \
             workload, including changes still to come."
        ));
    }
    text.push_str(&why);
    Some(text)
}
