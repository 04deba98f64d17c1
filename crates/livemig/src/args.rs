//! The flag groups several commands share, in one place: the policy's name and settings, the
//! simulated guest, live progress, timeouts, and the parsing of duration flags.
//!
//! Every command flattens these groups, so a flag means the same and shows the same default
//! everywhere. No command module imports another (`docs/architecture.md`).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::builder::PossibleValue;
use clap::ValueEnum;
use livemig_engine::{SenderConfig, SimGuest, SimGuestConfig};
use livemig_policy::settings::{
    DEFAULT_DOWNTIME_LIMIT, DEFAULT_MAX_BANDWIDTH, DEFAULT_MIN_BANDWIDTH, DEFAULT_PAGE_SIZE,
    DEFAULT_QEMU_BANDWIDTH, DEFAULT_ROUNDS, DEFAULT_STOP_REMAINING,
};
use livemig_policy::{
    PolicyConfig, PolicyKind, PolicySpec, SettingsError, TimeoutAction, Timeouts,
};
use livemig_workload::units;

// ---- Policies -------------------------------------------------------------------------------

/// A policy name on the command line: [`PolicyKind`]'s names and one-line summaries, so that
/// `--help` lists every policy with what it does (the policy crate knows nothing of clap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyName(pub PolicyKind);

/// [`PolicyKind::ALL`] as command-line values, in the same order.
const POLICY_NAMES: [PolicyName; PolicyKind::ALL.len()] = {
    let mut out = [PolicyName(PolicyKind::DirtyFactor); PolicyKind::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = PolicyName(PolicyKind::ALL[i]);
        i += 1;
    }
    out
};

impl ValueEnum for PolicyName {
    fn value_variants<'a>() -> &'a [Self] {
        &POLICY_NAMES
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.name()).help(self.0.summary()))
    }
}

/// The policy of real migrations when none is given (`docs/decisions.md`; README, "Which
/// policy").
pub const REAL_DEFAULT_POLICY: PolicyName = PolicyName(PolicyKind::Predictive);

/// What runs a QEMU migration: a policy, `qemu-native` (QEMU's own settings, no governor), or
/// `qemu-auto-converge` (a constant cap at B_max with QEMU's own auto-converge steps: what the
/// rescue is compared with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    Policy(PolicyKind),
    Native,
    AutoConverge,
}

/// Rounds allowed to `qemu-auto-converge` (QEMU itself has no limit; at least N).
pub const AUTO_CONVERGE_ROUNDS: u32 = 40;

/// Every runner: the policies, then `qemu-native` and `qemu-auto-converge`.
const RUNNERS: [Runner; PolicyKind::ALL.len() + 2] = {
    let mut out = [Runner::Native; PolicyKind::ALL.len() + 2];
    out[PolicyKind::ALL.len() + 1] = Runner::AutoConverge;
    let mut i = 0;
    while i < PolicyKind::ALL.len() {
        out[i] = Runner::Policy(PolicyKind::ALL[i]);
        i += 1;
    }
    out
};

impl ValueEnum for Runner {
    fn value_variants<'a>() -> &'a [Self] {
        &RUNNERS
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Runner::Policy(k) => PossibleValue::new(k.name()).help(k.summary()),
            Runner::Native => PossibleValue::new("qemu-native")
                .help("QEMU decides with its own settings; no governor"),
            Runner::AutoConverge => PossibleValue::new("qemu-auto-converge").help(
                "a constant cap at B_max with QEMU's own auto-converge (20 %, +10 % per \
                 trigger), up to 40 rounds",
            ),
        })
    }
}

impl Runner {
    /// The name as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Runner::Policy(k) => k.name(),
            Runner::Native => "qemu-native",
            Runner::AutoConverge => "qemu-auto-converge",
        }
    }

    /// What the governor runs for this runner.
    pub fn control(self, cfg: &PolicyConfig) -> Result<livemig_qemu::governor::Control> {
        use livemig_qemu::governor::Control;
        Ok(match self {
            Runner::Policy(k) => Control::Policy(k.build(cfg.clone())?),
            Runner::Native => Control::Native,
            Runner::AutoConverge => Control::Policy(PolicyKind::Fixed.build(PolicyConfig {
                fixed_bandwidth: Some(cfg.max_bandwidth),
                max_rounds: cfg.max_rounds.max(AUTO_CONVERGE_ROUNDS),
                ..cfg.clone()
            })?),
        })
    }

    /// Whether the governor turns on QEMU's own auto-converge.
    pub fn auto_converge(self) -> bool {
        self == Runner::AutoConverge
    }
}

// ---- Policy settings ------------------------------------------------------------------------

/// Help texts of the policy settings, without their defaults (a command that changes a
/// default, like `demo`, shows its own once).
pub mod help {
    pub const ROUNDS: &str = "Round limit N.";
    pub const STOP_REMAINING: &str =
        "Stop level h: pre-copy ends when at most this much remains dirty.";
    pub const MIN_BANDWIDTH: &str = "B_min, the lowest cap.";
    pub const MAX_BANDWIDTH: &str = "B_max, the highest cap, also the stop-and-copy bandwidth.";
}

/// The operator's policy settings (N, h, bounds, per-policy knobs), shared by every command
/// that runs a policy. Unset flags keep a scenario file's value (`simulate`) or the defaults
/// shown, which are [`livemig_policy::settings`]'s.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PolicyArgs {
    #[arg(long, value_name = "N", help = format!("{} [default: {DEFAULT_ROUNDS}]", help::ROUNDS))]
    pub rounds: Option<u32>,
    #[arg(long, value_name = "SIZE", help = format!(
        "{} [default: {DEFAULT_STOP_REMAINING}]", help::STOP_REMAINING))]
    pub stop_remaining: Option<String>,
    #[arg(long, value_name = "RATE", help = format!(
        "{} [default: {DEFAULT_MIN_BANDWIDTH}]", help::MIN_BANDWIDTH))]
    pub min_bandwidth: Option<String>,
    #[arg(long, value_name = "RATE", help = format!(
        "{} [default: {DEFAULT_MAX_BANDWIDTH}]", help::MAX_BANDWIDTH))]
    pub max_bandwidth: Option<String>,
    /// Round 1's cap. [default: B_min; `predictive` plans it from the sample]
    #[arg(long, value_name = "RATE")]
    pub initial_bandwidth: Option<String>,
    #[arg(long, value_name = "RATE", help = format!(
        "The constant cap of `fixed` and `qemu`. [default: B_max for `fixed`, \
         {DEFAULT_QEMU_BANDWIDTH} for `qemu`]"))]
    pub bandwidth: Option<String>,
    #[arg(long, value_name = "TIME", help = format!(
        "`qemu`: downtime limit; a plain number is milliseconds, as in QEMU and libvirt \
         (`300` = `300ms`). [default: {DEFAULT_DOWNTIME_LIMIT}]"))]
    pub downtime_limit: Option<String>,
    /// Threshold T set by hand. [default: (h/M)^(1/N)]
    #[arg(long, value_name = "T")]
    pub threshold: Option<f64>,
    #[arg(long, value_name = "SIZE", help = format!("Page size. [default: {DEFAULT_PAGE_SIZE}]"))]
    pub page_size: Option<String>,
    /// `predictive`'s rescue: when no bandwidth up to B_max converges, slow the guest by just
    /// the share of its CPU that makes B_max converge, at most this fraction (0.9 = 90 %);
    /// lifted when the stop-and-copy is done. [default: no rescue]
    #[arg(long, value_name = "FRACTION")]
    pub max_throttle: Option<f64>,
}

impl PolicyArgs {
    /// The settings the flags give (unset ones stay unset).
    pub fn spec(&self) -> PolicySpec {
        PolicySpec {
            rounds: self.rounds,
            stop_remaining: self.stop_remaining.clone(),
            min_bandwidth: self.min_bandwidth.clone(),
            max_bandwidth: self.max_bandwidth.clone(),
            initial_bandwidth: self.initial_bandwidth.clone(),
            threshold: self.threshold,
            bandwidth: self.bandwidth.clone(),
            downtime_limit: self.downtime_limit.clone(),
            page_size: self.page_size.clone(),
            max_throttle: self.max_throttle,
        }
    }

    /// The validated policy configuration for a guest of `memory_bytes`.
    pub fn resolve(&self, memory_bytes: f64) -> Result<PolicyConfig> {
        resolve_spec(&self.spec(), memory_bytes)
    }
}

/// Resolves `spec`, naming a bad value by its flag (`--min-bandwidth`).
pub fn resolve_spec(spec: &PolicySpec, memory_bytes: f64) -> Result<PolicyConfig> {
    spec.resolve(memory_bytes).map_err(|e| match e {
        SettingsError::Unit { field, source } => {
            anyhow::Error::new(source).context(format!("--{}", field.replace('_', "-")))
        }
        SettingsError::Config(source) => anyhow::Error::new(source),
    })
}

// ---- The simulated guest --------------------------------------------------------------------

/// The simulated guest: size, workload, content (shared by `migrate` and `demo`).
#[derive(Debug, Clone, clap::Args)]
pub struct GuestArgs {
    /// Guest memory size M (a multiple of 4 KiB).
    #[arg(long, default_value = "256MiB")]
    pub memory: String,
    /// Workload the guest's writer thread follows (same specs as `simulate`).
    #[arg(long, default_value = "hotcold:rate=128MiB/s,hot=5%,share=95%")]
    pub workload: String,
    /// Initial memory content: random (incompressible), zero, or mixed:P (a share P of zero
    /// pages, the rest random).
    #[arg(long, default_value = "random")]
    pub content: String,
    /// Seed of the guest's content and writer.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Try lz4 on every non-zero page (zero pages are always elided).
    #[arg(long)]
    pub compress: bool,
    /// Length of the dirty-log sample taken before round 1 and offered to the policy (0s for
    /// none; `predictive` plans from it).
    #[arg(long, default_value = "1s")]
    pub sample: String,
    /// Deadline of the handshake, of every frame and of every keep-alive gap.
    #[arg(long, default_value = "10s")]
    pub timeout: String,
    /// Longest pause of the guest before the destination confirms a verified copy; past it the
    /// source aborts the hand-over and resumes its guest. Must exceed --timeout.
    #[arg(long, default_value = "30s")]
    pub max_pause: String,
    /// After committing, how long the source keeps reconnecting to learn whether the
    /// destination runs the guest before it reports the outcome unknown (exit 3).
    #[arg(long, default_value = "60s")]
    pub resolve_timeout: String,
}

impl GuestArgs {
    /// The guest's memory size in bytes, and its workload checked (before anything starts).
    pub fn memory_bytes(&self) -> Result<f64> {
        let m = units::parse_size(&self.memory).context("--memory")?;
        livemig_workload::Workload::parse_in(
            &self.workload,
            std::env::current_dir().ok().as_deref(),
        )
        .with_context(|| format!("--workload `{}`", self.workload))?;
        Ok(m)
    }

    /// The policy configuration for this guest under `settings`.
    pub fn policy_config(&self, settings: &PolicyArgs) -> Result<PolicyConfig> {
        settings.resolve(self.memory_bytes()?)
    }

    /// Starts the guest (page size 4 KiB).
    pub fn start(&self, cfg: &PolicyConfig) -> Result<SimGuest> {
        if cfg.page_size != 4096.0 {
            bail!("the engine moves 4 KiB pages; --page-size must be 4096");
        }
        let guest = SimGuestConfig {
            memory_bytes: cfg.memory_bytes as u64,
            workload: self.workload.clone(),
            content: self.content.parse()?,
            seed: self.seed,
        };
        Ok(SimGuest::start(&guest, u64::MAX)?)
    }

    /// Sender settings for `cfg` under `timeouts`, checked against its lowest cap (one frame
    /// must move within the timeout at every cap the policy may set).
    pub fn sender(&self, cfg: &PolicyConfig, timeouts: Timeouts) -> Result<SenderConfig> {
        let send = SenderConfig {
            timeouts,
            compress: self.compress,
            stop_remaining: cfg.stop_remaining,
            sample_s: duration("sample", &self.sample)?.as_secs_f64(),
            workload: Some(self.workload.clone()),
            timeout: self.timeout()?,
            max_pause: positive_duration("max-pause", &self.max_pause)?,
            resolve_timeout: positive_duration("resolve-timeout", &self.resolve_timeout)?,
            ..SenderConfig::default()
        };
        send.check(cfg.min_bandwidth)
            .context("--min-bandwidth, --timeout or --max-pause")?;
        Ok(send)
    }

    /// The network timeout.
    pub fn timeout(&self) -> Result<Duration> {
        positive_duration("timeout", &self.timeout)
    }
}

// ---- Progress -------------------------------------------------------------------------------

pub use crate::progress::ProgressFormat;

/// `--progress`, shared by the commands that show a migration as it runs.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ProgressArgs {
    /// Live progress on stderr: `human` (bars and lines), `json` (one JSON event per line,
    /// NDJSON, for scripts) or `none`. [default: human; none with --json]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub progress: Option<ProgressFormat>,
}

impl ProgressArgs {
    /// The format to use; `json` is whether the command's `--json` was given (it silences the
    /// human lines unless `--progress` says otherwise).
    pub fn format(&self, json: bool) -> ProgressFormat {
        self.progress.unwrap_or(if json {
            ProgressFormat::None
        } else {
            ProgressFormat::Human
        })
    }
}

// ---- Timeouts -------------------------------------------------------------------------------

/// What a timeout does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnTimeout {
    /// Cancel: the guest keeps running on the source.
    Abort,
    /// Stop-and-copy now, whatever remains (longer downtime, the migration finishes).
    Force,
}

impl From<OnTimeout> for TimeoutAction {
    fn from(o: OnTimeout) -> TimeoutAction {
        match o {
            OnTimeout::Abort => TimeoutAction::Abort,
            OnTimeout::Force => TimeoutAction::Force,
        }
    }
}

/// The completion and no-progress timeouts of a real migration (`migrate`, `demo`,
/// `qemu migrate`, `qemu bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct TimeoutArgs {
    /// Time allowed for the whole pre-copy per GiB of guest memory (at least one GiB counts)
    /// before the timeout fires; `0s` or `none` for none.
    #[arg(long, value_name = "TIME", default_value = "300s")]
    pub completion_timeout_per_gib: String,
    /// Time allowed without progress (the bytes left to send reaching a new low); `0s` or
    /// `none` for none.
    #[arg(long, value_name = "TIME", default_value = "150s")]
    pub progress_timeout: String,
    /// What a fired timeout does: abort (the guest stays on the source) or force
    /// (stop-and-copy now).
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = OnTimeout::Abort)]
    pub on_timeout: OnTimeout,
}

/// A timeout flag: `None` for `0s` or `none`.
fn optional_duration(flag: &str, v: &str) -> Result<Option<f64>> {
    if v.trim() == "none" {
        return Ok(None);
    }
    let d = duration(flag, v)?;
    Ok((!d.is_zero()).then_some(d.as_secs_f64()))
}

impl TimeoutArgs {
    /// The timeouts the flags describe.
    pub fn timeouts(&self) -> Result<Timeouts> {
        Ok(Timeouts {
            completion_per_gib_s: optional_duration(
                "completion-timeout-per-gib",
                &self.completion_timeout_per_gib,
            )?,
            progress_s: optional_duration("progress-timeout", &self.progress_timeout)?,
            action: self.on_timeout.into(),
        })
    }
}

// ---- Durations ------------------------------------------------------------------------------

/// The longest duration any flag takes (7 days).
pub const MAX_DURATION_S: f64 = 7.0 * 86400.0;

/// Parses a non-negative duration flag into a `Duration`, refusing values it cannot hold.
pub fn duration(flag: &str, v: &str) -> Result<Duration> {
    let t = units::parse_duration_with_unit(v).with_context(|| format!("--{flag}"))?;
    if !(t >= 0.0 && t.is_finite()) {
        bail!("--{flag} must be a non-negative duration");
    }
    // Far beyond any sensible wait, and small enough that every deadline computed from it
    // (an instant plus a few of them) stays representable.
    if t > MAX_DURATION_S {
        bail!("--{flag} {v} is too long (at most 7 days)");
    }
    Duration::try_from_secs_f64(t)
        .map_err(|_| anyhow::anyhow!("--{flag} {v} is too long to represent"))
}

/// The measurement periods of a dirty trace: `periods` (each whole seconds, at most
/// [`livemig_workload::workingset::MAX_POINTS`]) when given, else the one `period`.
pub fn trace_periods(period: &str, periods: &[String]) -> Result<Vec<Duration>> {
    if periods.is_empty() {
        let Some(p) = whole_seconds("period", period)? else {
            bail!("--period must be at least 1s");
        };
        return Ok(vec![p]);
    }
    if periods.len() > livemig_workload::workingset::MAX_POINTS {
        bail!(
            "--periods takes at most {} periods",
            livemig_workload::workingset::MAX_POINTS
        );
    }
    periods
        .iter()
        .map(|p| match whole_seconds("periods", p)? {
            Some(d) => Ok(d),
            None => bail!("--periods: every period must be at least 1s, got {p}"),
        })
        .collect()
}

/// [`duration`], also refusing zero.
pub fn positive_duration(flag: &str, v: &str) -> Result<Duration> {
    let d = duration(flag, v)?;
    if d.is_zero() {
        bail!("--{flag} must be positive");
    }
    Ok(d)
}

/// A duration flag QEMU takes in whole seconds (`calc-dirty-rate`): [`duration`]'s checks,
/// then whole seconds only; zero is `None` (off).
pub fn whole_seconds(flag: &str, v: &str) -> Result<Option<Duration>> {
    let d = duration(flag, v)?;
    if d.is_zero() {
        return Ok(None);
    }
    if d.subsec_nanos() != 0 {
        bail!("--{flag} must be whole seconds (QEMU 7.2's calc-dirty-rate), got {v}");
    }
    Ok(Some(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn calc_dirty_rate_periods_are_whole_seconds() {
        assert_eq!(whole_seconds("sample", "0").ok(), Some(None));
        assert_eq!(
            whole_seconds("sample", "2s").ok(),
            Some(Some(Duration::from_secs(2)))
        );
        assert!(whole_seconds("period", "1.5s").is_err());
        assert!(whole_seconds("period", "soon").is_err());
    }

    #[test]
    fn trace_periods_are_the_list_or_the_one_period() {
        let secs = |v: &[u64]| {
            v.iter()
                .map(|&s| Duration::from_secs(s))
                .collect::<Vec<_>>()
        };
        assert_eq!(trace_periods("2s", &[]).expect("one"), secs(&[2]));
        let list: Vec<String> = ["1s", "2s", "4s"].map(String::from).to_vec();
        assert_eq!(trace_periods("1s", &list).expect("list"), secs(&[1, 2, 4]));
        assert!(trace_periods("0s", &[]).is_err());
        assert!(trace_periods("1s", &["1s".into(), "0s".into()]).is_err());
        assert!(trace_periods("1s", &["1.5s".into()]).is_err());
        let many = vec!["1s".to_string(); livemig_workload::workingset::MAX_POINTS + 1];
        assert!(trace_periods("1s", &many).is_err());
    }

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        timeouts: TimeoutArgs,
        #[command(flatten)]
        progress: ProgressArgs,
        #[arg(long, value_enum, default_value_t = REAL_DEFAULT_POLICY)]
        policy: PolicyName,
    }

    fn parse(args: &[&str]) -> T {
        T::try_parse_from([&["t"], args].concat()).expect("parses")
    }

    #[test]
    fn the_timeout_defaults_are_the_pilots() {
        let t = parse(&[]);
        assert_eq!(t.timeouts.timeouts().expect("valid"), Timeouts::default());
        assert_eq!(t.policy, PolicyName(PolicyKind::Predictive));
        let t = parse(&["--progress-timeout", "none", "--on-timeout", "force"]);
        let got = t.timeouts.timeouts().expect("valid");
        assert_eq!(got.progress_s, None);
        assert_eq!(got.action, TimeoutAction::Force);
        assert_eq!(
            parse(&["--progress-timeout", "0s"])
                .timeouts
                .timeouts()
                .expect("valid")
                .progress_s,
            None
        );
        let t = parse(&[
            "--completion-timeout-per-gib",
            "5m",
            "--progress-timeout",
            "0",
        ]);
        let got = t.timeouts.timeouts().expect("valid");
        assert_eq!(got.completion_per_gib_s, Some(300.0));
        assert_eq!(got.progress_s, None, "0 means none");
        let t = parse(&["--completion-timeout-per-gib", "none"]);
        assert_eq!(
            t.timeouts.timeouts().expect("valid").completion_per_gib_s,
            None
        );
        let e = parse(&["--progress-timeout", "soon"])
            .timeouts
            .timeouts()
            .expect_err("not a duration");
        assert!(format!("{e:#}").contains("--progress-timeout"), "{e:#}");
        assert!(T::try_parse_from(["t", "--on-timeout", "bogus"]).is_err());
    }

    #[test]
    fn json_silences_human_progress_unless_asked() {
        assert_eq!(parse(&[]).progress.format(false), ProgressFormat::Human);
        assert_eq!(parse(&[]).progress.format(true), ProgressFormat::None);
        let p = parse(&["--progress", "json"]).progress;
        assert_eq!(p.format(true), ProgressFormat::Json);
        assert_eq!(p.format(false), ProgressFormat::Json);
    }

    #[test]
    fn policy_values_come_from_the_policy_crate() {
        let names: Vec<String> = PolicyName::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|v| v.get_name().to_string())
            .collect();
        let want: Vec<&str> = PolicyKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, want);
        let runners: Vec<&str> = Runner::value_variants().iter().map(|r| r.name()).collect();
        assert_eq!(
            runners[PolicyKind::ALL.len()..],
            ["qemu-native", "qemu-auto-converge"]
        );
        assert_eq!(
            Runner::from_str("qemu-auto-converge", false),
            Ok(Runner::AutoConverge)
        );
        assert_eq!(
            Runner::from_str("dirty-factor", false),
            Ok(Runner::Policy(PolicyKind::DirtyFactor))
        );
    }

    #[test]
    fn bad_settings_name_their_flag() {
        let a = PolicyArgs {
            min_bandwidth: Some("100".into()),
            ..PolicyArgs::default()
        };
        let e = a.resolve(1e9).expect_err("no unit");
        assert!(format!("{e:#}").starts_with("--min-bandwidth: "), "{e:#}");
    }

    #[test]
    fn huge_durations_are_an_error_not_a_panic() {
        assert_eq!(
            duration("timeout", "90s").ok(),
            Some(Duration::from_secs(90))
        );
        let e = duration("timeout", "99999999999999999999999h").expect_err("out of range");
        assert!(e.to_string().contains("--timeout"), "{e}");
        assert!(e.to_string().contains("too long"), "{e}");
    }
}
