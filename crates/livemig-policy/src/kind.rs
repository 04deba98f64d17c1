//! Policy names, parsing and construction.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::baselines::{Constant, Xen};
use crate::dirty_factor::DirtyFactor;
use crate::predictive::Predictive;
use crate::{ConfigError, Policy, PolicyConfig};

/// Every policy the crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// The method (section 4).
    DirtyFactor,
    /// The method's structure with a growth model and an exact planner.
    Predictive,
    /// Legacy Xen adaptive rate.
    Xen,
    /// Xen 4.6+ stream, unlimited.
    XenV2,
    /// QEMU defaults.
    Qemu,
    /// One constant cap.
    Fixed,
}

/// A policy name that is not one of [`PolicyKind::ALL`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "unknown policy `{0}` (expected one of: dirty-factor, predictive, xen, xen-v2, qemu, fixed)"
)]
pub struct UnknownPolicy(pub String);

impl PolicyKind {
    /// Every policy, in the order reports list them.
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::DirtyFactor,
        PolicyKind::Predictive,
        PolicyKind::Xen,
        PolicyKind::XenV2,
        PolicyKind::Qemu,
        PolicyKind::Fixed,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::DirtyFactor => "dirty-factor",
            PolicyKind::Predictive => "predictive",
            PolicyKind::Xen => "xen",
            PolicyKind::XenV2 => "xen-v2",
            PolicyKind::Qemu => "qemu",
            PolicyKind::Fixed => "fixed",
        }
    }

    /// One line on what the policy does (command-line help lists it beside the name).
    pub fn summary(self) -> &'static str {
        match self {
            PolicyKind::DirtyFactor => {
                "the method: caps follow the average dirty-page factor against the threshold T"
            }
            PolicyKind::Predictive => {
                "the method's structure with a fitted growth model and an exact round planner"
            }
            PolicyKind::Xen => {
                "legacy Xen: from B_min, raised to the dirty rate + 50 Mbit/s when outpaced"
            }
            PolicyKind::XenV2 => {
                "Xen 4.6+: unlimited (B_max); stops under 50 dirty pages or after 5 rounds"
            }
            PolicyKind::Qemu => {
                "QEMU's defaults: 128MiB/s until what remains fits the downtime limit"
            }
            PolicyKind::Fixed => "one constant cap (--bandwidth, default B_max)",
        }
    }

    /// Validates `cfg` and builds the policy.
    pub fn build(self, cfg: PolicyConfig) -> Result<Box<dyn Policy>, ConfigError> {
        cfg.validate()?;
        Ok(match self {
            PolicyKind::DirtyFactor => Box::new(DirtyFactor::new(cfg)),
            PolicyKind::Predictive => Box::new(Predictive::new(cfg)),
            PolicyKind::Xen => Box::new(Xen::new(cfg)),
            PolicyKind::XenV2 => Box::new(Constant::xen_v2(cfg)),
            PolicyKind::Qemu => Box::new(Constant::qemu(cfg)),
            PolicyKind::Fixed => Box::new(Constant::fixed(cfg)),
        })
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownPolicy(s.to_string()))
    }
}
