//! What `livemig qemu migrate` and `livemig qemu bench` share: the policy-or-native runner,
//! the duration flags and the policy settings (so that neither command imports the other).

use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use livemig_policy::{PolicyConfig, PolicyKind, TimeoutAction, Timeouts};
use livemig_qemu::governor::Control;
use livemig_workload::units::parse_duration_with_unit;

use crate::cmd::simulate::PolicyArgs;

/// A policy name, or `qemu-native` for QEMU's own defaults without a governor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Runner {
    Policy(PolicyKind),
    Native,
}

impl FromStr for Runner {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s == "qemu-native" {
            return Ok(Runner::Native);
        }
        PolicyKind::from_str(s)
            .map(Runner::Policy)
            .map_err(|e| format!("{e} or qemu-native"))
    }
}

impl Runner {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Runner::Policy(k) => k.name(),
            Runner::Native => "qemu-native",
        }
    }

    pub(crate) fn control(self, cfg: &PolicyConfig) -> Result<Control> {
        Ok(match self {
            Runner::Policy(k) => Control::Policy(k.build(cfg.clone())?),
            Runner::Native => Control::Native,
        })
    }
}

/// What happens when a timeout fires (`--on-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnTimeout {
    /// Cancel the migration: the VM keeps running on the source.
    Abort,
    /// Stop and copy now, whatever remains (longer downtime; the migration finishes).
    Force,
}

/// The completion and no-progress timeouts of a QEMU migration.
#[derive(Debug, Clone, clap::Args)]
pub struct TimeoutArgs {
    /// Time allowed per GiB of guest memory (at least one GiB counts) before the timeout
    /// fires; 0 for none.
    #[arg(long, default_value = "300s")]
    pub completion_timeout_per_gib: String,
    /// Time allowed without progress (the bytes left to send reaching a new low); 0 for none.
    #[arg(long, default_value = "150s")]
    pub progress_timeout: String,
    /// What a fired timeout does: abort (the VM stays on the source) or force (stop-and-copy
    /// now).
    #[arg(long, value_enum, default_value = "abort")]
    pub on_timeout: OnTimeout,
}

impl TimeoutArgs {
    /// The timeouts for the governor.
    pub(crate) fn timeouts(&self) -> Result<Timeouts> {
        let secs = |flag: &str, s: &str| -> Result<Option<f64>> {
            let d = duration(flag, s)?.as_secs_f64();
            Ok((d > 0.0).then_some(d))
        };
        Ok(Timeouts {
            completion_per_gib_s: secs(
                "completion-timeout-per-gib",
                &self.completion_timeout_per_gib,
            )?,
            progress_s: secs("progress-timeout", &self.progress_timeout)?,
            action: match self.on_timeout {
                OnTimeout::Abort => TimeoutAction::Abort,
                OnTimeout::Force => TimeoutAction::Force,
            },
        })
    }
}

/// A duration flag as a `Duration`; a one-line error when it is out of range (huge, negative).
pub(crate) fn duration(flag: &str, s: &str) -> Result<Duration> {
    let secs = parse_duration_with_unit(s).with_context(|| format!("--{flag}"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| anyhow!("--{flag} {s} is out of range"))
}

pub(crate) fn policy_config(settings: &PolicyArgs, memory: f64) -> Result<PolicyConfig> {
    Ok(settings.resolve(&format!("{memory}"), "idle")?.cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_flags_become_the_governors_timeouts() {
        let t = TimeoutArgs {
            completion_timeout_per_gib: "5m".into(),
            progress_timeout: "0".into(),
            on_timeout: OnTimeout::Force,
        };
        let got = t.timeouts().expect("valid");
        assert_eq!(got.completion_per_gib_s, Some(300.0));
        assert_eq!(got.progress_s, None, "0 means none");
        assert_eq!(got.action, TimeoutAction::Force);
        let bad = TimeoutArgs {
            progress_timeout: "soon".into(),
            ..t
        };
        let e = bad.timeouts().expect_err("not a duration");
        assert!(format!("{e:#}").contains("--progress-timeout"), "{e:#}");
    }

    #[test]
    fn runner_names_include_qemu_native() {
        assert_eq!("qemu-native".parse::<Runner>(), Ok(Runner::Native));
        assert_eq!(
            "dirty-factor".parse::<Runner>(),
            Ok(Runner::Policy(PolicyKind::DirtyFactor))
        );
        let e = "nope".parse::<Runner>().expect_err("unknown");
        assert!(
            e.contains("qemu-native") && e.contains("dirty-factor"),
            "{e}"
        );
    }
}
