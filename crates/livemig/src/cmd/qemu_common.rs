//! What `livemig qemu migrate` and `livemig qemu bench` share: the policy-or-native runner,
//! the duration flags and the policy settings (so that neither command imports the other).

use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use livemig_policy::{PolicyConfig, PolicyKind};
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
